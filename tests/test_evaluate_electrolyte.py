"""``cgsim evaluate`` on a mapped electrolyte, end to end through the project's own writers.

An all-atom PEO + LiTFSI-like system (8 copies of the mapping fixture: one 51-atom PEO chain,
two Li+, two 15-atom TFSI- per copy, periodic 5 nm box) moves as rigid molecules on random
walks with known diffusion coefficients; it is written like reference MD (TrajectoryWriter +
sidecar with ``extra.particle_charges``), coarse-grained by ``cgsim map mapping=metis``
(Li+ and TFSI- stay one bead each, PEO is cut by METIS) and evaluated. The bead charges must
reach the conductivity from the mapped metadata (or ``mapping.yaml``), with no charges given
on the command line.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from cgsim.io.trajectory import TrajectoryWriter
from cgsim.metadata import SystemInfo, TrajectoryMetadata, read_sidecar, write_sidecar
from cgsim.units import BOLTZMANN_J, ELEMENTARY_CHARGE_C, units_block
from tests.conftest import MAPPING_PDB, run_evaluate, run_map

FIXTURE = MAPPING_PDB
COPIES, LENGTH, N_FRAMES, DT, T = 8, 5.0, 150, 2.0, 400.0
#: diffusion coefficients of the random walks, nm^2/ps, per residue kind
D_IN = {"LI": 2.0e-3, "TFS": 1.0e-3, "PEO": 2.0e-4}
Q_ION = 0.8  # scaled ionic charges, e


def _kind(residue: md.core.topology.Residue) -> str:
    return residue.name if residue.name in ("LI", "TFS") else "PEO"


def _all_atom(path: Path, seed: int) -> Path:
    """Write the all-atom trajectory + sidecar (as `cgsim generate` would) and return its path."""
    ref = md.load(str(FIXTURE))
    top = md.Topology()
    for _ in range(COPIES):  # a fresh chain per copy keeps every molecule whole
        top = top.join(ref.topology)
    n = top.n_atoms
    template = np.tile(ref.xyz[0].astype(np.float64), (COPIES, 1))
    kinds = np.array([_kind(a.residue) for a in top.atoms])
    charges = np.zeros(n)
    rng = np.random.default_rng(seed)
    xyz = np.empty((N_FRAMES, n, 3))
    for atoms in top.find_molecules():
        idx = np.array(sorted(a.index for a in atoms))
        kind = kinds[idx[0]]
        body = template[idx] - template[idx].mean(axis=0)  # rigid molecule around its centre
        steps = rng.normal(0.0, math.sqrt(2 * D_IN[kind] * DT), (N_FRAMES, 3))
        steps[0] = rng.uniform(0, LENGTH, 3)
        xyz[:, idx] = np.cumsum(steps, axis=0)[:, None, :] + body[None]
        if kind == "LI":
            charges[idx] = Q_ION
        elif kind == "TFS":
            charges[idx] = -Q_ION / idx.size
    box = np.broadcast_to(np.eye(3) * LENGTH, (N_FRAMES, 3, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    with TrajectoryWriter(path, top) as w:
        w.write(xyz, np.arange(N_FRAMES) * DT, box)
    masses = [a.element.mass for a in top.atoms]
    info = SystemInfo(name="electrolyte", units=units_block("md"), temperature=T, md_timestep=0.002, periodic=True,
                      particle_types=[a.element.symbol for a in top.atoms], particle_masses=masses,
                      box=[LENGTH] * 3 + [90.0] * 3)
    write_sidecar(TrajectoryMetadata(kind="reference_md", trajectory=path.name, topology=path.name, system=info,
                                     save_interval=DT, n_frames=N_FRAMES, coordinates="unwrapped",
                                     extra={"particle_charges": charges.tolist()}), path)
    return path


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``DATA/el/r0`` and ``DATA/el/r1``: two mapped replicas, with a rollout-like dataset.json."""
    root = tmp_path_factory.mktemp("electrolyte")
    for r in (0, 1):
        aa = _all_atom(root / f"aa{r}" / "md.h5", seed=r)
        run_map(f"input.trajectory={aa}", "mapping=metis", "mapping.atoms_per_bead=7", f"output={root / 'el' / f'r{r}'}")
    index = {"format": "cgsim-dataset", "kind": "rollout",
             "molecules": [{"name": "el", "files": [{"trajectory": f"r{r}/beads.h5"} for r in (0, 1)]}]}
    (root / "el" / "dataset.json").write_text(json.dumps(index))
    return root / "el"


def test_mapping_keeps_ions_whole_and_charged(mapped):
    meta = read_sidecar(mapped / "r0" / "beads.h5")
    types = np.array(meta.system.particle_types)
    q = np.array(meta.extra["particle_charges"])
    assert meta.coordinates == "unwrapped" and meta.system.periodic and meta.system.name == "electrolyte"
    assert (types == "LI").sum() == 2 * COPIES and (types == "TFS").sum() == 2 * COPIES  # one bead per ion
    assert np.allclose(q[types == "LI"], Q_ION) and np.allclose(q[types == "TFS"], -Q_ION)
    assert np.allclose(q[(types != "LI") & (types != "TFS")], 0.0, atol=1e-12)  # PEO beads: neutral
    assert len(set(types)) > 3  # PEO cut into several bead types by METIS


def test_mapped_electrolyte_reference_alone(mapped, tmp_path):
    out = tmp_path / "eval"
    metrics = run_evaluate([f"reference={mapped / 'r0'}", f"output={out}", "dynamics.fit_window=[10,60]", "dynamics.n_blocks=4"])
    assert metrics["reference"]["system"] == "electrolyte"
    assert metrics["observables_computed"] == ["rdf", "msd", "diffusion", "conductivity"]  # the electrolyte preset
    obs = metrics["observables"]
    # RDFs of the ion pairs, periodic, to half the box
    assert {"LI-LI", "LI-TFS", "TFS-TFS"} <= set(obs["rdf"])
    assert metrics["settings"]["rdf_periodic"] is True and metrics["settings"]["rdf_r_max_nm"] == pytest.approx(LENGTH / 2)
    # MSD and D of Li and TFSI beads against the random walks' D (16 ions each: ~25 % noise)
    d_li = obs["diffusion"]["LI"]["reference"]["D_nm2_ps"]
    d_tfs = obs["diffusion"]["TFS"]["reference"]["D_nm2_ps"]
    assert d_li == pytest.approx(D_IN["LI"], rel=0.5) and d_tfs == pytest.approx(D_IN["TFS"], rel=0.5)
    assert obs["diffusion"]["LI"]["reference"]["D_cm2_s"] == pytest.approx(d_li * 1e-2)
    assert "LI" in obs["msd"] and "TFS" in obs["msd"] and any(k.startswith("com:") for k in obs["msd"])
    # conductivity with the charges from the mapped metadata: NE by hand from the measured D
    cond = obs["conductivity"]["system"]["reference"]
    assert cond["charge_e[LI]"] == pytest.approx(Q_ION) and cond["charge_e[TFS]"] == pytest.approx(-Q_ION)
    volume_m3 = LENGTH**3 * 1e-27
    by_hand = sum(2 * COPIES * (Q_ION * ELEMENTARY_CHARGE_C) ** 2 * cond[f"D_cm2_s[{s}]"] * 1e-4
                  for s in ("LI", "TFS")) / (volume_m3 * BOLTZMANN_J * T) / 100  # S/m -> S/cm
    assert cond["sigma_ne_S_cm"] == pytest.approx(by_hand, rel=1e-6)
    assert cond["sigma_eh_S_cm"] > 0 and cond["sigma_eh_err_S_cm"] > 0
    assert cond["transference_ne[LI]"] + cond["transference_ne[TFS]"] == pytest.approx(1.0)
    assert cond["transference_ne[LI]"] > 0.5  # Li diffuses twice as fast
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["conductivity.png", "msd.png", "rdf.png"]
    report = (out / "report.md").read_text()
    assert "## Ionic conductivity" in report and "transference_ne[LI]" in report


def test_rollout_replicas_and_charges_from_mapping_yaml(mapped, tmp_path):
    # a copy of replica 1 whose sidecar lost its charges: they come back from mapping.yaml
    bare = tmp_path / "bare"
    shutil.copytree(mapped / "r1", bare)
    side = json.loads((bare / "beads.json").read_text())
    side["extra"].pop("particle_charges", None)
    (bare / "beads.json").write_text(json.dumps(side))
    common = ["figures=false", "observables=[conductivity]", "dynamics.fit_window=[10,60]", "dynamics.n_blocks=2",
              "noise_floor=false"]
    a = run_evaluate([f"reference={mapped / 'r1'}", f"output={tmp_path / 'a'}", *common])
    b = run_evaluate([f"reference={bare}", f"output={tmp_path / 'b'}", *common])
    ca = a["observables"]["conductivity"]["system"]["reference"]
    cb = b["observables"]["conductivity"]["system"]["reference"]
    assert cb["sigma_eh_S_cm"] == pytest.approx(ca["sigma_eh_S_cm"]) and cb["charge_e[LI]"] == pytest.approx(Q_ION)
    # both replicas of the "rollout" dataset against replica 0: pooled, D errors from their spread
    metrics = run_evaluate([f"reference={mapped / 'r0'}", f"rollout={mapped}", "file_index=-1", f"output={tmp_path / 'c'}",
                    "figures=false", "dynamics.fit_window=[10,60]"])
    assert metrics["rollout"]["n_trajectories"] == 2
    assert any("spread of 2 replicas" in n for n in metrics["notes"])
    li = metrics["observables"]["diffusion"]["LI"]
    assert li["rollout"]["D_err_nm2_ps"] > 0 and li["error"]["relative_error"] < 0.6
    assert metrics["observables"]["conductivity"]["system"]["rollout"]["n_replicas"] == 2
    assert metrics["observables"]["rdf"]["LI-TFS"]["error"]["max_abs_dg"] >= 0


def test_glob_pools_mapped_systems(mapped, tmp_path):
    metrics = run_evaluate([f"reference={mapped}/r?", f"output={tmp_path / 'g'}", "observables=[rdf,msd]", "figures=false",
                    "noise_floor=false"])
    assert metrics["reference"]["n_trajectories"] == 2 and metrics["reference"]["names"] == ["r0", "r1"]
    assert metrics["observables"]["msd"]["LI"]["reference"]["n_particles"] == 4 * COPIES
    with pytest.raises(Exception, match="matches nothing"):
        run_evaluate([f"reference={mapped}/nothing_*", f"output={tmp_path / 'n'}"])
