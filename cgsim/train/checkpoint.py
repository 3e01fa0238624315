"""Training checkpoints: one file with everything needed to resume or to roll out.

Content (a ``dict`` saved with ``torch.save``):

- ``format``/``version``: ``"cgsim-checkpoint"``, 1
- ``config``: the resolved hydra config of the run (a rollout rebuilds the model from it)
- ``model``, ``ema`` (or None), ``optimizer``, ``scheduler``: state dicts
- ``epoch``, ``step``: counters after the last finished epoch
- ``best``: the best validation score so far and its epoch
- ``data``: fine type vocabulary, mapping hashes and names of the training systems
- ``rng``: torch / numpy states (for an exact resume)

Files are written to a temporary name and renamed, so a kill never leaves a torn checkpoint.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cgsim.checks import finite_weights
from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path

CHECKPOINT_FORMAT = "cgsim-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format tags) to ``path`` atomically; return the path."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CgsimInputError
        If the file is missing, truncated, not a cgsim checkpoint, or its weights (``model``,
        ``ema``) hold NaN or infinity.
    """
    path = Path(path)
    if not path.is_file():
        raise CgsimInputError(str(path), "checkpoint file not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CgsimInputError(str(path), f"not a readable checkpoint (truncated or another format: {type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CgsimInputError(str(path), f"field 'format' is not {CHECKPOINT_FORMAT!r}; not a cgsim checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CgsimInputError(str(path), f"checkpoint version {data.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
    finite_weights(data, str(path))
    return data
