"""Conductivity: Nernst-Einstein by hand, Einstein-Helfand on independent and paired ions,
brute-force dipole MSD, polyatomic ions, transference numbers, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cgsim.errors import CgsimInputError
from cgsim.observables.conductivity import ionic_conductivity

# CODATA 2018 exact values, written out independently of cgsim.units
E_C = 1.602176634e-19  # C
KB = 1.380649e-23  # J/K
L, T, DT = 4.0, 300.0, 0.1  # nm, K, ps
N_ION = 60
D_PLUS, D_MINUS = 0.3, 0.6  # nm^2/ps


def _sigma_ne_by_hand(n_plus: int, n_minus: int, d_plus: float, d_minus: float) -> float:
    """e^2/(V kB T) sum N q^2 D in S/cm, all in SI first."""
    v = (L * 1e-9) ** 3
    s_per_m = E_C**2 / (v * KB * T) * (n_plus * d_plus + n_minus * d_minus) * 1e-18 / 1e-12
    return s_per_m / 100.0


@pytest.fixture(scope="module")
def ions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n_frames, half = 1500, N_ION // 2
    steps = np.concatenate([rng.normal(0, np.sqrt(2 * D_PLUS * DT), (n_frames, half, 3)),
                            rng.normal(0, np.sqrt(2 * D_MINUS * DT), (n_frames, half, 3))], axis=1)
    xyz = np.cumsum(steps, axis=0) + rng.uniform(0, L, (1, N_ION, 3))
    q = np.r_[np.ones(half), -np.ones(half)]
    names = np.where(q > 0, "Li", "TFSI")
    return xyz, q, names


def test_independent_ions(ions):
    xyz, q, names = ions
    res = ionic_conductivity(xyz, DT, q, np.full(3, L), T, (1.0, 10.0), species=names, n_blocks=5)
    assert res.species == ["Li", "TFSI"] and res.counts.tolist() == [30, 30] and res.charges.tolist() == [1.0, -1.0]
    assert np.allclose(res.diffusion, [D_PLUS, D_MINUS], rtol=0.1)
    # NE from the fitted D equals the formula evaluated by hand with those D
    assert res.sigma_ne == pytest.approx(_sigma_ne_by_hand(30, 30, *res.diffusion), rel=1e-9)
    expected = _sigma_ne_by_hand(30, 30, D_PLUS, D_MINUS)
    assert res.sigma_ne == pytest.approx(expected, rel=0.1)
    # no correlations: Einstein-Helfand agrees with NE within its (large) statistical error
    assert res.sigma_eh_err > 0 and abs(res.sigma_eh - expected) < 4 * res.sigma_eh_err
    assert res.sigma_matrix.sum() == pytest.approx(res.sigma_eh)
    assert np.allclose(res.sigma_matrix, res.sigma_matrix.T)
    t_plus = res.diffusion[0] / res.diffusion.sum()
    assert res.transference_ne == pytest.approx([t_plus, 1 - t_plus])
    assert res.transference_eh.sum() == pytest.approx(1.0)
    assert res.units["sigma"] == "S/cm" and res.volume == pytest.approx(L**3)


def test_dipole_msd_matches_loops(ions):
    xyz, q, names = ions
    x = xyz[:40]
    res = ionic_conductivity(x, DT, q, np.full(3, L), T, (0.5, 1.5), species=names, n_blocks=1)
    m = np.einsum("i,fik->fk", q, x)
    brute = [np.mean([((m[k + lag] - m[k]) ** 2).sum() for k in range(40 - lag)]) for lag in range(1, 40)]
    assert np.allclose(res.dipole_msd[1:], brute)


def test_ions_moving_as_pairs_do_not_conduct(ions):
    xyz, q, names = ions
    paired = xyz.copy()
    paired[:, 30:] = xyz[:, :30] + 0.35  # every anion rides on a cation
    res = ionic_conductivity(paired, DT, q, np.full(3, L), T, (1.0, 10.0), species=names, n_blocks=1)
    assert abs(res.sigma_eh) < 1e-9 * res.sigma_ne
    assert res.sigma_matrix[0, 1] == pytest.approx(-res.sigma_matrix[0, 0])  # cross term cancels self terms
    assert np.isnan(res.transference_eh).all()
    assert res.diffusion[0] == pytest.approx(res.diffusion[1])


def test_polyatomic_ion_equals_its_centre(ions):
    xyz, q, names = ions
    single = ionic_conductivity(xyz, DT, q, np.full(3, L), T, (1.0, 10.0), species=names, n_blocks=3)
    # each anion -> two beads of -0.5 e at +-0.1 nm along x around the old position
    anions = xyz[:, 30:]
    off = np.array([0.1, 0.0, 0.0])
    two = np.concatenate([xyz[:, :30], anions - off, anions + off], axis=1)
    q2 = np.r_[np.ones(30), -0.5 * np.ones(60)]
    names2 = ["Li"] * 30 + ["T"] * 60
    mol = np.r_[np.arange(30), np.tile(np.arange(30, 60), 2)]
    multi = ionic_conductivity(two, DT, q2, np.full(3, L), T, (1.0, 10.0), species=names2, molecule_ids=mol,
                               n_blocks=3)
    assert multi.species == ["Li", "T"] and multi.charges.tolist() == [1.0, -1.0]
    for attr in ("sigma_ne", "sigma_eh", "sigma_eh_err", "sigma_ne_err"):
        assert getattr(multi, attr) == pytest.approx(getattr(single, attr), rel=1e-9)
    assert np.allclose(multi.transference_eh, single.transference_eh)


def test_remove_drift_keeps_sigma_eh_of_a_neutral_system(ions):
    xyz, q, names = ions
    drift = np.arange(xyz.shape[0])[:, None, None] * np.array([0.01, 0.0, 0.0])
    a = ionic_conductivity(xyz, DT, q, np.full(3, L), T, (1.0, 10.0), species=names, n_blocks=1)
    b = ionic_conductivity(xyz + drift, DT, q, np.full(3, L), T, (1.0, 10.0), species=names, n_blocks=1,
                           remove_drift=True)
    assert b.sigma_eh == pytest.approx(a.sigma_eh, rel=1e-6)


def test_bad_input(ions):
    xyz, q, names = ions
    x = xyz[:50]
    box = np.full(3, L)
    with pytest.raises(CgsimInputError, match="no molecule carries a net charge"):
        ionic_conductivity(x, DT, np.zeros(N_ION), box, T, (0.5, 2.0))
    with pytest.raises(CgsimInputError, match="look wrapped"):
        ionic_conductivity(x % L, DT, q, box, T, (0.5, 2.0))
    with pytest.raises(CgsimInputError, match="no box"):
        ionic_conductivity(x, DT, q, None, T, (0.5, 2.0))
    with pytest.raises(CgsimInputError, match="different net charges"):
        ionic_conductivity(x, DT, np.r_[q[:-1], -2.0], box, T, (0.5, 2.0), species=names)
    with pytest.raises(CgsimInputError, match="one finite charge"):
        ionic_conductivity(x, DT, q[:5], box, T, (0.5, 2.0))
    with pytest.raises(CgsimInputError, match="temperature"):
        ionic_conductivity(x, DT, q, box, -1.0, (0.5, 2.0))
    with pytest.raises(CgsimInputError, match="beyond the longest lag"):
        ionic_conductivity(x, DT, q, box, T, (0.5, 20.0))
    with pytest.raises(CgsimInputError, match="blocks spans only"):
        ionic_conductivity(x, DT, q, box, T, (0.5, 2.0), n_blocks=5)


def test_default_species_are_named_by_charge(ions):
    xyz, q, _ = ions
    res = ionic_conductivity(xyz[:50], DT, q, np.full(3, L), T, (0.5, 2.0), n_blocks=1)
    assert res.species == ["q=+1", "q=-1"]


def test_species_decomposition_matches_loops_and_polyfit(ions):
    """sigma_AB from <dX_A . dX_B> computed by loops over origins, fitted by numpy.polyfit."""
    xyz, q, names = ions
    x = xyz[:120].copy()
    x[:, 30:40] = x[:, 0:10] + 0.3  # ten anions ride on ten cations: a negative cross term
    window = (0.5, 3.0)
    res = ionic_conductivity(x, DT, q, np.full(3, L), T, window, species=names, n_blocks=1)
    sums = [x[:, q > 0].sum(axis=1), x[:, q < 0].sum(axis=1)]  # X_A(t), summed positions
    lags = np.arange(1, 31)
    t = lags * DT
    sel = (t >= window[0] - 1e-9) & (t <= window[1] + 1e-9)
    v = (L * 1e-9) ** 3
    for a in range(2):
        for b in range(2):
            corr = [np.mean([(sums[a][k + m] - sums[a][k]) @ (sums[b][k + m] - sums[b][k])
                             for k in range(120 - m)]) for m in lags]
            slope = np.polyfit(t[sel], np.asarray(corr)[sel], 1)[0]  # nm^2/ps
            qa, qb = (1.0, -1.0)[a], (1.0, -1.0)[b]
            expected = E_C**2 * qa * qb * slope * 1e-18 / 1e-12 / (6 * v * KB * T) / 100.0
            assert res.sigma_matrix[a, b] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert res.sigma_matrix[0, 1] < 0
    assert res.transference_eh == pytest.approx(res.sigma_matrix.sum(axis=1) / res.sigma_matrix.sum())
