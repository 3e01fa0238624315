"""Physical measures of an electrolyte reference run: density, ion self-diffusion, charges.

Pure functions on the numbers a run directory holds (:mod:`cgsim.reference.electrolyte_run`):
the density of the last NPT blocks (:func:`density_summary`), the self-diffusion of Li+ and
TFSI- with its MSD exponent (:func:`ion_self_diffusion`), and the charges of the OpenMM System
(:func:`charge_summary`). :data:`TARGETS` holds the acceptance ranges of issue 3. MD units
(nm, ps, amu, e); diffusion also in cm^2/s, density in g/cm^3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import openmm
import openmm.unit as u

from cgsim.errors import CgsimInputError
from cgsim.observables.diffusion import self_diffusion
from cgsim.observables.msd import check_unwrapped
from cgsim.observables.msd import msd as msd_fn
from cgsim.observables.polymer import molecule_centres
from cgsim.reference import electrolyte as el
from cgsim.units import NM2_PER_PS_TO_CM2_PER_S

#: Acceptance ranges of issue 3 (density g/cm^3, peak nm, coordination number, D cm^2/s).
TARGETS: dict[str, tuple[float, float]] = {
    "density_g_cm3": (1.1, 1.3),
    "li_o_ether_peak_nm": (0.19, 0.23),
    "li_o_ether_cn": (4.0, 7.0),
    "diffusion_literature_cm2_s": (1.0e-8, 1.0e-6),
}
#: Molar masses, g/mol: an EO repeat unit (C2H4O) and LiTFSI (LiC2F6NO4S2), from standard atomic weights.
EO_MOLAR_MASS = 44.053
LITFSI_MOLAR_MASS = 287.08
#: Density bracket of PEO melt and of LiTFSI dissolved in it, g/cm^3, used by :func:`density_target`.
#: PEO melts lie near 1.06-1.13 g/cm^3 at 340-400 K and crystalline LiTFSI near 1.9-2.0 g/cm^3; the
#: bracket is widened to 1.0-1.2 and 1.7-2.1 so that a force field's own density is not held to a
#: literature value it does not claim (an assumption of this check, stated, not a fitted number).
PEO_DENSITY_RANGE = (1.0, 1.2)
SALT_DENSITY_RANGE = (1.7, 2.1)


def density_target(eo_li_ratio: float | None) -> tuple[float, float]:
    """Accepted density range of a PEO + LiTFSI box at a given salt content, g/cm^3.

    Issue 3's fixed 1.1-1.3 g/cm^3 held for EO:Li 8-30; concentrated boxes are denser (the salt
    is ~57 % of the mass at EO:Li 5). The range here is ideal volume-additive mixing,
    ``1 / rho = w_PEO / rho_PEO + w_salt / rho_salt``, evaluated at the low ends and at the high
    ends of :data:`PEO_DENSITY_RANGE` and :data:`SALT_DENSITY_RANGE` (end groups ignored).

    Parameters
    ----------
    eo_li_ratio : float or None
        Ether oxygens per Li+ (> 0); None for a salt-free box.

    Returns
    -------
    (float, float)
        Lowest and highest accepted density, g/cm^3.
    """
    if eo_li_ratio is None:
        return PEO_DENSITY_RANGE
    if not eo_li_ratio > 0:
        raise CgsimInputError("eo_li_ratio", f"expected a positive number, got {eo_li_ratio!r}")
    w_salt = LITFSI_MOLAR_MASS / (LITFSI_MOLAR_MASS + eo_li_ratio * EO_MOLAR_MASS)
    lo = 1.0 / ((1 - w_salt) / PEO_DENSITY_RANGE[0] + w_salt / SALT_DENSITY_RANGE[0])
    hi = 1.0 / ((1 - w_salt) / PEO_DENSITY_RANGE[1] + w_salt / SALT_DENSITY_RANGE[1])
    return (round(lo, 3), round(hi, 3))


#: Largest total charge still called neutral, e.
CHARGE_TOLERANCE = 1.0e-6


def density_summary(blocks: Sequence[dict[str, Any]], n_last: int,
                    target: tuple[float, float] = TARGETS["density_g_cm3"]) -> dict[str, Any]:
    """Mean density over the last NPT blocks of an equilibration log.

    Parameters
    ----------
    blocks : sequence of dict
        Equilibration blocks in time order, each with ``stage`` (``"compress"`` / ``"npt"``),
        ``time`` (ps into its stage) and ``density`` (g/cm^3, block mean).
    n_last : int
        Number of final NPT blocks to average (fewer if fewer exist), >= 1.
    target : (float, float)
        Accepted range, g/cm^3, reported with the result.

    Returns
    -------
    dict
        ``mean``, ``std`` (of the block means, ddof=1; NaN for one block), ``sem``
        (std / sqrt(n), blocks treated as independent), ``n_blocks``, ``window_ps`` (start of
        the first and end of the last averaged block, ps into NPT), ``npt_time`` (ps),
        ``target``, ``in_target``.

    Raises
    ------
    CgsimInputError
        If the log holds no NPT block yet or ``n_last`` < 1.
    """
    if isinstance(n_last, bool) or not isinstance(n_last, int | np.integer) or n_last < 1:
        raise CgsimInputError("density.n_blocks", f"expected a positive integer, got {n_last!r}")
    npt = [b for b in blocks if b.get("stage") == "npt"]
    if not npt:
        raise CgsimInputError("density", "the equilibration log holds no NPT block at the target pressure yet")
    last = npt[-int(n_last):]
    start = float(npt[-len(last) - 1]["time"]) if len(npt) > len(last) else 0.0
    d = np.array([float(b["density"]) for b in last])
    std = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    mean = float(d.mean())
    return {"mean": mean, "std": std, "sem": std / math.sqrt(d.size) if d.size > 1 else float("nan"),
            "n_blocks": int(d.size), "window_ps": [start, float(last[-1]["time"])],
            "npt_time": float(npt[-1]["time"]), "target": list(target),
            "in_target": bool(target[0] <= mean <= target[1]), "units": "g/cm^3, ps"}


def default_fit_window(n_frames: int, dt: float, n_blocks: int) -> tuple[float, float]:
    """Default MSD fit window ``(0.05 T, 0.25 T)`` on whole frames, inside one block.

    ``T = (n_frames - 1) dt``; the start is at least one frame interval (skips the
    ballistic/caged start), the end at most the span of one of ``n_blocks`` blocks.

    Raises
    ------
    CgsimInputError
        If the trajectory is too short for a window of two lags inside one block.
    """
    total = (int(n_frames) - 1) * float(dt)
    block_span = (int(n_frames) // int(n_blocks) - 1) * float(dt)
    t0 = max(1, int(round(0.05 * total / dt))) * dt
    t1 = int(math.floor(min(0.25 * total, block_span) / dt + 1e-9)) * dt
    if t1 < t0 + dt - 1e-9:
        raise CgsimInputError("diffusion", f"{n_frames} production frames are too few for a diffusion fit with "
                                           f"{n_blocks} blocks; wait for more frames or use fewer blocks")
    return float(t0), float(t1)


def ion_self_diffusion(xyz: np.ndarray, dt: float, masses: np.ndarray, li_index: np.ndarray,
                       tfsi_molecules: Sequence[np.ndarray], *, box_length: float | None = None,
                       fit_window: Sequence[float] | None = None, n_blocks: int = 3,
                       remove_drift: bool = True) -> dict[str, Any]:
    """Self-diffusion of Li+ (atoms) and TFSI- (centres of mass) from the MSD.

    ``D = slope / 6`` of a least-squares line through ``MSD(t)`` over the lag window, MSD
    averaged over all time origins and ions (:func:`cgsim.observables.diffusion.self_diffusion`);
    error = standard error of the ``n_blocks`` values from contiguous blocks of the trajectory.
    The MSD exponent ``alpha = d ln MSD / d ln t`` fitted over the same window says whether
    the motion is diffusive there (alpha = 1).

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions of all atoms, shape (n_frames, n_atoms, 3), nm, every ``dt``.
    dt : float
        Time between frames, ps.
    masses : numpy.ndarray
        Atom masses, shape (n_atoms,), amu.
    li_index : numpy.ndarray
        Indices of the Li+ atoms.
    tfsi_molecules : sequence of numpy.ndarray
        Atom indices of each TFSI- anion.
    box_length : float, optional
        Cubic box edge, nm; when given, wrapped coordinates are refused.
    fit_window : (float, float), optional
        Lag window of the fit, ps; default :func:`default_fit_window`.
    n_blocks : int
        Blocks for the error (>= 2 for an error; 1 gives NaN).
    remove_drift : bool
        Subtract the centre of mass of *all* atoms in each frame first.

    Returns
    -------
    dict
        Per species (``"li"``, ``"tfsi"``): ``D_nm2_ps``, ``D_err_nm2_ps``, ``D_cm2_s``,
        ``D_err_cm2_s``, ``block_D_cm2_s``, ``msd_exponent``, ``msd_at_window_end_nm2``,
        ``n``; plus ``fit_window_ps``, ``n_blocks``, ``n_frames``, ``duration_ps``,
        ``com_drift_removed`` and ``lag_ps`` / ``msd_nm2`` curves (every frame up to the
        window end, for plotting).
    """
    arr = np.asarray(xyz, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CgsimInputError("diffusion.xyz", f"expected positions of shape (n_frames, n_atoms, 3), got {arr.shape}")
    m = np.asarray(masses, dtype=np.float64)
    li = np.asarray(li_index, dtype=np.int64)
    if li.size == 0 or len(tfsi_molecules) == 0:
        raise CgsimInputError("diffusion", "the system holds no ions: no Li+ or TFSI- to follow")
    if remove_drift:
        com = np.einsum("p,fpk->fk", m / m.sum(), arr)
        arr = arr - com[:, None, :]
    ids = np.full(arr.shape[1], -1, dtype=np.int64)
    for k, idx in enumerate(tfsi_molecules):
        ids[np.asarray(idx, dtype=np.int64)] = k
    tf_atoms = np.flatnonzero(ids >= 0)
    centres = molecule_centres(arr[:, tf_atoms], m[tf_atoms], ids[tf_atoms])
    pts = np.concatenate([arr[:, li], centres], axis=1)
    groups = ["li"] * li.size + ["tfsi"] * centres.shape[1]
    if fit_window is None:
        fit_window = default_fit_window(arr.shape[0], dt, n_blocks)
    if box_length is not None:
        # checked here, not through self_diffusion(box=...): its per-block box of shape (3, 3) for a
        # 3-frame block would be read as box vectors
        check_unwrapped(pts, np.full(3, float(box_length)), "diffusion.xyz")
    res = self_diffusion(pts, dt, fit_window, groups=groups, n_blocks=n_blocks)
    full = msd_fn(pts, dt, groups=groups)
    t = full.lag_times
    sel = (t >= fit_window[0] - 1e-9) & (t <= fit_window[1] + 1e-9)
    end = int(np.flatnonzero(sel)[-1])
    out: dict[str, Any] = {"fit_window_ps": [float(fit_window[0]), float(fit_window[1])], "n_blocks": int(n_blocks),
                           "n_frames": int(arr.shape[0]), "duration_ps": float((arr.shape[0] - 1) * dt),
                           "com_drift_removed": bool(remove_drift), "lag_ps": t[: end + 1].round(4).tolist()}
    curves = {}
    for key in ("li", "tfsi"):
        gi = full.groups.index(key)
        y = full.msd[gi]
        ok = sel & (y > 0) & (t > 0)
        alpha = float(np.polyfit(np.log(t[ok]), np.log(y[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")
        d, d_err = res.of(key)
        block = res.block_D[res.groups.index(key)]
        out[key] = {"D_nm2_ps": d, "D_err_nm2_ps": d_err, "D_cm2_s": d * NM2_PER_PS_TO_CM2_PER_S,
                    "D_err_cm2_s": d_err * NM2_PER_PS_TO_CM2_PER_S,
                    "block_D_cm2_s": (block * NM2_PER_PS_TO_CM2_PER_S).tolist(), "msd_exponent": alpha,
                    "msd_at_window_end_nm2": float(y[end]), "n": int(full.n_particles[gi])}
        curves[key] = y[: end + 1].round(6).tolist()
    out["msd_nm2"] = curves
    out["units"] = {"D": "nm^2/ps and cm^2/s", "window": "ps", "msd": "nm^2"}
    return out


def system_charges(system: openmm.System) -> np.ndarray:
    """Per-particle charges of a System's NonbondedForce, e, shape (n_particles,)."""
    forces = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    if not forces:
        raise CgsimInputError("system", "the System has no NonbondedForce: no charges to read")
    nb = forces[0]
    return np.array([nb.getParticleParameters(i)[0].value_in_unit(u.elementary_charge)
                     for i in range(nb.getNumParticles())])


def charge_summary(system: openmm.System, topology: openmm.app.Topology, charge_scale: float) -> dict[str, Any]:
    """Total and per-species charge of an electrolyte System (charges after the ionic scale).

    Parameters
    ----------
    system : openmm.System
        From :func:`cgsim.reference.electrolyte.create_system`.
    topology : openmm.app.Topology
        Its topology.
    charge_scale : float
        The ionic charge scale the System was built with (recorded, and the expected ion charge).

    Returns
    -------
    dict
        ``total`` (e), ``neutral`` (|total| <= :data:`CHARGE_TOLERANCE`), ``charge_scale``,
        per species ``{"peo": per-chain charges (max |q|), "li": ..., "tfsi": ...}`` as
        ``{"n", "charge_each_min", "charge_each_max"}``.
    """
    q = system_charges(system)
    out: dict[str, Any] = {"total": float(q.sum()), "charge_scale": float(charge_scale)}
    out["neutral"] = bool(abs(out["total"]) <= CHARGE_TOLERANCE)
    species = el.species_indices(topology)
    per_mol: dict[str, list[float]] = {k: [] for k in species}
    lookup = {int(i): k for k, idx in species.items() for i in idx}
    for mol in el.molecule_indices(topology):
        per_mol[lookup[int(mol[0])]].append(float(q[mol].sum()))
    for key, values in per_mol.items():
        v = np.array(values)
        out[key] = {"n": int(v.size), "charge_each_min": float(v.min()), "charge_each_max": float(v.max())}
    out["units"] = "e"
    return out
