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

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import pytest
import torch

from cgsim.cli import call_verb, check_overrides, load_verb
from cgsim.errors import CgsimInputError
from cgsim.train.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import MAPPING_DATA as DATA
from tests.conftest import MAPPING_PDB as PDB
from tests.conftest import SEQ, compose_root, run_map, wrapped_md, write_mapping_dump
from tests.conftest import make_checkpoint as _make_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _make_checkpoint(tmp_path_factory.mktemp("bad_ckpt") / "tiny.pt")


@dataclass
class Ctx:
    """What a case needs: a fresh folder, a config composer, a tiny checkpoint and pytest's monkeypatch
    (for fault injection: writes the file system refuses)."""

    tmp: Path
    compose: Callable[..., Any]
    ckpt: Path
    mp: pytest.MonkeyPatch | None = None

    def run(self, verb: str, overrides: list[str]) -> Any:
        """The verb in-process, as the command line runs it (:func:`cgsim.cli.call_verb`)."""
        return call_verb(verb, self.compose(verb, overrides))

    def refuse_writes(self, under: Path | str, code: int, after: int = 0, early: bool = False) -> Path:
        """Fault injection: under ``under`` creating files fails with ``OSError(code)`` after ``after``
        successful ones (for EROFS / EACCES also making directories); ``early``: the file system also
        says it is read-only (``os.statvfs``). Tests run as root, so permissions cannot do this."""
        assert self.mp is not None
        under = Path(under).absolute()
        count = {"files": 0}
        real_mkstemp, real_mkdir, real_statvfs = tempfile.mkstemp, os.mkdir, os.statvfs

        def inside(path: Any) -> bool:
            return path is not None and (Path(path).absolute() == under or under in Path(path).absolute().parents)

        def mkstemp(*a: Any, dir: Any = None, **k: Any) -> Any:  # noqa: A002 - tempfile's name
            if inside(dir):
                count["files"] += 1
                if count["files"] > after:
                    raise OSError(code, os.strerror(code), str(dir))
            return real_mkstemp(*a, dir=dir, **k)

        def mkdir(path: Any, *a: Any, **k: Any) -> Any:
            if code != errno.ENOSPC and inside(path):
                raise OSError(code, os.strerror(code), str(path))
            return real_mkdir(path, *a, **k)

        def statvfs(path: Any) -> Any:
            res = real_statvfs(path)
            if not inside(path):
                return res
            fields = list(res)
            fields[8] |= os.ST_RDONLY  # f_flag
            return os.statvfs_result(fields)

        self.mp.setattr(tempfile, "mkstemp", mkstemp)
        self.mp.setattr(os, "mkdir", mkdir)
        if early:
            self.mp.setattr(os, "statvfs", statvfs)
        return under

    def file(self, name: str = "afile") -> Path:
        """A regular file where a user meant a directory."""
        path = self.tmp / name
        path.write_text("not a directory\n")
        return path

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

    def map(self, *overrides: str, trajectory: Path | str | None = None, topology: Path | str | None = PDB,
            output: Path | str | None = None) -> Any:
        """``cgsim map`` of the fixture electrolyte (4 frames, XTC) into ``cg`` unless told otherwise."""
        traj = trajectory if trajectory is not None else xtc(self)
        top = [] if topology is None else [f"input.topology={topology}"]
        return self.run("map", [f"input.trajectory={traj}", *top, f"output={output or self.tmp / 'cg'}",
                                "progress=false", *overrides])

    def generate(self, *overrides: str) -> Any:
        """A tiny chain run (seconds) into ``ref``."""
        from tests.conftest import tiny_chain_overrides

        return self.run("generate", [*tiny_chain_overrides(self.tmp / "ref"), *overrides])

    def demo(self, *overrides: str) -> Any:
        return self.run("demo", [f"output={self.tmp / 'out'}", "progress=false", *overrides])

    def export(self, dst: Path | str | None = None, src: Path | str | None = None, **kw: Any) -> Any:
        from cgsim.train.export import export_model

        return export_model(src or self.ckpt, dst or self.tmp / "out" / "model.pt", **kw)

    def read_only(self, name: str) -> Path:
        """An existing, empty output directory on a file system that says it is read-only."""
        (self.tmp / name).mkdir()
        return self.refuse_writes(self.tmp / name, errno.EROFS, early=True)


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


def xtc(ctx: Ctx, name: str = "md.xtc", n_frames: int = 4, scale: float = 1.0) -> Path:
    """The wrapped fixture electrolyte as a plain XTC (``scale``: its coordinates times that)."""
    traj = wrapped_md(n_frames)
    traj.xyz *= scale
    traj.unitcell_vectors *= scale
    path = ctx.tmp / name
    traj.save_xtc(str(path))
    return path


def nan_frames(ctx: Ctx, name: str = "nan.h5") -> Path:
    """The fixture electrolyte as HDF5 (which keeps NaN) with one NaN atom in frame 2."""
    traj = wrapped_md(4)
    traj.xyz[2, 7] = np.nan
    path = ctx.tmp / name
    traj.save_hdf5(str(path))
    return path


def uneven_times(ctx: Ctx) -> Path:
    traj = wrapped_md(4)
    traj.time = np.array([0.0, 1.0, 3.0, 4.0])
    path = ctx.tmp / "uneven.xtc"
    traj.save_xtc(str(path))
    return path


def edited_copy(ctx: Ctx, name: str, frames: Callable[[md.Trajectory], md.Trajectory] | None = None,
                h5: bool = False, src: Path = SEQ) -> Path:
    """A copy of the mapped system ``src`` whose frames are ``frames(trajectory)`` (as HDF5 with ``h5``,
    which keeps NaN), its sidecar updated to match."""
    d = copy_of(ctx, src, name)
    traj = md.load(str(d / "beads.xtc"), top=str(d / "beads.pdb"))
    if frames is not None:
        traj = frames(traj)
    meta = json.loads((d / "beads.json").read_text())
    meta["n_frames"] = traj.n_frames
    if h5:
        (d / "beads.xtc").unlink()
        traj.save_hdf5(str(d / "beads.h5"))
        meta["trajectory"] = "beads.h5"
    else:
        traj.save_xtc(str(d / "beads.xtc"))
    (d / "beads.json").write_text(json.dumps(meta))
    return d


def _with(**changes: Any) -> Callable[[md.Trajectory], md.Trajectory]:
    def change(traj: md.Trajectory) -> md.Trajectory:
        if "scale" in changes:
            traj.xyz *= changes["scale"]
        if "nan" in changes:
            traj.xyz[changes["nan"], 3] = np.nan
        if "frames" in changes:
            traj = traj[:changes["frames"]]
        return traj
    return change


def ranged_checkpoint(ctx: Ctx, periodic: bool = False, density: float | None = None) -> Path:
    """The tiny checkpoint with the ranges of its training system (seq_000) in its model card."""
    from cgsim.data.load import load_systems
    from cgsim.data.ranges import training_ranges

    systems = load_systems([str(SEQ)], "test")
    ranges = training_ranges(systems.trajectories, systems.atom_types).to_dict()
    if density is not None:
        ranges["density"] = [density, density]

    def edit(data: dict) -> None:
        data["data"]["ranges"] = ranges
        data["data"]["periodic"] = periodic

    return checkpoint_with(ctx, edit, "ranged.pt")


def boxed_copy(ctx: Ctx, name: str, length: float) -> Path:
    """seq_000 as a periodic system in a cubic box of ``length`` nm (its sidecar says periodic)."""
    def boxed(traj: md.Trajectory) -> md.Trajectory:
        traj.unitcell_vectors = np.repeat(np.eye(3, dtype=np.float32)[None] * length, traj.n_frames, axis=0)
        return traj

    d = edited_copy(ctx, name, boxed)
    meta = json.loads((d / "beads.json").read_text())
    meta["system"]["periodic"] = True
    (d / "beads.json").write_text(json.dumps(meta))
    return d


def a_rollout(ctx: Ctx, name: str = "prev", *overrides: str) -> Path:
    """A finished two-step rollout in ``name``."""
    ctx.rollout(f"output={ctx.tmp / name}", *overrides)
    return ctx.tmp / name


def a_training(ctx: Ctx, name: str = "prev") -> Path:
    """A one-epoch, one-step training run in ``name``."""
    ctx.train(*TINY_EPOCH, f"output={ctx.tmp / name}")
    return ctx.tmp / name


TINY_EPOCH = ("trainer.max_epochs=1", "trainer.max_steps_per_epoch=1", "trainer.rollout_steps=2", "trainer.val_windows=4")


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
    write_dump = write_mapping_dump

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


# -- q. required options and counts that cannot run (issue 22: one line, not hydra's text) ----------
CASES += [
    ("q-rollout-missing-steps",
     lambda c: c.run("rollout", [f"checkpoint={c.ckpt}", f"initial={SEQ}", f"output={c.tmp / 'out'}"]),
     "steps: is required; give steps=VALUE (see `cgsim rollout --cfg job`)"),
    ("q-rollout-missing-checkpoint", lambda c: c.run("rollout", [f"initial={SEQ}", "steps=2", f"output={c.tmp / 'out'}"]),
     "checkpoint: is required; give checkpoint=VALUE"),
    ("q-rollout-missing-initial", lambda c: c.run("rollout", [f"checkpoint={c.ckpt}", "steps=2", f"output={c.tmp / 'out'}"]),
     "initial: is required; give initial=VALUE"),
    ("q-rollout-missing-output", lambda c: c.run("rollout", [f"checkpoint={c.ckpt}", f"initial={SEQ}", "steps=2"]),
     "output: is required; give output=VALUE"),
    ("q-evaluate-missing-reference", lambda c: c.run("evaluate", [f"output={c.tmp / 'out'}"]),
     "reference: is required; give reference=VALUE (see `cgsim evaluate --cfg job`)"),
    ("q-map-missing-trajectory", lambda c: c.run("map", [f"output={c.tmp / 'cg'}"]),
     "input.trajectory: is required: input.trajectory=PATH (the trajectory to map)"),
    ("q-map-missing-output", lambda c: c.run("map", [f"input.trajectory={xtc(c)}", f"input.topology={PDB}"]),
     "output: is required: output=DIR (where the bead files go)"),
    ("q-map-file-scheme-without-path", lambda c: c.map("mapping=file"), "mapping.path: is required"),
    ("q-rollout-evaluate-without-reference", lambda c: c.rollout("evaluate=true"),
     "reference: evaluate=true needs reference=PATH"),
    ("q-rollout-zero-steps", lambda c: c.rollout("steps=0"), "steps: expected an integer >= 1, got 0"),
    ("q-rollout-zero-replicas", lambda c: c.rollout("replicas=0"), "replicas: expected an integer >= 1, got 0"),
    ("q-rollout-save-every-zero", lambda c: c.rollout("save_every=0"), "save_every: expected an integer >= 1, got 0"),
    ("q-rollout-checkpoint-every-negative", lambda c: c.rollout("checkpoint_every=-1"),
     "checkpoint_every: expected an integer >= 0, got -1"),
    ("q-train-validate-every-zero", lambda c: c.train("trainer.validate_every=0"), "trainer.validate_every: must be >= 1"),
    ("q-train-val-windows-zero", lambda c: c.train("trainer.val_windows=0"), "trainer.val_windows: expected an integer >= 1"),
    ("q-train-normalization-windows-zero", lambda c: c.train("data.normalization_windows=0"),
     "data.normalization_windows: expected an integer >= 1"),
    ("q-demo-zero-steps", lambda c: c.demo("cases.chain.steps=0"), "cases.chain.steps: expected an integer >= 1"),
    ("q-generate-zero-chains", lambda c: c.generate("system.n_chains=0"), "system.n_chains: expected a positive number"),
    ("q-generate-frames-per-chunk-zero", lambda c: c.generate("frames_per_chunk=0"), "frames_per_chunk: expected a positive"),
]

# -- r. coordinates in the wrong unit: far outside the model's training ranges --------------------------
CASES += [
    ("r-rollout-initial-in-angstrom",
     lambda c: c.rollout(checkpoint=ranged_checkpoint(c), initial=edited_copy(c, "ang", _with(scale=10.0))),
     "span 9.632-21.99 nm, beyond 2x the model's training range 0.7855-2.199 nm (coordinates in Angstrom instead of "
     "nm?); map the initial state in nm, or pass allow_extrapolation=true"),
    ("r-rollout-initial-10x-too-small",
     lambda c: c.rollout(checkpoint=ranged_checkpoint(c), initial=edited_copy(c, "small", _with(scale=0.1))),
     "beyond 2x the model's training range 0.7855-2.199 nm (coordinates in a unit larger than nm"),
    ("r-rollout-box-in-angstrom",
     lambda c: c.rollout(checkpoint=ranged_checkpoint(c, periodic=True, density=30 / 30.0**3),
                         initial=boxed_copy(c, "box", 300.0)),
     "bead density 1.111e-06 /nm^3 lies beyond 2x the model's training range 0.001111-0.001111 /nm^3 (coordinates in "
     "Angstrom instead of nm?)"),
]

# -- s. non-finite positions name the file and the frame ---------------------------------------------
CASES += [
    ("s-rollout-initial-with-nan", lambda c: c.rollout(initial=edited_copy(c, "nan", _with(nan=5), h5=True)),
     "nan/seq_000/beads.h5: frame 5 holds non-finite coordinates (bead 3, 1 coordinate triple(s) in all)"),
    ("s-train-validation-with-nan", lambda c: c.train(val=f"['{edited_copy(c, 'nan', _with(nan=7), h5=True)}']"),
     "beads.h5: frame 7 holds non-finite coordinates"),
    ("s-evaluate-reference-with-nan", lambda c: c.evaluate(reference=edited_copy(c, "nan", _with(nan=5), h5=True)),
     "beads.h5: frame 5 holds non-finite coordinates (particle 3"),
    ("s-map-input-with-nan", lambda c: c.map(trajectory=nan_frames(c)), "nan.h5: frame 2: non-finite coordinates (atom 7)"),
    ("s-rollout-divergence-factor-one", lambda c: c.rollout("divergence_factor=1"),
     "divergence_factor: expected a number > 1"),
]

# -- t. resuming from files that cannot be resumed -----------------------------------------------------
CASES += [
    ("t-rollout-resume-without-state", lambda c: c.rollout("resume=true"),
     "rollout_state.pt: resume=true but there is no rollout state to resume from"),
    ("t-rollout-output-holds-a-rollout", lambda c: c.rollout(f"output={a_rollout(c)}"),
     "prev: output already holds a rollout; pass resume=true to continue it or choose another output"),
    ("t-rollout-resume-with-another-seed", lambda c: c.rollout(f"output={a_rollout(c)}", "resume=true", "seed=5"),
     "rollout_state.pt: rollout was started with a different 'seed'; resume with the same settings"),
    ("t-rollout-state-of-another-format",
     lambda c: ((c.tmp / "prev").mkdir(), torch.save({"a": 1}, c.tmp / "prev" / "rollout_state.pt"),
                c.rollout("resume=true", f"output={c.tmp / 'prev'}")),
     "rollout_state.pt: field 'format' is not 'cgsim-rollout-state'; not a cgsim rollout state"),
    ("t-rollout-resume-truncated-state",
     lambda c: c.rollout(f"output={truncated(a_rollout(c) / 'rollout_state.pt').parent}", "resume=true"),
     "rollout_state.pt: not a readable rollout state (truncated or another format"),
    ("t-rollout-resume-truncated-h5",
     lambda c: c.rollout(f"output={truncated(a_rollout(c) / 'seq_000' / 'replica_000' / 'rollout.h5').parents[2]}",
                         "resume=true"),
     "replica_000/rollout.h5: cannot be read (truncated or not an HDF5 trajectory: HDF5ExtError); the rollout cannot "
     "resume from it: restore the file or start a new output"),
    ("t-rollout-resume-h5-gone",
     lambda c: c.rollout(f"output={removed(a_rollout(c) / 'seq_000' / 'replica_000' / 'rollout.h5').parents[2]}",
                         "resume=true"),
     "rollout.h5: holds 0 frames but the rollout state committed 3; cannot resume"),
    ("t-train-resume-without-checkpoint", lambda c: c.train("resume=true"),
     "checkpoints/last.pt: resume=true but there is no checkpoint to resume from"),
    ("t-train-output-holds-a-run", lambda c: c.train(*TINY_EPOCH, f"output={a_training(c)}"),
     "prev: output already holds a training run; pass resume=true"),
    ("t-train-resume-truncated-checkpoint",
     lambda c: c.train("resume=true", f"output={truncated(a_training(c) / 'checkpoints' / 'last.pt').parents[1]}"),
     "last.pt: not a readable checkpoint"),
    ("t-train-resume-with-another-batch-size",
     lambda c: c.train("resume=true", "trainer.batch_size=3", f"output={a_training(c)}"),
     "last.pt: checkpoint was trained with a different 'trainer.batch_size' config"),
]

# -- w. outputs the file system refuses: under a file, read-only, a full disk (fault injection) --------
UNDER_A_FILE = "afile, which is a file, not a directory; choose another output directory"
READ_ONLY = "is on a read-only file system [EROFS]; choose an output on a writable file system"
REFUSED_RO = "cannot be written: read-only file system [EROFS]; choose an output on a writable file system"
FULL = ("cannot be written: no space left on device [ENOSPC]; free some space (or choose an output on another disk) "
        "and run again; files already there are unchanged")
CASES += [
    ("w-map-output-under-a-file", lambda c: c.map(output=c.file() / "cg"), UNDER_A_FILE),
    ("w-map-output-is-a-file", lambda c: c.map(output=c.file()), "afile is a file, not a directory"),
    ("w-map-read-only", lambda c: c.map(output=c.read_only("cg")), f"cg {READ_ONLY}"),
    ("w-map-read-only-at-write", lambda c: (c.refuse_writes(c.tmp / "cg", errno.EROFS), c.map()),
     f"cg/beads.h5: {REFUSED_RO}"),
    ("w-map-disk-full", lambda c: (c.refuse_writes(c.tmp / "cg", errno.ENOSPC), c.map()), f"cg/beads.h5: {FULL}"),
    ("w-map-disk-full-at-the-last-file", lambda c: (c.refuse_writes(c.tmp / "cg", errno.ENOSPC, after=3), c.map()),
     f"cg/beads.json: {FULL}"),
    ("w-rollout-output-under-a-file", lambda c: c.rollout(f"output={c.file() / 'out'}"), UNDER_A_FILE),
    ("w-rollout-read-only", lambda c: c.rollout(f"output={c.read_only('out')}"), f"out {READ_ONLY}"),
    ("w-rollout-read-only-at-write", lambda c: (c.refuse_writes(c.tmp / "out", errno.EROFS), c.rollout()),
     f"out/dataset.json: {REFUSED_RO}"),
    ("w-rollout-disk-full", lambda c: (c.refuse_writes(c.tmp / "out", errno.ENOSPC), c.rollout()),
     f"out/dataset.json: {FULL}"),
    ("w-train-output-under-a-file", lambda c: c.train(f"output={c.file() / 'out'}"), UNDER_A_FILE),
    ("w-train-read-only", lambda c: c.train(f"output={c.read_only('out')}"), f"out {READ_ONLY}"),
    ("w-train-disk-full", lambda c: (c.refuse_writes(c.tmp / "out", errno.ENOSPC), c.train(*TINY_EPOCH)),
     f"out/checkpoints/last.pt: {FULL}"),
    ("w-evaluate-output-under-a-file", lambda c: c.evaluate(f"output={c.file() / 'out'}"), UNDER_A_FILE),
    ("w-evaluate-read-only-at-write",
     lambda c: (c.refuse_writes(c.tmp / "out", errno.EROFS), c.evaluate("noise_floor=false", "observables=[rdf]")),
     f"out/metrics.json: {REFUSED_RO}"),
    ("w-evaluate-disk-full-at-the-report",
     lambda c: (c.refuse_writes(c.tmp / "out", errno.ENOSPC, after=1), c.evaluate("noise_floor=false", "observables=[rdf]")),
     f"out/report.md: {FULL}"),
    ("w-generate-output-under-a-file", lambda c: c.generate(f"output={c.file() / 'ref'}"), UNDER_A_FILE),
    ("w-generate-read-only", lambda c: c.generate(f"output={c.read_only('ref')}"), f"ref {READ_ONLY}"),
    ("w-generate-disk-full", lambda c: (c.refuse_writes(c.tmp / "ref", errno.ENOSPC), c.generate()),
     f"ref/.run/identity.json: {FULL}"),
    ("w-demo-output-under-a-file", lambda c: c.demo(f"output={c.file() / 'out'}"), UNDER_A_FILE),
    ("w-demo-read-only", lambda c: c.demo(f"output={c.read_only('out')}"), f"out {READ_ONLY}"),
    ("w-export-under-a-file", lambda c: c.export(c.file() / "model.pt"), "afile is a file, not a directory"),
    ("w-export-disk-full", lambda c: (c.refuse_writes(c.tmp / "out", errno.ENOSPC), c.export()), f"out/model.pt: {FULL}"),
    ("w-export-onto-a-directory", lambda c: ((c.tmp / "out").mkdir(), c.export(c.tmp / "out")),
     "out is a directory; expected the path of the model file to write"),
    ("w-export-over-its-source", lambda c: c.export(c.ckpt),
     "is the source checkpoint: exporting over it would lose what it keeps to resume training"),
]

# -- further real mistakes, verb by verb -------------------------------------------------------------------
CASES += [
    # rollout
    ("rollout-checkpoint-not-found", lambda c: c.rollout(checkpoint=c.tmp / "nosuch.pt"), "nosuch.pt: checkpoint file not found"),
    ("rollout-checkpoint-is-text", lambda c: ((c.tmp / "x.pt").write_text("hello"), c.rollout(checkpoint=c.tmp / "x.pt")),
     "x.pt: not a readable checkpoint (truncated or another format: UnpicklingError)"),
    ("rollout-checkpoint-truncated", lambda c: c.rollout(checkpoint=truncated(shutil.copy(c.ckpt, c.tmp / "t.pt"))),
     "t.pt: not a readable checkpoint (truncated or another format"),
    ("rollout-initial-not-found", lambda c: c.rollout(initial=c.tmp / "nosuch"),
     "initial: no mapped system at"),
    ("rollout-initial-is-the-trajectory-file", lambda c: c.rollout(initial=SEQ / "beads.xtc"),
     "beads.xtc: no mapping.yaml; expected a directory written by `cgsim map`"),
    ("rollout-initial-empty-list", lambda c: c.rollout(initial="[]"),
     "initial: expected a mapped-system directory or a list of them, got []"),
    ("rollout-initial-shorter-than-history", lambda c: c.rollout(initial=edited_copy(c, "short", _with(frames=2))),
     "trajectory has 2 frames; the model needs a history of 3 frames"),
    ("rollout-initial-at-another-time-step",
     lambda c: c.rollout(checkpoint=checkpoint_with(c, lambda d: d["data"].__setitem__("learned_dt", 7.0))),
     "initial: frames are 5 tau apart; with the model's stride 1 that is not its learned dt 7 tau"),
    ("rollout-initial-in-other-time-units",
     lambda c: c.rollout(checkpoint=checkpoint_with(c, lambda d: d["data"].__setitem__("time_unit", "ps"))),
     "initial: systems are in tau units, the model was trained in ps"),
    ("rollout-fine-types-unknown-to-the-model",
     lambda c: c.rollout(checkpoint=checkpoint_with(c, lambda d: d["data"].__setitem__(
         "atom_types", [f"X{k}" for k in range(len(d["data"]["atom_types"]))]))),
     "are unknown to the model"),
    ("rollout-by-type-pair-with-min-distance", lambda c: c.rollout("guard.by_type_pair=true", "guard.min_distance=0.3"),
     "guard.by_type_pair: per type pair limits come from guard.min_distance_factor; leave guard.min_distance null"),
    ("rollout-exclusion-factor-above-one", lambda c: c.rollout("exclusion.enabled=true", "exclusion.factor=1.5"),
     "exclusion.factor: expected a fraction of the closest approach in (0, 1], got 1.5"),
    ("rollout-exclusion-without-iterations", lambda c: c.rollout("exclusion.enabled=true", "exclusion.iterations=0"),
     "exclusion.iterations: expected an integer >= 1, got 0"),
    ("rollout-negative-redraws", lambda c: c.rollout("guard.redraws=-1"), "guard.redraws: expected an integer >= 0"),
    ("rollout-guard-scans-no-frames", lambda c: c.rollout("guard.scan_frames=0"), "guard.scan_frames: expected an integer >= 1"),
    ("rollout-bond-factor-below-one", lambda c: c.rollout("guard.max_bond_factor=0.5"),
     "guard.max_bond_factor: expected a factor > 1 of the longest initial bond"),
    ("rollout-negative-min-distance", lambda c: c.rollout("guard.min_distance=-1"), "guard.min_distance: expected a distance >= 0"),
    ("rollout-refine-a-model-without-refiner", lambda c: c.rollout("refine.levels=3"),
     "refine.levels: " ),
    ("rollout-prior-on-a-model-without-prior", lambda c: c.rollout("prior.steps=3"),
     "carries no structural prior (export it with --prior); nothing to schedule"),
    ("rollout-misspelt-device", lambda c: c.rollout("device=gpu0"),
     "device: 'gpu0' is not a torch device; expected cpu, cuda or cuda:N"),
    ("rollout-negative-threads", lambda c: c.rollout("num_threads=-2"),
     "num_threads: expected an integer >= 1 (torch threads) or null, got -2"),
    ("rollout-bad-evaluate-override", lambda c: c.rollout("evaluate=true", f"reference={SEQ}", "evaluate_overrides=['nosuch=1']"),
     "evaluate_overrides: nosuch: unknown key; allowed keys: reference, rollout"),
    # evaluate
    ("evaluate-reference-not-found", lambda c: c.evaluate(reference=c.tmp / "nosuch"),
     "reference: " ),
    ("evaluate-reference-glob-matches-nothing", lambda c: c.evaluate(reference=f"{c.tmp}/nosuch_*"),
     "matches nothing; expected trajectory files or directories"),
    ("evaluate-rollout-not-found", lambda c: c.evaluate(f"rollout={c.tmp / 'nosuch'}"), "rollout: "),
    ("evaluate-unknown-observable", lambda c: c.evaluate("observables=[rdf,foo]"), "observables: unknown observables ['foo']"),
    ("evaluate-no-observables", lambda c: c.evaluate("observables=[]"), "observables: empty selection"),
    ("evaluate-rollout-of-another-system", lambda c: c.evaluate(f"rollout={SEQ.parent / 'seq_001'}"),
     "topology does not match the reference"),
    ("evaluate-zero-stride", lambda c: c.evaluate("stride=0"), "stride: expected a positive whole number, got 0"),
    ("evaluate-zero-rdf-bins", lambda c: c.evaluate("rdf.n_bins=0"), "rdf.n_bins: expected a positive number of bins"),
    ("evaluate-fit-window-reversed", lambda c: c.evaluate("observables=[diffusion]", "dynamics.fit_window=[20,2]"),
     "dynamics.fit_window: expected [t_start, t_end] in ps with 0 <= t_start < t_end"),
    ("evaluate-zero-blocks", lambda c: c.evaluate("observables=[diffusion]", "dynamics.n_blocks=0"),
     "dynamics.n_blocks: expected a positive number of blocks"),
    ("evaluate-unknown-acf-method", lambda c: c.evaluate("observables=[rg_acf]", "dynamics.acf_method=fit"),
     "dynamics.acf_method: got 'fit', expected 'integral' or 'exponential'"),
    ("evaluate-unknown-rdf-method", lambda c: c.evaluate("observables=[rdf]", "rdf.method=fast"),
     "rdf.method: got 'fast', expected one of"),
    ("evaluate-trajectory-without-sidecar",
     lambda c: (shutil.copy(SEQ / "beads.xtc", c.tmp / "b.xtc"), c.evaluate(reference=c.tmp / "b.xtc")),
     "b.json: metadata sidecar not found"),
    ("evaluate-sidecar-not-json",
     lambda c: c.evaluate(reference=sidecar_text(c, "{oops")), "beads.json: not valid JSON"),
    ("evaluate-negative-contact-cutoff", lambda c: c.evaluate("observables=[contact_map]", "polymer.contact_cutoff=-1"),
     "polymer.contact_cutoff: expected a positive number of nm"),
    ("evaluate-zero-dpi", lambda c: c.evaluate("observables=[rdf]", "dpi=0", "figures=true"),
     "dpi: expected an integer >= 1 (figure resolution, dots per inch), got 0"),
    ("evaluate-fit-window-fraction-reversed",
     lambda c: c.evaluate("observables=[diffusion]", "dynamics.fit_window_fraction=[0.5,0.2]"),
     "dynamics.fit_window_fraction: expected 0 <= start < end <= 1"),
    # map
    ("map-trajectory-not-found", lambda c: c.map(trajectory=c.tmp / "no.xtc"), "no.xtc: trajectory file not found"),
    ("map-topology-not-found", lambda c: c.map(topology=c.tmp / "no.pdb"), "no.pdb: topology file not found"),
    ("map-no-topology-for-xtc", lambda c: c.map(topology=None), "cannot read a topology"),
    ("map-topology-of-another-system", lambda c: c.map(topology=SEQ / "beads.pdb"),
     "has 83 atoms per frame but topology"),
    ("map-unknown-pbc-mode", lambda c: c.map("pbc=wrap"), "pbc: unknown mode 'wrap'"),
    ("map-unsupported-output-format", lambda c: c.map("trajectory_format=trr"), "trajectory_format: 'trr' is not supported"),
    ("map-zero-stride", lambda c: c.map("input.stride=0"), "input.stride: expected a positive stride, got 0"),
    ("map-selection-selects-nothing", lambda c: c.map("input.selection='resname NOPE'"), "selects no atoms of"),
    ("map-selection-syntax", lambda c: c.map("input.selection='name ((('"), "is not a valid mdtraj selection"),
    ("map-charges-file-not-found", lambda c: c.map(f"input.charges={c.tmp / 'q.txt'}"), "q.txt: charges file not found"),
    ("map-charges-wrong-count", lambda c: ((c.tmp / "q.txt").write_text("1\n-1\n"), c.map(f"input.charges={c.tmp / 'q.txt'}")),
     "q.txt: expected 83 atom charges (one per atom of the topology), got 2"),
    ("map-metis-zero-atoms-per-bead", lambda c: c.map("mapping=metis", "mapping.atoms_per_bead=0"),
     "mapping.atoms_per_bead: expected a positive number"),
    ("map-mapping-file-not-found", lambda c: c.map("mapping=file", f"mapping.path={c.tmp / 'no.yaml'}"),
     "no.yaml: mapping file not found"),
    ("map-output-holds-a-mapping",
     lambda c: (c.map("mapping=residue", output=c.tmp / "prev"), c.map(trajectory=xtc(c, "b.xtc"), output=c.tmp / "prev")),
     "output dir already holds mapping.yaml, beads.pdb, beads.h5, beads.json; choose another output or set overwrite=true"),
    ("map-frames-unevenly-spaced", lambda c: c.map(trajectory=uneven_times(c)), "frames are not evenly spaced in time"),
    ("map-unreadable-format", lambda c: ((c.tmp / "md.abc").write_text("x"), c.map(trajectory=c.tmp / "md.abc")),
     "md.abc: cannot be read with topology"),
    ("map-empty-trajectory-file", lambda c: ((c.tmp / "e.xtc").write_bytes(b""), c.map(trajectory=c.tmp / "e.xtc")),
     "e.xtc: cannot be read"),
    ("map-unknown-weighting", lambda c: c.map("mapping=residue", "mapping.weighting=charge"),
     "mapping.weighting: 'charge' is not a weighting"),
    # train
    ("train-system-not-found", lambda c: c.train(train=f"['{c.tmp}/nosuch']"), "data.train: no mapped system at"),
    ("train-directory-not-mapped", lambda c: c.train(train=f"['{c.tmp}']"), "no mapping.yaml; expected a directory written by"),
    ("train-history-longer-than-trajectories", lambda c: c.train("data.history=300", "model.history=300"),
     "trajectory has 201 frames; a window of history 300 x stride 1 needs 301"),
    ("train-zero-stride", lambda c: c.train("data.stride=0"), "data.stride: expected a stride of at least 1"),
    ("train-zero-window-step", lambda c: c.train("data.window_step=0"), "data.window_step: expected at least 1"),
    ("train-negative-input-noise", lambda c: c.train("data.noise_std=[-0.1]"),
     "data.noise_std: expected input-noise standard deviations >= 0 nm"),
    ("train-model-history-differs", lambda c: c.train("model.history=5"), "model.history: model reads 5 frames but data.history is 3"),
    ("train-negative-learning-rate", lambda c: c.train("optim.lr=-1"), "optim.lr: expected a learning rate >= 0"),
    ("train-ema-decay-one", lambda c: c.train("optim.ema_decay=1.0"), "optim.ema_decay: expected an EMA decay in (0, 1)"),
    ("train-misspelt-device", lambda c: c.train("trainer.device=gpu0"), "trainer.device: 'gpu0' is not a torch device"),
    ("train-negative-threads", lambda c: c.train("trainer.num_threads=-1"), "trainer.num_threads: expected an integer >= 1"),
    ("train-negative-cutoff", lambda c: c.train("model.cutoff=-1"),
     "model: cannot build cgsim.model.simulator.MultiScaleDynamics from these options (ValueError: cutoff must be positive"),
    ("train-zero-ddp-timeout", lambda c: c.train("trainer.dist_timeout_s=0"), "trainer.dist_timeout_s: expected a positive"),
    # generate
    ("generate-save-interval-zero", lambda c: c.generate("system.save_interval=0"), "system.save_interval: expected a positive"),
    ("generate-production-shorter-than-save-interval",
     lambda c: c.generate("system.production_time=1", "system.save_interval=5"),
     "system.save_interval: 5.0 exceeds production_time 1.0"),
    ("generate-unknown-platform", lambda c: c.generate("platform=GPU9"), "platform: OpenMM platform 'GPU9' is not available here"),
    ("generate-zero-threads", lambda c: c.generate("threads=0"), "threads: expected an integer >= 1 (CPU threads of the MD)"),
    ("generate-chain-lengths-reversed", lambda c: c.generate("system.n_monomers=[12,8]"),
     "system.n_monomers: expected [min, max] with 0 < min <= max"),
    ("generate-negative-timestep", lambda c: c.generate("system.timestep=-0.01"), "system.timestep: expected a positive"),
    ("generate-electrolyte-negative-salt",
     lambda c: c.run("generate", [f"output={c.tmp / 'ref'}", "system=electrolyte", "system.n_salt=-1", "progress=false"]),
     "system.n_salt: expected an integer >= 0"),
    ("generate-electrolyte-negative-pressure",
     lambda c: c.run("generate", [f"output={c.tmp / 'ref'}", "system=electrolyte", "system.pressure=-1", "progress=false"]),
     "system.pressure: expected a number > 0"),
    # demo
    ("demo-zero-threads", lambda c: c.demo("num_threads=0"), "num_threads: expected a positive number of threads or null"),
    ("demo-model-not-found", lambda c: c.demo(f"cases.chain.checkpoint={c.tmp / 'no.pt'}"),
     "cases.chain.checkpoint: "),
    ("demo-initial-not-found", lambda c: c.demo(f"cases.electrolyte.initial={c.tmp / 'nosuch'}"),
     "cases.electrolyte.initial: no mapped system at"),
    # export
    ("export-source-not-found", lambda c: c.export(src=c.tmp / "no.pt"), "no.pt: checkpoint file not found"),
    ("export-unknown-recommended-option", lambda c: c.export(recommend={"steps": 3}),
     "--recommend steps: not a rollout option a model may recommend"),
    ("export-refine-a-model-without-refiner", lambda c: c.export(refine={"levels": 3}),
     "was trained without refinement (model/refinement=score); nothing to schedule"),
    ("export-nan-weights", lambda c: c.export(src=checkpoint_with(c, _nan_weight, "nan.pt")),
     "nan.pt: weights hold NaN or infinity"),
]


def screen(c: Ctx, *extra: str) -> Any:
    """``cgsim screen`` of the shipped electrolyte model into ``c.tmp/out`` (the composition it
    was trained on unless ``extra`` says otherwise)."""
    over = {"checkpoint": str(ROOT / "data/checkpoints/electrolyte.pt"), "eo_li": "8", "chain_length": "20",
            "n_chains": "7", "output": str(c.tmp / "out"), "progress": "false"}
    over.update(dict(e.split("=", 1) for e in extra if not e.startswith("'")))
    return c.run("screen", [f"{k}={v}" for k, v in over.items() if v != "~"] + [e.strip("'") for e in extra if e.startswith("'")])


CASES += [
    # screen (issue 24)
    ("screen-eo-li-not-positive", lambda c: screen(c, "eo_li=-2"),
     "eo_li: expected a positive EO:Li ratio (ether oxygens per Li+), got -2"),
    ("screen-eo-li-zero-in-list", lambda c: screen(c, "eo_li=~", "chain_length=~", "n_chains=~",
                                                   "'compositions=[{eo_li: 0, chain_length: 20, n_chains: 7}]'"),
     "compositions[0].eo_li: expected a positive EO:Li ratio"),
    ("screen-chain-length-below-2", lambda c: screen(c, "chain_length=1"),
     "chain_length: expected the chain length in EO units (an integer >= 2), got 1"),
    ("screen-no-chains", lambda c: screen(c, "n_chains=0"), "n_chains: expected the number of PEO chains"),
    ("screen-half-a-composition", lambda c: screen(c, "n_chains=~"), "n_chains: is required with the other"),
    ("screen-no-composition", lambda c: screen(c, "eo_li=~", "chain_length=~", "n_chains=~"),
     "compositions: no composition given"),
    ("screen-no-salt", lambda c: screen(c, "eo_li=1000"), "eo_li: EO:Li 1000 leaves no Li+"),
    ("screen-unknown-checkpoint", lambda c: screen(c, f"checkpoint={c.tmp / 'nosuch.pt'}"),
     "checkpoint: " + "{tmp}/nosuch.pt does not exist; expected an exported electrolyte model"),
    ("screen-not-an-electrolyte-model", lambda c: screen(c, f"checkpoint={ROOT / 'data/checkpoints/chain.pt'}"),
     "checkpoint: the model was trained on 'chain' data"),
    ("screen-outside-training-range", lambda c: screen(c, "eo_li=20"),
     "eo_li: 20 is outside the model's training range EO:Li 7.78-7.78; give a composition inside it, or "
     "allow_extrapolation=true"),
    ("screen-chain-outside-training-range", lambda c: screen(c, "chain_length=40", "eo_li=8", "n_chains=4"),
     "chain_length: 40 is outside the model's training range 20-20 EO units"),
    ("screen-zero-replicas", lambda c: screen(c, "replicas=0"), "replicas: expected an integer >= 1, got 0"),
    ("screen-negative-time", lambda c: screen(c, "time_ns=-1"), "time_ns: expected a positive number"),
]


def truncated(path: Path | str) -> Path:
    """``path`` cut to half its size (a kill or a full disk while an older cgsim wrote it)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def removed(path: Path) -> Path:
    path.unlink()
    return path


def sidecar_text(ctx: Ctx, text: str) -> Path:
    d = copy_of(ctx, SEQ, "side")
    (d / "beads.json").write_text(text)
    return d


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line(case, tmp_path, compose_cfg, ckpt, monkeypatch):
    _, call, expected = case
    ctx = Ctx(tmp=tmp_path, compose=compose_cfg, ckpt=ckpt, mp=monkeypatch)
    with pytest.raises(CgsimInputError) as exc:
        call(ctx)
    monkeypatch.undo()
    text = str(exc.value)
    assert "\n" not in text
    assert expected.replace("{tmp}", str(tmp_path)) in text
    for name in ("out", "cg", "ref"):
        out = tmp_path / name
        written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
        assert not written, f"{out} was written: {written}"


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
    from tests.conftest import tiny_electrolyte_overrides as tiny_overrides

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


# -- r. the training ranges: run knowingly outside them; map warns on implausible bonds ------------------
def test_r_allow_extrapolation_runs_and_says_so(tmp_path, compose_cfg, ckpt, capsys):
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    summary = ctx.rollout("allow_extrapolation=true", checkpoint=ranged_checkpoint(ctx),
                          initial=edited_copy(ctx, "ang", _with(scale=10.0)))
    assert summary["steps"] == 2
    out = capsys.readouterr().out
    assert "rollout: allow_extrapolation=true: " in out and "beyond 2x the model's training range" in out


def test_r_ranges_of_an_old_checkpoint_come_from_its_training_systems(tmp_path, compose_cfg, ckpt):
    """A checkpoint written before ranges were recorded: measured on its listed training systems."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    old = checkpoint_with(ctx, lambda d: d["data"].update(train_systems=[str(SEQ)], ranges=None), "old.pt")
    with pytest.raises(CgsimInputError, match=r"beyond 2x the model's training range .*Angstrom"):
        ctx.rollout(checkpoint=old, initial=edited_copy(ctx, "ang", _with(scale=10.0)))
    assert ctx.rollout(checkpoint=old)["steps"] == 2  # the same system in nm runs


def test_r_map_warns_when_bonds_are_implausible_for_nm(tmp_path, caplog):
    """The rule: median bead bond outside 0.05-5 nm or median atom bond outside 0.05-0.8 nm."""
    ctx = Ctx(tmp_path, compose_root, Path("unused"))
    with caplog.at_level("WARNING", logger="cgsim.mapping.command"):
        res = ctx.map(trajectory=xtc(ctx, "angstrom.xtc", scale=10.0), output=tmp_path / "a")
    assert len(res["warnings"]) == 1
    warning = res["warnings"][0]
    assert "\n" not in warning and "median atom bond is 1.3 nm (plausible: 0.05-0.8 nm)" in warning
    assert "are the coordinates in Angstrom" in warning
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [warning]
    assert ctx.map(trajectory=xtc(ctx, "nm.xtc"), output=tmp_path / "n")["warnings"] == []


# -- s. divergence is detected whatever the guard says -------------------------------------------------------
def test_s_exploding_rollout_without_guard_ends_diverged(tmp_path, compose_cfg, ckpt, capsys):
    """An untrained model with guard.enabled=false blows up: each replica ends "diverged", with its step
    and replica in summary.json, its sidecar and the summary line; no frame after the divergence."""
    from cgsim.report.loading import load_set

    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    summary = ctx.rollout("steps=30", "replicas=2", "guard.enabled=false")
    line = capsys.readouterr().out
    members = summary["members"]
    assert [m["status"] for m in members] == ["diverged", "diverged"] and summary["n_diverged"] == 2
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [m["status"] for m in saved["members"]] == ["diverged", "diverged"]
    for r, m in enumerate(members):
        assert m["replica"] == r and m["stop_reason"].startswith(f"diverged at step {m['stop_step']}: ")
        assert "x the longest bond of the initial frames" in m["stop_reason"] or "from its centre" in m["stop_reason"]
        assert m["frames"] == m["stop_step"]  # steps 0 .. stop_step - 1
        side = json.loads((tmp_path / "out" / m["name"] / "rollout.json").read_text())
        assert side["extra"]["status"] == "diverged" and side["extra"]["stop_step"] == m["stop_step"]
    first = members[0]
    assert (f"2 DIVERGED (first: seq_000/replica_000, replica 0, {first['stop_reason']}; its frames end at step "
            f"{first['stop_step'] - 1} in {tmp_path / 'out' / 'seq_000' / 'replica_000' / 'rollout.h5'})") in line
    loaded = load_set(tmp_path / "out", file_index=-1)  # evaluate leaves them out of the dynamics
    assert [t.stop_step for t in loaded] == [m["stop_step"] for m in members]


def test_s_a_molecule_that_grows_diverges(ckpt):
    """The molecule-size limit alone (no bond limit) stops a member as diverged."""
    from cgsim.data.load import load_systems
    from cgsim.data.windows import history_positions
    from cgsim.model.checkpoint import load_checkpoint as load
    from cgsim.model.checkpoint import model_from_checkpoint
    from cgsim.rollout.engine import DivergenceLimits, Member, RolloutEngine

    model = model_from_checkpoint(load(ckpt))
    traj = load_systems([str(SEQ)], "t").trajectories[0]
    hist = history_positions(traj, model.history, 1)
    members = [Member(0, r, f"r{r}", traj.graph, seed=r) for r in range(2)]
    limits = [DivergenceLimits(max_size=1e-3), DivergenceLimits(max_size=1e3)]
    engine = RolloutEngine(model, members, temperature=1.0, divergence=limits)
    state = engine.run(engine.initial_state([hist, hist]), 3)
    assert state.status(0) == "diverged" and state.stop_step[0] == 1
    assert state.stop_reason[0].startswith("diverged at step 1: a molecule reached ")
    assert "(3 x the largest of the initial frames)" in state.stop_reason[0]
    assert state.stop_step[1] < 0 and state.status(1) == "running"


def test_s_nan_inside_a_step_is_put_on_its_member(tmp_path, compose_cfg, ckpt, monkeypatch):
    """A step whose sampling itself meets NaN (a refiner's update) stops the member that fails alone, as
    diverged, naming the step; the other replicas go on."""
    import cgsim.rollout.engine as engine_mod
    from cgsim.errors import NonFinitePositions

    real = engine_mod.learned_step

    def failing(model, batch, noise, *a, **k):
        if 1 in noise.args[0]:  # member 1's step, batched or alone: from its third call on
            calls["n"] += 1
            if calls["n"] >= 3:
                raise NonFinitePositions("pos", "positions contain NaN or infinity")
        return real(model, batch, noise, *a, **k)

    calls = {"n": 0}
    monkeypatch.setattr(engine_mod, "learned_step", failing)
    summary = Ctx(tmp_path, compose_cfg, ckpt).rollout("steps=5", "replicas=3", "guard.enabled=false",
                                                       "divergence_factor=1000")
    statuses = [m["status"] for m in summary["members"]]
    assert statuses == ["finished", "diverged", "finished"]
    assert summary["members"][1]["stop_reason"] == "diverged at step 3: non-finite coordinates"


# -- t. a damaged rollout on resume=true: one line, nothing touched -------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_t_truncated_h5_on_resume_touches_nothing(tmp_path, compose_cfg, ckpt):
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    out = a_rollout(ctx, "prev", "replicas=2", "steps=4", "checkpoint_every=2")
    truncated(out / "seq_000" / "replica_001" / "rollout.h5")
    before = _snapshot(out)
    with pytest.raises(CgsimInputError, match=r"replica_001/rollout.h5: cannot be read \(truncated"):
        ctx.rollout(f"output={out}", "replicas=2", "steps=6", "checkpoint_every=2", "resume=true")
    assert _snapshot(out) == before


def test_t_truncated_h5_on_resume_command_line(tmp_path, compose_cfg, ckpt):
    """The command line: exit status 2 and the one line, no HDF5 diagnostics."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt)
    out = a_rollout(ctx)
    truncated(out / "seq_000" / "replica_000" / "rollout.h5")
    res = _cgsim("rollout", f"checkpoint={ckpt}", f"initial={SEQ}", f"output={out}", "steps=4", "progress=false",
                 "resume=true", cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"cgsim rollout: error: {out}/seq_000/replica_000/rollout.h5: cannot be read")


# -- w. a full disk in the middle of a run: the files already there stay whole -------------------------
def test_w_map_full_disk_keeps_the_earlier_mapping(tmp_path, compose_cfg, ckpt, monkeypatch):
    ctx = Ctx(tmp_path, compose_cfg, ckpt, monkeypatch)
    ctx.map("mapping=residue", output=tmp_path / "prev")
    before = _snapshot(tmp_path / "prev")
    ctx.refuse_writes(tmp_path / "prev", errno.ENOSPC, after=3)  # the sidecar, the last of four files
    with pytest.raises(CgsimInputError, match=r"prev/beads.json: cannot be written: no space left on device"):
        ctx.map("mapping=molecule", "overwrite=true", trajectory=xtc(ctx, "other.xtc", n_frames=6), output=tmp_path / "prev")
    monkeypatch.undo()
    assert _snapshot(tmp_path / "prev") == before  # no temporary left, nothing replaced


def test_w_evaluate_full_disk_keeps_the_earlier_report(tmp_path, compose_cfg, ckpt, monkeypatch):
    ctx = Ctx(tmp_path, compose_cfg, ckpt, monkeypatch)
    base = ("noise_floor=false", "figures=true", "dpi=30")
    ctx.evaluate(*base, "observables=[rdf,bond_lengths]")
    before = _snapshot(tmp_path / "out")
    assert "figures/bond_lengths.png" in before
    ctx.refuse_writes(tmp_path / "out", errno.ENOSPC, after=1)
    with pytest.raises(CgsimInputError, match="out/metrics.json: cannot be written: no space left"):
        ctx.evaluate(*base, "observables=[rdf]")
    monkeypatch.undo()
    assert _snapshot(tmp_path / "out") == before


def test_w_train_full_disk_keeps_the_last_checkpoint_and_resumes(tmp_path, compose_cfg, ckpt, monkeypatch):
    """Epoch 2's checkpoint meets a full disk: epoch 1's last.pt and metrics.csv stay whole, and the resumed
    run ends with the same weights as one that never stopped."""
    ctx = Ctx(tmp_path, compose_cfg, ckpt, monkeypatch)
    opts = ("trainer.max_epochs=2", "trainer.max_steps_per_epoch=2", "trainer.rollout_steps=2", "trainer.val_windows=4")
    ctx.train(*opts, f"output={tmp_path / 'whole'}")
    ctx.refuse_writes(tmp_path / "out", errno.ENOSPC, after=3)  # epoch 1: last.pt, best.pt, metrics.csv
    with pytest.raises(CgsimInputError, match="out/checkpoints/last.pt: cannot be written: no space left"):
        ctx.train(*opts)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["epoch"] == 0
    assert len((tmp_path / "out" / "metrics.csv").read_text().splitlines()) == 2
    ctx.train(*opts, "resume=true")
    a = load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_w_rollout_full_disk_mid_run_resumes_to_the_same_frames(tmp_path, compose_cfg, ckpt, monkeypatch):
    ctx = Ctx(tmp_path, compose_cfg, ckpt, monkeypatch)
    opts = ("steps=6", "replicas=2", "checkpoint_every=2", "divergence_factor=1000")
    whole = a_rollout(ctx, "whole", *opts)
    ctx.refuse_writes(tmp_path / "out", errno.ENOSPC, after=14)  # inside the second commit of frames
    with pytest.raises(CgsimInputError, match="cannot be written: no space left on device"):
        ctx.rollout(*opts)
    monkeypatch.undo()
    ctx.rollout(*opts, "resume=true")
    for r in range(2):
        name = f"seq_000/replica_{r:03d}/rollout.h5"
        assert np.array_equal(md.load(str(tmp_path / "out" / name)).xyz, md.load(str(whole / name)).xyz)


def test_w_generate_full_disk_then_rerun_continues_bitwise(tmp_path, compose_cfg, ckpt, monkeypatch):
    ctx = Ctx(tmp_path, compose_cfg, ckpt, monkeypatch)
    threads = ("platform=CPU", "threads=1")
    ctx.run("generate", [*_tiny_chain(tmp_path / "whole"), *threads])
    ctx.refuse_writes(tmp_path / "ref", errno.ENOSPC, after=8)
    with pytest.raises(CgsimInputError, match="cannot be written: no space left on device"):
        ctx.generate(*threads)
    monkeypatch.undo()
    ctx.generate(*threads)
    for i in range(3):
        assert (tmp_path / "ref" / f"seq_{i:03d}.xtc").read_bytes() == (tmp_path / "whole" / f"seq_{i:03d}.xtc").read_bytes()


def _tiny_chain(out: Path) -> list[str]:
    from tests.conftest import tiny_chain_overrides

    return tiny_chain_overrides(out)


# -- export from the command line: one line, exit status 2 ------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["{tmp}/no.pt", "{tmp}/m.pt"], "export: error: {tmp}/no.pt: checkpoint file not found"),
    (["{ckpt}", "{tmp}/m.pt", "--refine", "levels"], "export: error: --refine levels: expected KEY=VALUE, e.g. levels=12"),
    (["{ckpt}", "{ckpt}"], "export: error: dst: {ckpt} is the source checkpoint"),
], ids=["export-cli-source-not-found", "export-cli-refine-without-value", "export-cli-over-its-source"])
def test_export_command_line_one_line_exit_2(tmp_path, ckpt, capsys, args, expected):
    from cgsim.train.export import main

    with pytest.raises(SystemExit) as exc:
        main([a.format(tmp=tmp_path, ckpt=ckpt) for a in args])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith(expected.format(tmp=tmp_path, ckpt=ckpt))


def test_w_hdf5_failing_mid_write_is_one_line_and_leaves_the_file(tmp_path, monkeypatch):
    """pytables reports a full disk inside an HDF5 write as HDF5ExtError, not OSError: the
    rollout's frame append (an HDF5 write through atomic_path) says so in one line, and the
    rollout.h5 already there is unchanged."""
    import mdtraj as md
    from tables.exceptions import HDF5ExtError

    from cgsim.errors import CgsimOutputError
    from cgsim.io_utils import atomic_path

    target = tmp_path / "rollout.h5"
    target.write_bytes(b"old frames")
    monkeypatch.setattr(md.formats.HDF5TrajectoryFile, "write",
                        lambda self, *a, **k: (_ for _ in ()).throw(HDF5ExtError("Problems appending the elements")))
    with pytest.raises(CgsimOutputError, match="rollout.h5: cannot be written"):
        with atomic_path(target) as tmp, md.formats.HDF5TrajectoryFile(str(tmp), "w") as fh:
            fh.write(coordinates=np.zeros((1, 2, 3), dtype=np.float32))
    assert target.read_bytes() == b"old frames"
    assert [p.name for p in tmp_path.iterdir()] == ["rollout.h5"]
