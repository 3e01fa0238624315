"""The electrolyte path end to end at tiny size: generate -> map (METIS, charged ions) -> train -> rollout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cgsim.mapping.command import run as map_run
from cgsim.metadata import read_sidecar
from cgsim.reference.generate import run as generate_run
from cgsim.rollout.command import rollout
from cgsim.train.loop import train
from tests.conftest import compose_root, tiny_electrolyte_overrides


@pytest.fixture(scope="module")
def mapped_electrolytes(tmp_path_factory) -> Path:
    """Two tiny boxes (2 x PEO4 + 2 LiTFSI), 21 frames each, mapped like data/electrolyte/map_electrolyte.sh."""
    base = tmp_path_factory.mktemp("electrolyte")
    for seed in (1, 2):
        ref = base / "ref" / f"box{seed}"
        generate_run(compose_root("generate", tiny_electrolyte_overrides(
            ref, **{"system.seed": seed, "system.production_time": 10.0, "system.save_interval": 0.5,
                    "frames_per_chunk": 7})))
        stem = ref / "peo2x4_litfsi2"
        map_run(compose_root("map", [f"input.trajectory={stem}.xtc", f"input.topology={stem}.pdb", "mapping=metis",
                                     "mapping.atoms_per_bead=7", "trajectory_format=xtc",
                                     f"output={base}/mapped/box{seed}", "progress=false"]))
    return base / "mapped"


def test_mapped_ions_are_whole_charged_beads(mapped_electrolytes):
    d = mapped_electrolytes / "box1"
    meta = read_sidecar(d / "beads.xtc")
    assert meta.summary["charges_known"] is True
    charges = np.array(meta.extra["particle_charges"])
    spec = yaml.safe_load((d / "mapping.yaml").read_text())
    beads = spec["beads"]
    assert len(beads) == meta.summary["n_beads"] == len(charges)
    assert abs(charges.sum()) < 1e-6
    np.testing.assert_allclose([b["charge"] for b in beads], charges, atol=1e-9)

    def n_atoms(b):  # "0-3" or "5" or "0-3,7"
        return sum(int(r.split("-")[1]) - int(r.split("-")[0]) + 1 if "-" in r else 1 for r in str(b["atoms"]).split(","))

    # Li+ (1 atom, +0.8 e) and TFSI- (15 atoms, -0.8 e) each one whole bead; PEO beads ~7 atoms
    li = [b for b in beads if np.isclose(b["charge"], 0.8)]
    tfsi = [b for b in beads if np.isclose(b["charge"], -0.8)]
    assert len(li) == 2 and all(n_atoms(b) == 1 for b in li)
    assert len(tfsi) == 2 and all(n_atoms(b) == 15 for b in tfsi)
    peo = [n_atoms(b) for b in beads if b not in li and b not in tfsi]
    assert sum(peo) == 2 * 37 and 5 <= np.mean(peo) <= 9


def test_electrolyte_experiment_trains_and_rolls_out(mapped_electrolytes, tmp_path, compose_cfg):
    out = tmp_path / "run"
    cfg = compose_cfg("train", ["experiment=electrolyte", "debug=tiny", f"data.train=['{mapped_electrolytes}/box1']",
                                f"data.val=['{mapped_electrolytes}/box2']", "data.stride=1", "model.cutoff=0.5",
                                "trainer.tensorboard=false", "trainer.num_threads=1", f"output={out}"])
    summary = train(cfg)
    assert summary["epochs_run"] == 2 and np.isfinite(summary["val_nll"])
    ckpt = out / "checkpoints" / "last.pt"
    ro = tmp_path / "rollout"
    rollout(compose_cfg("rollout", [f"checkpoint={ckpt}", f"initial={mapped_electrolytes}/box2", f"output={ro}",
                                    "steps=8", "temperature=0.0", "guard.enabled=false", "progress=false",
                                    "divergence_factor=1000"]))  # an untrained tiny model: only the mechanics
    import mdtraj as md

    traj = md.load(str(ro / "box2" / "replica_000" / "rollout.h5"))
    assert traj.n_frames == 9 and np.isfinite(traj.xyz).all()
    assert traj.unitcell_lengths is not None  # periodic box carried through
