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

This module is the driver (:func:`validate_run`) and the command line; the pieces live in
:mod:`cgsim.reference.electrolyte_run` (the run directory and its frames),
:mod:`cgsim.reference.electrolyte_analysis` (density, diffusion, charges),
:mod:`cgsim.observables.shells` (first shells) and :mod:`cgsim.reference.nve` (the NVE run),
and are importable from here as before.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as u

from cgsim.errors import CgsimInputError
from cgsim.io_utils import json_finite, write_json_atomic
from cgsim.observables.shells import (  # noqa: F401 - re-exported
    MINIMUM_SEARCH_WIDTH,
    PEAK_SEARCH_MAX,
    first_peak_and_minimum,
    first_shell,
)
from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_analysis import (  # noqa: F401 - re-exported
    CHARGE_TOLERANCE,
    TARGETS,
    charge_summary,
    default_fit_window,
    density_summary,
    density_target,
    ion_self_diffusion,
    system_charges,
)
from cgsim.reference.electrolyte_run import (  # noqa: F401 - re-exported
    ProductionFrames,
    RunDirectory,
    latest_state,
    open_run,
    production_frames,
)
from cgsim.reference.nve import energy_drift_fit, nve_energy_drift, run_nve  # noqa: F401 - re-exported

#: Force-field atom types (``peo_litfsi.xml``).
LI_TYPE = "li_aqvist"
ETHER_O_TYPE = "opls_180"
TFSI_O_TYPE = "clp_OBT"
#: Default output file name, written inside the run directory.
VALIDATION_FILE = "validation.json"


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
        "targets": {**{k: list(v) for k, v in TARGETS.items()},
                    "density_g_cm3": list(density_target(comp.eo_li_ratio if comp.n_salt else None))},
    }

    # density from the NPT log
    blocks = (run.eq_progress or {}).get("blocks", [])
    try:
        dens = density_summary(blocks, int(density_blocks or s.window_blocks),
                               target=tuple(result["targets"]["density_g_cm3"]))
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
    out = {"density_in_target": _in(d.get("mean"), tuple(res["targets"]["density_g_cm3"])),
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
    dlo, dhi = res["targets"]["density_g_cm3"]
    if d.get("available", True):
        rows.append(("density (last NPT blocks)", f"{d['mean']:.4f} +- {_fmt(d['std'], '.4f')} g/cm3 "
                     f"({d['n_blocks']} block{'s' if d['n_blocks'] > 1 else ''}, {d['window_ps'][0]:g}-{d['window_ps'][1]:g} ps of NPT)",
                     f"{dlo:g}-{dhi:g}", d["in_target"]))
    else:
        rows.append(("density", d["reason"], f"{dlo:g}-{dhi:g}", None))
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
