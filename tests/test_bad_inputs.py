"""Bad input gets one clear line (issue 22): a table of (id, call, expected message fragment).

Each case calls a verb in-process (its ``run(cfg)`` on a hydra-composed config, or the CLI's
override check) and expects :class:`cgsim.errors.CgsimInputError` whose one-line message holds
the fragment; nothing may be written where the case names an output. A few command-line cases
run ``python -m cgsim`` to check the exit status 2 and the single line on stderr. Inputs that
are valid and used to fail (a trajectory mapped without a sidecar, massless virtual sites) and
clean-ups (stale report figures, temporaries of a killed ``cgsim map``) have their own tests at
the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import pytest
import torch

from cgsim.cli import check_overrides, load_verb
from cgsim.errors import CgsimInputError
from cgsim.train.checkpoint import load_checkpoint, save_checkpoint
from tests.test_mapping_cli import PDB, run_map, wrapped_md
from tests.test_rollout import SEQ, _make_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _make_checkpoint(tmp_path_factory.mktemp("bad_ckpt") / "tiny.pt")


@dataclass
class Ctx:
    """What a case needs: a fresh folder, a config composer and a tiny checkpoint."""

    tmp: Path
    compose: Callable[..., Any]
    ckpt: Path

    def run(self, verb: str, overrides: list[str]) -> Any:
        return load_verb(verb)(self.compose(verb, overrides))

    def rollout(self, *overrides: str, initial: Path | str = SEQ, checkpoint: Path | None = None) -> Any:
        return self.run("rollout", [f"checkpoint={checkpoint or self.ckpt}", f"initial={initial}",
                                    f"output={self.tmp / 'out'}", "steps=2", "progress=false", *overrides])

    def train(self, *overrides: str, train: str | None = None, val: str | None = None) -> Any:
        tr = train if train is not None else f"['{SEQ}']"
        va = val if val is not None else f"['{SEQ.parent / 'seq_001'}']"
        return self.run("train", ["debug=tiny", f"data.train={tr}", f"data.val={va}", f"output={self.tmp / 'out'}",
                                  "model.cutoff=2.0", "trainer.tensorboard=false", "trainer.num_threads=1",
                                  "trainer.progress=false", *overrides])

    def evaluate(self, *overrides: str, reference: Path | str = SEQ) -> Any:
        return self.run("evaluate", [f"reference={reference}", f"output={self.tmp / 'out'}", "progress=false",
                                     "figures=false", *overrides])


# -- inputs made on the fly ---------------------------------------------------------------------
#: the fixture system's DCD: header bytes and bytes per frame (83 atoms, with a unit cell)
DCD_HEADER, DCD_FRAME = 276, 56 + 3 * (4 * 83 + 8)


def truncated_dcd(ctx: Ctx, keep: int) -> Path:
    """An 8-frame DCD of the fixture system cut after ``keep`` bytes."""
    path = ctx.tmp / "md.dcd"
    wrapped_md(8).save_dcd(str(path))
    assert path.stat().st_size == DCD_HEADER + 8 * DCD_FRAME
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return path


def checkpoint_with(ctx: Ctx, edit: Callable[[dict], None], name: str = "edited.pt") -> Path:
    data = torch.load(ctx.ckpt, map_location="cpu", weights_only=False)
    edit(data)
    data.pop("format", None)
    data.pop("version", None)
    return save_checkpoint(ctx.tmp / name, data)


def _nan_weight(data: dict) -> None:
    name = next(k for k, v in data["model"].items() if v.is_floating_point() and v.numel() > 1)
    data["model"][name] = data["model"][name].clone()
    data["model"][name].view(-1)[0] = float("nan")


def _periodic(data: dict) -> None:
    data["data"]["periodic"] = True


def copy_of(ctx: Ctx, src: Path, name: str) -> Path:
    dst = ctx.tmp / name / src.name
    shutil.copytree(src, dst)
    return dst


def unsidecared_map(ctx: Ctx, n_frames: int = 40) -> Path:
    """The fixture electrolyte as plain XTC + PDB (no cgsim sidecar), mapped by residue."""
    traj = wrapped_md(n_frames)
    traj.save_xtc(str(ctx.tmp / "plain.xtc"))
    out = ctx.tmp / "mapped"
    run_map(f"input.trajectory={ctx.tmp / 'plain.xtc'}", f"input.topology={PDB}", "mapping=residue", f"output={out}")
    return out


def lammps_map(ctx: Ctx, n_frames: int = 12, timestep: bool = True, ion_scale: float = 1.0,
               out: str = "lmp") -> Path:
    """The fixture electrolyte as a LAMMPS data file + dump without ITEM: TIME (as LAMMPS writes it by
    default), mapped by molecule; ``ion_scale`` scales the Li+ and TFSI- charges (molecules 2-5)."""
    from tests.test_mapping_cli import DATA, write_dump

    data_path = DATA
    if ion_scale != 1.0:
        lines = DATA.read_text().splitlines()
        start, end = lines.index("Atoms # full") + 2, lines.index("Bonds") - 1
        for k in range(start, end):
            tok = lines[k].split()
            if tok and int(tok[1]) >= 2:
                tok[3] = f"{float(tok[3]) * ion_scale:.6f}"
                lines[k] = " ".join(tok)
        data_path = ctx.tmp / "scaled.data"
        data_path.write_text("\n".join(lines) + "\n")
    from cgsim.io.lammps import read_data

    write_dump(ctx.tmp / "run.lammpstrj", wrapped_md(n_frames).xyz.astype(np.float64), read_data(data_path))
    mapped = ctx.tmp / out
    run_map(f"input.trajectory={ctx.tmp / 'run.lammpstrj'}", f"input.topology={data_path}", "mapping=molecule",
            f"output={mapped}", *(["input.lammps_timestep=2.0"] if timestep else []))
    return mapped


# -- the table --------------------------------------------------------------------------------------
CASES: list[tuple[str, Callable[[Ctx], Any], str]] = [
    # a. conductivity without a temperature (a trajectory mapped without a sidecar)
    ("a-conductivity-without-temperature",
     lambda c: c.evaluate("observables=[rdf,conductivity]", "conductivity.charges={LI: 1.0, TFS: -1.0}",
                          reference=unsidecared_map(c)),
     "conductivity.temperature: "),
    ("a-conductivity-temperature-named",
     lambda c: c.evaluate("observables=[conductivity]", reference=unsidecared_map(c)),
     "give conductivity.temperature=K (or temperature=K to `cgsim map`)"),
    # c. a truncated DCD
    ("c-truncated-dcd",
     lambda c: run_map(f"input.trajectory={truncated_dcd(c, DCD_HEADER + 4 * DCD_FRAME + 500)}", f"input.topology={PDB}", "input.dt=1",
                       f"output={c.tmp / 'cg'}"),
     "DCD file is truncated: 4 complete frame(s), its header states 8 and a partial one; the last complete frame is frame 3"),
    ("c-truncated-dcd-at-frame-boundary",
     lambda c: run_map(f"input.trajectory={truncated_dcd(c, DCD_HEADER + 5 * DCD_FRAME)}",
                       f"input.topology={PDB}", "input.dt=1", f"output={c.tmp / 'cg'}"),
     "its header states 8 and no more data; the last complete frame is frame 4"),
    ("c-dcd-header-only",
     lambda c: run_map(f"input.trajectory={truncated_dcd(c, 200)}", f"input.topology={PDB}", "input.dt=1",
                       f"output={c.tmp / 'cg'}"),
     "DCD file is truncated"),
    # d. non-positive temperatures
    ("d-rollout-negative-temperature", lambda c: c.rollout("temperature=-1"),
     "temperature: expected a non-negative temperature (noise scale, 0 = the deterministic mean), got -1.0"),
    ("d-rollout-nan-temperature", lambda c: c.rollout("temperature=nan"), "temperature: expected a non-negative"),
    ("d-map-negative-temperature",
     lambda c: run_map(f"input.trajectory={PDB}", f"output={c.tmp / 'cg'}", "temperature=-1"),
     "temperature: expected a positive temperature (K, or reduced units for LJ systems), got -1.0"),
    ("d-map-zero-temperature",
     lambda c: run_map(f"input.trajectory={PDB}", f"output={c.tmp / 'cg'}", "temperature=0"),
     "temperature: expected a positive temperature"),
    ("d-map-infinite-temperature",
     lambda c: run_map(f"input.trajectory={PDB}", f"output={c.tmp / 'cg'}", "temperature=inf"),
     "temperature: expected a positive temperature"),
    ("d-evaluate-negative-temperature", lambda c: c.evaluate("conductivity.temperature=-1"),
     "conductivity.temperature: expected a positive temperature (K), got -1.0"),
    ("d-evaluate-zero-temperature", lambda c: c.evaluate("conductivity.temperature=0"),
     "conductivity.temperature: expected a positive temperature"),
    ("d-generate-negative-temperature",
     lambda c: c.run("generate", [f"output={c.tmp / 'ref'}", "system.temperature=-1", "progress=false"]),
     "system.temperature: expected a positive number, got -1.0"),
    # e. rollout output that writes into its input
    ("e-rollout-output-is-initial",
     lambda c: c.rollout(f"output={copy_of(c, SEQ, 'in')}", initial=c.tmp / "in" / SEQ.name),
     "is (inside) the initial directory"),
    ("e-rollout-output-inside-initial",
     lambda c: c.rollout(f"output={copy_of(c, SEQ, 'in') / 'rollout'}", initial=c.tmp / "in" / SEQ.name),
     "the output would be written into the input"),
    ("e-rollout-output-holds-initial",
     lambda c: c.rollout(f"output={copy_of(c, SEQ, 'in').parent}", initial=c.tmp / "in" / SEQ.name),
     "holds the initial directory"),
    ("e-rollout-output-is-initial-by-glob",
     lambda c: c.rollout(f"output={copy_of(c, SEQ, 'in')}", initial=f"['{c.tmp / 'in' / 'seq_00?'}']"),
     "choose another output directory"),
    # f. periodic model, initial state without a box
    ("f-periodic-model-without-box",
     lambda c: c.rollout(checkpoint=checkpoint_with(c, _periodic)),
     "has no periodic box (its sidecar's system.periodic is false or its frames carry no box) but the model"),
    # g. NaN weights
    ("g-nan-weights-rollout",
     lambda c: c.rollout(checkpoint=checkpoint_with(c, _nan_weight, "nan.pt")),
     "nan.pt: weights hold NaN or infinity"),
    ("g-nan-weights-load",
     lambda c: load_checkpoint(checkpoint_with(c, _nan_weight, "nan.pt")),
     "value(s) of 'model."),
    ("g-inf-ema-weights",
     lambda c: load_checkpoint(checkpoint_with(
         c, lambda d: d.__setitem__("ema", {k: v * float("inf") if v.is_floating_point() else v
                                            for k, v in d["model"].items()}), "inf.pt")),
     "inf.pt: weights hold NaN or infinity"),
    # h. training options that cannot train
    ("h-batch-size-zero", lambda c: c.train("trainer.batch_size=0"), "trainer.batch_size: expected an integer >= 1, got 0"),
    ("h-batch-size-negative", lambda c: c.train("trainer.batch_size=-4"), "trainer.batch_size: expected an integer >= 1"),
    ("h-max-epochs-zero", lambda c: c.train("trainer.max_epochs=0"), "trainer.max_epochs: expected an integer >= 1, got 0"),
    ("h-max-steps-negative", lambda c: c.train("trainer.max_steps_per_epoch=-1"), "trainer.max_steps_per_epoch: expected"),
    ("h-train-empty", lambda c: c.train(train="[]"), "data.train: is empty; expected at least one mapped-system directory"),
    ("h-val-empty", lambda c: c.train(val="[]"), "data.val: is empty; expected at least one mapped-system directory"),
    # i. validation = training under another path or as a copy
    ("i-val-same-by-other-path",
     lambda c: c.train(train=f"['{copy_of(c, SEQ, 'tr')}']", val=f"['{c.tmp / 'tr' / '..' / 'tr' / SEQ.name}']"),
     "is the same directory as the training system"),
    ("i-val-copy-of-train",
     lambda c: c.train(train=f"['{copy_of(c, SEQ, 'tr')}']", val=f"['{copy_of(c, SEQ, 'va')}']"),
     "is a copy (same mapping and frames) of the training system"),
    ("i-val-same-string", lambda c: c.train(val=f"['{SEQ}']"), "data.val: systems also in data.train"),
    # k. unknown or mistyped overrides (the CLI's check, in-process)
    ("k-unknown-key", lambda c: check_overrides("train", ["trainer.batchsize=3"]),
     "trainer.batchsize: unknown key; did you mean 'trainer.batch_size'? allowed keys of trainer: max_epochs, batch_size"),
    ("k-unknown-top-key", lambda c: check_overrides("rollout", ["stepz=3"]),
     "stepz: unknown key; did you mean 'steps'? allowed keys: checkpoint, initial, steps"),
    ("k-unknown-nested-key", lambda c: check_overrides("evaluate", ["conductivity.temperatur=3"]),
     "conductivity.temperatur: unknown key; did you mean 'conductivity.temperature'?"),
    ("k-wrong-type", lambda c: check_overrides("rollout", ["steps=many"]),
     "steps: Value 'many' of type 'str' could not be converted to Integer"),
    ("k-wrong-type-nested", lambda c: check_overrides("generate", ["system.n_chains=lots"]),
     "system.n_chains: Value 'lots' of type 'str' could not be converted to Integer"),
    ("k-unknown-group-option", lambda c: check_overrides("generate", ["system=nosuch"]),
     "system: no config 'nosuch'; expected one of chain, electrolyte"),
    ("k-bad-syntax", lambda c: check_overrides("rollout", ["steps=[1,2"]), "is not valid override syntax"),
    ("k-unknown-mapping-option", lambda c: check_overrides("map", ["mapping=metis", "mapping.atomsperbead=3"]),
     "mapping.atomsperbead: unknown key; did you mean 'mapping.atoms_per_bead'?"),
    # o. real LAMMPS data and outside trajectories through map and evaluate
    ("o-lammps-dump-without-time", lambda c: lammps_map(c, timestep=False, out="cg"),
     "input.lammps_timestep: "),
    ("o-lammps-dump-without-time-says-what", lambda c: lammps_map(c, timestep=False, out="cg"),
     "is a LAMMPS dump without ITEM: TIME, so its frames' times are unknown; set input.lammps_timestep=DT, the run's "
     "timestep in fs (units real: time = step x DT), or input.dt=PS"),
    ("o-preset-from-content-undecidable", lambda c: c.evaluate(reference=unsidecared_map(c)),
     "observables_preset: the reference's system 'plain' (a name taken from its file) has no preset and its content "
     "implies none (no charged beads, 5 molecules): pass observables_preset= one of ['chain', 'electrolyte'], or "
     "observables=[rdf,msd,...]"),
    ("o-preset-unknown", lambda c: c.evaluate("observables_preset=polymer"),
     "observables_preset: no preset for system 'polymer'; expected one of ['chain', 'electrolyte']"),
    ("o-conductivity-charges-misspelt", lambda c: c.evaluate("observables=[conductivity]", "conductivity.charges=formall",
                                                             "conductivity.temperature=300"),
     "conductivity.charges: expected a mapping of bead type to charge in e, e.g. {Li: 1.0, TFSI: -1.0}, or formal"),
    ("o-explicit-window-too-long-for-blocks",
     lambda c: c.evaluate("observables=[diffusion]", "dynamics.fit_window=[2,20]", reference=unsidecared_map(c, 12)),
     "use fewer blocks or a shorter window"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line(case, tmp_path, compose_cfg, ckpt):
    _, call, expected = case
    ctx = Ctx(tmp=tmp_path, compose=compose_cfg, ckpt=ckpt)
    with pytest.raises(CgsimInputError) as exc:
        call(ctx)
    text = str(exc.value)
    assert "\n" not in text
    assert expected in text
    for name in ("out", "cg", "ref"):
        out = tmp_path / name
        assert not out.exists() or not any(out.iterdir()), f"{out} was written"


def test_table_is_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_rollout_into_a_copy_of_the_input_is_not_written(tmp_path, compose_cfg, ckpt):
    """e: the refused rollout leaves the input directory exactly as it was."""
    d = copy_of(Ctx(tmp_path, compose_cfg, ckpt), SEQ, "in")
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(CgsimInputError):
        Ctx(tmp_path, compose_cfg, ckpt).rollout(f"output={d}", initial=d)
    assert sorted(p.name for p in d.iterdir()) == before


def test_f_non_periodic_model_runs_without_a_box(tmp_path, compose_cfg, ckpt):
    """f: the periodic check does not refuse a model whose checkpoint says non-periodic."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    ck = checkpoint_with(ctx, lambda d: d["data"].__setitem__("periodic", False))
    summary = ctx.rollout(checkpoint=ck)
    assert summary["steps"] == 2


# -- command line: exit status 2 and one line ---------------------------------------------------
def _cgsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cgsim", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


CLI_CASES = [
    ("k-cli-unknown-key", ["train", "trainer.batchsize=3"], "cgsim train: error: trainer.batchsize: unknown key"),
    ("k-cli-wrong-type", ["generate", "system.n_chains=many", "output=o"],
     "cgsim generate: error: system.n_chains: Value 'many'"),
    ("k-cli-missing-steps", ["rollout", "checkpoint=x.pt", "initial=y", "output=o"],
     "cgsim rollout: error: steps: is required; give steps=VALUE"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_command_line_one_line_exit_2(case, tmp_path):
    _, args, expected = case
    res = _cgsim(*args, cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith(expected), res.stderr
    assert not (tmp_path / "o").exists()


def test_hydra_flags_keep_hydra_behaviour(tmp_path):
    res = _cgsim("rollout", "--cfg", "job", "steps=3", cwd=tmp_path)
    assert res.returncode == 0 and "steps: 3" in res.stdout


# -- valid inputs that used to fail, and clean-ups --------------------------------------------------
def test_a_mapped_without_sidecar_evaluates_every_other_observable(tmp_path, compose_cfg, ckpt):
    """a: temperature is null in the sidecar; rdf and msd run, the conductivity with temperature= too."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    mapped = unsidecared_map(ctx)
    assert json.loads((mapped / "beads.json").read_text())["system"]["temperature"] is None
    metrics = ctx.evaluate("observables=[rdf,msd]", reference=mapped)
    assert set(metrics["observables"]) == {"rdf", "msd"}
    metrics = ctx.evaluate("observables=[conductivity]", "conductivity.temperature=353",
                           "conductivity.charges={LI: 1.0, TFS: -1.0}", "dynamics.n_blocks=2", reference=mapped)
    assert "conductivity" in metrics["observables"]


def test_b_massless_virtual_sites_get_weight_zero():
    """b: a 4-point-water-like molecule (an M site without mass) maps; a bead of massless atoms is refused."""
    from cgsim.mapping import build_mapping
    from cgsim.mapping.system import system_from_topology

    top = md.Topology()
    chain = top.add_chain()
    for _ in range(2):
        r = top.add_residue("SOL", chain)
        o = top.add_atom("OW", md.element.oxygen, r)
        for name in ("HW1", "HW2"):
            top.add_bond(o, top.add_atom(name, md.element.hydrogen, r))
        top.add_atom("MW", md.element.virtual, r)
    system = system_from_topology(top, source="tip4p.pdb")
    assert system.masses[3] == 0
    mapping = build_mapping(system, "residue")
    assert mapping.n_beads == 2 and mapping.weights[3] == 0
    xyz = np.random.default_rng(0).normal(size=(8, 3))
    beads = mapping.matrix() @ xyz
    m = system.masses[:3]
    assert np.allclose(beads[0], (m[:, None] * xyz[:3]).sum(0) / m.sum())  # the M site does not move the centre
    # a bead made only of massless atoms: refused, naming it
    lone = md.Topology()
    r = lone.add_residue("DUM", lone.add_chain())
    lone.add_atom("D1", md.element.virtual, r)
    lone.add_atom("D2", md.element.virtual, r)
    with pytest.raises(CgsimInputError, match=r"bead 0 \(atoms \[0, 1\]: DUM0-D1, DUM0-D2\) has mass 0"):
        build_mapping(system_from_topology(lone, source="dummy.pdb"), "molecule")


def test_b_massless_sites_through_map(tmp_path):
    """b: `cgsim map` of a system with a 4-point water (massless M site) maps; the mapping keeps a zero weight."""
    from cgsim.mapping import load_mapping

    ref = md.load(str(PDB))
    top = ref.topology.copy()
    r = top.add_residue("SOL", top.add_chain())
    o = top.add_atom("OW", md.element.oxygen, r)
    for name in ("HW1", "HW2"):
        top.add_bond(o, top.add_atom(name, md.element.hydrogen, r))
    top.add_atom("MW", md.element.virtual, r)
    water = np.array([[1.0, 1.0, 1.0], [1.08, 1.0, 1.0], [0.98, 1.09, 1.0], [1.01, 1.02, 1.0]], dtype=np.float32)
    xyz = np.concatenate([ref.xyz, water[None]], axis=1)
    t = md.Trajectory(np.repeat(xyz, 3, axis=0) + np.arange(3, dtype=np.float32)[:, None, None] * 0.01, top,
                      time=np.arange(3) * 1.0)
    t.unitcell_vectors = np.repeat(np.diag([2.5, 2.5, 2.5])[None], 3, axis=0).astype(np.float32)
    t.save_hdf5(str(tmp_path / "m.h5"))  # HDF5 keeps the virtual element
    out = tmp_path / "cg"
    res = run_map(f"input.trajectory={tmp_path / 'm.h5'}", "mapping=residue", f"output={out}")
    mapping = load_mapping(out / "mapping.yaml")
    assert res["n_frames"] == 3 and (mapping.weights == 0).sum() == 1 and mapping.weights[-1] == 0


def test_j_evaluate_into_an_old_report_clears_its_figures(tmp_path, compose_cfg, ckpt):
    """j: the second report has no bond figures; the first one's are removed, other files stay."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    out = tmp_path / "out"
    run = load_verb("evaluate")
    base = [f"reference={SEQ}", f"output={out}", "progress=false", "noise_floor=false", "dpi=30"]
    run(compose_cfg("evaluate", [*base, "observables=[rdf,bond_lengths]"]))
    assert (out / "figures" / "bond_lengths.png").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "figures" / ".rdf.abcd1234.png").write_bytes(b"torn")  # a killed run's temporary
    run(compose_cfg("evaluate", [*base, "observables=[rdf]"]))
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["rdf.png"]
    assert (out / "notes.txt").read_text() == "mine"
    run(compose_cfg("evaluate", [*base, "observables=[rdf]", "figures=false"]))
    assert not (out / "figures").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["observables_computed"] == ["rdf"]
    del ctx


def test_l_map_rerun_removes_temporaries_of_a_killed_run(tmp_path):
    """l: `.beads.<random>.h5` and friends left by a kill -9 go on the rerun; other hidden files stay."""
    traj = wrapped_md(4)
    traj.save_xtc(str(tmp_path / "md.xtc"))
    out = tmp_path / "cg"
    out.mkdir()
    stale = [".beads.k2x_9abc.h5", ".mapping.zz01y7qq.yaml", ".beads.a1b2c3d4.pdb", ".beads.q9w8e7r6.xtc"]
    for name in stale:
        (out / name).write_bytes(b"half")
    (out / ".keep").write_text("")
    (out / ".beads.notmine.h5.bak").write_text("")
    run_map(f"input.trajectory={tmp_path / 'md.xtc'}", f"input.topology={PDB}", "mapping=residue", f"output={out}")
    assert sorted(p.name for p in out.iterdir()) == sorted([".keep", ".beads.notmine.h5.bak", "beads.h5", "beads.json",
                                                            "beads.pdb", "mapping.yaml"])


def test_c_complete_dcd_still_maps(tmp_path):
    """c: an intact DCD (with or without a box) passes the truncation check."""
    from cgsim.mapping.inputs import dcd_frames

    t = wrapped_md(5)
    t.save_dcd(str(tmp_path / "box.dcd"))
    t.unitcell_vectors = None
    t.save_dcd(str(tmp_path / "nobox.dcd"))
    assert dcd_frames(str(tmp_path / "box.dcd")) == (5, 5, False)
    assert dcd_frames(str(tmp_path / "nobox.dcd")) == (5, 5, False)
    res = run_map(f"input.trajectory={tmp_path / 'nobox.dcd'}", f"input.topology={PDB}", "input.dt=1", "pbc=none",
                  f"output={tmp_path / 'cg'}")
    assert res["n_frames"] == 5


# -- m. reference MD resumed after a kill -9: bitwise on the same platform, stated elsewhere ------------
class _Kill(RuntimeError):
    pass


def _chain_run(compose_cfg, out: Path, monkeypatch=None, kill: str | None = None, at: int = 1, **kw: Any) -> None:
    """A tiny chain run (CPU, one thread; 4 chunks of frames); ``kill`` dies in this session's ``at``-th chunk
    ("chunk") or between its ``at``-th state + checkpoint and their progress record ("commit"), as a kill -9."""
    from cgsim.reference import runner as runner_mod
    from cgsim.reference.generate import run
    from tests.conftest import tiny_chain_overrides

    cfg = compose_cfg("generate", tiny_chain_overrides(out, **{"platform": "CPU", "threads": 1, **kw}))
    if kill is None:
        run(cfg)
        return
    calls = {"n": 0}
    if kill == "chunk":
        original = runner_mod.ChunkedRun._write_chunk

        def dying(self, *a, **k):
            calls["n"] += 1
            original(self, *a, **k)
            if calls["n"] == at:
                raise _Kill

        monkeypatch.setattr(runner_mod.ChunkedRun, "_write_chunk", dying)
    else:
        original = runner_mod.write_json_atomic

        def dying(path, data):
            if str(path).endswith("progress.json"):
                calls["n"] += 1
                if calls["n"] == at:
                    raise _Kill
            return original(path, data)

        monkeypatch.setattr(runner_mod, "write_json_atomic", dying)
    with pytest.raises(_Kill):
        run(cfg)
    monkeypatch.undo()


@pytest.mark.parametrize("kill", ["chunk", "commit"])
def test_m_generate_resumed_after_kill_continues_bitwise(tmp_path, compose_cfg, monkeypatch, capsys, kill):
    """m: the OpenMM checkpoint carries the integrator's random state: killed twice + resumed = never killed."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _chain_run(compose_cfg, whole)
    _chain_run(compose_cfg, killed, monkeypatch, kill="chunk", at=1)
    _chain_run(compose_cfg, killed, monkeypatch, kill=kill, at=2)  # stopped again, two chunks on
    run_dir = killed / ".run"
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["checkpoint_platform"] == "CPU (Threads=1)" and (run_dir / progress["checkpoint"]).is_file()
    capsys.readouterr()
    _chain_run(compose_cfg, killed)
    assert "statistically" not in capsys.readouterr().err
    for i in range(3):
        assert (killed / f"seq_{i:03d}.xtc").read_bytes() == (whole / f"seq_{i:03d}.xtc").read_bytes()
    assert sorted(p.name for p in run_dir.iterdir()) == ["identity.json", "progress.json"]


def test_m_generate_resumed_on_another_platform_says_statistically(tmp_path, compose_cfg, monkeypatch, capsys):
    """m: a run checkpointed on CPU and resumed on Reference goes on from the XML state, saying so in one line."""
    out = tmp_path / "o"
    _chain_run(compose_cfg, out, monkeypatch, kill="chunk")
    capsys.readouterr()
    _chain_run(compose_cfg, out, platform="Reference")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "statistically" in ln]
    assert lines == [f"generate: {out}: resumed from the portable XML state, not an OpenMM checkpoint (it was "
                     "checkpointed on CPU (Threads=1) and resumes on Reference); the run continues statistically "
                     "only, not bitwise"]
    traj = md.load(out / "seq_000.xtc", top=out / "seq_000.pdb")
    np.testing.assert_allclose(traj.time, np.arange(0, 50.01, 5.0))


def test_m_generate_resumes_a_state_written_without_checkpoint(tmp_path, compose_cfg, monkeypatch, capsys):
    """m: run directories of older cgsim (XML state, no checkpoint) stay resumable, statistically."""
    out = tmp_path / "o"
    _chain_run(compose_cfg, out, monkeypatch, kill="chunk")
    run_dir = out / ".run"
    progress = json.loads((run_dir / "progress.json").read_text())
    (run_dir / progress.pop("checkpoint")).unlink()
    progress.pop("checkpoint_platform")
    (run_dir / "progress.json").write_text(json.dumps(progress))
    capsys.readouterr()
    _chain_run(compose_cfg, out)
    err = capsys.readouterr().err
    assert ("(the saved state has no checkpoint, as an older cgsim wrote it); the run continues statistically "
            "only, not bitwise") in err
    traj = md.load(out / "seq_001.xtc", top=out / "seq_001.pdb")
    np.testing.assert_allclose(traj.time, np.arange(0, 50.01, 5.0))
    assert np.all(np.linalg.norm(np.diff(traj.xyz, axis=0), axis=-1).mean(axis=1) > 0)


def test_m_electrolyte_killed_in_npt_and_production_resumes_bitwise(tmp_path, compose_cfg, monkeypatch, capsys):
    """m: PME, constraints and the barostat: NPT blocks and frames of a twice-killed run equal an unkilled run's."""
    from cgsim.reference import electrolyte_generate as eg
    from cgsim.reference import runner as runner_mod
    from cgsim.reference.generate import run
    from tests.test_electrolyte_generate import tiny_overrides

    def cfg(out: Path) -> Any:
        return compose_cfg("generate", tiny_overrides(out, threads=1))

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    run(cfg(whole))
    commit, chunk = eg.Equilibration._commit, runner_mod.ChunkedRun._write_chunk
    calls = {"eq": 0, "chunk": 0}

    def eq_dies(self, progress, state):
        commit(self, progress, state)
        calls["eq"] += 1
        if calls["eq"] == 4:  # minimise, 2 x compress, 1 x NPT
            raise _Kill

    def chunk_dies(self, *a, **k):
        calls["chunk"] += 1
        chunk(self, *a, **k)
        if calls["chunk"] == 2:
            raise _Kill

    for target, name, dying in ((eg.Equilibration, "_commit", eq_dies), (runner_mod.ChunkedRun, "_write_chunk", chunk_dies)):
        monkeypatch.setattr(target, name, dying)
        with pytest.raises(_Kill):
            run(cfg(killed))
        monkeypatch.undo()
    capsys.readouterr()
    run(cfg(killed))
    assert "statistically" not in capsys.readouterr().err
    blocks = [json.loads((d / ".run" / "equilibration" / "progress.json").read_text())["blocks"] for d in (whole, killed)]
    assert [b["density"] for b in blocks[1]] == [b["density"] for b in blocks[0]]
    name = "peo2x4_litfsi2.xtc"
    assert (killed / name).read_bytes() == (whole / name).read_bytes()


# -- n. NPT: the box changes each frame; unwrapping must not bias diffusion -------------------------------
def npt_walk(n_particles: int = 60, n_frames: int = 1500, seed: int = 0) -> dict[str, np.ndarray]:
    """Particles diffusing in a cubic box that fluctuates (an OU process, 8 % rms, ~1.5 % per frame).

    Each frame the barostat scales the wrapped positions with the box, the particles then move
    (Gaussian steps), and positions are wrapped into the new box with LAMMPS-style image counts.
    ``true`` is the path the particles actually made (the sum of those displacements).
    """
    rng = np.random.default_rng(seed)
    length = np.empty(n_frames)
    eta = 0.0
    for i in range(n_frames):
        eta = 0.97 * eta + np.sqrt(1 - 0.97**2) * rng.standard_normal()
        length[i] = 2.0 * (1.0 + 0.08 * eta)
    w = np.empty((n_frames, n_particles, 3))
    img = np.zeros((n_frames, n_particles, 3), dtype=np.int64)
    true = np.empty_like(w)
    w[0] = true[0] = rng.uniform(0, length[0], (n_particles, 3))
    for i in range(1, n_frames):
        moved = w[i - 1] * (length[i] / length[i - 1]) + 0.04 * rng.standard_normal((n_particles, 3))
        k = np.floor(moved / length[i])
        w[i] = moved - k * length[i]
        img[i] = img[i - 1] + k.astype(np.int64)
        true[i] = true[i - 1] + (moved - w[i - 1])
    box = length[:, None, None] * np.eye(3)
    return {"w": w, "images": img, "true": true, "box": box, "lattice": w + img * length[:, None, None]}


def _point_mapper(n: int, pbc: str):
    from cgsim.mapping import BeadMapper, build_mapping
    from cgsim.mapping.system import system_from_topology

    top = md.Topology()
    chain = top.add_chain()
    for _ in range(n):
        top.add_atom("AR", md.element.argon, top.add_residue("AR", chain))
    return BeadMapper(build_mapping(system_from_topology(top, source="argon.pdb"), "residue"), np.zeros((0, 2)), pbc=pbc)


@pytest.mark.parametrize("source", ["image-flags", "lammps-xu", "wrapped-only"])
def test_n_npt_unwrapping_keeps_the_true_path_and_msd(source):
    """n: von Bulow, Bullerjahn & Hummer (2020): each box crossing counts with the box of its frame."""
    from cgsim.observables.msd import msd

    walk = npt_walk()
    n = walk["w"].shape[1]
    mapper = _point_mapper(n, "bonds" if source == "wrapped-only" else "images")
    got = []
    for s in range(0, len(walk["w"]), 400):  # in chunks, as `cgsim map` streams
        sl = slice(s, s + 400)
        if source == "image-flags":
            got.append(mapper.map(walk["w"][sl], walk["box"][sl], walk["images"][sl]))
        elif source == "lammps-xu":
            got.append(mapper.map(walk["lattice"][sl], walk["box"][sl], walk["images"][sl], unwrapped=True))
        else:
            got.append(mapper.map(walk["w"][sl], walk["box"][sl]))
    got = np.concatenate(got)
    shift = walk["true"][0] - got[0]  # the bonds mode starts from the wrapped first frame
    np.testing.assert_allclose(got + shift, walk["true"], atol=1e-9)
    m_true = msd(walk["true"], 1.0, max_lag=1000).msd[0]
    m_got = msd(got, 1.0, max_lag=1000).msd[0]
    np.testing.assert_allclose(m_got, m_true, rtol=1e-9)
    # the lattice positions w + n L (what `xu` holds and images gave before) are off by n dL
    assert np.abs(walk["lattice"] - walk["true"]).max() > 0.1


def test_n_npt_images_at_constant_volume_are_exactly_w_plus_n_l():
    """n: with a fixed box the image unwrapping is w + n L, bit for bit, as before."""
    walk = npt_walk(n_particles=10, n_frames=50, seed=1)
    box = np.repeat(walk["box"][:1], 50, axis=0)
    mapper = _point_mapper(10, "images")
    out = mapper.unwrap(walk["w"], box, walk["images"])
    assert np.array_equal(out, walk["w"] + np.einsum("fni,fij->fnj", walk["images"].astype(float), box))



# -- o. real LAMMPS data: preset, short runs, charges ---------------------------------------------------
def test_o_lammps_dump_maps_and_evaluates_without_options(tmp_path, compose_cfg, ckpt):
    """o: the README's first journey on LAMMPS data: a short dump named after its file evaluates with the
    preset its content implies, the fit window and blocks adapted (and said), the charges stated."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    mapped = lammps_map(ctx, n_frames=12)
    metrics = ctx.evaluate("conductivity.temperature=353", reference=mapped)
    assert metrics["observables_computed"] == ["rdf", "msd", "diffusion", "conductivity"]
    notes = metrics["notes"]
    assert any(n.startswith("observables: preset 'electrolyte' chosen from the content (charged beads") for n in notes)
    assert metrics["settings"]["n_blocks"] < 4
    assert any("blocks of the shortest trajectory (lmp, 12 frames) cannot hold the fit window" in n for n in notes)
    assert any(n.startswith("conductivity: charges used per ion (") and "conductivity.charges=formal" in n for n in notes)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "chosen from the content" in report and "charges used per ion" in report


def test_o_formal_charges_are_one_override_away(tmp_path, compose_cfg, ckpt):
    """o: scaled ion charges (0.8 e) are used and stated by default; conductivity.charges=formal uses 1 e."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    mapped = lammps_map(ctx, n_frames=20, ion_scale=0.8)
    base = ["observables=[conductivity]", "conductivity.temperature=353", "noise_floor=false"]
    scaled = ctx.evaluate(*base, reference=mapped)["observables"]["conductivity"]["system"]["reference"]
    formal = ctx.evaluate(*base, "conductivity.charges=formal", reference=mapped)
    f = formal["observables"]["conductivity"]["system"]["reference"]
    # Li+ (LI), TFSI- (M2) and the PEO chain (M1, net -0.02 e from rounded partial charges)
    assert [scaled[f"charge_e[{k}]"] for k in ("LI", "M2", "M1")] == pytest.approx([0.8, -0.8, -0.02])
    assert [f[f"charge_e[{k}]"] for k in ("LI", "M2")] == pytest.approx([1.0, -1.0])
    assert not f.get("charge_e[M1]")  # neutral: no longer an ion
    assert f["sigma_ne_S_cm"] == pytest.approx(scaled["sigma_ne_S_cm"] / 0.8**2, rel=1e-2)
    assert any("formal (integer) ion charges" in n for n in formal["notes"])


def test_o_formal_charges_round_each_molecule():
    from cgsim.report.suite import formal_charges

    q = np.array([0.8, -0.4, -0.4, 0.3, -0.32, 1.6, 0.01])
    mol = np.array([0, 1, 1, 2, 2, 3, 4])
    np.testing.assert_allclose(formal_charges(q, mol), [1.0, -0.5, -0.5, 0.0, 0.0, 2.0, 0.0])


def test_o_short_run_default_window_widened_to_two_lags(tmp_path, compose_cfg, ckpt):
    """o: 6 frames: the default window (0.02-0.2 of 10 ps) holds one lag; it is widened, and the blocks cut."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    metrics = ctx.evaluate("observables=[msd,diffusion]", reference=unsidecared_map(ctx, 6))
    assert metrics["settings"]["fit_window_ps"] == pytest.approx([2.0, 4.0])  # frames 2 ps apart
    assert metrics["settings"]["n_blocks"] == 2  # 3 frames each: lags up to 4 ps
    assert any("holds fewer than two lags; widened to [2, 4] ps" in n for n in metrics["notes"])
    assert any("block errors use 2 block(s)" in n for n in metrics["notes"])


def test_o_chain_preset_from_a_single_bonded_molecule(tmp_path, compose_cfg, ckpt):
    """o: a chain mapped from outside data (one bonded molecule) gets the chain preset."""
    from cgsim.report.loading import load_set
    from cgsim.report.settings import choose_preset

    ref = load_set(SEQ)
    renamed = [replace(t, system="my_polymer", charges=None) for t in ref]
    preset, note = choose_preset(renamed, {"chain": [], "electrolyte": []}, None)
    assert preset == "chain" and "one bonded molecule per trajectory" in note
    assert choose_preset(ref, {"chain": [], "electrolyte": []}, None) == (ref[0].system, None)


# -- p. unfinished (killed) rollouts -------------------------------------------------------------------
def _killed_rollout(tmp_path: Path, statuses: list[str]) -> Path:
    from tests.test_evaluate import _fake_rollout

    roll = _fake_rollout(tmp_path / "ro", frames=[201] * len(statuses), stopped={})
    (roll / "summary.json").unlink()  # a first call killed before its end writes none
    for r, status in enumerate(statuses):
        side = roll / "seq_000" / f"replica_{r:03d}" / "rollout.json"
        meta = json.loads(side.read_text())
        meta["extra"]["status"] = status
        if status == "running":
            meta["extra"]["steps_done"] = 120
        side.write_text(json.dumps(meta))
    return roll


def test_p_unfinished_rollout_is_stated_and_left_out_of_dynamics(tmp_path, compose_cfg, ckpt, capsys):
    """p: every replica of a killed rollout: structure compared, dynamics not, and the report and the
    summary line say UNFINISHED; include_unfinished=true uses the frames."""
    from tests.test_evaluate import MAPPED_SEQ

    roll = _killed_rollout(tmp_path, ["running", "running"])
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    base = [f"rollout={roll}", "file_index=-1", "noise_floor=false", "observables=[rg,msd,diffusion]"]
    metrics = ctx.evaluate(*base, reference=MAPPED_SEQ)
    obs = metrics["observables"]
    assert obs["rg"]["all"]["rollout"]["n_samples"] == 402 and obs["rg"]["all"]["error"] is not None
    assert all(e["rollout"] is None for e in obs["msd"].values())
    info = metrics["rollout"]["unfinished"]
    assert info["n"] == 2 and info["of"] == 2 and not info["in_dynamics"]
    assert info["trajectories"][0]["steps_done"] == 120
    note = next(n for n in metrics["notes"] if "UNFINISHED" in n)
    assert note.startswith("rollout: UNFINISHED: 2 of 2 trajectories come from a rollout that did not finish")
    assert "the dynamical observables (msd, diffusion) are not computed for rollout" in note
    assert "**UNFINISHED**: 2 of 2 trajectories" in (tmp_path / "out" / "report.md").read_text()
    assert "UNFINISHED rollout (2 of 2 trajectories)" in capsys.readouterr().out
    used = ctx.evaluate(*base, "include_unfinished=true", reference=MAPPED_SEQ)
    assert used["observables"]["msd"]["com:M1"]["rollout"] is not None
    assert used["rollout"]["unfinished"]["in_dynamics"]


def test_p_one_unfinished_replica_among_finished(tmp_path, compose_cfg, ckpt):
    from tests.test_evaluate import MAPPED_SEQ

    roll = _killed_rollout(tmp_path, ["finished", "running", "finished"])
    metrics = Ctx(tmp_path, compose_cfg, ckpt).evaluate(f"rollout={roll}", "file_index=-1", "noise_floor=false",
                                                        "observables=[rg,msd]", reference=MAPPED_SEQ)
    assert metrics["observables"]["msd"]["com:M1"]["rollout"]["n_particles"] == 2
    assert metrics["rollout"]["unfinished"]["n"] == 1
    assert any("1 of 3 trajectories come from a rollout that did not finish" in n and "excluded from the dynamical"
               in n for n in metrics["notes"])
