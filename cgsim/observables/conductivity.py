"""Ionic conductivity (Nernst-Einstein and Einstein-Helfand) and transference numbers.

Ions are *molecules*: the beads of one molecule move as its centre of mass R and carry the
molecule's net charge Q (sum of its beads' charges, in e), so polyatomic ions and ions made of
several beads are handled alike (kinisi issue #174). Neutral molecules do not conduct and are
left out. Molecules with the same species name form a species A with N_A members, charge q_A.

Nernst-Einstein (no ion-ion correlations)::

    sigma_NE = e^2 / (V k_B T) * sum_A N_A q_A^2 D_A

with D_A the self-diffusion coefficient of A's centres of mass.

Einstein-Helfand (collective; Hansen & McDonald, *Theory of Simple Liquids*, 4th ed., 2013, ch. 10)::

    sigma_EH = lim_{t->inf} e^2 / (2 d V k_B T t) < |M(t) - M(0)|^2 >,   M(t) = sum_A q_A X_A(t)

with ``X_A = sum_{i in A} R_i`` the summed positions of species A. It splits exactly into
species contributions (Onsager coefficients; Fong, Self, McCloskey & Persson, Macromolecules
54, 2575 (2021))::

    sigma_AB = e^2 q_A q_B / (2 d V k_B T) d/dt < dX_A(t) . dX_B(t) >,   sigma_EH = sum_AB sigma_AB

so ``2 sigma_{+-}`` is the cation-anion cross term (negative when ions move as pairs), and
``< dX_A . dX_B > = (<|d(X_A + X_B)|^2> - <|dX_A|^2> - <|dX_B|^2>) / 2`` reuses the FFT MSD.

Transference number of species A::

    t_A(NE) = N_A q_A^2 D_A / sum_B N_B q_B^2 D_B
    t_A(EH) = sum_B sigma_AB / sigma_EH

Slopes are least-squares fits over a stated lag window; errors are block averages as in
:mod:`cgsim.observables.diffusion`. Units: S/cm (S = A/V), from SI constants in
:mod:`cgsim.units`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError
from cgsim.observables import _checks
from cgsim.observables.diffusion import linear_fit
from cgsim.observables.msd import _msd_fft, block_slices, check_unwrapped, remove_com_drift
from cgsim.observables.polymer import _centres
from cgsim.units import (
    BOLTZMANN_J,
    ELEMENTARY_CHARGE_C,
    NM2_PER_PS_TO_M2_PER_S,
    NM3_TO_M3,
    S_PER_M_TO_S_PER_CM,
)


@dataclass(frozen=True, eq=False)
class ConductivityResult:
    """Ionic conductivity of a system and its decomposition by species.

    Attributes
    ----------
    species : list of str
        Charged species (molecule kinds), sorted.
    charges : numpy.ndarray
        Net charge per molecule of each species, shape (n_species,), e.
    counts : numpy.ndarray
        Molecules per species, shape (n_species,).
    diffusion : numpy.ndarray
        Centre-of-mass self-diffusion coefficient per species, shape (n_species,), nm^2/ps.
    diffusion_err : numpy.ndarray
        Its block-average error, shape (n_species,), nm^2/ps.
    sigma_ne, sigma_ne_err : float
        Nernst-Einstein conductivity and error, S/cm.
    sigma_eh, sigma_eh_err : float
        Einstein-Helfand conductivity and error, S/cm.
    sigma_matrix : numpy.ndarray
        Einstein-Helfand contributions sigma_AB, shape (n_species, n_species), symmetric,
        S/cm; sums to ``sigma_eh``.
    transference_ne, transference_eh : numpy.ndarray
        Transference number per species, shape (n_species,), dimensionless.
    volume : float
        Mean box volume, nm^3.
    temperature : float
        K.
    window : tuple of float
        Fit window, ps.
    n_blocks : int
        Blocks for the errors.
    lag_times : numpy.ndarray
        Lag times, shape (n_lags,), ps.
    dipole_msd : numpy.ndarray
        ``<|M(t) - M(0)|^2>``, shape (n_lags,), e^2 nm^2.
    units : dict
        Units of the fields.
    """

    species: list[str]
    charges: np.ndarray
    counts: np.ndarray
    diffusion: np.ndarray
    diffusion_err: np.ndarray
    sigma_ne: float
    sigma_ne_err: float
    sigma_eh: float
    sigma_eh_err: float
    sigma_matrix: np.ndarray
    transference_ne: np.ndarray
    transference_eh: np.ndarray
    volume: float
    temperature: float
    window: tuple[float, float]
    n_blocks: int
    lag_times: np.ndarray
    dipole_msd: np.ndarray
    units: dict[str, str]


def _siemens_per_cm(slope_nm2_ps: np.ndarray | float, volume_nm3: float, temperature: float, dim: int) -> Any:
    """e^2 * slope / (2 d V k_B T) converted to S/cm; slope in e^2 nm^2/ps (charges folded in)."""
    si = (ELEMENTARY_CHARGE_C**2 * np.asarray(slope_nm2_ps) * NM2_PER_PS_TO_M2_PER_S
          / (2 * dim * volume_nm3 * NM3_TO_M3 * BOLTZMANN_J * temperature))
    return si * S_PER_M_TO_S_PER_CM


def _molecule_name(members: np.ndarray) -> str:
    """A molecule's species: its beads' common name, or their names joined by ``-``."""
    return str(members[0]) if np.all(members == members[0]) else "-".join(members.tolist())


def _ion_species(charges: np.ndarray, species: np.ndarray, ids: np.ndarray, n_mol: int
                 ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Charged species: names, molecule charge per species, molecule -> species index (-1 neutral), counts."""
    q_mol = np.bincount(ids, weights=charges, minlength=n_mol)
    order = np.argsort(ids, kind="stable")  # beads of each molecule, in particle order
    starts = np.searchsorted(ids[order], np.arange(n_mol + 1))
    names_mol = np.asarray([_molecule_name(species[order[starts[c]:starts[c + 1]]]) or f"q={q_mol[c]:+g}"
                            for c in range(n_mol)])
    charged = np.abs(q_mol) > 1e-9
    if not charged.any():
        raise CgsimInputError("ionic_conductivity.charges", "empty selection: no molecule carries a net charge")
    names = sorted(set(names_mol[charged].tolist()))
    q = np.zeros(len(names))
    which = np.full(n_mol, -1, dtype=np.int64)
    for k, name in enumerate(names):
        sel = charged & (names_mol == name)
        qs = q_mol[sel]
        if np.ptp(qs) > 1e-6:
            raise CgsimInputError("ionic_conductivity.charges", f"molecules of species {name!r} carry different net "
                                                                f"charges ({qs.min():g} to {qs.max():g} e); expected one charge per species")
        q[k] = qs[0]
        which[sel] = k
    counts = np.bincount(which[which >= 0], minlength=len(names))
    return names, q, which, counts


def _species_sums(centres: np.ndarray, which: np.ndarray, n_species: int) -> np.ndarray:
    """X_A(t) = sum of centres of species A, shape (n_frames, n_species, 3)."""
    onehot = np.zeros((which.size, n_species))
    ok = which >= 0
    onehot[np.flatnonzero(ok), which[ok]] = 1.0
    return np.einsum("fmk,ms->fsk", centres, onehot)


def _slopes(centres: np.ndarray, which: np.ndarray, q: np.ndarray, dt: float, window: Sequence[float], where: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-species self MSD slopes (n_s,), EH cross slopes q_A q_B d<dX_A.dX_B>/dt (n_s, n_s), dipole MSD."""
    n_s = q.size
    x = _species_sums(centres, which, n_s)  # (f, s, 3)
    pairs = [(a, b) for a in range(n_s) for b in range(a + 1, n_s)]
    series = [x[:, a] for a in range(n_s)] + [x[:, a] + x[:, b] for a, b in pairs]
    dip = np.einsum("s,fsk->fk", q, x)
    coll = _msd_fft(np.stack(series + [dip], axis=1))  # (n_lags, n_series)
    lags = np.arange(coll.shape[0]) * dt
    slope = linear_fit(lags, coll.T, window, where)[0]
    z = np.zeros((n_s, n_s))
    z[np.arange(n_s), np.arange(n_s)] = slope[:n_s]
    for k, (a, b) in enumerate(pairs):
        z[a, b] = z[b, a] = 0.5 * (slope[n_s + k] - slope[a] - slope[b])
    z *= np.outer(q, q)
    # self diffusion: MSD of each molecule's centre, averaged per species
    per = _msd_fft(centres[:, which >= 0])
    wsel = which[which >= 0]
    msd_s = (per @ np.eye(n_s)[wsel]).T / np.bincount(wsel, minlength=n_s)[:, None]
    d_slope = linear_fit(lags, msd_s, window, where)[0]
    return d_slope, z, coll[:, -1], lags


def ionic_conductivity(xyz: np.ndarray, dt: float, charges: Any, box: Any, temperature: float,
                       fit_window: Sequence[float], *, species: Sequence[str] | None = None,
                       molecule_ids: Any = None, masses: np.ndarray | None = None, remove_drift: bool = False,
                       n_blocks: int = 5, dim: int = 3) -> ConductivityResult:
    """Nernst-Einstein and Einstein-Helfand conductivity, species decomposition, transference.

    Parameters
    ----------
    xyz : numpy.ndarray
        Unwrapped positions, shape (n_frames, n_particles, 3), nm, molecules whole.
    dt : float
        Time between frames, ps.
    charges : array-like
        Charge per particle (bead), shape (n_particles,), e.
    box : array-like
        Orthorhombic box, nm (for the volume and the wrapped-input check).
    temperature : float
        K.
    fit_window : (float, float)
        Lag window of the linear fits, ps; must fit inside one block.
    species : sequence of str, optional
        Name per particle (e.g. bead type or molecule kind); a molecule's species is its
        beads' common name, or their names joined by ``-``. None = molecules are named by
        their net charge (``"q=+1"``, ``"q=-1"``).
    molecule_ids : array-like, optional
        Molecule id per particle; None = every particle is its own molecule.
    masses : numpy.ndarray, optional
        Masses, amu, for molecule centres and drift removal; None = equal.
    remove_drift : bool
        Subtract the system's centre of mass first (does not change sigma_EH of a neutral
        system).
    n_blocks : int
        Blocks for the errors (1 = none).
    dim : int
        Dimensions.

    Returns
    -------
    ConductivityResult
    """
    arr = _checks.positions(xyz, "ionic_conductivity.xyz", min_frames=2)
    n = arr.shape[1]
    dt = _checks.time_step(dt, "ionic_conductivity.dt")
    temperature = _checks.positive(temperature, "ionic_conductivity.temperature")
    q = np.asarray(charges, dtype=np.float64)
    if q.shape != (n,) or not np.isfinite(q).all():
        raise CgsimInputError("ionic_conductivity.charges", f"expected one finite charge (e) per particle, shape ({n},), got {q.shape}")
    lengths = _checks.box_lengths(box, arr.shape[0], "ionic_conductivity.box")
    check_unwrapped(arr, lengths, "ionic_conductivity.xyz")
    m = _checks.weights(masses, n, "ionic_conductivity.masses")
    if molecule_ids is None:
        ids, n_mol = np.arange(n), n
    else:
        ids, n_mol = _checks.molecule_ids(molecule_ids, n, "ionic_conductivity.molecule_ids")
    names = np.full(n, "") if species is None else np.asarray(species).astype(str)
    if names.shape != (n,):
        raise CgsimInputError("ionic_conductivity.species", f"expected one name per particle, shape ({n},), got {names.shape}")
    sp, q_s, which, counts = _ion_species(q, names, ids, n_mol)
    t_max = (arr.shape[0] - 1) * dt
    window = _checks.window(fit_window, t_max, "ionic_conductivity.fit_window")
    if remove_drift:
        arr = remove_com_drift(arr, m)
    centres = _centres(arr, m, ids, n_mol)
    volume = float(lengths.prod(-1).mean())

    def evaluate(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        d_slope, z, dip, lags = _slopes(c, which, q_s, dt, window, "ionic_conductivity.fit_window")
        return d_slope / (2 * dim), _siemens_per_cm(z, volume, temperature, dim), dip, lags, z

    d, smat, dip, lags, _ = evaluate(centres)
    ne_terms = counts * q_s**2 * d
    sigma_ne = float(_siemens_per_cm(2 * dim * ne_terms.sum(), volume, temperature, dim))
    sigma_eh = float(smat.sum())

    slices = block_slices(arr.shape[0], n_blocks, "ionic_conductivity.n_blocks")
    d_err = np.full(len(sp), np.nan)
    ne_err = eh_err = float("nan")
    if len(slices) > 1:
        block_len = (slices[0].stop - slices[0].start - 1) * dt
        if window[1] > block_len * (1 + 1e-9):
            raise CgsimInputError("ionic_conductivity.fit_window", f"window ends at {window[1]:g} ps but each of the "
                                                                   f"{len(slices)} blocks spans only {block_len:g} ps; "
                                                                   "use fewer blocks or a shorter window")
        bd, bne, beh = [], [], []
        for sl in slices:
            db, sm, _, _, _ = evaluate(centres[sl])
            bd.append(db)
            bne.append(float(_siemens_per_cm(2 * dim * (counts * q_s**2 * db).sum(), volume, temperature, dim)))
            beh.append(float(sm.sum()))
        k = len(slices)
        d_err = np.std(bd, axis=0, ddof=1) / np.sqrt(k)
        ne_err = float(np.std(bne, ddof=1) / np.sqrt(k))
        eh_err = float(np.std(beh, ddof=1) / np.sqrt(k))
    t_ne = ne_terms / ne_terms.sum() if ne_terms.sum() != 0 else np.full(len(sp), np.nan)
    # t_EH is undefined when the contributions cancel (e.g. ions moving only as neutral pairs)
    defined = abs(sigma_eh) > 1e-9 * float(np.abs(smat).sum())
    t_eh = smat.sum(axis=1) / sigma_eh if defined else np.full(len(sp), np.nan)
    return ConductivityResult(
        species=sp, charges=q_s, counts=counts, diffusion=d, diffusion_err=d_err, sigma_ne=sigma_ne,
        sigma_ne_err=ne_err, sigma_eh=sigma_eh, sigma_eh_err=eh_err, sigma_matrix=smat, transference_ne=t_ne,
        transference_eh=t_eh, volume=volume, temperature=temperature, window=window, n_blocks=len(slices),
        lag_times=lags, dipole_msd=dip,
        units={"charges": "e", "diffusion": "nm^2/ps", "sigma": "S/cm", "volume": "nm^3", "temperature": "K",
               "window": "ps", "lag_times": "ps", "dipole_msd": "e^2 nm^2", "transference": "1"})
