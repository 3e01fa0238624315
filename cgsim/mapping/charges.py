"""Per-atom charges from a file, for inputs whose topology carries none (``input.charges``).

An mdtraj topology (PDB, GRO, ...) has no charges, so ``cgsim map`` on such input would give
every bead charge 0. :func:`read_charges` reads one charge per atom, in e and in topology
atom order (for a LAMMPS data file: ascending atom id), from

===================== =========================================================================
suffix                content
===================== =========================================================================
``.npy``              a NumPy array of shape (n_atoms,)
``.txt .dat .csv``    numbers separated by whitespace, commas or newlines (one per line is
                      fine); ``#`` starts a comment that runs to the end of the line
``.xml``              an OpenMM System serialized by ``openmm.XmlSerializer.serialize``: the
                      per-particle charges of its ``NonbondedForce``
===================== =========================================================================

Every problem (missing or unreadable file, wrong count, a value that is not a finite number,
an XML file that is not a serialized System or has no ``NonbondedForce``) raises
:class:`cgsim.errors.CgsimInputError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cgsim.errors import CgsimInputError

#: File suffixes :func:`read_charges` understands, by reader.
CHARGE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "npy": (".npy",),
    "text": (".txt", ".dat", ".csv"),
    "openmm": (".xml",),
}


def _all_suffixes() -> str:
    return ", ".join(s for group in CHARGE_SUFFIXES.values() for s in group)


def _read_npy(path: Path, where: str) -> np.ndarray:
    """Charges from a ``.npy`` file, shape as stored, float64."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input
        raise CgsimInputError(where, f"cannot be read as a .npy array ({_first_line(exc)})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        kind = type(arr).__name__ if not isinstance(arr, np.ndarray) else f"dtype {arr.dtype}"
        raise CgsimInputError(where, f"expected a numeric array of atom charges (e), got {kind}")
    if arr.ndim != 1:
        raise CgsimInputError(where, f"expected a 1-D array of atom charges (e), got shape {arr.shape}")
    return arr.astype(np.float64)


def _read_text(path: Path, where: str) -> np.ndarray:
    """Charges from a text file: numbers split by whitespace/commas, ``#`` comments; float64."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CgsimInputError(where, f"cannot be read as text ({_first_line(exc)})") from None
    values: list[float] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            try:
                values.append(float(token))
            except ValueError:
                raise CgsimInputError(where, f"line {lineno}: {token[:40]!r} is not a number; expected atom charges (e), "
                                             "one per atom, separated by whitespace or commas") from None
    return np.asarray(values, dtype=np.float64)


def _read_openmm(path: Path, where: str) -> np.ndarray:
    """Charges of the ``NonbondedForce`` of a serialized OpenMM System, e, float64."""
    import openmm
    from openmm import unit

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CgsimInputError(where, f"cannot be read as text ({_first_line(exc)})") from None
    try:
        obj = openmm.XmlSerializer.deserialize(text)
    except Exception as exc:  # noqa: BLE001 - OpenMM raises ValueError / OpenMMException
        raise CgsimInputError(where, f"is not an OpenMM System serialized by openmm.XmlSerializer ({_first_line(exc)}); "
                                     "expected the XML of XmlSerializer.serialize(system)") from None
    if not isinstance(obj, openmm.System):
        raise CgsimInputError(where, f"holds an OpenMM {type(obj).__name__}, not a System; expected the XML of "
                                     "XmlSerializer.serialize(system)")
    forces = [f for f in obj.getForces() if isinstance(f, openmm.NonbondedForce)]
    if not forces:
        names = sorted({type(f).__name__ for f in obj.getForces()}) or ["no forces"]
        raise CgsimInputError(where, f"the OpenMM System has no NonbondedForce to take atom charges from "
                                     f"(it has {', '.join(names)})")
    if len(forces) > 1:
        raise CgsimInputError(where, f"the OpenMM System has {len(forces)} NonbondedForces; expected one to take atom charges from")
    nb = forces[0]
    if nb.getNumParticles() != obj.getNumParticles():
        raise CgsimInputError(where, f"its NonbondedForce has {nb.getNumParticles()} particles but the System has "
                                     f"{obj.getNumParticles()}")
    e = unit.elementary_charge
    return np.array([nb.getParticleParameters(i)[0].value_in_unit(e) for i in range(nb.getNumParticles())], dtype=np.float64)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def read_charges(path: str | os.PathLike, n_atoms: int | None = None) -> np.ndarray:
    """Read one charge per atom from a ``.npy``, text or OpenMM System XML file.

    Parameters
    ----------
    path : str or path-like
        The file; its suffix picks the reader (module docstring): ``.npy``; ``.txt``,
        ``.dat`` or ``.csv``; ``.xml``.
    n_atoms : int, optional
        Expected number of atoms; when given, any other count is an error.

    Returns
    -------
    numpy.ndarray
        Atom charges, e, shape (n_atoms,), float64, all finite.

    Raises
    ------
    CgsimInputError
        Missing or unreadable file, unknown suffix, a count other than ``n_atoms``, a value
        that is not a finite number, an XML file that is not a serialized OpenMM System or
        whose System has no (or more than one) ``NonbondedForce``.
    """
    p = Path(path)
    where = str(path)
    if not p.is_file():
        raise CgsimInputError(where, "charges file not found")
    sfx = p.suffix.lower()
    if sfx in CHARGE_SUFFIXES["npy"]:
        charges = _read_npy(p, where)
    elif sfx in CHARGE_SUFFIXES["text"]:
        charges = _read_text(p, where)
    elif sfx in CHARGE_SUFFIXES["openmm"]:
        charges = _read_openmm(p, where)
    else:
        raise CgsimInputError(where, f"unknown charges file type {sfx or '(no suffix)'!r}; expected one of {_all_suffixes()}")
    if n_atoms is not None and len(charges) != n_atoms:
        raise CgsimInputError(where, f"expected {n_atoms} atom charges (one per atom of the topology), got {len(charges)}")
    bad = np.flatnonzero(~np.isfinite(charges))
    if len(bad):
        raise CgsimInputError(where, f"charge of atom {int(bad[0])} is {charges[bad[0]]}; expected finite charges (e) "
                                     f"({len(bad)} non-finite value{'s' if len(bad) > 1 else ''})")
    return charges
