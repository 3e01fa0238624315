"""``cgsim demo``: the main job on the shipped example data.

For each *case* of ``conf/demo.yaml`` (a shipped model, held-out initial systems and their
reference MD) the demo runs exactly two documented verbs and prints them, so users can copy
the lines:

1. ``cgsim rollout checkpoint=MODEL initial=SYSTEMS steps=N output=OUT/CASE ...`` (the learned
   simulator, far longer than its training trajectories), and
2. ``cgsim evaluate reference=REFERENCE rollout=OUT/CASE output=OUT/CASE/evaluate`` (through the
   rollout's ``evaluate=true``): ``report.md``, ``metrics.json`` and ``figures/``.

Before the rollout it prints one line of the model's card (:class:`cgsim.model.card.ModelCard`:
learned step, sampler, training data); the settings the model file recommends for rollouts come
first in the rollout's overrides, the case's own ``rollout_overrides`` after them (they win).
Then it prints the headline errors next to the MD-vs-MD noise floor and where the report is,
and the speed-up it achieved: the case's ``reference_md`` (the fine chains or the all-atom box
the reference data came from) is rebuilt and timed with OpenMM's CPU platform for
``speed_seconds`` right after the rollout, in the same process and with as many threads as the
rollout's torch (:mod:`cgsim.reference.md_cost`), and the rollout's simulated time per second
(all members) is divided by OpenMM's (``speed_seconds=0`` skips it).
A case whose model file is missing is refused with one line (nothing is downloaded). Running
the demo again continues (``resume=true``) what an earlier, possibly killed, run left in the
same output and evaluates it again.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cgsim.cli import hydra_quoted
from cgsim.errors import CgsimInputError
from cgsim.io_utils import check_output_directory
from cgsim.model.card import ModelCard
from cgsim.model.checkpoint import load_checkpoint
from cgsim.report.markdown import median_over_keys


def register_configs() -> None:
    """The demo composes ``rollout`` and ``evaluate`` configs; it has no schema of its own."""


def case_overrides(case: DictConfig, output: Path, progress: bool, num_threads: int | None = None,
                   recommended: Sequence[str] = ()) -> list[str]:
    """The ``cgsim rollout`` overrides one demo case runs (evaluation included).

    ``recommended`` (the model card's recommended rollout settings,
    :meth:`cgsim.model.card.ModelCard.rollout_overrides`) come before the case's own
    ``rollout_overrides``, which win where both set an option. ``num_threads`` (torch threads of
    the rollout; ``None``: torch's default, one per core) is passed on as ``num_threads=N``.
    """
    threads = [] if num_threads is None else [f"num_threads={int(num_threads)}"]
    return [f"checkpoint={case.checkpoint}", f"initial={hydra_quoted(case.initial)}", f"steps={int(case.steps)}",
            f"output={output}", f"replicas={int(case.replicas)}", "evaluate=true",
            f"reference={hydra_quoted(case.reference)}",
            f"progress={str(progress).lower()}", *recommended, *[str(o) for o in case.rollout_overrides],
            *([f"evaluate_overrides=[{','.join(hydra_quoted(o) for o in case.evaluate_overrides)}]"]
              if case.get("evaluate_overrides") else []), *threads]



def shell_word(override: str) -> str:
    """An override as typed in a POSIX shell: hydra's single quotes kept inside double quotes."""
    if "'" in override:
        return '"' + override.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`") + '"'
    return shlex.quote(override)


def headline(metrics: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Per observable: the median over its keys of its first error measure, and of its noise floor."""
    rows = []
    for name, per_key in metrics.get("observables", {}).items():
        measure = next((k for entry in per_key.values() if isinstance(entry, dict) and isinstance(entry.get("error"), dict)
                        for k, v in entry["error"].items() if isinstance(v, (int, float))), None)
        if measure is None:
            continue
        err = median_over_keys(metrics, name, measure, "error")
        floor = median_over_keys(metrics, name, measure, "noise_floor")
        rows.append((f"{name} ({measure})", float("nan") if err is None else err,
                     float("nan") if floor is None else floor))
    return rows


def reference_md_rate(reference_md: str, threads: int, seconds: float) -> dict[str, Any]:
    """OpenMM's rate on a demo case's reference system, timed now (:mod:`cgsim.reference.md_cost`).

    Parameters
    ----------
    reference_md : str
        An electrolyte run directory (``cgsim generate system=electrolyte``), or a glob of chain
        trajectories written by ``cgsim generate system=chain`` (timed as one System).
    threads : int
        OpenMM CPU threads.
    seconds : float
        Timed window, wall seconds (after a warm-up of a fifth of it).

    Returns
    -------
    dict
        ``members_time_per_second`` (simulated time of all chains / of the one box per wall
        second, the rollout's unit), ``label`` (what was timed) and the raw timing.
    """
    from cgsim.data.load import expand_paths
    from cgsim.reference import md_cost

    path = Path(reference_md)
    if path.is_dir() and (path / ".run" / "identity.json").is_file():
        res = md_cost.openmm_electrolyte(path, threads, seconds / 5, seconds)
        return {"members_time_per_second": res["sim_per_s"], "raw": res,
                "label": f"OpenMM CPU, {res['atoms']} atoms, {res['dt_ps'] * 1000:g} fs steps, {threads} thread(s)"}
    chains = [md_cost.load_fine_chain(Path(p)) for p in expand_paths([reference_md], "reference_md")]
    res = md_cost.openmm_chains(chains, threads, seconds / 5, seconds)
    return {"members_time_per_second": res["aggregate_sim_per_s"], "raw": res,
            "label": f"OpenMM CPU, {res['n_chains']} chain(s), {res['beads']} fine beads in all, {threads} thread(s)"}


def speed_line(summary: dict[str, Any], md: dict[str, Any]) -> tuple[str, float]:
    """The demo's speed-up line: the rollout's simulated time per second over OpenMM's, and the ratio."""
    learned = float(summary["aggregate_simulated_time_per_second"])
    ratio = learned / md["members_time_per_second"]
    unit = summary["time_unit"]
    return (f"speed: {learned:.4g} {unit}/s learned ({summary['calls_per_step']} network call(s) per step, all "
            f"members) vs {md['members_time_per_second']:.4g} {unit}/s reference MD ({md['label']}, timed now): "
            f"{ratio:.3g}x faster", ratio)


def _check_cases(cfg: DictConfig) -> None:
    """Every case's model file, step and replica counts and initial systems, before the first case runs."""
    from cgsim.checks import positive_int
    from cgsim.data.load import expand_paths

    for name, case in cfg.cases.items():
        if not Path(str(case.checkpoint)).is_file():
            raise CgsimInputError(f"cases.{name}.checkpoint", f"{case.checkpoint} not found (the shipped models live "
                                                              "in data/checkpoints/)")
        positive_int(case.steps, f"cases.{name}.steps", what=" (learned steps)")
        positive_int(case.replicas, f"cases.{name}.replicas")
        expand_paths([str(case.initial)], f"cases.{name}.initial")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run every case of the demo config; return ``{case: {"summary", "report", "headline"}}``."""
    from cgsim.cli import compose_verb, load_verb

    rollout = load_verb("rollout")
    out = check_output_directory(str(cfg.output))
    threads = cfg.get("num_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise CgsimInputError("num_threads", f"expected a positive number of threads or null, got {threads!r}")
    _check_cases(cfg)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, case in cfg.cases.items():
        card = ModelCard.from_checkpoint(load_checkpoint(str(case.checkpoint)), str(case.checkpoint))
        overrides = case_overrides(case, out / name, bool(cfg.progress), threads, card.rollout_overrides())
        if (out / name / "rollout_state.pt").is_file():  # a finished or killed earlier demo: continue it
            overrides.append("resume=true")
        print(f"\n== demo case '{name}': {case.description}\nmodel: {case.checkpoint}: {card.summary()}\n"
              f"$ cgsim rollout {' '.join(map(shell_word, overrides))}", flush=True)
        try:
            summary = rollout(compose_verb("rollout", overrides))
        except CgsimInputError as exc:  # name the case whose rollout or evaluation refused its input
            raise type(exc)(f"cases.{name}", str(exc)) from None
        metrics = summary.pop("evaluate")
        report = (out / name / "evaluate" / "report.md").resolve()
        rows = headline(metrics)
        print(f"\n{'observable (error measure)':<40} {'rollout':>10} {'MD noise':>10}")
        for label, err, floor in rows:
            print(f"{label:<40} {err:>10.4g} {floor:>10.4g}")
        print(f"report: {report}")
        results[name] = {"summary": summary, "report": str(report), "headline": rows}
        seconds = float(cfg.get("speed_seconds", 0) or 0)
        if seconds > 0 and case.get("reference_md") and summary.get("steps_this_call"):
            import torch

            md = reference_md_rate(str(case.reference_md), int(threads or torch.get_num_threads()), seconds)
            line, results[name]["speedup"] = speed_line(summary, md)
            print(line, flush=True)
        elif seconds > 0 and case.get("reference_md"):
            print("speed: no steps in this call (continued a finished run); delete the output to time it again")
    cases = ", ".join(f"{n}: {r['summary']['steps']} steps, {r['summary']['n_stopped']} stopped"
                      + (f", {r['speedup']:.3g}x MD" if "speedup" in r else "") for n, r in results.items())
    print(f"\ndemo: {len(results)} case(s) in {time.perf_counter() - t0:.0f} s ({cases}); reports under {out.resolve()}")
    return results

