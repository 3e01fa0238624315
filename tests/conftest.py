"""Shared test helpers and fixtures: paths, configs at tiny sizes, tiny systems, models and checkpoints.

Test modules import the plain helpers from here (``from tests.conftest import chain_system``);
pytest injects the fixtures. Sections:

- paths of the data the tests read;
- configs: composing a verb's root config without running hydra's app, tiny overrides,
  running ``python -m cgsim`` and ``cgsim map`` in-process;
- data made on the fly: four mapped chains (session fixture), the wrapped mapping fixture;
- tiny models: chain systems with a history, one tiny model per variant, checkpoints;
- :class:`ModelSymmetryTests`, the mixin that checks every model variant's symmetries.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from cgsim.cli import conf_dir, load_verb
from cgsim.model import MultiScaleDynamics, SystemGraph, collate
from cgsim.model.batch import BeadBatch

# -- paths -----------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
#: a shipped held-out chain (30 beads, reduced LJ units), mapped
SEQ = ROOT / "data" / "chain" / "mapped" / "test" / "seq_000"
#: the all-atom PEO + LiTFSI mapping fixture (PDB, and the same system as a LAMMPS data file)
MAPPING_PDB = FIXTURES / "mapping" / "electrolyte.pdb"
MAPPING_DATA = FIXTURES / "mapping" / "electrolyte.data"
MAPPING_BOX = 2.5  # nm, cubic box of the wrapped mapping fixture


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Tests use tiny tensors: one thread is faster and immune to oversubscription on 2 cores."""
    torch.set_num_threads(1)
    yield


# -- configs ---------------------------------------------------------------------------------------

def compose_root(verb: str, overrides: Sequence[str] | None = None) -> DictConfig:
    """The composed root config of ``verb`` (its schemas registered) with hydra ``overrides``."""
    load_verb(verb)  # registers the verb's schemas
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=verb, overrides=list(overrides or []))


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg(verb, overrides)`` -> the composed root config of ``verb``."""
    return compose_root


def run_evaluate(overrides: Sequence[str]) -> dict[str, Any]:
    """``cgsim evaluate`` in-process; returns its summary."""
    from cgsim import evaluate

    return evaluate.run(compose_root("evaluate", overrides))


def run_map(*overrides: str) -> dict:
    """``cgsim map`` in-process (no progress bar); returns its summary."""
    return load_verb("map")(compose_root("map", ["progress=false", *overrides]))


def run_cgsim(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m cgsim ARGS`` in ``cwd`` (hydra's short error messages), output captured as text."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "cgsim", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_chain_overrides(out, **kw) -> list[str]:
    """Overrides for a chain run of a few seconds."""
    base = {
        "output": str(out),
        "system.n_chains": 3,
        "system.n_monomers": "[8,12]",
        "system.equilibration_time": 5.0,
        "system.production_time": 50.0,
        "system.save_interval": 5.0,
        "frames_per_chunk": 3,
        "progress": False,
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_electrolyte_overrides(out, **kw) -> list[str]:
    """A 106-atom box (2 x PEO4 + 2 LiTFSI, cutoff 0.5 nm) through every stage in a few seconds."""
    base = {
        "system": "electrolyte",
        "output": str(out),
        "system.n_chains": 2,
        "system.chain_length": 4,
        "system.n_salt": 2,
        "system.cutoff": 0.5,
        "system.pack_density": 0.3,
        "system.compress_time": 1.0,
        "system.npt_block": 0.5,
        "system.npt_sample": 0.25,
        "system.npt_window": 0.5,
        "system.npt_min_time": 1.0,
        "system.npt_max_time": 2.0,
        "system.nvt_equilibration_time": 0.2,
        "system.production_time": 4.0,
        "system.save_interval": 1.0,
        "frames_per_chunk": 2,
        "progress": False,
        "platform": "CPU",
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def train_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    """A two-epoch ``debug=tiny`` training run on :func:`mapped_chains` (three to train, one to validate)."""
    return ["debug=tiny", f"data.train=['{data}/seq_00[0-2]']", f"data.val=['{data}/seq_003']", f"output={out}",
            "model.cutoff=2.0", "trainer.tensorboard=false", "trainer.num_threads=1", *extra]


def rollout_cfg(compose: Callable[..., DictConfig], ckpt: Path, out: Path, *extra: str) -> DictConfig:
    """A six-step rollout of ``ckpt`` from :data:`SEQ` into ``out`` (no progress bar)."""
    return compose("rollout", [f"checkpoint={ckpt}", f"initial={SEQ}", f"output={out}", "progress=false",
                               "steps=6", *extra])


def load_bench(name: str) -> ModuleType:
    """The script ``bench/NAME.py`` as a module (``bench/`` on the path: scripts import their siblings)."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- data made on the fly --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mapped_chains(tmp_path_factory) -> Path:
    """Four short chains, generated and mapped (METIS) like the shipped data, in seconds."""
    from cgsim.mapping.command import run as map_run
    from cgsim.reference.generate import run as generate_run

    base = tmp_path_factory.mktemp("chains")
    generate_run(compose_root("generate", tiny_chain_overrides(base / "ref", **{
        "system.n_chains": 4, "system.n_monomers": "[6,9]", "system.production_time": 60.0,
        "system.save_interval": 1.0, "frames_per_chunk": 100})))
    for i in range(4):
        map_run(compose_root("map", [
            f"input.trajectory={base}/ref/seq_{i:03d}.xtc", f"input.topology={base}/ref/seq_{i:03d}.pdb",
            "mapping=metis", "mapping.atoms_per_bead=3", "mapping.keep_whole_max_atoms=2", "trajectory_format=xtc",
            f"output={base}/mapped/seq_{i:03d}", "progress=false"]))
    return base / "mapped"


def write_mapping_dump(path: Path, xyz_nm: np.ndarray, data) -> None:
    """A LAMMPS dump (``id mol type q x y z``, Angstrom, the 2.5 nm box) of frames ``xyz_nm`` of the
    mapping fixture's LAMMPS ``data`` (:func:`cgsim.io.lammps.read_data`), 500 timesteps apart."""
    edge = 10 * MAPPING_BOX
    lines = []
    for f, xyz in enumerate(xyz_nm):
        lines.append(f"ITEM: TIMESTEP\n{500 * f}\nITEM: NUMBER OF ATOMS\n{len(xyz)}\nITEM: BOX BOUNDS pp pp pp\n"
                     f"0 {edge:g}\n0 {edge:g}\n0 {edge:g}\nITEM: ATOMS id mol type q x y z\n")
        lines += [f"{i + 1} {data.molecule_ids[i]} {data.types[i]} {data.charges[i]} {x * 10:.6f} {y * 10:.6f} {z * 10:.6f}\n"
                  for i, (x, y, z) in enumerate(xyz)]
    path.write_text("".join(lines))


def wrapped_md(n_frames: int = 8, seed: int = 0):
    """The mapping fixture with molecules drifting across the (2.5 nm) box, wrapped atom by atom."""
    import mdtraj as md

    ref = md.load(str(MAPPING_PDB))
    rng = np.random.default_rng(seed)
    u = np.repeat(ref.xyz.astype(np.float64), n_frames, axis=0)
    for atoms in ref.topology.find_molecules():
        idx = [a.index for a in atoms]
        u[:, idx] += (rng.uniform(0, MAPPING_BOX, 3) + np.cumsum(rng.uniform(-0.2, 0.2, (n_frames, 3)), axis=0))[:, None]
    w = np.mod(u, MAPPING_BOX)
    t = md.Trajectory(w.astype(np.float32), ref.topology, time=np.arange(n_frames) * 2.0)
    t.unitcell_vectors = np.broadcast_to(np.eye(3) * MAPPING_BOX, (n_frames, 3, 3)).astype(np.float32)
    return t


# -- tiny systems and models -----------------------------------------------------------------------

H = 4  # history frames of the tiny models
BOX = torch.tensor([6.0, 6.0, 6.0], dtype=torch.float64)  # a cubic periodic box, nm
#: float64 tolerance of exact symmetries (only round-off separates the two sides)
TOL = dict(rtol=1e-9, atol=1e-10)


def both_directions(pairs) -> np.ndarray:
    """Bonds ``[(i, j), ...]`` as a (2, 2 E) int array holding each bond in both directions."""
    b = np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T
    return np.concatenate([b, b[::-1]], axis=1)


def chain_system(n_beads: int, box: torch.Tensor | None, seed: int) -> tuple[SystemGraph, torch.Tensor]:
    """A linear chain of beads, 2 fine particles per bead, with a random-walk history (n, H, 3), float64."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = 2 * n_beads
    atom_type = torch.randint(0, 3, (n_atoms,), generator=g)
    a = torch.arange(n_atoms - 1)
    atom_bonds = torch.cat([torch.stack([a, a + 1]), torch.stack([a + 1, a])], dim=1)
    b = torch.arange(n_beads - 1)
    bead_bonds = torch.cat([torch.stack([b, b + 1]), torch.stack([b + 1, b])], dim=1)
    steps = torch.randn(n_beads, 3, generator=g) * 0.3
    x0 = torch.cumsum(steps, 0) + (box / 2 if box is not None else 0)
    hist = [x0]
    for _ in range(H - 1):
        hist.append(hist[-1] + 0.05 * torch.randn(n_beads, 3, generator=g))
    sys_ = SystemGraph(atom_type=atom_type, atom_bonds=atom_bonds, atom_to_bead=torch.arange(n_atoms) // 2,
                       bead_bonds=bead_bonds, n_beads=n_beads, box=box)
    return sys_, torch.stack(hist, dim=1).double()


def batch_of(systems: Sequence[tuple[SystemGraph, torch.Tensor]]) -> BeadBatch:
    """One disjoint batch of ``(system, history)`` pairs."""
    return collate([s for s, _ in systems], [p for _, p in systems])


def tiny_model(cls: type[MultiScaleDynamics] = MultiScaleDynamics, seed: int = 0, **kw) -> MultiScaleDynamics:
    """A tiny float64 model in eval mode (3 atom types, history :data:`H`, cutoff 1 nm, width 16).

    The equivariant model gets ``vector_dim=6``, the velocity scale of :func:`chain_system` and a
    random output layer: a fresh one predicts a zero mean, which would make its symmetry checks
    trivially true.
    """
    from cgsim.model.equivariant import EquivariantDynamics

    torch.manual_seed(seed)
    args = dict(n_atom_types=3, history=H, cutoff=1.0, hidden_dim=16, fine_layers=2, bead_layers=2, n_rbf=8)
    if issubclass(cls, EquivariantDynamics):
        args["vector_dim"] = 6
    args.update(kw)
    m = cls(**args).double().eval()
    if isinstance(m, EquivariantDynamics):
        m.velocity_scale.fill_(0.05)  # the histories of chain_system move ~0.05 nm per frame
        with torch.no_grad():
            last = [mod for mod in m.decoder.modules() if isinstance(mod, torch.nn.Linear)][-1]
            last.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(seed))
    return m


def overfit_one_batch(m, steps: int = 300) -> tuple[float, float, float, float]:
    """Train ``m`` on one 20-bead window; return (first loss, last loss, mean error of the
    deterministic step, mean norm of the target), the last two in nm."""
    sys_, pos = chain_system(20, BOX, 5)
    g = torch.Generator().manual_seed(9)
    nxt = pos[:, -1] + 0.05 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    m.train()
    m.fit_normalization(torch.cat([pos, nxt[:, None]], dim=1))
    batch = collate([sys_], [pos])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.loss(batch, nxt).item()
    for _ in range(steps):
        opt.zero_grad()
        loss = m.loss(batch, nxt)
        loss.backward()
        opt.step()
    m.eval()
    err = (m.step(batch, temperature=0.0) - nxt).norm(dim=-1).mean().item()
    scale = m.target_from_positions(torch.cat([pos, nxt[:, None]], dim=1)).norm(dim=-1).mean().item()
    return first, loss.item(), err, scale


def orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    """A random 3x3 orthogonal matrix (float64) with determinant -1 if ``reflect`` else +1."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def signed_permutations() -> list[torch.Tensor]:
    """The 48 symmetries of a cube (signed axis permutations), float64 3x3."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1.0, -1.0], repeat=3):
            m = torch.zeros(3, 3, dtype=torch.float64)
            m[range(3), perm] = torch.tensor(signs, dtype=torch.float64)
            mats.append(m)
    return mats


# -- tiny checkpoints ------------------------------------------------------------------------------

#: the tiny model of :func:`make_checkpoint`, and its optional parts, as hydra ``_target_`` configs
CKPT_MODEL = {"_target_": "cgsim.model.simulator.MultiScaleDynamics", "history": 3, "cutoff": 2.0, "hidden_dim": 16,
              "fine_layers": 1, "bead_layers": 2, "mlp_layers": 2, "n_rbf": 8, "target": "displacement",
              "min_std": 0.001}
CKPT_REFINER = {"_target_": "cgsim.model.refinement.ScoreRefiner", "cond_dim": 16, "cutoff": 2.0, "hidden_dim": 16,
                "layers": 1, "n_rbf": 8, "levels": 2, "steps_per_level": 2, "step_size": 0.05}
CKPT_COLLECTIVE = {"_target_": "cgsim.model.collective.CentreNoise", "dim": 16, "mlp_layers": 2}


def make_checkpoint(path: Path, atom_types: list[str] | None = None, refinement: bool = False,
                    collective: bool = False, model: dict | None = None, data: dict | None = None) -> Path:
    """An untrained tiny model with normalisation fitted to :data:`SEQ`, saved like ``cgsim train`` does.

    ``model`` replaces the model config (default :data:`CKPT_MODEL`); ``data`` adds entries to the
    checkpoint's data record (e.g. ``train_systems``).
    """
    from cgsim.data.load import load_systems
    from cgsim.model.checkpoint import build_model, save_checkpoint

    systems = load_systems([str(SEQ)], "test")
    vocab = atom_types if atom_types is not None else systems.atom_types
    torch.manual_seed(0)
    config = dict(model) if model is not None else {**CKPT_MODEL, "refinement": dict(CKPT_REFINER) if refinement else None}
    if collective:
        config["collective"] = dict(CKPT_COLLECTIVE)
    net = build_model(OmegaConf.create({"model": config}), len(vocab))
    pos = torch.from_numpy(systems.trajectories[0].positions)  # (T, N, 3)
    net.fit_normalization(pos[:4].permute(1, 0, 2))  # windows (N, H + 1, 3)
    state = {"config": {"model": config, "data": {"history": 3, "stride": 1}}, "model": net.state_dict(),
             "ema": None, "epoch": 0, "step": 0,
             "data": {"atom_types": vocab, "learned_dt": systems.save_interval, "time_unit": systems.time_unit,
                      **(data or {})}}
    return save_checkpoint(path, state)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """The tiny untrained checkpoint of :func:`make_checkpoint` (read only: copy it to change it)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# -- the symmetries of every model variant ---------------------------------------------------------

class ModelSymmetryTests:
    """Mixin: the symmetries a bead-dynamics model variant promises, checked on tiny float64 chains.

    Subclass it as ``Test<Variant>Symmetries`` (pytest then collects the checks once per variant)
    and define :meth:`make_model`. Everything the model returns per bead or per molecule is
    compared: the Gaussian's mean and std, the latent the refiner is conditioned on, the
    collective noise's per-molecule centre std and, with a refiner, its predicted noise
    ``eps_hat`` for perturbed next positions ``y`` (moved with the input). Class attributes say
    what the variant promises:

    - ``equivariant``: the mean rotates and reflects with the input (O(3) without a box, the 48
      symmetries of a cubic box with one) and everything else is invariant. Otherwise the checks
      assert that rotating the input does change the mean (the bead network reads Cartesian
      components; data augmentation teaches the symmetry instead), which also shows that the
      rotation check can fail.
    - ``per_bead_images``: each bead may be moved by its own lattice vector (minimum-image edges).
      ``False`` (coarse level: super-bead centres pool unwrapped positions) promises it for
      whole molecules only.
    - ``any_relabelling``: any permutation of the beads permutes the prediction. ``False``
      (coarse level: segments are numbered from each chain's lowest-index end bead) promises it
      for relabellings that keep which end of the chain comes first.
    - ``tol``: the assert_close tolerance of every comparison (round-off only).
    """

    equivariant: bool = False
    per_bead_images: bool = True
    #: the model reads the box (composition features): checks on open systems do not apply
    periodic_only: bool = False
    any_relabelling: bool = True
    tol: dict = TOL

    def make_model(self) -> MultiScaleDynamics:
        raise NotImplementedError

    @pytest.fixture
    def model(self) -> MultiScaleDynamics:
        return self.make_model()

    # -- what is compared ----------------------------------------------------------------------

    @staticmethod
    def next_positions(batch: BeadBatch, seed: int = 0) -> torch.Tensor:
        """Perturbed next positions (N, 3) near the current frame, for the refiner's input."""
        g = torch.Generator().manual_seed(seed)
        return batch.pos[:, -1] + 0.1 * torch.randn((batch.n_beads, 3), generator=g, dtype=batch.pos.dtype)

    @staticmethod
    def outputs(model: MultiScaleDynamics, batch: BeadBatch, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-bead (``mean``, ``std``, ``latent``, ``eps_hat``, bond-tree ``coupling``) and per-molecule
        (``centre_std``) outputs."""
        pred = model(batch)
        out = {"mean": pred.mean, "std": pred.std, "latent": pred.latent}
        if pred.centre_std is not None:
            assert pred.centre_std.shape == (pred.n_molecules,)
            out["centre_std"] = pred.centre_std
        if pred.tree is not None:
            out["coupling"] = pred.tree.coupling
            out["link_std"] = pred.tree.std
        if model.refiner is not None:
            sigma = torch.full((batch.n_beads,), 0.1, dtype=y.dtype)
            out["eps_hat"] = model.refiner(batch, pred.latent, y, sigma, model.target_scale)
        assert all(v is not None and torch.isfinite(v).all() for v in out.values()), out.keys()
        return out

    def assert_outputs_close(self, got: dict, want: dict, rotation: torch.Tensor | None = None) -> None:
        """``got == want`` key by key; with ``rotation`` the mean of ``want`` is rotated first."""
        assert got.keys() == want.keys()
        for key in want:
            expected = want[key] @ rotation.T if (rotation is not None and key == "mean") else want[key]
            torch.testing.assert_close(got[key], expected, **self.tol, msg=lambda m, k=key: f"{k}: {m}")

    def reference(self, model: MultiScaleDynamics, systems) -> tuple[BeadBatch, torch.Tensor, dict]:
        """The batch of ``(system, history)`` pairs, next positions ``y`` and the model's outputs,
        checked to be non-trivial (a symmetry check of a zero mean proves nothing)."""
        batch = batch_of(systems)
        y = self.next_positions(batch)
        out = self.outputs(model, batch, y)
        assert out["mean"].abs().max() > 1e-3, float(out["mean"].abs().max())
        return batch, y, out

    def _open_refused(self, model: MultiScaleDynamics, box: torch.Tensor | None) -> bool:
        """For a periodic-only model on an open system: check it refuses the batch in one clear
        error (what such a model promises there) and say the symmetry check does not apply."""
        if box is not None or not self.periodic_only:
            return False
        with pytest.raises(ValueError, match="periodic box"):
            model(batch_of([chain_system(10, None, 0)]))
        return True

    # -- the checks ----------------------------------------------------------------------------

    @pytest.mark.parametrize("box", [None, BOX], ids=["open", "periodic"])
    def test_translation_invariance(self, model, box):
        if self._open_refused(model, box):
            return
        batch, y, a = self.reference(model, [chain_system(n, box, s) for s, n in enumerate([12, 30, 7])])
        shift = torch.tensor([1.7, -3.2, 0.45], dtype=torch.float64)
        self.assert_outputs_close(self.outputs(model, batch.with_pos(batch.pos + shift), y + shift), a)

    @pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "rotoreflection"])
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_rotation_about_a_point(self, model, seed, reflect):
        if self._open_refused(model, None):
            return
        batch, y, a = self.reference(model, [chain_system(n, None, s) for s, n in enumerate([20, 9])])
        rot = orthogonal(seed, reflect)
        origin = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
        b = self.outputs(model, batch.with_pos((batch.pos - origin) @ rot.T), (y - origin) @ rot.T)
        self._assert_rotation_behaviour(b, a, rot)

    def test_symmetries_of_a_cubic_box(self, model):
        batch, y, a = self.reference(model, [chain_system(40, BOX, 3)])
        mats = signed_permutations()
        # unwrapped coordinates may leave the box: the edges take the minimum image
        picks = torch.randperm(48, generator=torch.Generator().manual_seed(0))[:8].tolist()
        for k in picks if self.equivariant else picks[:1]:
            rot = mats[k]
            b = self.outputs(model, batch.with_pos(batch.pos @ rot.T), y @ rot.T)
            self._assert_rotation_behaviour(b, a, rot)

    def _assert_rotation_behaviour(self, b: dict, a: dict, rot: torch.Tensor) -> None:
        if self.equivariant:
            # eps_hat: the refiner reads Cartesian displacements, so only its input (the latent) is promised
            self.assert_outputs_close({k: v for k, v in b.items() if k != "eps_hat"},
                                      {k: v for k, v in a.items() if k != "eps_hat"}, rotation=rot)
        else:
            assert not torch.allclose(b["mean"], a["mean"] @ rot.T, rtol=1e-3, atol=1e-4)

    def test_permutation_equivariance(self, model):
        n = 25
        sys_, pos = chain_system(n, BOX, 2)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # new bead k is old bead perm[k]
        inv = torch.argsort(perm)  # new index of old bead k is inv[k]
        if not self.any_relabelling and inv[0] > inv[n - 1]:  # keep the end bead 0 first
            perm[inv[0]], perm[inv[n - 1]] = n - 1, 0
            inv = torch.argsort(perm)
        aperm = torch.cat([2 * perm[:, None], 2 * perm[:, None] + 1], dim=1).reshape(-1)  # atoms follow their beads
        ainv = torch.argsort(aperm)
        psys = SystemGraph(atom_type=sys_.atom_type[aperm], atom_bonds=ainv[sys_.atom_bonds],
                           atom_to_bead=inv[sys_.atom_to_bead[aperm]], bead_bonds=inv[sys_.bead_bonds],
                           n_beads=n, box=BOX)
        _, y, a = self.reference(model, [(sys_, pos)])
        b = self.outputs(model, collate([psys], [pos[perm]]), y[perm])
        self.assert_outputs_close(b, {k: (v if k == "centre_std" else v[perm]) for k, v in a.items()})

    @pytest.mark.parametrize("box", [None, BOX], ids=["open", "periodic"])
    def test_batched_equals_single(self, model, box):
        if self._open_refused(model, box):
            return
        systems = [chain_system(n, box, s) for s, n in enumerate([12, 30, 7])]
        _, y, batched = self.reference(model, systems)
        if "centre_std" in batched:  # each chain is one molecule
            assert batched["centre_std"].shape == (len(systems),)
        offset = 0
        for k, (s, p) in enumerate(systems):
            rows = slice(offset, offset + s.n_beads)
            single = self.outputs(model, collate([s], [p]), y[rows])
            self.assert_outputs_close(single, {key: v[k:k + 1] if key == "centre_std" else v[rows]
                                               for key, v in batched.items()})
            offset += s.n_beads

    def test_wrapped_and_unwrapped_images_give_the_same_prediction(self, model):
        n = 40
        sys_, pos = chain_system(n, BOX, 3)
        g = torch.Generator().manual_seed(1)
        if self.per_bead_images:  # each bead's whole history moved by its own box vector
            images = torch.randint(-2, 3, (n, 1, 3), generator=g).double() * BOX
        else:  # the molecule moved as a whole
            images = torch.tensor([[[1.0, -2.0, 1.0]]], dtype=torch.float64) * BOX
        _, y, a = self.reference(model, [(sys_, pos)])
        self.assert_outputs_close(self.outputs(model, collate([sys_], [pos + images]), y + images[:, 0]), a)
