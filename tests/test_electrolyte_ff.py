"""PEO + LiTFSI force field: every atom and term parameterised, charges, OPLS mixing and 1-4 rules.

Reference values are computed here independently of cgsim's System building: per-type
parameters are read straight from the XML, and energies are summed pair by pair in numpy.
"""

import math
import xml.etree.ElementTree as ET
from itertools import combinations

import numpy as np
import openmm
import openmm.unit as u
import pytest

from cgsim.errors import CgsimInputError
from cgsim.reference import electrolyte as el
from cgsim.reference.electrolyte_generate import density_converged, scale_box

ONE_4PI_EPS0 = 138.935456  # kJ mol^-1 nm e^-2, OpenMM's value


def _xml_params():
    """{type: (charge, sigma, epsilon)} and {(residue, atom): type} read from the shipped XML."""
    root = ET.parse(el.FORCEFIELD_FILE).getroot()
    nb = root.find("NonbondedForce")
    params = {a.get("type"): tuple(float(a.get(k)) for k in ("charge", "sigma", "epsilon")) for a in nb.iter("Atom")}
    types = {(r.get("name"), a.get("name")): a.get("type") for r in root.iter("Residue") for a in r.iter("Atom")}
    return params, types, float(nb.get("coulomb14scale")), float(nb.get("lj14scale"))


def _graph(top):
    nbrs = {a.index: set() for a in top.atoms()}
    for a, b in top.bonds():
        nbrs[a.index].add(b.index)
        nbrs[b.index].add(a.index)
    return nbrs


def _path_lengths(nbrs, max_len=3):
    """{(i, j): bonds on the shortest path} for pairs up to max_len bonds apart, i < j."""
    out = {}
    for s in nbrs:
        frontier, seen = {s}, {s}
        for d in range(1, max_len + 1):
            frontier = {j for i in frontier for j in nbrs[i]} - seen
            seen |= frontier
            out.update({(min(s, j), max(s, j)): d for j in frontier})
    return out


def _energy(system, positions, group):
    integ = openmm.VerletIntegrator(0.001)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions * u.nanometer)
    return ctx.getState(getEnergy=True, groups={group}).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def _vacuum_system(comp, positions, charge_scale=0.8):
    top = el.build_topology(comp)
    es = el.create_system(top, periodic=False, constraints=None, charge_scale=charge_scale)
    return es, top


def _reference_pair_energies(top, positions, charge_scale, mixing="geometric"):
    """Pair sums from the XML: (LJ outside 1-4 exceptions, Coulomb + scaled 1-4 terms)."""
    params, types, c14, l14 = _xml_params()
    atoms = list(top.atoms())
    q = np.array([params[types[(a.residue.name, a.name)]][0] * (charge_scale if a.residue.name in ("LI", "TFS") else 1.0)
                  for a in atoms])
    sig = np.array([params[types[(a.residue.name, a.name)]][1] for a in atoms])
    eps = np.array([params[types[(a.residue.name, a.name)]][2] for a in atoms])
    sep = _path_lengths(_graph(top))
    e_lj = e_coul = 0.0
    for i, j in combinations(range(len(atoms)), 2):
        r = float(np.linalg.norm(positions[i] - positions[j]))
        s = math.sqrt(sig[i] * sig[j]) if mixing == "geometric" else 0.5 * (sig[i] + sig[j])
        lj = 4 * math.sqrt(eps[i] * eps[j]) * ((s / r) ** 12 - (s / r) ** 6)
        coul = ONE_4PI_EPS0 * q[i] * q[j] / r
        d = sep.get((i, j))
        if d is None:
            e_lj += lj
            e_coul += coul
        elif d == 3:
            e_coul += c14 * coul + l14 * lj
    return e_lj, e_coul


def _li_tfsi_peo_positions(comp):
    rng = np.random.default_rng(4)
    chains = [el.chain_conformation(comp.chain_length, rng, 1.5) + [0.0, 0.0, 0.0] for _ in range(comp.n_chains)]
    li = [np.array([[0.9 + 0.5 * k, 0.35, 0.1]]) for k in range(comp.n_salt)]
    tfsi = [el.tfsi_conformation() + [1.2 + 0.9 * k, -0.9, 0.4] for k in range(comp.n_salt)]
    return np.concatenate(chains + li + tfsi)


def test_every_atom_and_bonded_term_is_parameterised():
    comp = el.Composition(2, 3, 2)
    top = el.build_topology(comp, box_length=3.0)
    es = el.create_system(top, cutoff=1.0)
    sys_ = es.system
    assert top.getNumAtoms() == comp.n_atoms == sys_.getNumParticles() == 2 * 30 + 2 * 16
    assert "?" not in es.atom_types
    assert set(es.atom_types) == set(_xml_params()[0])
    assert all(sys_.getParticleMass(i).value_in_unit(u.dalton) > 0 for i in range(sys_.getNumParticles()))
    forces = {type(f).__name__: f for f in sys_.getForces()}
    nbrs = _graph(top)
    n_bonds = sum(len(v) for v in nbrs.values()) // 2
    assert forces["HarmonicBondForce"].getNumBonds() + sys_.getNumConstraints() == n_bonds
    elements = [a.element.symbol for a in top.atoms()]
    for k in range(sys_.getNumConstraints()):  # HBonds: every constraint holds a hydrogen
        i, j, _ = sys_.getConstraintParameters(k)
        assert "H" in (elements[i], elements[j])
    n_angles = sum(len(v) * (len(v) - 1) // 2 for v in nbrs.values())
    assert forces["HarmonicAngleForce"].getNumAngles() == n_angles
    propers = set()
    for j in nbrs:
        for k in nbrs[j]:
            for i in nbrs[j] - {k}:
                for m in nbrs[k] - {j, i}:
                    propers.add(min((i, j, k, m), (m, k, j, i)))
    tor = forces["PeriodicTorsionForce"]
    covered = set()
    for t in range(tor.getNumTorsions()):
        i, j, k, m, *_ = tor.getTorsionParameters(t)
        covered.add(min((i, j, k, m), (m, k, j, i)))
    assert covered == propers and len(propers) > 0
    # LJ only in the custom (geometric) force; NonbondedForce carries charges
    nb = forces["NonbondedForce"]
    assert all(nb.getParticleParameters(i)[2].value_in_unit(u.kilojoule_per_mole) == 0 for i in range(comp.n_atoms))
    assert forces["CustomNonbondedForce"].getNumParticles() == comp.n_atoms
    assert forces["CustomNonbondedForce"].getUseLongRangeCorrection()
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.PME


@pytest.mark.parametrize("scale", [0.8, 1.0, 0.7])
def test_charges_scaled_and_total_zero(scale):
    comp = el.Composition(3, 4, 5)
    top = el.build_topology(comp, box_length=4.0)
    es = el.create_system(top, charge_scale=scale)
    params, types, _, _ = _xml_params()
    assert abs(es.charges.sum()) < 1e-10
    for chain in top.chains():
        idx = [a.index for a in chain.atoms()]
        res = next(chain.residues()).name
        expected = {"LI": scale, "TFS": -scale}.get(res, 0.0)
        assert es.charges[idx].sum() == pytest.approx(expected, abs=1e-10)
        for a in chain.atoms():
            q0 = params[types[(a.residue.name, a.name)]][0]
            assert es.charges[a.index] == pytest.approx(q0 * (scale if res in ("LI", "TFS") else 1.0), abs=1e-12)
    nb = next(f for f in es.system.getForces() if isinstance(f, openmm.NonbondedForce))
    total = sum(nb.getParticleParameters(i)[0].value_in_unit(u.elementary_charge) for i in range(comp.n_atoms))
    assert abs(total) < 1e-10


def test_lj_energy_uses_geometric_mixing_not_lorentz_berthelot():
    comp = el.Composition(1, 2, 2)
    pos = _li_tfsi_peo_positions(comp)
    es, top = _vacuum_system(comp, pos)
    got = _energy(es.system, pos, el.GROUP_LJ)
    geo, _ = _reference_pair_energies(top, pos, 0.8, "geometric")
    lb, _ = _reference_pair_energies(top, pos, 0.8, "lorentz-berthelot")
    assert got == pytest.approx(geo, rel=1e-9, abs=1e-9)
    assert abs(geo - lb) > 1e-3 * abs(geo)  # the test can tell the two rules apart


def test_unlike_pair_lj_equals_geometric_rule():
    """One Li+ and one TFSI- oxygen alone in range: the interaction is the geometric-rule LJ."""
    comp = el.Composition(1, 1, 1)
    top = el.build_topology(comp)
    es = el.create_system(top, periodic=False, constraints=None)
    params, types, _, _ = _xml_params()
    n = comp.n_atoms
    li = comp.n_chains * comp.atoms_per_chain
    tfsi = el.tfsi_conformation()
    o_idx = 2  # O11 in TFSI atom order
    far = np.array([[50.0, 0.0, 0.0]])
    base = np.concatenate([el.chain_conformation(1, np.random.default_rng(0), 1.0) - 40.0, far, tfsi])
    r = 0.27
    near = base.copy()
    direction = tfsi[o_idx] / np.linalg.norm(tfsi[o_idx])
    near[li] = tfsi[o_idx] + r * direction  # outward from the anion: the O is the closest atom
    e_far = _energy(es.system, base, el.GROUP_LJ)
    e_near = _energy(es.system, near, el.GROUP_LJ)
    s_li, e_li = params["li_aqvist"][1:]
    s_o, e_o = params["clp_OBT"][1:]
    expected = 0.0
    for k, a in enumerate(list(top.atoms())[li + 1:]):
        sk, ek = params[types[(a.residue.name, a.name)]][1:]
        d = float(np.linalg.norm(near[li] - near[li + 1 + k]))
        s = math.sqrt(s_li * sk)
        expected += 4 * math.sqrt(e_li * ek) * ((s / d) ** 12 - (s / d) ** 6)
    assert n == li + 1 + 15
    assert e_near - e_far == pytest.approx(expected, rel=1e-9)
    s_geo, s_lb = math.sqrt(s_li * s_o), 0.5 * (s_li + s_o)
    pair_geo = 4 * math.sqrt(e_li * e_o) * ((s_geo / r) ** 12 - (s_geo / r) ** 6)
    pair_lb = 4 * math.sqrt(e_li * e_o) * ((s_lb / r) ** 12 - (s_lb / r) ** 6)
    assert abs(pair_geo - pair_lb) > 0.05 * abs(pair_geo)


def test_coulomb_and_14_terms_scaled_by_half():
    comp = el.Composition(1, 3, 1)
    pos = _li_tfsi_peo_positions(comp)
    es, top = _vacuum_system(comp, pos)
    got = _energy(es.system, pos, el.GROUP_COULOMB)
    _, expected = _reference_pair_energies(top, pos, 0.8)
    assert got == pytest.approx(expected, rel=1e-7)  # 1/(4 pi eps0) known to ~8 digits
    # the exceptions themselves: 1-4 pairs with 0.5 qq, geometric sigma, 0.5 epsilon; 1-2/1-3 zero
    sep = _path_lengths(_graph(top))
    nb = next(f for f in es.system.getForces() if isinstance(f, openmm.NonbondedForce))
    n14 = 0
    for k in range(nb.getNumExceptions()):
        i, j, qq, s, e = nb.getExceptionParameters(k)
        key = (min(i, j), max(i, j))
        qq, s, e = qq.value_in_unit(u.elementary_charge**2), s.value_in_unit(u.nanometer), e.value_in_unit(u.kilojoule_per_mole)
        if sep[key] == 3:
            n14 += 1
            assert qq == pytest.approx(0.5 * es.charges[i] * es.charges[j], abs=1e-12)
            assert s == pytest.approx(math.sqrt(es.sigma[i] * es.sigma[j]), rel=1e-12)
            assert e == pytest.approx(0.5 * math.sqrt(es.epsilon[i] * es.epsilon[j]), rel=1e-12)
        else:
            assert qq == 0 and e == 0
    assert n14 == len(es.pairs_14) == sum(1 for d in sep.values() if d == 3)


def test_molecule_geometry_matches_force_field():
    rng = np.random.default_rng(1)
    comp = el.Composition(1, 12, 1)
    top = el.build_topology(comp)
    xyz = np.concatenate([el.chain_conformation(12, rng, 2.5), [[5.0, 5.0, 5.0]], el.tfsi_conformation() + 8.0])
    r0 = {frozenset("CC"): 0.1529, frozenset("CO"): 0.1410, frozenset("CH"): 0.1090, frozenset("NS"): 0.1570,
          frozenset("OS"): 0.1437, frozenset("CS"): 0.1818, frozenset("CF"): 0.1323}
    for a, b in top.bonds():
        d = np.linalg.norm(xyz[a.index] - xyz[b.index])
        assert d == pytest.approx(r0[frozenset(a.element.symbol + b.element.symbol)], abs=1e-9)
    heavy = [a.index for a in top.atoms() if a.element.symbol != "H" and a.residue.chain.index == 0]
    sep = _path_lengths(_graph(top), max_len=4)
    chain_xyz = xyz[heavy]
    dmat = np.linalg.norm(chain_xyz[:, None] - chain_xyz[None], axis=-1)
    assert dmat.max() <= 2.5
    for p, i in enumerate(heavy):
        for q, j in enumerate(heavy):
            if i < j and (i, j) not in sep:
                assert dmat[p, q] >= 0.30
    # no overlaps: atoms more than three bonds apart at least 0.15 nm apart, LJ energy modest
    all_sep = _path_lengths(_graph(top), max_len=3)
    chain_atoms = [a.index for a in top.atoms() if a.residue.chain.index == 0]
    for i, j in combinations(chain_atoms, 2):
        if (i, j) not in all_sep:
            assert np.linalg.norm(xyz[i] - xyz[j]) >= 0.15
    es = el.create_system(top, periodic=False, constraints=None)
    e = _energy(es.system, xyz, el.GROUP_LJ)
    assert math.isfinite(e) and e < 50.0 * comp.atoms_per_chain


def test_topology_residues_and_composition():
    comp = el.Composition(2, 5, 3)
    top = el.build_topology(comp)
    names = [r.name for r in top.residues()]
    assert names == (["PEH"] + ["PEO"] * 5 + ["PET"]) * 2 + ["LI"] * 3 + ["TFS"] * 3
    assert top.getNumChains() == 2 + 3 + 3
    species = el.species_indices(top)
    assert [len(species[k]) for k in ("peo", "li", "tfsi")] == [2 * 44, 3, 45]
    assert comp.eo_li_ratio == pytest.approx(10 / 3)
    assert el.Composition.from_ratio(8, 20, 16.0).n_salt == 10
    assert comp.label == "peo2x5_litfsi3"
    md_top = el.mdtraj_topology(top)
    assert md_top.n_bonds == top.getNumBonds() and md_top.n_residues == len(names)


@pytest.mark.parametrize("args, field", [((0, 5, 1), "n_chains"), ((2, 0, 1), "chain_length"),
                                         ((2, -3, 1), "chain_length"), ((2, 5, -1), "n_salt"),
                                         ((2.5, 5, 1), "n_chains")])
def test_impossible_composition_is_one_line_error(args, field):
    with pytest.raises(CgsimInputError) as err:
        el.Composition(*args)
    assert err.value.where == f"system.{field}" and "\n" not in str(err.value)
    with pytest.raises(CgsimInputError, match="eo_li_ratio"):
        el.Composition.from_ratio(2, 5, 0.0)


def test_density_helpers_and_box_scaling():
    # 1000 water molecules at 1 g/cm^3: 29.915 nm^3
    assert el.box_length_for_density(18015.28, 1.0) ** 3 == pytest.approx(29.9153, rel=1e-4)
    assert el.density_g_cm3(18015.28, 29.9153) == pytest.approx(1.0, rel=1e-4)
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(10, 3))
    mols = [np.arange(0, 4), np.arange(4, 10)]
    m = rng.uniform(1, 10, size=10)
    new = scale_box(pos, mols, m, 0.8)
    for idx in mols:  # rigid: internal distances kept; centre scaled
        d0 = np.linalg.norm(pos[idx, None] - pos[None, idx], axis=-1)
        d1 = np.linalg.norm(new[idx, None] - new[None, idx], axis=-1)
        np.testing.assert_allclose(d1, d0, atol=1e-12)
        w = m[idx] / m[idx].sum()
        np.testing.assert_allclose(w @ new[idx], 0.8 * (w @ pos[idx]), atol=1e-12)


def test_density_converged():
    assert not density_converged([1.0] * 3, 2, 0.01)
    assert density_converged([0.9, 1.0, 1.0, 1.002, 0.999], 2, 0.005)
    assert not density_converged([0.95, 0.96, 1.0, 1.01], 2, 0.005)
