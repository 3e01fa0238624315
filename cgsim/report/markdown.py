"""``report.md``: the metrics as tables, the figures, the noise floor and the timings."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_TITLES = {
    "rdf": "Radial distribution functions",
    "bond_lengths": "Bond-length distributions",
    "bond_angles": "Bond-angle distributions",
    "rg": "Radius of gyration",
    "end_to_end": "End-to-end distance",
    "contact_map": "Contact maps",
    "msd": "Mean-square displacement",
    "diffusion": "Self-diffusion coefficients",
    "rg_acf": "Autocorrelation of Rg^2",
    "conductivity": "Ionic conductivity",
}

_FIGURE_OF = {
    "rdf": "rdf.png", "bond_lengths": "bond_lengths.png", "bond_angles": "bond_angles.png", "rg": "chain_size.png",
    "end_to_end": "chain_size.png", "contact_map": "contact_map.png", "msd": "msd.png", "diffusion": "msd.png",
    "rg_acf": "rg_acf.png", "conductivity": "conductivity.png",
}


def median_over_keys(metrics: dict[str, Any], observable: str, measure: str, part: str = "error",
                     prefix: str = "") -> float | None:
    """Median of one measure over an observable's keys (type pairs, groups) in ``metrics.json``.

    ``part`` is ``"error"`` (rollout vs reference) or ``"noise_floor"``; only keys starting with
    ``prefix`` count (``"com:"``: molecule centres; a full key selects one); keys without a
    finite value are skipped; ``None`` if none has one.
    """
    values = [(entry.get(part) or {}).get(measure)
              for key, entry in metrics.get("observables", {}).get(observable, {}).items()
              if isinstance(entry, dict) and str(key).startswith(prefix)]
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _cells(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return "<br>".join(f"{k} = {_fmt(v)}" for k, v in d.items())


def _excluded(info: dict[str, Any]) -> str:
    """Clauses on the replicas a set's dynamics leave out (stopped early by the stability guard) and on
    replicas of a rollout that did not finish."""
    ex = info.get("excluded_from_dynamics") or {}
    text = ""
    if ex.get("n"):
        text = (f"; {ex['n']} of {ex['of']} trajectories stopped early by the stability guard are excluded from the "
                f"dynamical observables ({', '.join(ex['observables'])}) and kept for the structural ones (see Notes)")
    un = info.get("unfinished") or {}
    if un.get("n"):
        text += (f"; **UNFINISHED**: {un['n']} of {un['of']} trajectories come from a rollout that did not finish "
                 "(killed or still running; frames up to its last checkpoint), "
                 + ("used for the dynamics too" if un.get("in_dynamics") else
                    "left out of the dynamical observables unless include_unfinished=true") + " (see Notes)")
    return text


def render(metrics: dict[str, Any], figures: dict[str, str]) -> str:
    """Markdown text of the report.

    Parameters
    ----------
    metrics : dict
        The content of ``metrics.json``.
    figures : dict
        ``{figure name: relative path}`` of the written PNGs.
    """
    ref, roll = metrics["reference"], metrics.get("rollout")
    lines = ["# cgsim evaluation report", ""]
    lines += [f"- reference: `{ref['path']}` ({ref['n_trajectories']} trajectories, {ref['n_frames']} frames, "
              f"{_fmt(ref['dt_ps'])} ps between frames, system `{ref['system']}`)" + _excluded(ref)]
    if roll:
        lines += [f"- rollout: `{roll['path']}` ({roll['n_trajectories']} trajectories, {roll['n_frames']} frames, "
                  f"{_fmt(roll['dt_ps'])} ps between frames)" + _excluded(roll)]
    else:
        lines += ["- rollout: none (reference alone)"]
    lines += [f"- created: {metrics['created']}; topology matched one to one: {_fmt(metrics['match_topology'])}",
              f"- units: {metrics['units_note']}", ""]
    nf = metrics.get("noise_floor")
    lines += ["**Noise floor.** " + (
        "The *noise floor* column compares the first and second half (in time) of every reference trajectory with "
        "the same measures: a rollout error at or below it is within MD-vs-MD noise." if nf else
        "No noise floor: the reference trajectories are too short to split in halves (or noise_floor=false)."), ""]
    lines += ["Error measures: RDF max/mean |dg| over bins; Jensen-Shannon divergence (base 2, 0..1) between "
              "histograms (under/overflow as extra bins); relative errors |x - x_ref| / |x_ref| for scalars.", ""]
    for obs, entries in metrics["observables"].items():
        lines += [f"## {_TITLES.get(obs, obs)}", ""]
        lines += ["| key | reference | rollout | error | noise floor |", "|---|---|---|---|---|"]
        for key, e in entries.items():
            lines.append(f"| {key} | {_cells(e.get('reference'))} | {_cells(e.get('rollout'))} | "
                         f"{_cells(e.get('error'))} | {_cells(e.get('noise_floor'))} |")
        fig = _FIGURE_OF.get(obs)
        if fig in figures:
            lines += ["", f"![{obs}]({figures[fig]})"]
        lines.append("")
    if metrics.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in metrics["notes"]] + [""]
    timed = {k: v for k, v in metrics["timings_s"].items() if isinstance(v, dict)}
    lines += ["## Timings", "", "Seconds of wall time per observable (noise floor: both halves together).", "",
              "| observable | " + " | ".join(timed) + " |", "|---|" + "---|" * len(timed)]
    for o in sorted({o for t in timed.values() for o in t}):
        lines.append(f"| {o} | " + " | ".join(_fmt(t.get(o)) if t.get(o) is not None else "-"
                                            for t in timed.values()) + " |")
    extra = {k: v for k, v in metrics["timings_s"].items() if not isinstance(v, dict)}
    if extra:
        lines += ["", "Also: " + ", ".join(f"{k} {_fmt(float(v))} s" for k, v in extra.items()) + "."]
    lines += ["", f"Total wall time: {_fmt(metrics['wall_seconds'])} s.", ""]
    return "\n".join(lines)
