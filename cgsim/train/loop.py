"""``cgsim train``: fit the multi-scale simulator to bead trajectories.

``train(cfg)`` is a plain function (hydra only composes ``cfg``). One epoch = one pass over the
training windows in a permutation fixed by ``(seed, epoch)``; after each epoch the model (its
EMA if enabled) is validated by one-step NLL and by short rollouts, and ``last.pt`` (and
``best.pt`` when the rollout score improves) are written atomically. ``resume=true`` reloads
``last.pt`` and continues with the next epoch; because every source of randomness is derived
from ``(seed, epoch)``, a resumed run ends with the same parameters as an uninterrupted one.

Launched by ``torchrun --nproc_per_node K -m cgsim train ...`` it trains with
DistributedDataParallel (gloo on CPU, nccl on GPU): each rank takes every K-th window of the
epoch's permutation; rank 0 validates, logs and writes checkpoints.

:func:`train` only orchestrates named steps: :func:`setup_run` (output, data, model, optimiser;
a resumed run reloads its state), then per epoch :func:`fit_epoch`, :func:`validate_epoch` and
:func:`save_epoch` (rank 0), and a summary line.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cgsim.checks import content_digest, positive_int, required, same_systems, torch_device
from cgsim.config_compat import with_added_defaults
from cgsim.data.load import SystemSet, load_systems
from cgsim.data.ranges import training_ranges
from cgsim.data.windows import WindowCollator, WindowDataset
from cgsim.errors import CgsimInputError
from cgsim.io_utils import check_output_directory
from cgsim.model.checkpoint import (
    build_model,
    load_checkpoint,
    model_from_checkpoint,
    restore_training,
    save_checkpoint,
    saved_config,
    training_state,
)
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.model.tree import TreeNoise
from cgsim.train.config import TrainConfig
from cgsim.train.ema import EMA
from cgsim.train.logger import MetricLogger
from cgsim.train.prior_fit import fit_prior_to
from cgsim.train.validation import one_step_dsm, one_step_nll, rollout_validation

# build_model and model_from_checkpoint live in cgsim.model.checkpoint; re-exported for older imports
__all__ = ["RESUME_MUST_MATCH", "EpochFit", "TrainingRun", "build_model", "fit_epoch", "model_from_checkpoint", "save_epoch",
           "setup_run", "train", "validate_epoch"]

#: config sections that must match for ``resume=true`` (anything else may change, e.g. max_epochs)
#: proposals per bead of the excluded volume in the draws of a model trained with it (a sampling
#: setting stored with the fitted prior; ``cgsim rollout prior.core_tries=N`` overrides it)
CORE_TRIES = 16
RESUME_MUST_MATCH = ("model", "data", "optim", "trainer.batch_size", "trainer.seed")


class _LossModule(nn.Module):
    """Wraps the model so DDP sees the loss computation as ``forward``."""

    def __init__(self, model: MultiScaleDynamics) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs, target, generator=None):  # noqa: D102
        return self.model.loss(inputs, target, generator)


def _lr_lambda(warmup: int, total: int, min_factor: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _select(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    saved = with_added_defaults(saved, TrainConfig())
    for key in RESUME_MUST_MATCH:
        if _select(saved, key) != _select(current, key):
            raise CgsimInputError(str(path), f"checkpoint was trained with a different '{key}' config; "
                                             "resume with the same config or start a new output")


def _check_options(cfg: DictConfig) -> None:
    """One-line errors for options that cannot train: empty splits, no epochs, empty batches."""
    tc, data = cfg.trainer, cfg.data
    for key in ("train", "val"):
        if data[key] is None or len(data[key]) == 0:
            what = "training systems" if key == "train" else "validation systems (they choose best.pt)"
            raise CgsimInputError(f"data.{key}", f"is empty; expected at least one mapped-system directory (or glob) of {what}")
    for key in ("batch_size", "max_epochs"):
        value = tc[key]
        if value is None or int(value) < 1:
            raise CgsimInputError(f"trainer.{key}", f"expected an integer >= 1, got {value}")
    if tc.max_steps_per_epoch is not None and int(tc.max_steps_per_epoch) < 0:
        raise CgsimInputError("trainer.max_steps_per_epoch", f"expected an integer >= 1 or null (all windows), "
                                                             f"got {tc.max_steps_per_epoch}")
    positive_int(tc.val_windows, "trainer.val_windows", what=" (validation windows)")
    positive_int(tc.rollout_steps, "trainer.rollout_steps", minimum=0, what=" (0 = no rollout validation)")
    positive_int(data.normalization_windows, "data.normalization_windows", what=" (windows the normalisation is fitted to)")
    positive_int(tc.num_threads, "trainer.num_threads", allow_none=True, what=" (torch threads)")
    torch_device(tc.device, "trainer.device")
    if any(not (math.isfinite(float(s)) and float(s) >= 0) for s in data.noise_std):
        raise CgsimInputError("data.noise_std", f"expected input-noise standard deviations >= 0 nm, got {list(data.noise_std)}")
    if not float(tc.get("dist_timeout_s", 60.0)) > 0:
        raise CgsimInputError("trainer.dist_timeout_s", f"expected a positive number of seconds, got {tc.dist_timeout_s}")
    _check_optim(cfg.optim)


def _check_optim(oc: DictConfig) -> None:
    """One-line errors for optimiser options torch or the EMA would refuse with a traceback."""
    rules = (("lr", lambda v: v >= 0, "a learning rate >= 0 (0 holds the weights still)"), ("weight_decay", lambda v: v >= 0, "a weight decay >= 0"),
             ("warmup_steps", lambda v: v >= 0, "warm-up steps >= 0"),
             ("min_lr_factor", lambda v: 0 <= v <= 1, "a factor in [0, 1] of the learning rate"),
             ("grad_clip", lambda v: v >= 0, "a gradient-norm clip >= 0 (0 = none)"))
    for key, ok, what in rules:
        value = oc[key]
        if value is not None and not (math.isfinite(float(value)) and ok(float(value))):
            raise CgsimInputError(f"optim.{key}", f"expected {what}, got {value}")
    if oc.ema_decay is not None and not 0 < float(oc.ema_decay) < 1:
        raise CgsimInputError("optim.ema_decay", f"expected an EMA decay in (0, 1) or null (no EMA), got {oc.ema_decay}")


def _system_digests(systems: Any) -> list[tuple[str, str]]:
    """``(directory, content digest)`` of each loaded system: its mapping hash and frames."""
    return [(t.name, content_digest(t.positions, extra=h))
            for t, h in zip(systems.trajectories, systems.mapping_hashes, strict=True)]


def _check_split(train_set: Any, val_set: Any) -> None:
    """Refuse validation systems that are training systems (by name, resolved path or content)."""
    overlap = {t.name for t in train_set.trajectories} & {t.name for t in val_set.trajectories}
    if overlap:
        raise CgsimInputError("data.val", f"systems also in data.train: {sorted(overlap)[:3]}; splits must be by system")
    same = same_systems(_system_digests(train_set), _system_digests(val_set))
    if same is not None:
        val, tr, how = same
        raise CgsimInputError("data.val", f"{val} is {how} the training system {tr}; validation on training data "
                                          "measures nothing: splits must be by system")


def _distributed(backend: str, timeout_s: float = 60.0) -> tuple[int, int]:
    """``(rank, world size)``; under torchrun (``WORLD_SIZE`` > 1) the process group is started
    with a collective timeout of ``timeout_s`` seconds (a hung peer fails, not hangs, the run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if not timeout_s > 0:
            raise CgsimInputError("trainer.dist_timeout_s", f"expected a positive number of seconds, got {timeout_s}")
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=float(timeout_s)))
    if world > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


#: how long ranks > 0 wait between epochs for rank 0's validation and checkpoints (not a collective)
EPOCH_WAIT = timedelta(days=7)


def _epoch_done(rank: int, epoch: int) -> None:
    """Ranks > 0 wait for rank 0 to finish ``epoch`` (validated and saved) through the process
    group's key-value store: a long validation is no collective, so the short collective
    timeout (``trainer.dist_timeout_s``) does not apply to it."""
    store = dist.distributed_c10d._get_default_store()
    key = f"cgsim/epoch_done/{epoch}"
    if rank == 0:
        store.set(key, "1")
    else:
        store.wait([key], EPOCH_WAIT)


def _shutdown(world: int, failed: bool) -> None:
    """Leave the process group so that no rank is left waiting.

    After a normal end every rank checks in at the store; rank 0 (which holds the group's
    first connections) waits until all have, i.e. until every rank has finished all its
    collectives, and only then destroys its group. After an error the group is destroyed at
    once, so the peers' next collective fails within the timeout instead of hanging.
    """
    if world <= 1 or not dist.is_initialized():
        return
    try:
        if not failed:
            store = dist.distributed_c10d._get_default_store()
            arrived = store.add("cgsim/finished", 1)
            if dist.get_rank() == 0:
                deadline = time.monotonic() + 120.0
                while arrived < world and time.monotonic() < deadline:
                    time.sleep(0.05)
                    arrived = store.add("cgsim/finished", 0)
    finally:
        dist.destroy_process_group()


@dataclass
class TrainingRun:
    """Everything one ``cgsim train`` call works with (built by :func:`setup_run`)."""

    cfg: DictConfig
    cfg_dict: dict[str, Any]
    rank: int
    world: int
    device: torch.device
    out: Path
    train_set: SystemSet
    val_set: SystemSet
    ds_train: WindowDataset
    ds_val: WindowDataset
    model: MultiScaleDynamics
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    ema: EMA | None
    steps_per_epoch: int
    n_per_rank: int
    data_info: dict[str, Any]
    n_params: int
    start_epoch: int = 0
    step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"score": float("inf"), "epoch": -1})

    @property
    def last_path(self) -> Path:
        """``OUTPUT/checkpoints/last.pt``."""
        return self.out / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        """``OUTPUT/checkpoints/best.pt``."""
        return self.out / "checkpoints" / "best.pt"


@dataclass
class EpochFit:
    """What :func:`fit_epoch` reports: the loss of every optimiser step, windows seen, seconds."""

    losses: list[float]
    seen: int
    seconds: float


def _check_output(cfg: DictConfig) -> None:
    """Refuse an output holding another run (without ``resume``) and a resume without a checkpoint."""
    out = check_output_directory(cfg.output)
    last_path = out / "checkpoints" / "last.pt"
    if last_path.is_file() and not cfg.resume:
        raise CgsimInputError(str(out), "output already holds a training run; pass resume=true to continue it or choose another output")
    if cfg.resume and not last_path.is_file():
        raise CgsimInputError(str(last_path), "resume=true but there is no checkpoint to resume from")


def _load_data(cfg: DictConfig) -> tuple[SystemSet, SystemSet, WindowDataset, WindowDataset]:
    """Training and validation systems (split checked) and their windows."""
    data = cfg.data
    train_set = load_systems(list(data.train), "data.train")
    val_set = load_systems(list(data.val), "data.val", atom_types=train_set.atom_types)
    _check_split(train_set, val_set)
    ds_train = WindowDataset(train_set.trajectories, int(data.history), int(data.stride), int(data.window_step))
    ds_val = WindowDataset(val_set.trajectories, int(data.history), int(data.stride), int(data.window_step))
    return train_set, val_set, ds_train, ds_val


def _data_record(cfg: DictConfig, train_set: SystemSet, val_set: SystemSet) -> dict[str, Any]:
    """The checkpoint's ``data`` entry: what the model card of every checkpoint of this run reads."""
    return {"atom_types": train_set.atom_types, "mapping_hashes": train_set.mapping_hashes,
            "train_systems": [t.name for t in train_set.trajectories],
            "val_systems": [t.name for t in val_set.trajectories],
            "learned_dt": train_set.save_interval * int(cfg.data.stride), "time_unit": train_set.time_unit,
            "periodic": any(t.graph.box is not None for t in train_set.trajectories),
            "ranges": training_ranges(train_set.trajectories, train_set.atom_types).to_dict()}


def setup_run(cfg: DictConfig) -> TrainingRun:
    """Processes, output, data, model, optimiser, EMA; the saved state for ``resume=true``, else
    the model's normalisation fitted to the training windows."""
    required(cfg, ("output", "model"), "train")
    _check_options(cfg)
    tc, oc = cfg.trainer, cfg.optim
    rank, world = _distributed(str(tc.dist_backend), float(tc.get("dist_timeout_s", 60.0)))
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    device = torch.device(str(tc.device))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    _check_output(cfg)
    train_set, val_set, ds_train, ds_val = _load_data(cfg)
    torch.manual_seed(int(tc.seed))
    model = build_model(cfg, len(train_set.atom_types)).to(device)
    if model.history != int(cfg.data.history):
        raise CgsimInputError("model.history", f"model reads {model.history} frames but data.history is {cfg.data.history}")
    if int(tc.validate_every) < 1:
        raise CgsimInputError("trainer.validate_every", f"must be >= 1 epoch, got {tc.validate_every}")
    n_per_rank = len(ds_train) // world
    steps_per_epoch = max(1, math.ceil(n_per_rank / int(tc.batch_size)))
    if tc.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(tc.max_steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=float(oc.lr), weight_decay=float(oc.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(int(oc.warmup_steps), steps_per_epoch * int(tc.max_epochs),
                                                              float(oc.min_lr_factor)))
    ema = EMA(model, float(oc.ema_decay)) if oc.ema_decay else None
    run = TrainingRun(cfg=cfg, cfg_dict=cfg_dict, rank=rank, world=world, device=device, out=Path(cfg.output),
                      train_set=train_set, val_set=val_set, ds_train=ds_train, ds_val=ds_val, model=model, net=model,
                      opt=opt, sched=sched, ema=ema, steps_per_epoch=steps_per_epoch, n_per_rank=n_per_rank,
                      data_info=_data_record(cfg, train_set, val_set), n_params=sum(p.numel() for p in model.parameters()))
    if cfg.resume:
        ckpt = load_checkpoint(run.last_path, map_location=device)
        _check_resume_compatible(saved_config(ckpt), cfg_dict, run.last_path)
        run.start_epoch, run.step, run.best = restore_training(ckpt, model, opt, sched, ema)
    else:
        rng = np.random.default_rng(int(tc.seed))
        model.fit_normalization(ds_train.sample_windows(int(cfg.data.normalization_windows), rng).to(device))
        model.fit_composition([t.graph for t in train_set.trajectories])
        if isinstance(model.collective, TreeNoise) and model.collective.core_samples > 0:
            # the excluded volume the draw will carry: its core tables, fitted to the training frames
            model.prior = fit_prior_to(train_set.trajectories, train_set.atom_types,
                                       {"nb_cutoff": model.collective.core_cutoff, "core_tries": CORE_TRIES})
        if ema is not None:
            run.ema = EMA(model, float(oc.ema_decay))
    run.net = _LossModule(model)
    if world > 1:
        run.net = nn.parallel.DistributedDataParallel(run.net, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def fit_epoch(run: TrainingRun, epoch: int) -> EpochFit:
    """One pass over this rank's share of the epoch's permutation (fixed by ``(seed, epoch)``)."""
    cfg, tc = run.cfg, run.cfg.trainer
    seed, batch_size = int(tc.seed), int(tc.batch_size)
    run.model.train()
    perm = torch.randperm(len(run.ds_train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    shard = perm[: run.n_per_rank * run.world][run.rank::run.world][: run.steps_per_epoch * batch_size]
    noise_gen = torch.Generator().manual_seed((seed * 100_003 + epoch) * 131 + run.rank)
    collate = WindowCollator(run.train_set.trajectories, list(cfg.data.noise_std), generator=noise_gen,
                              symmetries=bool(cfg.data.augment_symmetry))
    # the refiner's denoising noise: its own stream, also fixed by (seed, epoch, rank)
    loss_gen = torch.Generator(device=run.device).manual_seed((seed * 100_003 + epoch) * 137 + run.rank)
    t0, seen, losses = time.perf_counter(), 0, []
    bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch + 1}/{tc.max_epochs}",
               disable=run.rank != 0 or not tc.progress, dynamic_ncols=True, mininterval=1.0)
    for k in bar:
        idx = shard[k * batch_size:(k + 1) * batch_size]
        batch = collate([run.ds_train[int(i)] for i in idx]).to(run.device)
        loss = run.net(batch.inputs, batch.target, loss_gen)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(run.model.parameters(), float(cfg.optim.grad_clip))
        run.opt.step()
        run.sched.step()
        if run.ema is not None:
            run.ema.update(run.model, run.step)  # warm-up by the global step count, so resume stays exact
        run.step += 1
        seen += len(idx)
        losses.append(float(loss.detach()))
        bar.set_postfix_str(f"loss {losses[-1]:.3f}, {seen * run.world / (time.perf_counter() - t0):.1f} windows/s")
    bar.close()
    return EpochFit(losses=losses, seen=seen, seconds=time.perf_counter() - t0)


def validate_epoch(run: TrainingRun, epoch: int, fit: EpochFit) -> tuple[dict[str, Any], bool]:
    """The epoch's metrics row (validation every ``trainer.validate_every`` epochs and after the
    last, with the EMA weights when there are any) and whether it is the best so far."""
    tc, model = run.cfg.trainer, run.model
    model.eval()
    validate = (epoch + 1) % int(tc.validate_every) == 0 or epoch + 1 == int(tc.max_epochs)
    val_nll = val_dsm = score = float("nan")
    roll = None
    if validate:
        ctx = run.ema.applied(model) if run.ema is not None else contextlib.nullcontext(model)
        with ctx:
            val_nll = one_step_nll(model, run.ds_val, int(tc.batch_size), run.device, int(tc.val_windows))
            val_dsm = (one_step_dsm(model, run.ds_val, int(tc.batch_size), run.device, int(tc.val_windows), int(tc.seed))
                       if model.refiner is not None else float("nan"))
            roll = (rollout_validation(model, run.val_set.trajectories, int(run.cfg.data.stride), int(tc.rollout_steps),
                                       int(tc.seed), run.device) if int(tc.rollout_steps) > 0 else None)
        score = roll.score if roll is not None else val_nll
    row = {"epoch": epoch + 1, "train_loss": float(np.mean(fit.losses)), "val_nll": val_nll, "val_dsm": val_dsm,
           "rollout_bond_w1": roll.bond_w1 if roll else float("nan"),
           "rollout_stable_fraction": roll.stable_fraction if roll else float("nan"),
           "score": score, "lr": run.sched.get_last_lr()[0], "epoch_seconds": fit.seconds,
           "windows_per_second": fit.seen * run.world / max(fit.seconds, 1e-9)}
    return row, bool(validate and score < run.best["score"])


def save_epoch(run: TrainingRun, epoch: int, row: dict[str, Any], improved: bool) -> None:
    """Write ``last.pt`` (and ``best.pt`` when ``improved``, which also updates ``run.best``)."""
    if improved:
        run.best = {"score": float(row["score"]), "epoch": epoch + 1}
    state = training_state(run.cfg_dict, run.model, run.ema, run.opt, run.sched, epoch, run.step, run.best,
                           run.data_info, row, run.n_params)
    save_checkpoint(run.last_path, state)
    if improved:
        save_checkpoint(run.best_path, state)


def _final_line(run: TrainingRun, summary: dict[str, Any], wall: float) -> str:
    if not summary.get("epoch"):
        return f"train: nothing to do, {run.out} already finished {run.cfg.trainer.max_epochs} epochs"
    return (f"train: {summary['epochs_run']} epoch(s) in {wall:.1f} s, {run.n_params} parameters, "
            f"val NLL {summary['val_nll']:.3f}, rollout bond W1 {summary['rollout_bond_w1']:.4f} nm, "
            f"stable {summary['rollout_stable_fraction']:.2f}; best epoch {run.best['epoch']} -> {run.best_path}")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; return a summary of the last epoch.

    Raises
    ------
    CgsimInputError
        Bad data (missing/mismatched mapping or trajectory, history longer than a
        trajectory, zero stride), an output holding another run without ``resume=true``, or
        a checkpoint from an incompatible config.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    failed = True
    try:
        summary = _train_epochs(cfg)
        failed = False
    finally:
        _shutdown(world, failed)
    return summary


def _train_epochs(cfg: DictConfig) -> dict[str, Any]:
    """:func:`train` without the process group's shutdown: set up, then the epochs."""
    run = setup_run(cfg)
    logger = MetricLogger(run.out, tensorboard=bool(cfg.trainer.tensorboard)) if run.rank == 0 else None
    t_run = time.perf_counter()
    summary: dict[str, Any] = {"epochs_run": 0}
    epochs_this_call = 0
    try:
        for epoch in range(run.start_epoch, int(cfg.trainer.max_epochs)):
            if cfg.stop_after_epochs is not None and epochs_this_call >= int(cfg.stop_after_epochs):
                break
            fit = fit_epoch(run, epoch)
            epochs_this_call += 1
            if logger is not None:
                row, improved = validate_epoch(run, epoch, fit)
                save_epoch(run, epoch, row, improved)
                logger.log(row, run.step)
                summary = {**row, "epochs_run": epochs_this_call, "best": run.best, "n_parameters": run.n_params,
                           "checkpoint": str(run.last_path)}
            if run.world > 1:
                _epoch_done(run.rank, epoch)
    finally:
        if logger is not None:
            logger.close()
    if logger is not None:
        print(_final_line(run, summary, time.perf_counter() - t_run))
    return summary
