"""Training checkpoints: the format lives in :mod:`cgsim.model.checkpoint` (re-exported here).

Kept so that ``from cgsim.train.checkpoint import load_checkpoint, save_checkpoint`` goes on
working; new code imports from :mod:`cgsim.model.checkpoint`.
"""

from __future__ import annotations

from cgsim.model.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "save_checkpoint"]
