"""Fit a model's structural prior to its training data and calibrate it on the model's own draws.

Two stages (:mod:`cgsim.model.prior` has the terms and the sampler):

1. :func:`fit_prior`: Boltzmann inversion of the bond, 1-3 and close non-bonded distance
   histograms of the training frames.
2. :func:`calibrate_prior`: the tables are pair *marginals*; summed, and combined with the
   network's Gaussian, they do not reproduce those marginals (correlated terms count twice, the
   Gaussian's mean pulls bonds in). Iterative Boltzmann inversion fixes that against the data
   the model was trained on: draw one learned step (network + prior) from true histories of
   the training systems, histogram the drawn distances and the true next frame's, and move each
   table by ``ln(P_drawn / P_true)`` (:func:`cgsim.model.prior.ibi_update`), a few times. No
   weight of the network changes; only the prior's tables do.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cgsim.data.load import load_systems
from cgsim.data.windows import BeadTrajectory, history_positions
from cgsim.errors import CgsimInputError
from cgsim.geometry.pbc import minimum_image
from cgsim.model.batch import collate
from cgsim.model.card import ModelCard
from cgsim.model.graph import molecule_index
from cgsim.model.prior import KINDS, StructuralPrior, bead_classes, ibi_update
from cgsim.model.prior_tables import taper_change
from cgsim.model.sampling import learned_step
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.model.tree import TreeNoise

#: the last fraction of a non-bonded table's range over which a whole-range update goes smoothly to 0
TAPER_FRACTION = 0.25

FIT_KEYS = ("nb_cutoff", "dr", "min_samples", "max_frames", "steps", "tau", "strength", "anchor", "nb_range",
            "settle", "core_tries", "core_select")


def training_systems(card: ModelCard) -> list[BeadTrajectory]:
    """The training systems a model card records, in the model's fine-type vocabulary."""
    if not card.train_systems:
        raise CgsimInputError(card.path, "the checkpoint lists no training systems; the prior is fitted to them")
    return load_systems(list(card.train_systems), "data.train_systems", list(card.atom_types)).trajectories


def fit_prior(card: ModelCard, options: dict[str, Any],
              systems: Sequence[BeadTrajectory] | None = None) -> StructuralPrior:
    """Fit the structural prior of a model to its own training systems.

    Parameters
    ----------
    card : ModelCard
        The model's card (its training systems and fine-type vocabulary are used).
    options : dict
        ``nb_cutoff`` (nm, required) and optionally ``steps``, ``tau``, ``strength``, ``anchor``,
        ``settle``, ``core_tries``, ``dr``, ``min_samples``, ``max_frames`` (:meth:`StructuralPrior.fit`).
    systems : sequence of BeadTrajectory, optional
        Already loaded training systems.
    """
    return fit_prior_to(systems if systems is not None else training_systems(card), card.atom_types, options)


def fit_prior_to(systems: Sequence[BeadTrajectory], atom_types: Sequence[str], options: dict[str, Any]) -> StructuralPrior:
    """:func:`fit_prior` on loaded trajectories with the fine-type vocabulary ``atom_types``
    (what ``cgsim train`` fits before training a model with ``collective.core_samples``)."""
    opts = {k: v for k, v in options.items() if k in FIT_KEYS}
    if "nb_cutoff" not in opts:
        raise CgsimInputError("--prior", "expected nb_cutoff=<nm> (the radius of the non-bonded core pairs)")
    anchor = opts.pop("anchor", "mean")
    settle = int(opts.pop("settle", 0))
    core_tries = int(opts.pop("core_tries", 0))
    core_select = str(opts.pop("core_select", "first"))
    vocab = list(atom_types)
    rows = []
    for t in systems:
        g = t.graph
        classes = bead_classes(g.atom_type, g.atom_to_bead, g.n_beads, vocab)
        box = None if g.box is None else g.box.numpy()
        rows.append((t.name, classes, g.bead_bonds, t.positions, box))
    prior = StructuralPrior.fit(rows, atom_types=vocab, **opts)
    return prior.with_schedule(anchor=anchor, settle=settle, core_tries=core_tries, core_select=core_select)


@torch.no_grad()
def calibrate_prior(model: MultiScaleDynamics, prior: StructuralPrior, systems: Sequence[BeadTrajectory], stride: int,
                    iterations: int = 5, windows: int = 64, damping: float = 0.5, seed: int = 0,
                    progress: bool = True, rollout_steps: int = 1) -> tuple[StructuralPrior, list[float]]:
    """Iterative Boltzmann inversion of the prior's tables on the model's own draws.

    Parameters
    ----------
    model : MultiScaleDynamics
        The trained network (its refiner schedule as rollouts will use it).
    prior : StructuralPrior
        From :func:`fit_prior`.
    systems : sequence of BeadTrajectory
        Training systems (true histories and next frames).
    stride : int
        Recorded frames per learned step (the model's).
    iterations : int
        Updates of every table.
    windows : int
        Random (system, time) windows drawn per iteration.
    damping : float
        Fraction of the log-ratio applied per update.
    seed : int
        Seed of the window choice and of the draws.
    rollout_steps : int
        1: compare one step from true histories with the true next frame. N > 1: run N steps
        from each true history (the model's own output fed back, as in a rollout) and compare
        the second half of them with the true frames at the same times, so the tables correct
        the drift a rollout accumulates, not only the one-step error.

    Returns
    -------
    prior : StructuralPrior
        The calibrated prior.
    errors : list of float
        Mean |ln(P_drawn / P_true)| over all tables, per iteration (before its update).
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    h = model.history
    span = (h - 1) * stride + stride
    usable = [k for k, t in enumerate(systems) if t.n_frames > span]
    if not usable:
        raise CgsimInputError("data.train_systems", f"no training system has more than {span} frames")
    vocab = prior.atom_types
    classes = {k: bead_classes(systems[k].graph.atom_type, systems[k].graph.atom_to_bead, systems[k].graph.n_beads,
                               vocab) for k in usable}
    errors: list[float] = []
    bar = tqdm(range(iterations), desc="calibrate prior", disable=not progress)
    for _ in bar:
        model.prior = prior
        drawn: dict[tuple[str, int], list[np.ndarray]] = {}
        true: dict[tuple[str, int], list[np.ndarray]] = {}
        n_samples = 0
        for _w in range(windows):
            k = int(rng.choice(usable))
            t = systems[k]
            start = int(rng.integers(0, t.n_frames - span - stride * max(rollout_steps - 1, 0)))
            b = collate([t.graph], [history_positions(t, h, stride, start)])
            topo = prior.topology(classes[k], b.bead_bonds, b.n_beads, torch.device("cpu"), b.pos.dtype)
            noise = functools.partial(torch.randn, (b.n_beads, 3), generator=gen, dtype=b.pos.dtype)
            for step in range(max(rollout_steps, 1)):
                new = learned_step(model, b, noise, prior_topology=topo)
                if step >= rollout_steps // 2:  # rollout mode: the second half of each short rollout
                    n_samples += 1
                    nxt = torch.from_numpy(np.ascontiguousarray(t.positions[start + span + stride * step]))
                    for frame, store in ((new, drawn), (nxt, true)):
                        _collect(prior, topo, frame, b, store)
                b = b.with_pos(torch.cat([b.pos[:, 1:], new[:, None]], dim=1))
        prior, err = _update(prior, drawn, true, n_samples, damping)
        errors.append(err)
        bar.set_postfix(error=f"{err:.3f}")
    model.prior = prior
    return prior, errors


def internal_msd(step: torch.Tensor, molecule: np.ndarray) -> float:
    """Mean square (nm^2) of every bead's step (N, 3) about its molecule's centre step (bead mean),
    over the beads of multi-bead molecules (``molecule`` (N,) their index); NaN without any."""
    step = step.detach()
    mol = torch.from_numpy(molecule)
    n_mol = int(molecule.max()) + 1
    counts = torch.bincount(mol, minlength=n_mol).to(step.dtype)
    centre = torch.zeros(n_mol, 3, dtype=step.dtype).index_add_(0, mol, step) / counts[:, None]
    rel = step - centre[mol]
    keep = counts[mol] > 1
    return float((rel[keep] ** 2).sum(-1).mean()) if bool(keep.any()) else float("nan")


def fit_shape_temperature(model: MultiScaleDynamics, systems: Sequence[BeadTrajectory], stride: int,
                          iterations: int = 3, windows: int = 64, seed: int = 0,
                          progress: bool = True) -> tuple[float, list[float]]:
    """The bond-tree draw's shape temperature that moves beads about their molecule's centre as
    far as MD does in one step (:attr:`cgsim.model.tree.TreeParams.shape_temperature`).

    A draw's innovations are scaled by ``T``; from true histories of the training ``systems``
    (``windows`` random ones per iteration, the same each iteration) the mean square of the drawn
    step about each molecule's centre (after the model's structural prior, when it has one) is
    compared with MD's next frame, and ``T <- T sqrt(MD / drawn)``. The centre's own step is not
    scaled: it sets the diffusion, which the likelihood already fits.

    Parameters
    ----------
    model : MultiScaleDynamics
        A model with bond-tree noise (``model.collective`` a :class:`~cgsim.model.tree.TreeNoise`).
    systems : sequence of BeadTrajectory
        Training systems.
    stride : int
        Recorded frames per learned step (the model's).
    iterations, windows, seed : int
        Updates of ``T``, windows per update, seed of the windows and draws.

    Returns
    -------
    temperature : float
        The fitted ``T`` (also set on ``model.collective``).
    ratios : list of float
        Drawn over MD mean square per iteration, before its update.
    """
    if not isinstance(model.collective, TreeNoise):
        raise CgsimInputError("--shape-temperature", "the model has no bond-tree noise (model/collective=tree)")
    h = model.history
    span = (h - 1) * stride + stride
    usable = [k for k, t in enumerate(systems) if t.n_frames > span]
    if not usable:
        raise CgsimInputError("data.train_systems", f"no training system has more than {span} frames")
    rng = np.random.default_rng(seed)
    picks = [(int(k), int(rng.integers(0, systems[k].n_frames - span))) for k in rng.choice(usable, windows)]
    mols = {k: molecule_index(systems[k].graph.n_beads, systems[k].graph.bead_bonds.numpy()) for k in usable}
    topos: dict[int, Any] = {}
    model.eval()
    temperature = model.collective.shape_temperature
    ratios: list[float] = []
    bar = tqdm(range(iterations), desc="fit shape temperature", disable=not progress)
    for _ in bar:
        model.collective.shape_temperature = temperature
        gen = torch.Generator().manual_seed(seed)
        drawn, true = [], []
        for k, start in picks:
            t = systems[k]
            b = collate([t.graph], [history_positions(t, h, stride, start)])
            topo = None
            if model.prior is not None:
                if k not in topos:
                    cls = bead_classes(t.graph.atom_type, t.graph.atom_to_bead, t.graph.n_beads, model.prior.atom_types)
                    topos[k] = model.prior.topology(cls, b.bead_bonds, b.n_beads, torch.device("cpu"), b.pos.dtype)
                topo = topos[k]
            noise = functools.partial(torch.randn, (b.n_beads, 3), generator=gen, dtype=b.pos.dtype)
            with torch.no_grad():
                new = learned_step(model, b, noise, prior_topology=topo)
            last = b.pos[:, -1]
            nxt = torch.from_numpy(np.ascontiguousarray(t.positions[start + span])).to(last.dtype)
            drawn.append(internal_msd(new - last, mols[k]))
            true.append(internal_msd(nxt - last, mols[k]))
        ratio = float(np.nanmean(drawn) / np.nanmean(true))
        ratios.append(ratio)
        temperature = temperature / math.sqrt(ratio)
        bar.set_postfix(T=f"{temperature:.3f}", ratio=f"{ratio:.3f}")
    model.collective.shape_temperature = temperature
    return temperature, ratios


def _collect(prior: StructuralPrior, topo: Any, frame: torch.Tensor, b: Any, store: dict) -> None:
    """Append the distances of every table's pairs in ``frame`` to ``store[(kind, table)]``."""
    for kind, (pairs, idx) in _pairs_by_kind(prior, topo, frame, b).items():
        if pairs.shape[1] == 0:
            continue
        vec = frame[pairs[0]] - frame[pairs[1]]
        if kind == "nb" and b.box is not None:
            vec = minimum_image(vec, b.box[b.batch[pairs[1]]])
        r = vec.norm(dim=-1).numpy()
        ids = idx.numpy()
        if kind == "nb":  # the neighbour list has a skin: only pairs within the cutoff count
            inside = r < prior.nb_cutoff
            r, ids = r[inside], ids[inside]
        for j in np.unique(ids):
            store.setdefault((kind, int(j)), []).append(r[ids == j])


def _pairs_by_kind(prior: StructuralPrior, topo: Any, frame: torch.Tensor, b: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {"bond": (topo.bond[0], topo.bond[1]), "angle": (topo.angle[0], topo.angle[1])}
    if topo.nb is not None:
        pairs = prior._nb_pairs(frame, b.batch, b.box, topo)  # cut at nb_cutoff in _collect
        out["nb"] = (pairs, topo.nb_lookup[topo.cls[pairs[0]], topo.cls[pairs[1]]])
    return out


def update_tables(prior: StructuralPrior, drawn: dict, true: dict, n_drawn: int, n_true: int, damping: float,
                  nb_whole_range: bool = False) -> tuple[StructuralPrior, float]:
    """One iterative-Boltzmann-inversion update of every table with pairs in both stores.

    Parameters
    ----------
    prior : StructuralPrior
        The current prior.
    drawn, true : dict
        Pair distances (nm), ``{(kind, table index): [arrays]}``, of the model's frames and of MD's.
    n_drawn, n_true : int
        Frames behind each store: histograms are per frame.
    damping : float
        Fraction of the log-ratio applied.
    nb_whole_range : bool
        False: a non-bonded table changes only below its ``hi`` (the fitted core stays a core).
        True: over its whole grid (it may grow a well), the change switched to 0 over the last
        :data:`TAPER_FRACTION` of it (the filter calibration on rollouts).

    Returns
    -------
    prior : StructuralPrior
        With the updated tables (schedule unchanged).
    error : float
        Mean |ln(P_drawn / P_true)| over the compared bins of all tables, before the update.
    """
    tables = {kind: dict(v) for kind, v in prior.tables.items()}
    errs = []
    for kind in KINDS:
        for j, key in enumerate(prior.tables.get(kind, {})):
            s, t = drawn.get((kind, j)), true.get((kind, j))
            if not s or not t:
                continue
            table = prior.tables[kind][key]
            upto = table.hi if kind == "nb" and not nb_whole_range else None
            new, err = ibi_update(table, np.concatenate(s), np.concatenate(t), n_drawn, n_true, damping, upto=upto)
            tables[kind][key] = taper_change(new, table, TAPER_FRACTION) if kind == "nb" and nb_whole_range else new
            errs.append(err)
    out = dataclasses.replace(prior, tables=tables)  # the schedule (settle, core_tries, ...) stays
    return out, float(np.mean(errs)) if errs else 0.0


def _update(prior: StructuralPrior, drawn: dict, true: dict, n_windows: int,
            damping: float) -> tuple[StructuralPrior, float]:
    """:func:`update_tables` of the one-step calibration (as many drawn as true windows)."""
    return update_tables(prior, drawn, true, n_windows, n_windows, damping)
