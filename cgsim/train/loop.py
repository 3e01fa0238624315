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
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cgsim.checks import content_digest, same_systems
from cgsim.config_compat import with_added_defaults
from cgsim.data.load import load_systems
from cgsim.data.windows import WindowCollator, WindowDataset
from cgsim.errors import CgsimInputError
from cgsim.model.prior import StructuralPrior
from cgsim.model.simulator import MultiScaleDynamics
from cgsim.train.checkpoint import load_checkpoint, save_checkpoint
from cgsim.train.config import TrainConfig
from cgsim.train.ema import EMA
from cgsim.train.logger import MetricLogger
from cgsim.train.validation import one_step_dsm, one_step_nll, rollout_validation

#: config sections that must match for ``resume=true`` (anything else may change, e.g. max_epochs)
RESUME_MUST_MATCH = ("model", "data", "optim", "trainer.batch_size", "trainer.seed")


class _LossModule(nn.Module):
    """Wraps the model so DDP sees the loss computation as ``forward``."""

    def __init__(self, model: MultiScaleDynamics) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs, target, generator=None):  # noqa: D102
        return self.model.loss(inputs, target, generator)


def build_model(cfg: DictConfig, n_atom_types: int) -> MultiScaleDynamics:
    """Instantiate ``cfg.model`` (its ``_target_``) for ``n_atom_types`` fine types."""
    return instantiate(cfg.model, n_atom_types=n_atom_types)


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu", use_ema: bool = True) -> MultiScaleDynamics:
    """Rebuild the model a checkpoint was trained with, weights loaded (EMA if present)."""
    cfg = OmegaConf.create(ckpt["config"])
    model = build_model(cfg, len(ckpt["data"]["atom_types"]))
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    if ckpt.get("prior") is not None:
        model.prior = StructuralPrior.from_dict(ckpt["prior"])
    return model.to(device).eval()


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


def _distributed(backend: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if world > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; return a summary of the last epoch.

    Raises
    ------
    CgsimInputError
        Bad data (missing/mismatched mapping or trajectory, history longer than a
        trajectory, zero stride), an output holding another run without ``resume=true``, or
        a checkpoint from an incompatible config.
    """
    tc = cfg.trainer
    rank, world = _distributed(str(tc.dist_backend))
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    device = torch.device(str(tc.device))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    out = Path(cfg.output)
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)

    if last_path.is_file() and not cfg.resume:
        raise CgsimInputError(str(out), "output already holds a training run; pass resume=true to continue it or choose another output")
    if cfg.resume and not last_path.is_file():
        raise CgsimInputError(str(last_path), "resume=true but there is no checkpoint to resume from")

    data = cfg.data
    _check_options(cfg)
    train_set = load_systems(list(data.train), "data.train")
    val_set = load_systems(list(data.val), "data.val", atom_types=train_set.atom_types)
    _check_split(train_set, val_set)
    ds_train = WindowDataset(train_set.trajectories, int(data.history), int(data.stride), int(data.window_step))
    ds_val = WindowDataset(val_set.trajectories, int(data.history), int(data.stride), int(data.window_step))

    torch.manual_seed(int(tc.seed))
    model = build_model(cfg, len(train_set.atom_types)).to(device)
    if model.history != int(data.history):
        raise CgsimInputError("model.history", f"model reads {model.history} frames but data.history is {data.history}")

    validate_every = int(tc.validate_every)
    if validate_every < 1:
        raise CgsimInputError("trainer.validate_every", f"must be >= 1 epoch, got {validate_every}")
    n_per_rank = len(ds_train) // world
    steps_per_epoch = max(1, math.ceil(n_per_rank / int(tc.batch_size)))
    if tc.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(tc.max_steps_per_epoch))
    total_steps = steps_per_epoch * int(tc.max_epochs)
    oc = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=float(oc.lr), weight_decay=float(oc.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(int(oc.warmup_steps), total_steps, float(oc.min_lr_factor)))
    ema = EMA(model, float(oc.ema_decay)) if oc.ema_decay else None
    start_epoch, step, best = 0, 0, {"score": float("inf"), "epoch": -1}

    if cfg.resume:
        ckpt = load_checkpoint(last_path, map_location=device)
        _check_resume_compatible(ckpt["config"], cfg_dict, last_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        start_epoch, step, best = int(ckpt["epoch"]) + 1, int(ckpt["step"]), dict(ckpt["best"])
    else:
        rng = np.random.default_rng(int(tc.seed))
        model.fit_normalization(ds_train.sample_windows(int(data.normalization_windows), rng).to(device))
        if ema is not None:
            ema = EMA(model, float(oc.ema_decay))

    net: nn.Module = _LossModule(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    logger = MetricLogger(out, tensorboard=bool(tc.tensorboard)) if rank == 0 else None
    data_info = {"atom_types": train_set.atom_types, "mapping_hashes": train_set.mapping_hashes,
                 "train_systems": [t.name for t in train_set.trajectories],
                 "val_systems": [t.name for t in val_set.trajectories],
                 "learned_dt": train_set.save_interval * int(data.stride), "time_unit": train_set.time_unit,
                 "periodic": any(t.graph.box is not None for t in train_set.trajectories)}
    n_params = sum(p.numel() for p in model.parameters())
    t_run = time.perf_counter()
    summary: dict[str, Any] = {"epochs_run": 0}
    epochs_this_call = 0
    for epoch in range(start_epoch, int(tc.max_epochs)):
        if cfg.stop_after_epochs is not None and epochs_this_call >= int(cfg.stop_after_epochs):
            break
        model.train()
        perm = torch.randperm(len(ds_train), generator=torch.Generator().manual_seed(int(tc.seed) * 100_003 + epoch))
        shard = perm[: n_per_rank * world][rank::world][: steps_per_epoch * int(tc.batch_size)]
        noise_gen = torch.Generator().manual_seed((int(tc.seed) * 100_003 + epoch) * 131 + rank)
        collate = WindowCollator(train_set.trajectories, list(data.noise_std), generator=noise_gen,
                                  symmetries=bool(data.augment_symmetry))
        # the refiner's denoising noise: its own stream, also fixed by (seed, epoch, rank)
        loss_gen = torch.Generator(device=device).manual_seed((int(tc.seed) * 100_003 + epoch) * 137 + rank)
        t0, seen, losses = time.perf_counter(), 0, []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{tc.max_epochs}", disable=rank != 0 or not tc.progress,
                   dynamic_ncols=True, mininterval=1.0)
        for k in bar:
            idx = shard[k * int(tc.batch_size):(k + 1) * int(tc.batch_size)]
            batch = collate([ds_train[int(i)] for i in idx]).to(device)
            loss = net(batch.inputs, batch.target, loss_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if oc.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), float(oc.grad_clip))
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model, step)  # warm-up by the global step count, so resume stays exact
            step += 1
            seen += len(idx)
            losses.append(float(loss.detach()))
            bar.set_postfix_str(f"loss {losses[-1]:.3f}, {seen * world / (time.perf_counter() - t0):.1f} windows/s")
        bar.close()
        train_time = time.perf_counter() - t0
        epochs_this_call += 1
        if rank == 0:
            model.eval()
            validate = (epoch + 1) % validate_every == 0 or epoch + 1 == int(tc.max_epochs)
            val_nll = val_dsm = score = float("nan")
            roll = None
            if validate:
                ctx = ema.applied(model) if ema is not None else contextlib.nullcontext(model)
                with ctx:
                    val_nll = one_step_nll(model, ds_val, int(tc.batch_size), device, int(tc.val_windows))
                    val_dsm = (one_step_dsm(model, ds_val, int(tc.batch_size), device, int(tc.val_windows), int(tc.seed))
                               if model.refiner is not None else float("nan"))
                    roll = (rollout_validation(model, val_set.trajectories, int(data.stride), int(tc.rollout_steps),
                                               int(tc.seed), device) if int(tc.rollout_steps) > 0 else None)
                score = roll.score if roll is not None else val_nll
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_nll": val_nll, "val_dsm": val_dsm,
                   "rollout_bond_w1": roll.bond_w1 if roll else float("nan"),
                   "rollout_stable_fraction": roll.stable_fraction if roll else float("nan"),
                   "score": score, "lr": sched.get_last_lr()[0], "epoch_seconds": train_time,
                   "windows_per_second": seen * world / max(train_time, 1e-9)}
            improved = validate and score < best["score"]
            if improved:
                best = {"score": float(score), "epoch": epoch + 1}
            state = {"config": cfg_dict, "model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch, "step": step,
                     "best": best, "data": data_info, "metrics": row, "n_parameters": n_params}
            save_checkpoint(last_path, state)
            if improved:
                save_checkpoint(best_path, state)
            logger.log(row, step)
            summary = {**row, "epochs_run": epochs_this_call, "best": best, "n_parameters": n_params,
                       "checkpoint": str(last_path)}
        if world > 1:
            dist.barrier()
    if logger is not None:
        logger.close()
        wall = time.perf_counter() - t_run
        if summary.get("epoch"):
            print(f"train: {summary['epochs_run']} epoch(s) in {wall:.1f} s, {n_params} parameters, "
                  f"val NLL {summary['val_nll']:.3f}, rollout bond W1 {summary['rollout_bond_w1']:.4f} nm, "
                  f"stable {summary['rollout_stable_fraction']:.2f}; best epoch {best['epoch']} -> {best_path}")
        else:
            print(f"train: nothing to do, {out} already finished {tc.max_epochs} epochs")
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return summary

