"""Options of a ``cgsim generate system=electrolyte`` run, validated into step counts.

:func:`settings_from_config` turns the ``system`` config group (``conf/system/electrolyte.yaml``)
into :class:`ElectrolyteSettings`, raising one line that names the option for every bad value.
Used by the run (:mod:`cgsim.reference.electrolyte_generate`) and by its read-only validation.
MD units (nm, ps, K, bar); times become whole numbers of time steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cgsim.errors import CgsimInputError
from cgsim.reference import electrolyte as el

#: Densities at which a box must still hold twice the cutoff (g/cm^3; above any PEO/LiTFSI).
_MAX_EXPECTED_DENSITY = 1.35


@dataclass(frozen=True)
class ElectrolyteSettings:
    """Validated options of a ``system=electrolyte`` run (MD units; times as step counts).

    Attributes
    ----------
    composition : Composition
        What is in the box.
    temperature, pressure : float
        K and bar.
    seed : int
        Seed of packing, velocities and thermostats.
    forcefield : pathlib.Path
        ForceField XML.
    timestep : float
        ps.
    compress_steps, block_steps, sample_steps, npt_min_steps, npt_max_steps, nvt_steps,
    production_steps, save_steps : int
        Step counts of the stages (see the module docstring).
    window_blocks : int
        NPT blocks per density window.
    file_name : str
        Stem of the output files.
    """

    composition: el.Composition
    temperature: float
    pressure: float
    seed: int
    charge_scale: float
    forcefield: Path
    cutoff: float
    ewald_tolerance: float
    dispersion_correction: bool
    constraints: str | None
    hydrogen_mass: float | None
    timestep: float
    friction: float
    production_friction: float
    pack_density: float
    pack_tolerance: float
    packmol: str | None
    minimize_tolerance: float
    minimize_max_iterations: int
    compress_pressure: float
    compress_steps: int
    compress_barostat_interval: int
    barostat_interval: int
    block_steps: int
    sample_steps: int
    window_blocks: int
    npt_min_steps: int
    npt_max_steps: int
    density_tolerance: float
    nvt_steps: int
    production_steps: int
    save_steps: int
    file_name: str
    packmol_nloop: int | None = None
    #: NVT box density, g/cm^3; None = the mean NPT density of the last window
    nvt_density: float | None = None

    def system_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`cgsim.reference.electrolyte.create_system`."""
        return {"forcefield_file": self.forcefield, "cutoff": self.cutoff, "charge_scale": self.charge_scale,
                "constraints": self.constraints, "hydrogen_mass": self.hydrogen_mass,
                "ewald_tolerance": self.ewald_tolerance, "dispersion_correction": self.dispersion_correction}


def _number(sc: DictConfig, key: str, lo: float = 0.0, strict: bool = True, hi: float | None = None,
            allow_none: bool = False) -> float | None:
    value = sc.get(key)
    if value is None and allow_none:
        return None
    ok = value is not None and not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value > lo if strict else value >= lo) and (hi is None or value <= hi)
    if not ok:
        rng = f"{'>' if strict else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
        raise CgsimInputError(f"system.{key}", f"expected a number {rng}, got {value!r}")
    return float(value)


def _steps(time_ps: float, dt: float, key: str, allow_zero: bool = False) -> int:
    n = time_ps / dt
    if abs(n - round(n)) > 1e-6 * max(1.0, n) or round(n) < (0 if allow_zero else 1):
        raise CgsimInputError(f"system.{key}", f"{time_ps} ps is not a {'' if allow_zero else 'positive '}"
                              f"whole number of time steps of {dt} ps")
    return int(round(n))


def _multiple(a: int, b: int, key: str, of: str) -> int:
    if a % b:
        raise CgsimInputError(f"system.{key}", f"expected a whole multiple of system.{of}")
    return a // b


def settings_from_config(sc: DictConfig) -> ElectrolyteSettings:
    """Validate a ``system=electrolyte`` config; every bad value raises a one-line error.

    Raises
    ------
    CgsimInputError
        Naming the option and what was expected.
    """
    if sc.get("n_salt") is not None:
        comp = el.Composition(sc.n_chains, sc.chain_length, sc.n_salt)
    elif sc.get("eo_li_ratio") is not None:
        comp = el.Composition.from_ratio(sc.n_chains, sc.chain_length, sc.eo_li_ratio)
    else:
        raise CgsimInputError("system.n_salt", "set n_salt (LiTFSI pairs) or eo_li_ratio; both are null")
    temperature = _number(sc, "temperature")
    pressure = _number(sc, "pressure")
    charge_scale = _number(sc, "charge_scale", hi=1.0)
    cutoff = _number(sc, "cutoff")
    ewald = _number(sc, "ewald_tolerance", hi=0.1)
    hmass = _number(sc, "hydrogen_mass", allow_none=True)
    dt = _number(sc, "timestep", hi=0.01)
    friction = _number(sc, "friction")
    prod_friction = _number(sc, "production_friction")
    pack_density = _number(sc, "pack_density", hi=1.2)
    pack_tol = _number(sc, "pack_tolerance", hi=0.5)
    min_tol = _number(sc, "minimize_tolerance")
    compress_p = _number(sc, "compress_pressure")
    dens_tol = _number(sc, "density_tolerance", hi=0.5)
    nvt_density = _number(sc, "nvt_density", hi=3.0, allow_none=True)
    for key in ("compress_time", "npt_min_time", "nvt_equilibration_time"):
        _number(sc, key, strict=False)
    for key in ("npt_block", "npt_sample", "npt_window", "npt_max_time", "production_time", "save_interval"):
        _number(sc, key)
    for key, lo in (("barostat_interval", 1), ("compress_barostat_interval", 1), ("minimize_max_iterations", 0),
                    ("seed", 0)):
        value = sc.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise CgsimInputError(f"system.{key}", f"expected an integer >= {lo}, got {value!r}")
    if sc.get("constraints") not in ("HBonds", None):
        raise CgsimInputError("system.constraints", f"expected HBonds or null, got {sc.get('constraints')!r}")
    block = _steps(sc.npt_block, dt, "npt_block")
    sample = _steps(sc.npt_sample, dt, "npt_sample")
    _multiple(block, sample, "npt_block", "npt_sample")
    window = _multiple(_steps(sc.npt_window, dt, "npt_window"), block, "npt_window", "npt_block")
    npt_min = _steps(sc.npt_min_time, dt, "npt_min_time", allow_zero=True)
    npt_max = _steps(sc.npt_max_time, dt, "npt_max_time")
    compress = _steps(sc.compress_time, dt, "compress_time", allow_zero=True)
    for key, n in (("compress_time", compress), ("npt_min_time", npt_min), ("npt_max_time", npt_max)):
        _multiple(n, block, key, "npt_block")
    if npt_max < npt_min:
        raise CgsimInputError("system.npt_max_time", f"{sc.npt_max_time} ps is shorter than npt_min_time {sc.npt_min_time} ps")
    prod = _steps(sc.production_time, dt, "production_time")
    save = _steps(sc.save_interval, dt, "save_interval")
    _multiple(prod, save, "production_time", "save_interval")
    name = sc.get("file_name") or comp.label
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
        raise CgsimInputError("system.file_name", f"expected letters, digits, '_', '.', '-', got {name!r}")
    ff = el.forcefield_path(sc.get("forcefield"))
    settings = ElectrolyteSettings(
        composition=comp, temperature=temperature, pressure=pressure, seed=int(sc.seed), charge_scale=charge_scale,
        forcefield=ff, cutoff=cutoff, ewald_tolerance=ewald, dispersion_correction=bool(sc.dispersion_correction),
        constraints=sc.get("constraints"), hydrogen_mass=hmass, timestep=dt, friction=friction,
        production_friction=prod_friction, pack_density=pack_density, pack_tolerance=pack_tol,
        packmol=sc.get("packmol"), minimize_tolerance=min_tol, minimize_max_iterations=int(sc.minimize_max_iterations),
        compress_pressure=compress_p, compress_steps=compress,
        compress_barostat_interval=int(sc.compress_barostat_interval),
        barostat_interval=int(sc.barostat_interval), block_steps=block, sample_steps=sample, window_blocks=window,
        npt_min_steps=npt_min, npt_max_steps=npt_max, density_tolerance=dens_tol,
        nvt_steps=_steps(sc.nvt_equilibration_time, dt, "nvt_equilibration_time", allow_zero=True),
        production_steps=prod, save_steps=save, file_name=str(name), nvt_density=nvt_density,
    )
    # the box must hold twice the cutoff even at the highest density it can reach
    top = el.build_topology(comp)
    mass = float(el.masses(top).sum())
    dense_box = el.box_length_for_density(mass, _MAX_EXPECTED_DENSITY)
    if dense_box < 2.0 * cutoff:
        raise CgsimInputError("system.cutoff", f"the box ({comp.n_atoms} atoms) shrinks to ~{dense_box:.2f} nm, less than "
                              f"twice the cutoff {cutoff} nm; add molecules or lower the cutoff")
    return settings
