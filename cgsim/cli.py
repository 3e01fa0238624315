"""The ``cgsim`` command: ``cgsim VERB [hydra overrides]``.

Each verb is a hydra application whose root config is ``conf/VERB.yaml``; the work itself is
a plain function ``run(cfg) -> Any`` in the verb's module, so tests and notebooks call it
without hydra. Hydra writes the resolved config of every run into its output directory
(``outputs/VERB/DATE/TIME/.hydra/config.yaml`` unless ``hydra.run.dir`` is overridden).

Errors: a wrong override (unknown key, value of the wrong type) is rejected by hydra against
the verb's structured-config schema with hydra's own message; a bad input found later
(:class:`cgsim.errors.CgsimInputError`) is printed as one line and exits with status 2.
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

    run = load_verb(name)

    def task(cfg: DictConfig) -> None:
        try:
            run(cfg)
        except CgsimInputError as exc:
            print(f"cgsim {name}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    # hydra reads sys.argv; give it the overrides and a program name for its messages.
    sys.argv = [f"cgsim {name}", *rest]
    app = hydra.main(config_path=str(conf_dir()), config_name=name, version_base="1.3")(task)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
