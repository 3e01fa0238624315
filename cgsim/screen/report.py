"""Files of one screened composition: ``results.json``, ``report.md``, ``msd.png``, ``coordination.png``.

Every file is written atomically (:func:`cgsim.io_utils.atomic_path`), the set of them together
(:func:`cgsim.io_utils.committed_together`). Units: D cm^2/s, conductivity S/cm, time ps / ns,
wall time s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, file output only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cgsim.io_utils import atomic_path, committed_together, write_json_atomic, write_text_atomic  # noqa: E402
from cgsim.screen.transport import ReplicaTransport  # noqa: E402

#: report rows: result key, label
ROWS = (("D_li", "D(Li+)"), ("D_tfsi", "D(TFSI-)"), ("D_peo", "D(PEO segment)"),
        ("sigma_ne", "conductivity, Nernst-Einstein"), ("sigma_eh", "conductivity, Einstein-Helfand"),
        ("t_li_ne", "Li+ transference number (NE)"), ("t_li_eh", "Li+ transference number (EH)"),
        ("coordination", "Li+ coordination by PEO beads"))


def value_text(entry: dict[str, Any]) -> str:
    """``mean +- error unit`` (the error left out when it is not finite)."""
    mean, err = entry["mean"], entry["error"]
    text = f"{mean:.3g}" + (f" +- {err:.2g}" if math.isfinite(err) else "")
    return f"{text} {entry['unit']}" if entry["unit"] != "1" else text


def msd_figure(replicas: Sequence[ReplicaTransport], window: tuple[float, float], path: Path, title: str) -> None:
    """MSD of Li+, TFSI- and PEO beads (mean over replicas, band = their spread) against lag time."""
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    lags = replicas[0].lag_times
    for name in ("Li+", "TFSI-", "PEO"):
        curves = np.array([r.msd[name] for r in replicas if name in r.msd])
        if not curves.size:
            continue
        mean = curves.mean(0)
        ax.loglog(lags[1:], mean[1:], label=name)
        if len(curves) > 1:
            ax.fill_between(lags[1:], curves.min(0)[1:], curves.max(0)[1:], alpha=0.2)
    for w in window:
        ax.axvline(w, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (nm$^2$)")
    ax.set_title(f"{title}: learned model, {len(replicas)} replica(s); fit window dashed", fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def coordination_figure(series: Sequence[np.ndarray], dt_ns: float, burn_in: int, path: Path, title: str) -> None:
    """Li+ coordination against rollout time, every replica, burn-in shaded."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for k, s in enumerate(series):
        ax.plot(np.arange(len(s)) * dt_ns, s, lw=0.8, label=f"replica {k}")
    ax.axvspan(0, burn_in * dt_ns, color="grey", alpha=0.2, label="burn-in (discarded)")
    ax.set_xlabel("rollout time (ns)")
    ax.set_ylabel("PEO beads per Li+")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def markdown(r: dict[str, Any]) -> str:
    """The composition's ``report.md`` from its ``results.json`` content."""
    c, t, cost = r["composition"], r["timing"], r["cost"]
    lines = [f"# Screening: {r['label']}", "",
             f"PEO + LiTFSI: {c['n_chains']} chains of {c['chain_length']} EO units, {c['n_salt']} LiTFSI "
             f"(EO:Li {c['actual_eo_li']:.3g} asked {c['eo_li']:g}, {c['molality_mol_kg']:.3g} mol/kg of PEO) at "
             f"{r['temperature']:g} K, the training data's temperature. Model `{r['checkpoint']}`.", ""]
    if r["extrapolation"]:
        lines += [f"**Outside the training range** (allow_extrapolation=true): {r['extrapolation']}", ""]
    md = r["md"]
    lines += ["## Stages", "",
              f"- MD (OpenMM {md['platform']}, HMR {md['hydrogen_mass']} amu, {md['timestep']} ps step): "
              f"{md['n_atoms']} atoms, short NPT to {md['npt_density']:.4g} g/cm^3, NVT box at "
              f"{md['nvt_density']:.4g} g/cm^3 (interpolated from the training runs' densities), "
              f"{md['production_time']:g} ps recorded (the model's history); {md['ns_per_day']:.3g} ns/day.",
              f"- mapping: {r['mapping']['scheme']} {r['mapping']['options']} -> {r['mapping']['n_beads']} beads.",
              f"- rollout: {r['rollout']['replicas']} replica(s) x {r['rollout']['steps']} steps of "
              f"{r['rollout']['learned_dt']:g} ps: burn-in {r['burn_in_ns']:g} ns discarded, {r['time_ns']:g} ns analysed; "
              f"{r['rollout']['finished']} finished, {r['rollout']['redraws']} redraw(s).",
              f"- Li+ coordination (PEO beads within {r['coordination_cutoff']:.3g} nm): MD start "
              f"{r['coordination_md']:.3g}; analysed run {r['plateau']['first_half']:.3g} (first half) -> "
              f"{r['plateau']['second_half']:.3g} (second half): "
              + ("**plateaued**" if r["plateau"]["plateaued"] else "**NOT plateaued** (lengthen burn_in_ns)")
              + f" (change {100 * r['plateau']['relative_change']:.1f} %, tolerance "
              f"{100 * r['plateau']['tolerance']:.0f} %).", "",
              "## Transport (mean +- standard error over replicas)", "",
              f"Fit window {r['fit_window'][0]:g}-{r['fit_window'][1]:g} ps of the analysed run; conductivity with "
              "the mapped bead charges (ion charges scaled as in the training MD).", "",
              "| quantity | value |", "|---|---|"]
    lines += [f"| {label} | {value_text(r['transport'][key])} |" for key, label in ROWS]
    lines += ["", "## Cost", "", "| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.1f}{' (earlier run)' if k in t['skipped'] else ''} |" for k, v in t["stages"].items()]
    lines += [f"| total | {t['total']:.1f} |", "",
              f"All-atom MD of the same {r['time_ns']:g} ns at the measured {md['ns_per_day']:.3g} ns/day: "
              f"{cost['all_atom_seconds']:.4g} s (one trajectory; {cost['all_atom_seconds_all_replicas']:.4g} s for "
              f"{r['rollout']['replicas']}). Speed-up end to end {cost['speedup_end_to_end']:.3g}x "
              f"({cost['speedup_end_to_end_all_replicas']:.3g}x counting every replica), rollout only "
              f"{cost['speedup_rollout']:.3g}x.", "", "![MSD](msd.png)", "", "![coordination](coordination.png)", ""]
    return "\n".join(lines)


def write_composition(directory: Path, results: dict[str, Any], replicas: Sequence[ReplicaTransport],
                      dt_ns: float, burn_in: int, series: Sequence[np.ndarray], figures: bool) -> None:
    """Write results.json, report.md and (``figures``) msd.png and coordination.png together."""
    with committed_together():
        if figures:
            msd_figure(replicas, tuple(results["fit_window"]), directory / "msd.png", results["label"])
            coordination_figure(series, dt_ns, burn_in, directory / "coordination.png", results["label"])
        write_text_atomic(directory / "report.md", markdown(results))
        write_json_atomic(directory / "results.json", results)
