"""Units inside cgsim.

cgsim computes in the *MD unit system* that OpenMM and mdtraj use:

============  ==========================
quantity      unit
============  ==========================
length        nm
time          ps
mass          amu (g/mol)
energy        kJ/mol
temperature   K
charge        e (elementary charge)
============  ==========================

These are mutually consistent: 1 kJ/mol = 1 amu nm^2 ps^-2, so no conversion factor appears
in equations of motion. Conversions happen only at the edges (file I/O, reports).

Reduced Lennard-Jones units are a *declared* alternative for bead-spring models: a system
whose metadata says ``units: lj`` states sigma, epsilon and the bead mass in MD units, and
:class:`LJUnits` derives tau and the temperature unit from them. With the default
sigma = 1 nm, epsilon = 1 kJ/mol, m = 1 amu, one tau is exactly 1 ps and T* = 1 is
epsilon / k_B = 120.27 K, so reduced numbers can be read straight off MD-unit files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# --- the MD unit system (names used in metadata) -----------------------------------------
LENGTH = "nm"
TIME = "ps"
MASS = "amu"
ENERGY = "kJ/mol"
TEMPERATURE = "K"
CHARGE = "e"

MD_UNITS: dict[str, str] = {
    "length": LENGTH,
    "time": TIME,
    "mass": MASS,
    "energy": ENERGY,
    "temperature": TEMPERATURE,
    "charge": CHARGE,
}

# --- physical constants in MD units (CODATA 2018 exact SI values) ------------------------
#: Boltzmann constant, kJ/(mol K)   (k_B * N_A = 1.380649e-23 J/K * 6.02214076e23 / 1000)
BOLTZMANN = 1.380649e-23 * 6.02214076e23 / 1000.0
#: Avogadro constant, 1/mol
AVOGADRO = 6.02214076e23
#: Elementary charge, C
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: Boltzmann constant, J/K
BOLTZMANN_J = 1.380649e-23

# --- conversion factors: multiply a value in the left unit to get MD units ---------------
ANGSTROM = 0.1  # nm
FEMTOSECOND = 1.0e-3  # ps
NANOSECOND = 1.0e3  # ps
KCAL_PER_MOL = 4.184  # kJ/mol

# --- conversions for reports --------------------------------------------------------------
#: nm^2/ps -> cm^2/s  (1 nm^2 = 1e-14 cm^2, 1 ps = 1e-12 s)
NM2_PER_PS_TO_CM2_PER_S = 1.0e-2
#: nm^2/ps -> m^2/s  (1 nm^2 = 1e-18 m^2, 1 ps = 1e-12 s)
NM2_PER_PS_TO_M2_PER_S = 1.0e-6
#: nm^3 -> m^3  (SI prefix nano = 1e-9)
NM3_TO_M3 = 1.0e-27
#: S/m -> S/cm  (1 m = 100 cm, so a conductance per length is divided by 100)
S_PER_M_TO_S_PER_CM = 1.0e-2


def kT(temperature: float) -> float:
    """Thermal energy k_B T in kJ/mol for a temperature in K."""
    return BOLTZMANN * float(temperature)


@dataclass(frozen=True)
class LJUnits:
    """Reduced Lennard-Jones units expressed in MD units.

    Parameters
    ----------
    sigma : float
        Length unit, nm.
    epsilon : float
        Energy unit, kJ/mol.
    mass : float
        Mass unit, amu.
    """

    sigma: float = 1.0
    epsilon: float = 1.0
    mass: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sigma", "epsilon", "mass"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"LJUnits.{name} must be a positive finite number, got {value!r}")

    @property
    def tau(self) -> float:
        """Time unit tau = sigma sqrt(m / epsilon), ps."""
        return self.sigma * math.sqrt(self.mass / self.epsilon)

    @property
    def temperature(self) -> float:
        """Temperature unit epsilon / k_B, K."""
        return self.epsilon / BOLTZMANN

    def to_md(self, value: float, quantity: str) -> float:
        """Convert a reduced ``value`` of ``quantity`` into MD units.

        ``quantity`` is one of ``length``, ``time``, ``mass``, ``energy``, ``temperature``.
        """
        factors = {
            "length": self.sigma,
            "time": self.tau,
            "mass": self.mass,
            "energy": self.epsilon,
            "temperature": self.temperature,
        }
        if quantity not in factors:
            raise ValueError(f"unknown quantity {quantity!r}; expected one of {sorted(factors)}")
        return float(value) * factors[quantity]

    def from_md(self, value: float, quantity: str) -> float:
        """Convert ``value`` of ``quantity`` from MD units into reduced units."""
        return float(value) / self.to_md(1.0, quantity)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for metadata files (with derived tau and T unit)."""
        return {**asdict(self), "tau_ps": self.tau, "temperature_K": self.temperature}


def units_block(system_units: str, lj: LJUnits | None = None) -> dict[str, Any]:
    """The ``units`` block every metadata file carries.

    Parameters
    ----------
    system_units : {"md", "lj"}
        ``md``: values are in MD units. ``lj``: values are reduced, and ``lj`` gives the
        reduced units in MD units. Trajectory files (PDB/DCD/XTC/H5) always hold nm and ps.
    lj : LJUnits, optional
        Required when ``system_units == "lj"``.
    """
    if system_units == "md":
        return {"system": "md", **MD_UNITS}
    if system_units == "lj":
        if lj is None:
            raise ValueError("units 'lj' need an LJUnits definition")
        return {"system": "lj", "lj_in_md_units": lj.to_dict(), "files": dict(MD_UNITS)}
    raise ValueError(f"unknown unit system {system_units!r}; expected 'md' or 'lj'")
