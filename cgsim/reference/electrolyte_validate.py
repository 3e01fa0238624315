"""Physical validation of an all-atom PEO + LiTFSI reference run (``cgsim generate system=electrolyte``).

Reads a finished or partial run directory **read-only** and reports, in MD units unless
stated (nm, ps, amu, kJ/mol, K, e; diffusion also in cm^2/s, density in g/cm^3):

- **density** after NPT at the run's pressure: mean and standard deviation of the block-mean
  densities of the last ``npt_window`` of the equilibration log (``.run/equilibration/
  progress.json``; one block = ``npt_block`` ps, each the mean of the volumes sampled every
  ``npt_sample`` ps);
- **Li-O(ether) and Li-O(TFSI) first shells**: g(r) between Li+ and the ether oxygens of PEO
  (force-field type ``opls_180``; the TFSI sulfonyl oxygens ``clp_OBT`` are counted
  separately) over the production frames, its first peak and first minimum, and the
  coordination number ``N(r_min)`` = mean number of those oxygens within the first minimum of
  one Li+ (:func:`cgsim.observables.rdf.coordination_number`);
- **self-diffusion** of Li+ (atoms) and TFSI- (centres of mass) from the Einstein relation
  ``MSD(t) = 6 D t + c`` fitted over a stated lag window, with a block-average error
  (:func:`cgsim.observables.diffusion.self_diffusion`) and the MSD exponent in the window
  (1 = diffusive; below 1 the ions are still sub-diffusive at those lags and D is an apparent
  value that a longer run and window would lower);
- **total charge** of the OpenMM System built with the run's settings (charges read back
  from its NonbondedForce, i.e. after the ionic charge scale);
- optionally the **energy drift of a short NVE run** (:func:`nve_energy_drift`) from the
  run's latest saved state.

Where the frames come from: a finished run has ``NAME.pdb`` + ``NAME.xtc`` (``dataset.json``
names them); a run in production has committed chunks ``.run/chunks/chunk_NNNNN.xtc`` (only
the first ``chunks_done`` of ``.run/progress.json`` are read, so a chunk being written is never
touched); a run still equilibrating has no frames (density and charge only).

Command line::

    python -m cgsim.reference.electrolyte_validate RUN_DIR [--output FILE] [--nve-time PS]

writes ``validation.json`` (default ``RUN_DIR/validation.json``) atomically and prints a table.
Target ranges in :data:`TARGETS` are those of issue 3 (the acceptance criteria of the
reference data), recorded next to each number; nothing is tuned to them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import openmm
import openmm.unit as u
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from cgsim.errors import CgsimInputError
from cgsim.io_utils import json_finite, write_json_atomic
from cgsim.observables.diffusion import self_diffusion
from cgsim.observables.msd import check_unwrapped
from cgsim.observables.msd import msd as msd_fn
from cgsim.observables.polymer import molecule_centres
from cgsim.observables.rdf import coordination_number, rdf
from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_generate import EQ_DIR, ElectrolyteSettings, settings_from_config
from cgsim.reference.platforms import select_platform
from cgsim.reference.runner import RUN_DIR, read_chunks
from cgsim.units import BOLTZMANN, NM2_PER_PS_TO_CM2_PER_S

#: Force-field atom types (``peo_litfsi.xml``).
LI_TYPE = "li_aqvist"
ETHER_O_TYPE = "opls_180"
TFSI_O_TYPE = "clp_OBT"
#: Default output file name, written inside the run directory.
VALIDATION_FILE = "validation.json"
#: Acceptance ranges of issue 3 (density g/cm^3, peak nm, coordination number, D cm^2/s).
TARGETS: dict[str, tuple[float, float]] = {
    "density_g_cm3": (1.1, 1.3),
    "li_o_ether_peak_nm": (0.19, 0.23),
    "li_o_ether_cn": (4.0, 7.0),
    "diffusion_literature_cm2_s": (1.0e-8, 1.0e-6),
}
#: First-peak search: the peak is the largest g(r) below this distance, nm.
PEAK_SEARCH_MAX = 0.35
#: The first minimum is searched between the peak and the peak plus this width, nm.
MINIMUM_SEARCH_WIDTH = 0.2
#: Largest total charge still called neutral, e.
CHARGE_TOLERANCE = 1.0e-6


# ------------------------------------------------------------------------------------------
# the run directory
# ------------------------------------------------------------------------------------------
@dataclass
class RunDirectory:
    """What a run directory holds (read once, nothing written).

    Attributes
    ----------
    path : pathlib.Path
        The run directory.
    identity : dict
        ``.run/identity.json``: the run's system config and step plan.
    settings : ElectrolyteSettings
        The validated settings rebuilt from the identity.
    stage : str
        ``"started"`` (nothing committed), ``"equilibration"``, ``"production"`` or ``"finished"``.
    eq_progress : dict or None
        ``.run/equilibration/progress.json`` (density log), None if absent.
    prod_progress : dict or None
        ``.run/progress.json`` of the production run, None if absent.
    name : str
        File stem of the run's trajectory (``NAME.pdb`` / ``NAME.xtc`` once finished).
    """

    path: Path
    identity: dict[str, Any]
    settings: ElectrolyteSettings
    stage: str
    eq_progress: dict[str, Any] | None
    prod_progress: dict[str, Any] | None
    name: str

    @property
    def box_length(self) -> float | None:
        """Edge of the production box, nm (None before the end of equilibration)."""
        if self.eq_progress and self.eq_progress.get("box_length"):
            return float(self.eq_progress["box_length"])
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CgsimInputError(str(path), f"cannot read it as JSON ({exc})") from None


def _settings_from_identity(identity: dict[str, Any], where: str, forcefield: str | Path | None) -> ElectrolyteSettings:
    system = dict(identity.get("system") or {})
    ff = system.get("forcefield")
    ff_path = el.forcefield_path(str(forcefield) if forcefield else None)
    if isinstance(ff, dict) and ff.get("sha256") and ff["sha256"] != el.file_sha256(ff_path):
        raise CgsimInputError(where, f"the run used force field {ff.get('file')} (sha256 {ff['sha256'][:12]}...), "
                                     f"which is not {ff_path}; pass the run's force-field file")
    system["forcefield"] = str(ff_path)
    system.setdefault("packmol", None)
    try:
        return settings_from_config(OmegaConf.create(system))
    except CgsimInputError as exc:
        raise CgsimInputError(where, f"identity does not describe a valid electrolyte run ({exc})") from None
    except Exception as exc:  # missing keys in a hand-edited identity
        raise CgsimInputError(where, f"identity does not describe an electrolyte run ({type(exc).__name__}: {exc})") from None


def open_run(directory: str | Path, forcefield: str | Path | None = None) -> RunDirectory:
    """Read the state of an electrolyte run directory without writing anything.

    Parameters
    ----------
    directory : path-like
        Output directory of ``cgsim generate system=electrolyte`` (finished or in progress).
    forcefield : path-like, optional
        Force-field XML the run used, if not the shipped one (checked against its sha256).

    Returns
    -------
    RunDirectory

    Raises
    ------
    CgsimInputError
        If the directory does not exist or holds no electrolyte run.
    """
    path = Path(directory)
    if not path.is_dir():
        raise CgsimInputError(str(path), "no such directory; expected the output directory of "
                                         "`cgsim generate system=electrolyte`")
    ident_path = path / RUN_DIR / "identity.json"
    if not ident_path.is_file():
        raise CgsimInputError(str(path), f"not an electrolyte run directory (no {RUN_DIR}/identity.json); expected "
                                         "the output directory of `cgsim generate system=electrolyte`")
    identity = _read_json(ident_path)
    name = (identity.get("system") or {}).get("name")
    if name != "electrolyte":
        raise CgsimInputError(str(path), f"holds a {name!r} run, expected an electrolyte run (system=electrolyte)")
    settings = _settings_from_identity(identity, str(ident_path), forcefield)
    eq_path = path / RUN_DIR / EQ_DIR / "progress.json"
    prod_path = path / RUN_DIR / "progress.json"
    eq = _read_json(eq_path) if eq_path.is_file() else None
    prod = _read_json(prod_path) if prod_path.is_file() else None
    file_name = settings.file_name
    if (path / "dataset.json").is_file():
        stage = "finished"
        file_name = _read_json(path / "dataset.json")["molecules"][0]["name"]
    elif prod is not None:
        stage = "production"
    elif eq is not None:
        stage = "equilibration"
    else:
        stage = "started"
    return RunDirectory(path=path, identity=identity, settings=settings, stage=stage, eq_progress=eq,
                        prod_progress=prod, name=file_name)


@dataclass
class ProductionFrames:
    """Recorded NVT production frames of a run.

    Attributes
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_atoms, 3), nm (XTC precision, 1e-3 nm).
    times : numpy.ndarray
        Time of each frame from the start of production, shape (n_frames,), ps.
    box_length : float
        Cubic box edge, nm (constant in NVT).
    source : str
        Where they were read (``NAME.xtc`` or ``.run/chunks (k of n chunks)``).
    partial : bool
        True if the run has not finished (frames from committed chunks).
    """

    xyz: np.ndarray
    times: np.ndarray
    box_length: float
    source: str
    partial: bool

    @property
    def dt(self) -> float:
        """Time between frames, ps."""
        return float(self.times[1] - self.times[0]) if len(self.times) > 1 else float("nan")


def production_frames(run: RunDirectory, stride: int = 1) -> ProductionFrames:
    """The production frames of a run: the final trajectory, or the committed chunks of a partial run.

    Parameters
    ----------
    run : RunDirectory
        From :func:`open_run`.
    stride : int
        Keep every ``stride``-th frame (>= 1).

    Returns
    -------
    ProductionFrames

    Raises
    ------
    CgsimInputError
        If the run has no production frames yet, or its files do not match its identity.
    """
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise CgsimInputError("stride", f"expected a positive integer, got {stride!r}")
    n_atoms = run.settings.composition.n_atoms
    if run.stage == "finished":
        xtc, pdb = run.path / f"{run.name}.xtc", run.path / f"{run.name}.pdb"
        for f in (xtc, pdb):
            if not f.is_file():
                raise CgsimInputError(str(f), "missing; the finished run's dataset.json names it")
        traj = md.load(str(xtc), top=str(pdb))
        xyz, times = traj.xyz, traj.time.astype(np.float64)
        box = float(traj.unitcell_lengths[0, 0]) if traj.unitcell_lengths is not None else run.box_length
        source, partial = xtc.name, False
    else:
        done = int((run.prod_progress or {}).get("chunks_done", 0))
        if done == 0 or run.box_length is None:
            where = "NVT equilibration" if run.stage == "production" else _stage_text(run)
            raise CgsimInputError(str(run.path), f"no production frames yet (run is in {where}); RDFs and diffusion "
                                                 "need the NVT production, wait for .run/chunks/ to fill")
        try:
            xyz, times, _temps = read_chunks(run.path, done)
        except (FileNotFoundError, OSError) as exc:
            raise CgsimInputError(str(run.path / RUN_DIR / "chunks"), f"a committed chunk is missing ({exc}); the run "
                                                                      "may have finished meanwhile: run again") from None
        times = times.astype(np.float64)
        box = run.box_length
        source, partial = f"{RUN_DIR}/chunks ({done} committed chunks)", True
    if xyz.shape[1] != n_atoms:
        raise CgsimInputError(source, f"frames hold {xyz.shape[1]} atoms, the run's composition {n_atoms}")
    if box is None:
        raise CgsimInputError(str(run.path), "no box length recorded for the production frames")
    return ProductionFrames(xyz=np.asarray(xyz[::stride], dtype=np.float64), times=times[::stride],
                            box_length=float(box), source=source, partial=partial)


def _stage_text(run: RunDirectory) -> str:
    eq = run.eq_progress
    if not eq:
        return "its first stage (nothing committed)"
    stage = eq.get("stage")
    steps = eq.get("steps", {})
    t = steps.get(stage, 0) * run.settings.timestep if stage in ("compress", "npt") else 0.0
    return {"minimize": "minimisation", "compress": f"compression, {t:g} ps done",
            "npt": f"NPT equilibration, {t:g} ps done"}.get(stage, f"equilibration stage {stage!r}")


# ------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------
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


def _smooth(g: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return g
    kernel = np.ones(int(width)) / int(width)
    padded = np.pad(g, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def first_peak_and_minimum(r: np.ndarray, g: np.ndarray, *, peak_max: float = PEAK_SEARCH_MAX,
                           min_width: float = MINIMUM_SEARCH_WIDTH, smooth: int = 3) -> tuple[int, int]:
    """Bins of the first peak and the first minimum of a g(r).

    The peak is found as the largest g below ``peak_max`` on g smoothed by a ``smooth``-bin
    running mean (so a single noisy bin does not decide), then moved to the largest raw g
    within ``smooth // 2`` bins of it (smoothing must not shift a sharp peak). The minimum is
    found the same way as the smallest g in ``(r_peak, r_peak + min_width]`` (the first such
    bin: for a first shell followed by a gap of zeros it is the start of the gap, which leaves
    the coordination number unchanged).

    Parameters
    ----------
    r : numpy.ndarray
        Bin centres, shape (n_bins,), nm, increasing.
    g : numpy.ndarray
        g(r), shape (n_bins,).
    peak_max : float
        Upper end of the peak search, nm.
    min_width : float
        Width of the minimum search after the peak, nm.
    smooth : int
        Running-mean width in bins (1 = none).

    Returns
    -------
    (int, int)
        Bin index of the peak and of the minimum.

    Raises
    ------
    CgsimInputError
        If g is zero everywhere below ``peak_max`` or nothing lies after the peak.
    """
    r = np.asarray(r, dtype=float)
    g = np.asarray(g, dtype=float)
    if r.shape != g.shape or r.ndim != 1:
        raise CgsimInputError("first_peak.g", f"expected r and g of the same 1-d shape, got {r.shape} and {g.shape}")
    gs = _smooth(g, int(smooth))
    search = np.flatnonzero(r <= peak_max)
    if search.size == 0 or not np.any(gs[search] > 0):
        raise CgsimInputError("first_peak.g", f"g(r) is zero below {peak_max:g} nm: no first shell")
    half = max(0, int(smooth) // 2)
    i_peak = int(search[np.argmax(gs[search])])
    near = np.intersect1d(search, np.arange(i_peak - half, i_peak + half + 1))
    i_peak = int(near[np.argmax(g[near])])  # the raw maximum next to the smoothed one
    after = np.flatnonzero((r > r[i_peak]) & (r <= r[i_peak] + min_width))
    if after.size == 0:
        raise CgsimInputError("first_peak.g", f"no bins after the peak at {r[i_peak]:g} nm to find the first minimum")
    i_min = int(after[np.argmin(gs[after])])
    near = np.intersect1d(after, np.arange(i_min - half, i_min + half + 1))
    i_min = int(near[np.argmin(g[near])])
    return i_peak, i_min


def first_shell(xyz: np.ndarray, box_length: float, selection_a: np.ndarray, selection_b: np.ndarray, *,
                names: tuple[str, str] = ("A", "B"), r_max: float = 1.0, bin_width: float = 0.005,
                peak_max: float = PEAK_SEARCH_MAX, min_width: float = MINIMUM_SEARCH_WIDTH,
                smooth: int = 3) -> dict[str, Any]:
    """g(r) between two selections, its first peak, first minimum and coordination number.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions (wrapped or not), shape (n_frames, n_atoms, 3), nm.
    box_length : float
        Cubic box edge, nm.
    selection_a, selection_b : numpy.ndarray
        Atom indices of the centres (e.g. Li+) and of the neighbours (e.g. ether O).
    names : tuple of str
        Names of the two selections, kept in the result.
    r_max : float
        Range of the RDF, nm; cut to half the box.
    bin_width : float
        Bin width, nm.
    peak_max, min_width, smooth
        As in :func:`first_peak_and_minimum`.

    Returns
    -------
    dict
        ``peak_r`` (nm, bin centre), ``peak_g``, ``min_r`` (nm), ``min_g``, ``cn`` (mean number
        of B within ``min_r`` of an A), ``r_max``, ``bin_width``, ``n_frames``, ``n_a``,
        ``n_b``, and ``r`` / ``g`` up to 0.8 nm for plotting.
    """
    if not (np.isfinite(bin_width) and bin_width > 0):
        raise CgsimInputError("first_shell.bin_width", f"expected a positive width, got {bin_width!r}")
    r_max = min(float(r_max), 0.5 * float(box_length))
    n_bins = int(math.floor(r_max / bin_width + 1e-9))
    if n_bins < 2:
        raise CgsimInputError("first_shell.bin_width", f"{bin_width:g} nm leaves fewer than 2 bins below {r_max:g} nm")
    res = rdf(xyz, np.full(3, float(box_length)), selection_a=selection_a, selection_b=selection_b,
              r_max=min(n_bins * bin_width, r_max), n_bins=n_bins, names=names)
    r = res.r
    i_peak, i_min = first_peak_and_minimum(r, res.g, peak_max=peak_max, min_width=min_width, smooth=smooth)
    cn = coordination_number(res, float(r[i_min]))
    keep = r <= 0.8
    return {"pair": list(names), "peak_r": float(r[i_peak]), "peak_g": float(res.g[i_peak]),
            "min_r": float(r[i_min]), "min_g": float(res.g[i_min]), "cn": float(cn),
            "r_max": float(res.edges[-1]), "bin_width": float(res.edges[1] - res.edges[0]),
            "n_frames": int(res.n_frames), "n_a": int(np.size(selection_a)), "n_b": int(np.size(selection_b)),
            "r": r[keep].round(5).tolist(), "g": res.g[keep].round(4).tolist(), "units": "nm"}


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


# ------------------------------------------------------------------------------------------
# NVE energy drift
# ------------------------------------------------------------------------------------------
def energy_drift_fit(times: np.ndarray, total: np.ndarray, kinetic: np.ndarray, n_atoms: int, dof: int,
                     temperature: float) -> dict[str, Any]:
    """Linear drift and fluctuation of the total energy of an NVE run.

    Parameters
    ----------
    times : numpy.ndarray
        Sample times, shape (n,), ps.
    total, kinetic : numpy.ndarray
        Total and kinetic energy, shape (n,), kJ/mol.
    n_atoms : int
        Atoms in the system.
    dof : int
        Degrees of freedom (3 n_atoms - constraints - 3 with the centre-of-mass motion removed).
    temperature : float
        Reference temperature for the kT-scaled drift, K.

    Returns
    -------
    dict
        ``drift_kj_mol_ns`` (slope of a least-squares line, whole system), ``drift_stderr_kj_mol_ns``
        (its ordinary least-squares standard error; samples are correlated, so a lower bound), ``drift_per_atom``
        and ``drift_per_dof`` (kJ/mol/ns), ``drift_kT_per_dof_ns`` (per degree of freedom in
        units of kT), ``total_energy_std`` (kJ/mol, about the line), ``kinetic_energy_std``,
        ``relative_fluctuation`` = std(E_total about the line) / std(E_kinetic) (dimensionless;
        << 1 for a well-integrated run), ``mean_temperature`` (K).
    """
    t = np.asarray(times, dtype=float)
    e = np.asarray(total, dtype=float)
    k = np.asarray(kinetic, dtype=float)
    if t.size < 3 or not (e.shape == k.shape == t.shape):
        raise CgsimInputError("nve.samples", f"expected >= 3 energy samples of equal length, got {t.size}")
    slope, intercept = np.polyfit(t, e, 1)
    resid = e - (slope * t + intercept)
    drift = float(slope) * 1000.0  # kJ/mol/ps -> kJ/mol/ns
    tc = t - t.mean()
    stderr = float(np.sqrt(resid.var(ddof=2) / (tc @ tc))) * 1000.0
    k_std = float(k.std())
    return {"drift_kj_mol_ns": drift, "drift_stderr_kj_mol_ns": stderr,
            "drift_per_atom": drift / n_atoms, "drift_per_dof": drift / dof,
            "drift_kT_per_dof_ns": drift / dof / (BOLTZMANN * temperature),
            "total_energy_std": float(resid.std()), "kinetic_energy_std": k_std,
            "relative_fluctuation": float(resid.std()) / k_std if k_std > 0 else float("nan"),
            "energy_change": float(e[-1] - e[0]), "mean_temperature": float(2.0 * k.mean() / (dof * BOLTZMANN)),
            "units": "kJ/mol/ns, kJ/mol, K"}


def run_nve(system: openmm.System, positions: np.ndarray, box_length: float, timestep: float, time_ps: float, *,
            velocities: np.ndarray | None = None, temperature: float = 400.0, sample_steps: int = 10,
            platform: str = "CPU", threads: int = 1, seed: int = 0, progress: bool = True,
            desc: str = "NVE") -> dict[str, Any]:
    """Integrate a System in NVE (velocity Verlet) and record its energies.

    Parameters
    ----------
    system : openmm.System
        The System, without thermostat or barostat forces.
    positions : numpy.ndarray
        Start positions, shape (n_atoms, 3), nm.
    box_length : float
        Cubic box edge, nm.
    timestep : float
        Step, ps.
    time_ps : float
        Length of the run, ps (> 0).
    velocities : numpy.ndarray, optional
        Start velocities, shape (n_atoms, 3), nm/ps; drawn at ``temperature`` if None.
    temperature : float
        K, for drawn velocities and the kT-scaled drift.
    sample_steps : int
        Steps between energy samples.
    platform : str
        OpenMM platform name (``"CPU"``, ``"CUDA"``, ...).
    threads : int
        CPU threads (CPU platform).
    seed : int
        Seed of drawn velocities.
    progress : bool
        Show a progress bar.
    desc : str
        Label of the progress bar.

    Returns
    -------
    dict
        :func:`energy_drift_fit` plus ``time_ps``, ``timestep``, ``steps``, ``n_atoms``, ``dof``,
        ``n_constraints``, ``constraint_tolerance``, ``integrator``, ``platform``, ``threads``,
        ``velocities`` (``"from state"`` / ``"drawn at T"``), ``wall_seconds`` and the sampled
        series ``t`` / ``e_total`` / ``e_kinetic``.
    """
    if not (isinstance(time_ps, int | float) and math.isfinite(time_ps) and time_ps > 0):
        raise CgsimInputError("nve.time", f"expected a positive time in ps, got {time_ps!r}")
    n_steps = int(round(time_ps / timestep))
    sample_steps = max(1, min(int(sample_steps), max(1, n_steps // 3)))
    n_samples = n_steps // sample_steps
    if n_samples < 3:
        raise CgsimInputError("nve.time", f"{time_ps} ps is fewer than 3 samples of {sample_steps} steps; run longer")
    platform_obj, props, platform = select_platform(platform, threads)
    integrator = openmm.VerletIntegrator(timestep * u.picosecond)
    context = openmm.Context(system, integrator, platform_obj, props)
    context.setPeriodicBoxVectors(*(np.eye(3) * float(box_length)))
    context.setPositions(np.asarray(positions) * u.nanometer)
    context.applyConstraints(integrator.getConstraintTolerance())
    if velocities is None:
        context.setVelocitiesToTemperature(temperature * u.kelvin, int(seed))
        vel_source = "drawn at T"
    else:
        context.setVelocities(np.asarray(velocities) * u.nanometer / u.picosecond)
        vel_source = "from state"
    context.applyVelocityConstraints(integrator.getConstraintTolerance())
    n_atoms = system.getNumParticles()
    has_cmm = any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
    dof = 3 * n_atoms - system.getNumConstraints() - (3 if has_cmm else 0)
    t, e_tot, e_kin = [], [], []

    def sample(step: int) -> None:
        st = context.getState(getEnergy=True)
        k = st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        p = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        if not (math.isfinite(k) and math.isfinite(p)):
            raise CgsimInputError("nve", f"energy became NaN after {step * timestep:g} ps of NVE")
        t.append(step * timestep)
        e_tot.append(k + p)
        e_kin.append(k)

    t_start = time.perf_counter()
    sample(0)
    bar = tqdm(total=n_samples * sample_steps, unit="step", disable=not progress, desc=desc, dynamic_ncols=True,
               mininterval=2.0)
    try:
        for s in range(1, n_samples + 1):
            integrator.step(sample_steps)
            sample(s * sample_steps)
            bar.update(sample_steps)
            if s % 50 == 0 and len(t) >= 3:
                slope = np.polyfit(t, e_tot, 1)[0] * 1000.0
                bar.set_postfix_str(f"drift {slope / n_atoms:+.3g} kJ/mol/ns/atom")
    finally:
        bar.close()
    out = energy_drift_fit(np.array(t), np.array(e_tot), np.array(e_kin), n_atoms, dof, temperature)
    out.update({"time_ps": float(n_samples * sample_steps * timestep), "timestep": float(timestep),
                "steps": int(n_samples * sample_steps), "sample_steps": int(sample_steps), "n_atoms": int(n_atoms),
                "dof": int(dof), "n_constraints": int(system.getNumConstraints()),
                "constraint_tolerance": float(integrator.getConstraintTolerance()), "integrator": "VerletIntegrator",
                "platform": platform, "precision": props.get("Precision"),
                "threads": int(threads) if platform in ("CPU", "OpenCL") else None,
                "velocities": vel_source, "wall_seconds": time.perf_counter() - t_start,
                "t": np.round(t, 4).tolist(), "e_total": np.round(e_tot, 3).tolist(),
                "e_kinetic": np.round(e_kin, 3).tolist()})
    return out


def latest_state(run: RunDirectory) -> tuple[np.ndarray, np.ndarray | None, float, str]:
    """The run's latest saved configuration: positions, velocities, box edge and where it came from.

    Order: the production checkpoint (``.run/state_*.xml``), else the last equilibration
    checkpoint (``.run/equilibration/state_*.xml``, NPT box), else (a finished run keeps no
    state) the last frame of ``NAME.xtc`` (XTC precision, 1e-3 nm) without velocities, which
    :func:`run_nve` then draws at the run temperature.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray or None, float, str)
        Positions (n_atoms, 3) nm, velocities (n_atoms, 3) nm/ps or None, cubic box edge nm,
        and a description of the source.

    Raises
    ------
    CgsimInputError
        If the run has no saved configuration yet.
    """
    candidates = []
    if run.stage != "finished":
        if run.prod_progress and run.prod_progress.get("state"):
            candidates.append(run.path / RUN_DIR / run.prod_progress["state"])
        if run.eq_progress and run.eq_progress.get("state"):
            candidates.append(run.path / RUN_DIR / EQ_DIR / run.eq_progress["state"])
    for path in candidates:
        try:
            text = path.read_text()
        except FileNotFoundError:  # replaced by a newer commit meanwhile
            continue
        state = openmm.XmlSerializer.deserialize(text)
        pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        try:
            vel = state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
        except openmm.OpenMMException:
            vel = None
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
        if not np.allclose(box, np.diag(np.diag(box))) or not np.allclose(np.diag(box), box[0, 0]):
            raise CgsimInputError(str(path), "expected a cubic box")
        return np.asarray(pos), None if vel is None else np.asarray(vel), float(box[0, 0]), \
            f"{path.relative_to(run.path)} (state time {state.getTime().value_in_unit(u.picosecond):.1f} ps)"
    if run.stage == "finished" or (run.prod_progress and run.prod_progress.get("chunks_done")):
        frames = production_frames(run)
        return frames.xyz[-1], None, frames.box_length, f"last frame of {frames.source} (t = {frames.times[-1]:g} ps)"
    raise CgsimInputError(str(run.path), f"no saved state yet (run is in {_stage_text(run)}); nothing to run NVE from")


def nve_energy_drift(directory: str | Path, time_ps: float = 10.0, *, platform: str = "CPU", threads: int = 1,
                     sample_steps: int = 10, seed: int = 0, progress: bool = True,
                     forcefield: str | Path | None = None) -> dict[str, Any]:
    """Energy drift of a short NVE run from a run's latest saved state.

    The System is rebuilt exactly as the run builds it (:func:`cgsim.reference.electrolyte.
    create_system` with the settings of its ``identity.json``: PME, cutoff, charge scale,
    HBonds constraints, hydrogen mass), the box is that of the state, and it is integrated
    with a :class:`openmm.VerletIntegrator` at the run's time step (2 fs by default).
    Nothing is written.

    Parameters
    ----------
    directory : path-like
        The run directory (finished or in progress).
    time_ps : float
        NVE length, ps.
    platform, threads, sample_steps, seed, progress
        As in :func:`run_nve`.
    forcefield : path-like, optional
        As in :func:`open_run`.

    Returns
    -------
    dict
        :func:`run_nve`'s result plus ``state`` (where the start came from).
    """
    run = open_run(directory, forcefield)
    pos, vel, box, source = latest_state(run)
    s = run.settings
    top = el.build_topology(s.composition, box_length=box)
    es = el.create_system(top, **s.system_kwargs())
    out = run_nve(es.system, pos, box, s.timestep, time_ps, velocities=vel, temperature=s.temperature,
                  sample_steps=sample_steps, platform=platform, threads=threads, seed=seed, progress=progress,
                  desc=f"NVE {run.path.name}")
    out["state"] = source
    out["box_length"] = box
    return out


# ------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------
def _molecules_of(topology: openmm.app.Topology, species: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    if key not in species:
        return []
    wanted = set(species[key].tolist())
    return [m for m in el.molecule_indices(topology) if int(m[0]) in wanted]


def validate_run(directory: str | Path, output: str | Path | None = None, *, fit_window: Sequence[float] | None = None,
                 n_blocks: int = 3, stride: int = 1, bin_width: float = 0.005, density_blocks: int | None = None,
                 nve_time: float = 0.0, platform: str = "CPU", threads: int = 1, require_production: bool = False,
                 write: bool = True, progress: bool = True, forcefield: str | Path | None = None) -> dict[str, Any]:
    """Physical validation of an electrolyte run; writes ``validation.json``.

    Parameters
    ----------
    directory : path-like
        The run directory (read only).
    output : path-like, optional
        JSON file to write; default ``directory/validation.json``.
    fit_window : (float, float), optional
        MSD fit window, ps; default :func:`default_fit_window`.
    n_blocks : int
        Blocks for the diffusion error.
    stride : int
        Use every ``stride``-th production frame for RDFs (diffusion uses every frame).
    bin_width : float
        RDF bin width, nm.
    density_blocks : int, optional
        NPT blocks averaged for the density; default the run's ``npt_window / npt_block``.
    nve_time : float
        Length of the NVE drift run, ps (0 = skip).
    platform, threads
        OpenMM platform and CPU threads of the NVE run.
    require_production : bool
        Raise if the run has no production frames (else RDFs and diffusion are reported as
        unavailable).
    write : bool
        Write the JSON file.
    progress : bool
        Progress bar of the NVE run.
    forcefield : path-like, optional
        As in :func:`open_run`.

    Returns
    -------
    dict
        ``run`` (directory, stage, composition, settings), ``density``, ``charge``,
        ``li_o_ether``, ``li_o_tfsi``, ``diffusion``, ``nve`` (each a dict, or
        ``{"available": False, "reason": ...}``), ``checks`` and ``output``.

    Raises
    ------
    CgsimInputError
        On a missing or foreign directory, or no production frames with ``require_production``.
    """
    run = open_run(directory, forcefield)
    s = run.settings
    comp = s.composition
    result: dict[str, Any] = {
        "format": "cgsim-electrolyte-validation",
        "run": {"directory": str(run.path), "stage": run.stage, "name": run.name,
                "composition": {"n_chains": comp.n_chains, "chain_length": comp.chain_length, "n_salt": comp.n_salt,
                                "eo_li_ratio": comp.eo_li_ratio if comp.n_salt else None, "n_atoms": comp.n_atoms},
                "temperature": s.temperature, "pressure": s.pressure, "charge_scale": s.charge_scale,
                "timestep": s.timestep, "production_time_planned": s.production_steps * s.timestep,
                "save_interval": s.save_steps * s.timestep},
        "targets": {k: list(v) for k, v in TARGETS.items()},
    }

    # density from the NPT log
    blocks = (run.eq_progress or {}).get("blocks", [])
    try:
        dens = density_summary(blocks, int(density_blocks or s.window_blocks))
        dens.update({"stage": (run.eq_progress or {}).get("stage"), "converged": (run.eq_progress or {}).get("converged"),
                     "production_box_density": (run.eq_progress or {}).get("density")})
        result["density"] = dens
    except CgsimInputError as exc:
        result["density"] = {"available": False, "reason": exc.message}

    # charges of the System the run integrates
    box0 = run.box_length or el.box_length_for_density(float(el.masses(el.build_topology(comp)).sum()), s.pack_density)
    top = el.build_topology(comp, box_length=box0)
    es = el.create_system(top, **s.system_kwargs())
    result["charge"] = charge_summary(es.system, top, s.charge_scale)
    masses = np.array([es.system.getParticleMass(i).value_in_unit(u.dalton) for i in range(es.system.getNumParticles())])

    # structure and dynamics from the production frames
    try:
        frames = production_frames(run)
    except CgsimInputError as exc:
        if require_production:
            raise
        frames = None
        reason = exc.message
    types = np.array(es.atom_types)
    li = np.flatnonzero(types == LI_TYPE)
    o_eth = np.flatnonzero(types == ETHER_O_TYPE)
    o_tfsi = np.flatnonzero(types == TFSI_O_TYPE)
    if frames is None:
        for key in ("li_o_ether", "li_o_tfsi", "diffusion"):
            result[key] = {"available": False, "reason": reason}
    else:
        result["frames"] = {"source": frames.source, "partial": frames.partial, "n_frames": int(len(frames.times)),
                            "dt_ps": frames.dt, "time_ps": [float(frames.times[0]), float(frames.times[-1])],
                            "box_length": frames.box_length}
        sub = frames.xyz[::stride]
        for key, sel, name in (("li_o_ether", o_eth, "O(ether)"), ("li_o_tfsi", o_tfsi, "O(TFSI)")):
            if li.size == 0 or sel.size == 0:
                result[key] = {"available": False, "reason": "no Li+ or no such oxygens in the system"}
                continue
            try:
                result[key] = first_shell(sub, frames.box_length, li, sel, names=("Li+", name), bin_width=bin_width)
            except CgsimInputError as exc:
                result[key] = {"available": False, "reason": exc.message}
        if li.size == 0:
            result["diffusion"] = {"available": False, "reason": "the system holds no salt"}
        else:
            try:
                species = el.species_indices(top)
                result["diffusion"] = ion_self_diffusion(frames.xyz, frames.dt, masses, li,
                                                         _molecules_of(top, species, "tfsi"),
                                                         box_length=frames.box_length, fit_window=fit_window,
                                                         n_blocks=n_blocks)
            except CgsimInputError as exc:
                result["diffusion"] = {"available": False, "reason": exc.message}

    if nve_time and nve_time > 0:
        result["nve"] = nve_energy_drift(run.path, nve_time, platform=platform, threads=threads, progress=progress,
                                         forcefield=forcefield)
    else:
        result["nve"] = {"available": False, "reason": "not run (--nve-time 0)"}
    result["checks"] = _checks(result)
    out_path = Path(output) if output is not None else run.path / VALIDATION_FILE
    result["output"] = str(out_path)
    if write:
        write_json_atomic(out_path, json_finite(result))
    return result


def _in(value: float | None, lo_hi: tuple[float, float]) -> bool | None:
    if value is None or not math.isfinite(value):
        return None
    return bool(lo_hi[0] <= value <= lo_hi[1])


def _checks(res: dict[str, Any]) -> dict[str, bool | None]:
    """Pass/fail of each issue-3 criterion (None = not measurable yet; D is informational)."""
    d = res.get("density", {})
    lo = res.get("li_o_ether", {})
    diff = res.get("diffusion", {})
    out = {"density_in_target": _in(d.get("mean"), TARGETS["density_g_cm3"]),
           "li_o_ether_peak_in_target": _in(lo.get("peak_r"), TARGETS["li_o_ether_peak_nm"]),
           "li_o_ether_cn_in_target": _in(lo.get("cn"), TARGETS["li_o_ether_cn"]),
           "total_charge_zero": res.get("charge", {}).get("neutral")}
    for key in ("li", "tfsi"):
        out[f"D_{key}_in_literature_range"] = _in(diff.get(key, {}).get("D_cm2_s"), TARGETS["diffusion_literature_cm2_s"])
    return out


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(res: dict[str, Any]) -> str:
    """A short text table of a :func:`validate_run` result."""
    r = res["run"]
    c = r["composition"]
    lines = [f"{r['directory']}: {c['n_chains']} x PEO{c['chain_length']} + {c['n_salt']} LiTFSI "
             f"({c['n_atoms']} atoms), {r['temperature']:g} K, stage {r['stage']}"]
    if "frames" in res:
        f = res["frames"]
        lines.append(f"  frames: {f['n_frames']} from {f['source']}, {f['time_ps'][0]:g}-{f['time_ps'][1]:g} ps"
                     + (" (PARTIAL run)" if f["partial"] else ""))
    rows = []
    d = res["density"]
    if d.get("available", True):
        rows.append(("density (last NPT blocks)", f"{d['mean']:.4f} +- {_fmt(d['std'], '.4f')} g/cm3 "
                     f"({d['n_blocks']} block{'s' if d['n_blocks'] > 1 else ''}, {d['window_ps'][0]:g}-{d['window_ps'][1]:g} ps of NPT)",
                     "1.1-1.3", d["in_target"]))
    else:
        rows.append(("density", d["reason"], "1.1-1.3", None))
    for key, label in (("li_o_ether", "Li-O(ether)"), ("li_o_tfsi", "Li-O(TFSI)")):
        sh = res[key]
        if sh.get("available", True):
            target, ok = "-", None
            if key == "li_o_ether":
                target = "0.19-0.23 nm, CN 4-7"
                ok = res["checks"]["li_o_ether_peak_in_target"] and res["checks"]["li_o_ether_cn_in_target"]
            rows.append((f"{label} first peak / CN", f"{sh['peak_r']:.4f} nm (g = {sh['peak_g']:.3g}), CN {sh['cn']:.2f} "
                         f"to r_min {sh['min_r']:.3f} nm", target, ok))
        else:
            rows.append((f"{label} first peak / CN", sh["reason"], "", None))
    diff = res["diffusion"]
    if diff.get("available", True):
        for key, label in (("li", "D(Li+)"), ("tfsi", "D(TFSI-) COM")):
            v = diff[key]
            rows.append((label, f"{_fmt(v['D_cm2_s'], '.3e')} +- {_fmt(v['D_err_cm2_s'], '.1e')} cm2/s "
                         f"(fit {diff['fit_window_ps'][0]:g}-{diff['fit_window_ps'][1]:g} ps, alpha {_fmt(v['msd_exponent'], '.2f')})",
                         "lit. 1e-8-1e-6", res["checks"][f"D_{key}_in_literature_range"]))
    else:
        rows.append(("diffusion", diff["reason"], "", None))
    ch = res["charge"]
    rows.append(("total charge", f"{ch['total']:.2e} e (ion scale {ch['charge_scale']:g})", "0", ch["neutral"]))
    nve = res["nve"]
    if nve.get("available", True):
        rows.append(("NVE drift", f"{nve['drift_per_atom']:+.3g} kJ/mol/ns/atom, {nve['drift_per_dof']:+.3g} per DOF, "
                     f"rel. fluct. {nve['relative_fluctuation']:.3g} ({nve['time_ps']:g} ps)", "report", None))
    width = max(len(x[0]) for x in rows)
    mark = {True: "ok", False: "OUT", None: ""}
    for name, value, target, ok in rows:
        lines.append(f"  {name:<{width}}  {value}" + (f"   [{target}: {mark[ok]}]" if target else ""))
    lines.append(f"  -> {res['output']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cgsim.reference.electrolyte_validate RUN_DIR [--output FILE] ...``; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m cgsim.reference.electrolyte_validate",
                                description="Physical validation of a PEO + LiTFSI reference run (read-only).")
    p.add_argument("run_dir", help="output directory of `cgsim generate system=electrolyte` (finished or running)")
    p.add_argument("--output", default=None, help="JSON file to write (default RUN_DIR/validation.json)")
    p.add_argument("--fit-window", nargs=2, type=float, default=None, metavar=("T0", "T1"),
                   help="MSD fit window in ps (default 0.05-0.25 of the production length)")
    p.add_argument("--blocks", type=int, default=3, help="blocks for the diffusion error (default 3)")
    p.add_argument("--stride", type=int, default=1, help="use every N-th frame for the RDFs")
    p.add_argument("--nve-time", type=float, default=0.0, help="also run N ps of NVE from the latest state (0 = skip)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the NVE run (default 1)")
    p.add_argument("--platform", default="CPU", help="OpenMM platform of the NVE run (default CPU)")
    p.add_argument("--require-production", action="store_true", help="fail if the run has no production frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        res = validate_run(args.run_dir, args.output, fit_window=args.fit_window, n_blocks=args.blocks,
                           stride=args.stride, nve_time=args.nve_time, platform=args.platform, threads=args.threads,
                           require_production=args.require_production, progress=not args.no_progress)
    except CgsimInputError as exc:
        print(f"electrolyte_validate: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
