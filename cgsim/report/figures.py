"""PNG figures overlaying reference, rollout and the reference's two halves (matplotlib Agg).

Each function draws one figure from :class:`cgsim.report.suite.Suite` objects and writes it
atomically; it returns the file name, or None when there is nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, file output only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cgsim.io_utils import atomic_path  # noqa: E402
from cgsim.report.suite import Suite  # noqa: E402

_STYLE = {
    "reference": {"color": "black", "lw": 1.8, "ls": "-"},
    "rollout": {"color": "tab:red", "lw": 1.5, "ls": "--"},
    "reference[first half]": {"color": "tab:blue", "lw": 0.9, "ls": ":"},
    "reference[second half]": {"color": "tab:green", "lw": 0.9, "ls": ":"},
}


def _style(label: str) -> dict[str, object]:
    return _STYLE.get(label, {"lw": 1.0})


def _grid(n: int) -> tuple[plt.Figure, np.ndarray]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _save(fig: plt.Figure, out: Path, name: str, dpi: int) -> str:
    try:
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return name


def _keyed_curves(suites: Sequence[Suite], attr: str, out: Path, name: str, dpi: int, xlabel: str, ylabel: str,
                  scale: float = 1.0, density: bool = True) -> str | None:
    keys = sorted({k for s in suites for k in getattr(s, attr)})
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    for ax, k in zip(axes, keys, strict=False):
        for s in suites:
            d = getattr(s, attr).get(k)
            if d is None:
                continue
            y = d.density / scale if density else d.g
            x = d.centers * scale if density else d.r
            ax.plot(x, y, label=s.label, **_style(s.label))
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    return _save(fig, out, name, dpi)


def rdf_figure(suites: Sequence[Suite], out: Path, dpi: int) -> str | None:
    """g(r) per bead-type pair."""
    return _keyed_curves(suites, "rdf", out, "rdf.png", dpi, "r (nm)", "g(r)", density=False)


def bond_figure(suites: Sequence[Suite], out: Path, dpi: int) -> str | None:
    """Bond-length distributions per bond type."""
    return _keyed_curves(suites, "bond_lengths", out, "bond_lengths.png", dpi, "bond length (nm)", "P (1/nm)")


def angle_figure(suites: Sequence[Suite], out: Path, dpi: int) -> str | None:
    """Bond-angle distributions per angle type, in degrees."""
    return _keyed_curves(suites, "bond_angles", out, "bond_angles.png", dpi, "angle (deg)", "P (1/deg)",
                         scale=180.0 / math.pi)


def size_figure(suites: Sequence[Suite], out: Path, dpi: int) -> str | None:
    """Distributions of Rg and of the end-to-end distance."""
    panels = [(a, t) for a, t in (("rg", "radius of gyration (nm)"), ("end_to_end", "end-to-end distance (nm)"))
              if any(getattr(s, a) is not None for s in suites)]
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (attr, title) in zip(axes, panels, strict=False):
        for s in suites:
            d = getattr(s, attr)
            if d is not None:
                ax.plot(d.centers, d.density, label=s.label, **_style(s.label))
        ax.set_xlabel(title)
        ax.set_ylabel("P (1/nm)")
    axes[0].legend(fontsize=7)
    return _save(fig, out, "chain_size.png", dpi)


def acf_figure(suites: Sequence[Suite], out: Path, dpi: int) -> str | None:
    """Autocorrelation of Rg^2 with the relaxation times in the legend."""
    if all(s.rg_acf is None for s in suites):
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for s in suites:
        a = s.rg_acf
        if a is not None:
            ax.plot(a.lag_times, a.acf, label=f"{s.label} (tau={a.tau:.3g} ps, {a.method})", **_style(s.label))
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("ACF of Rg^2")
    ax.legend(fontsize=7)
    return _save(fig, out, "rg_acf.png", dpi)


def msd_figure(suites: Sequence[Suite], out: Path, dpi: int, window: tuple[float, float]) -> str | None:
    """MSD per group on log axes, with the diffusion fit window shaded."""
    groups = sorted({g for s in suites if s.msd is not None for g in s.msd.groups})
    if not groups:
        return None
    fig, axes = _grid(len(groups))
    for ax, g in zip(axes, groups, strict=False):
        for s in suites:
            if s.msd is None or g not in s.msd.groups:
                continue
            t, y = s.msd.lag_times[1:], s.msd.of(g)[1:]
            ax.loglog(t, y, label=s.label, **_style(s.label))
        ax.axvspan(max(window[0], 1e-12), window[1], color="grey", alpha=0.15, lw=0)
        ax.set_title(g, fontsize=9)
        ax.set_xlabel("lag (ps)")
        ax.set_ylabel("MSD (nm^2)")
    axes[0].legend(fontsize=7)
    return _save(fig, out, "msd.png", dpi)


def contact_figure(reference: Suite, rollout: Suite | None, out: Path, dpi: int) -> str | None:
    """Contact map of the first trajectory: reference, rollout, and their difference."""
    if not reference.contact_maps:
        return None
    name = sorted(reference.contact_maps)[0]
    ref = reference.contact_maps[name].frequency
    roll = None if rollout is None else rollout.contact_maps.get(name)
    n = 1 if roll is None else 3
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    panels = [(ref, f"reference {name}", "viridis", (0, 1))]
    if roll is not None:
        panels += [(roll.frequency, "rollout", "viridis", (0, 1)), (roll.frequency - ref, "rollout - reference", "RdBu_r", (-1, 1))]
    for ax, (m, title, cmap, (lo, hi)) in zip(axes[0], panels, strict=True):
        im = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi, origin="lower")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("bead")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, out, "contact_map.png", dpi)


def conductivity_figure(suites: Sequence[Suite], out: Path, dpi: int, window: tuple[float, float]) -> str | None:
    """Mean-square displacement of the collective translational dipole (Einstein-Helfand)."""
    if all(not s.conductivity for s in suites):
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for s in suites:
        if s.conductivity:
            c = s.conductivity[0]
            ax.loglog(c.lag_times[1:], c.dipole_msd[1:], label=s.label, **_style(s.label))
    ax.axvspan(max(window[0], 1e-12), window[1], color="grey", alpha=0.15, lw=0)
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("<|dM|^2> (e^2 nm^2)")
    ax.legend(fontsize=7)
    return _save(fig, out, "conductivity.png", dpi)
