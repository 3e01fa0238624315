"""The ``cgsim`` command: ``cgsim VERB [hydra overrides]``.

Each verb is a hydra application whose root config is ``conf/VERB.yaml``; the work itself is
a plain function ``run(cfg) -> Any`` in the verb's module, so tests and notebooks call it
without hydra. Hydra writes the resolved config of every run into its output directory
(``outputs/VERB/DATE/TIME/.hydra/config.yaml`` unless ``hydra.run.dir`` is overridden).

Errors: the overrides are composed against the verb's structured-config schema before the
run, and a wrong one (unknown key, value of the wrong type, unknown config group option, bad
override syntax) is printed as one line naming the key and what is allowed, exit status 2
(:func:`override_error`); so is a bad input found later (:class:`cgsim.errors.CgsimInputError`),
a required option left unset and an output the file system refuses (:func:`call_verb`).
Hydra's own flags (``--cfg job``, ``--help``, ``-m``) skip the check and keep hydra's behaviour.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgsim.errors import CgsimInputError


@dataclass(frozen=True)
class Verb:
    """One ``cgsim`` verb: the module holding ``run(cfg)`` and a one-line help."""

    module: str
    help: str


#: The verbs, in the order of the data flow. Each module defines ``run(cfg)`` and may
#: define ``register_configs()`` to put its structured-config schema into hydra's store.
VERBS: dict[str, Verb] = {
    "generate": Verb("cgsim.reference.generate", "run reference MD with OpenMM (system=chain|...)"),
    "map": Verb("cgsim.mapping.command", "coarse-grain a trajectory into beads (mapping=metis|molecule|residue|file)"),
    "train": Verb("cgsim.train", "fit the multi-scale GNN to mapped bead trajectories (experiment=...)"),
    "rollout": Verb("cgsim.rollout", "run a trained simulator long: batched replicas, guard, resume (checkpoint= initial= steps= output=)"),
    "evaluate": Verb("cgsim.evaluate", "observables of reference vs rollout -> metrics.json, report.md, figures"),
    "screen": Verb("cgsim.screen", "transport of new electrolyte compositions: brief MD, map, learned rollout, report (eo_li= chain_length= n_chains= output=)"),
    "demo": Verb("cgsim.demo", "the main job on the shipped example data"),
}


def conf_dir() -> Path:
    """The ``conf/`` directory (``$CGSIM_CONF`` overrides the repository's)."""
    env = os.environ.get("CGSIM_CONF")
    if env:
        return Path(env).resolve()
    return (Path(__file__).resolve().parent.parent / "conf").resolve()


def usage() -> str:
    """Text of ``cgsim --help``."""
    width = max(len(v) for v in VERBS)
    lines = [
        "usage: cgsim VERB [hydra overrides ...]",
        "       python -m cgsim VERB [hydra overrides ...]",
        "",
        "verbs:",
        *(f"  {name:<{width}}  {verb.help}" for name, verb in VERBS.items()),
        "",
        "Each verb is a hydra app with root config conf/VERB.yaml; see its options with",
        "`cgsim VERB --cfg job`, and hydra's own help with `cgsim VERB --help`.",
    ]
    return "\n".join(lines)


def load_verb(name: str) -> Callable[[Any], Any]:
    """Import the verb's module, register its configs and return its ``run`` function."""
    module = importlib.import_module(VERBS[name].module)
    register = getattr(module, "register_configs", None)
    if register is not None:
        register()
    return module.run


def hydra_quoted(value: Any) -> str:
    """A value as one single-quoted hydra override string (quotes and backslashes escaped), so
    globs (``seq_00[0-5]``), '=' and other grammar characters pass through unchanged."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def compose_verb(name: str, overrides: Sequence[str]) -> Any:
    """The composed config of verb ``name`` with hydra ``overrides``, inside or outside a hydra app.

    Verbs that run other verbs (``rollout evaluate=true``, ``demo``) compose their configs with
    this, so every step is exactly what ``cgsim NAME overrides...`` would run.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    load_verb(name)  # registers the verb's structured configs
    if GlobalHydra.instance().is_initialized():  # inside a `cgsim` verb: hydra already knows conf/
        return compose(name, list(overrides))
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(name, list(overrides))


def _allowed_keys(object_type: Any) -> list[str]:
    """Field names of a structured-config node type (empty when it is not a dataclass)."""
    import dataclasses

    if isinstance(object_type, type) and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def override_error(exc: BaseException, overrides: Sequence[str]) -> CgsimInputError | None:
    """One-line :class:`CgsimInputError` for hydra's error on composing ``overrides``, or None if
    ``exc`` is not an override error."""
    import difflib

    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(exc, OverrideParseException):
        bad = next((o for o in overrides if o in str(exc)), None) or " ".join(overrides)
        return CgsimInputError(f"override {bad!r}", f"is not valid override syntax ({_first_line(exc)}); "
                                                    "expected KEY=VALUE, e.g. steps=100 or 'initial=[a,b]'")
    if isinstance(exc, MissingConfigException):
        options = [o for o in (exc.options or []) if not o.endswith("_schema")]
        group = (exc.missing_cfg_file or "").rpartition("/")[0] or "config group"
        name = (exc.missing_cfg_file or "").rpartition("/")[2]
        return CgsimInputError(group, f"no config {name!r}; expected one of {', '.join(options) or 'the files in conf/' + group}")
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, ConfigAttributeError | ConfigKeyError):
        key = str(getattr(cause, "full_key", "") or "")
        leaf = key.rpartition(".")[2]
        allowed = _allowed_keys(getattr(cause, "object_type", None))
        parent = key.rpartition(".")[0]
        near = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f"did you mean {(parent + '.' if parent else '') + near[0]!r}? " if near else ""
        keys = f"allowed keys{' of ' + parent if parent else ''}: {', '.join(allowed)}" if allowed else "see `--cfg job`"
        return CgsimInputError(key or "override", f"unknown key; {hint}{keys}")
    if isinstance(cause, ValidationError):
        key = str(getattr(cause, "full_key", "") or "override")
        return CgsimInputError(key, f"{_first_line(getattr(cause, 'msg', cause))}")
    if isinstance(exc, ConfigCompositionException):
        return CgsimInputError("override", _first_line(exc))
    return None


def check_overrides(name: str, overrides: Sequence[str]) -> None:
    """Compose verb ``name`` with ``overrides`` (hydra's own ``hydra.*`` ones left out) and raise a
    one-line :class:`CgsimInputError` for a wrong one (:func:`override_error`)."""
    ours = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "hydra="))]
    try:
        compose_verb(name, ours)
    except Exception as exc:  # noqa: BLE001 - hydra and omegaconf raise many types; others pass on
        err = override_error(exc, ours)
        if err is None:
            raise
        raise err from None


def call_verb(name: str, cfg: Any) -> Any:
    """Run verb ``name`` on its composed ``cfg`` as the command line does, in-process.

    A required option left unset (hydra's ``MissingMandatoryValue``) and a write the file system
    refuses that no writer turned into one line already (a full disk, a read-only file system,
    a parent that is a file) become one :class:`CgsimInputError` line, like every bad input.
    """
    from omegaconf.errors import MissingMandatoryValue

    from cgsim.io_utils import output_error

    run = load_verb(name)
    try:
        return run(cfg)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "option"
        raise CgsimInputError(key, f"is required; give {key}=VALUE (see `cgsim {name} --cfg job`)") from None
    except OSError as exc:
        err = output_error(exc.filename or "output", exc)
        if err is None:
            raise
        raise err from None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``cgsim`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in VERBS:
        print(f"cgsim: unknown verb {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)

    import hydra
    from omegaconf import DictConfig

    load_verb(name)
    if not any(a.startswith("-") for a in rest):  # hydra's flags (--cfg, --help, -m) keep hydra's handling
        try:
            check_overrides(name, rest)
        except CgsimInputError as exc:
            print(f"cgsim {name}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def task(cfg: DictConfig) -> None:
        try:
            call_verb(name, cfg)
        except CgsimInputError as exc:
            print(f"cgsim {name}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    # hydra reads sys.argv; give it the overrides and a program name for its messages.
    sys.argv = [f"cgsim {name}", *rest]
    app = hydra.main(config_path=str(conf_dir()), config_name=name, version_base="1.3")(task)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
