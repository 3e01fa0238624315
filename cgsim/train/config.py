"""Structured-config schemas of ``cgsim train`` (hydra validates overrides against them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DataConfig:
    """Which mapped systems to train and validate on, and how windows are cut."""

    #: directories written by ``cgsim map`` (or globs), training systems
    train: list[str] = field(default_factory=list)
    #: validation systems (never the same trajectories as ``train``)
    val: list[str] = field(default_factory=list)
    #: frames of input history H
    history: int = 8
    #: recorded frames per learned step (learned dt = stride x save interval)
    stride: int = 1
    #: start a window every this many frames
    window_step: int = 1
    #: input-noise augmentation stds, nm (one drawn per window; 0 = clean)
    noise_std: list[float] = field(default_factory=lambda: [0.0])
    #: transform each training window by a random exact symmetry of its system (rotation or
    #: reflection without a box, axis flips and equal-edge permutations with one): augmentation
    #: for networks that are not equivariant by construction (cgsim.data.windows.random_symmetry)
    augment_symmetry: bool = False
    #: windows used to fit the model's normalisation
    normalization_windows: int = 256


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_factor: float = 0.05
    grad_clip: float = 1.0
    #: EMA decay of the weights (null = no EMA); validation and checkpoints use the EMA
    ema_decay: float | None = None


@dataclass
class TrainerConfig:
    """Loop options."""

    max_epochs: int = 10
    batch_size: int = 8
    #: cap on optimiser steps per epoch (null = all windows)
    max_steps_per_epoch: int | None = None
    device: str = "cpu"
    seed: int = 0
    #: validation windows per epoch for the one-step NLL
    val_windows: int = 256
    #: learned steps of rollout validation (0 = skip)
    rollout_steps: int = 50
    #: validate (one-step NLL, DSM, rollout) every N epochs and after the last one; the best
    #: checkpoint is chosen among validated epochs (N > 1 when validation costs as much as an epoch)
    validate_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    #: torch.distributed backend when launched by torchrun (gloo on CPU, nccl on GPU)
    dist_backend: str = "gloo"
    #: seconds a rank waits in a collective (the gradient all-reduce) for its peers before it fails
    #: with an error, so a hung or dead peer ends the run instead of hanging it. Waiting for rank 0's
    #: validation and checkpoints between epochs is not a collective and has no such limit
    dist_timeout_s: float = 60.0
    num_threads: int | None = None


@dataclass
class TrainConfig:
    """Root options of ``cgsim train``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output: str = MISSING
    #: continue the run in ``output`` from its last checkpoint
    resume: bool = False
    #: stop after this many epochs in this invocation (testing resume); null = run to the end
    stop_after_epochs: int | None = None
    experiment_name: str = "custom"


def register() -> None:
    """Put the schemas into hydra's ConfigStore."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
