"""What a screening needs to know of the model's training data, read from the files it came from.

A model card lists its training systems: mapped directories (``cgsim map`` output). Each one's
sidecar (``beads.json``) names the all-atom trajectory it was mapped from
(``provenance.config.input.trajectory``, relative to the working directory, or
``provenance.source.trajectory``, absolute), and that trajectory's sidecar (written by
``cgsim generate system=electrolyte``) records the composition (``extra.composition``: chains,
EO units per chain, salt pairs, EO:Li), the measured density after NPT (``summary.density``,
g/cm^3), the temperature and the whole ``system`` config of the run (time step, hydrogen
mass, charge scaling, cutoff, ...). The mapping (scheme and options) is the training system's
``mapping.yaml``.

From these: :class:`CompositionRanges` (EO:Li and chain length spanned by the training runs),
:func:`outside_ranges` (the one-line refusal) and :func:`interpolated_density` (the starting
density of a new composition, linear in the salt molality between the training runs). Units:
g/cm^3, mol/kg, K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cgsim.errors import CgsimInputError
from cgsim.metadata import read_sidecar
from cgsim.model.card import ModelCard

#: the salt count of a box is rounded (n_salt = round(EO / ratio)), so the EO:Li of a box built for
#: a training run's nominal ratio differs from the run's actual one by up to half a salt pair;
#: the EO:Li range is widened by this relative tolerance before a composition is refused
RATIO_TOLERANCE = 0.05


@dataclass(frozen=True)
class TrainingRun:
    """One all-atom run a model was trained on (its mapped system and its reference sidecar).

    Attributes
    ----------
    mapped : str
        The mapped-system directory the card lists.
    reference : pathlib.Path
        The all-atom trajectory it was mapped from.
    n_chains, chain_length, n_salt : int
        Composition.
    eo_li : float
        Actual EO:Li of the box (``n_chains * chain_length / n_salt``).
    molality : float
        Li+ per kg of PEO, mol/kg.
    density : float
        Density of the NVT box (after NPT), g/cm^3.
    temperature : float
        K.
    ns_per_day : float or None
        The run's measured MD speed, ns/day (as recorded by the generator).
    system_config : dict
        The run's ``system`` config (``cgsim generate system=electrolyte`` options).
    mapping : dict
        ``scheme`` and ``options`` of the training system's ``mapping.yaml``.
    """

    mapped: str
    reference: Path
    n_chains: int
    chain_length: int
    n_salt: int
    eo_li: float
    molality: float
    density: float
    temperature: float
    ns_per_day: float | None
    system_config: dict[str, Any]
    mapping: dict[str, Any]


@dataclass(frozen=True)
class CompositionRanges:
    """EO:Li and chain length spanned by the training runs (closed intervals)."""

    eo_li: tuple[float, float]
    chain_length: tuple[int, int]

    def to_dict(self) -> dict[str, list[float]]:
        """JSON form."""
        return {"eo_li": [float(v) for v in self.eo_li], "chain_length": [int(v) for v in self.chain_length]}


def molality(n_salt: int, peo_mass_amu: float) -> float:
    """Li+ per kg of polymer, mol/kg: ``n_salt / (PEO mass in kg/mol)``."""
    return float(n_salt) / (float(peo_mass_amu) * 1.0e-3)


def _reference_of(mapped: Path, where: str) -> Path:
    """The all-atom trajectory a mapped system was made from."""
    meta = read_sidecar(mapped / "beads.json")
    prov = meta.provenance or {}
    candidates = [((prov.get("config") or {}).get("input") or {}).get("trajectory"),
                  (prov.get("source") or {}).get("trajectory")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise CgsimInputError(where, f"cannot find the all-atom trajectory training system {mapped} was mapped from "
                                 f"(tried {', '.join(str(c) for c in candidates if c) or 'none recorded'}); run from "
                                 "the repository root, where the training data lie")


def training_run(mapped: str, where: str = "checkpoint") -> TrainingRun:
    """Read one training system's composition, density, temperature and MD settings.

    Raises
    ------
    CgsimInputError
        When the system is not an all-atom electrolyte run of ``cgsim generate`` (``where``
        names the option that led here).
    """
    d = Path(mapped)
    if not (d / "mapping.yaml").is_file():
        raise CgsimInputError(where, f"training system {mapped} (from the model card) is not a mapped directory here")
    ref = _reference_of(d, where)
    meta = read_sidecar(ref)
    comp = (meta.extra or {}).get("composition")
    if meta.system.name != "electrolyte" or not isinstance(comp, dict) or not comp.get("n_salt"):
        raise CgsimInputError(where, f"the model was trained on {meta.system.name!r} data ({ref}), not on PEO + LiTFSI "
                                     "electrolyte runs; expected an electrolyte model such as data/checkpoints/electrolyte.pt")
    peo = comp["species_atom_ranges"]["peo"]
    peo_mass = float(np.sum(meta.system.particle_masses[peo[0]:peo[1]]))
    mapping = yaml.safe_load((d / "mapping.yaml").read_text())
    summary = meta.summary or {}
    return TrainingRun(
        mapped=str(mapped), reference=ref, n_chains=int(comp["n_chains"]), chain_length=int(comp["chain_length"]),
        n_salt=int(comp["n_salt"]), eo_li=float(comp["n_chains"] * comp["chain_length"] / comp["n_salt"]),
        molality=molality(int(comp["n_salt"]), peo_mass), density=float(summary["density"]),
        temperature=float(meta.system.temperature),
        ns_per_day=None if summary.get("ns_per_day") is None else float(summary["ns_per_day"]),
        system_config=dict((meta.provenance.get("config") or {}).get("system") or {}),
        mapping={"scheme": mapping["scheme"], "options": dict(mapping.get("options") or {})})


def training_runs(card: ModelCard, where: str = "checkpoint") -> list[TrainingRun]:
    """The training runs of an electrolyte model, in the card's order (one line if it has none)."""
    if not card.train_systems:
        raise CgsimInputError(where, f"{card.path} lists no training systems; the screening reads their compositions "
                                     "and densities (an exported electrolyte model lists them)")
    runs = [training_run(s, where) for s in card.train_systems]
    temps = {round(r.temperature, 6) for r in runs}
    if len(temps) > 1:
        raise CgsimInputError(where, f"the training runs are at several temperatures {sorted(temps)} K; the screening "
                                     "runs at the one temperature of the training data")
    return runs


def composition_ranges(runs: Sequence[TrainingRun]) -> CompositionRanges:
    """EO:Li and chain length spanned by ``runs``."""
    ratios = [r.eo_li for r in runs]
    lengths = [r.chain_length for r in runs]
    return CompositionRanges(eo_li=(min(ratios), max(ratios)), chain_length=(min(lengths), max(lengths)))


def outside_ranges(eo_li: float, chain_length: int, ranges: CompositionRanges, key: str) -> tuple[str, str] | None:
    """``(option, message)`` naming the value and the trained range when a composition lies outside.

    ``key`` is the option's prefix (``compositions[0]``); the EO:Li range is widened by
    :data:`RATIO_TOLERANCE` (the salt count of a box is rounded).
    """
    key = f"{key}." if key else ""
    lo, hi = ranges.eo_li
    if not (lo * (1 - RATIO_TOLERANCE) <= eo_li <= hi * (1 + RATIO_TOLERANCE)):
        return (f"{key}eo_li", f"{eo_li:g} is outside the model's training range EO:Li {lo:.3g}-{hi:.3g}; give a "
                "composition inside it, or allow_extrapolation=true to screen it knowingly")
    c_lo, c_hi = ranges.chain_length
    if not (c_lo <= chain_length <= c_hi):
        return (f"{key}chain_length", f"{chain_length} is outside the model's training range {c_lo}-{c_hi} EO units; "
                "give a composition inside it, or allow_extrapolation=true to screen it knowingly")
    return None


def interpolated_density(runs: Sequence[TrainingRun], salt_molality: float) -> float:
    """Density of a new composition, g/cm^3: linear in the salt molality between the training runs.

    Runs at equal molality are averaged; outside the training molalities the nearest end is used
    (no extrapolation), and one run gives its own density.
    """
    m = np.array([r.molality for r in runs])
    rho = np.array([r.density for r in runs])
    keys, inverse = np.unique(m.round(9), return_inverse=True)
    means = np.bincount(inverse, weights=rho) / np.bincount(inverse)
    return float(np.interp(salt_molality, keys, means))
