"""Checkpoints of a trained model: one file with everything needed to resume training or roll out.

Content (a ``dict`` saved with ``torch.save``):

- ``format``/``version``: ``"cgsim-checkpoint"``, 1
- ``config``: the resolved hydra config of the run (a rollout rebuilds the model from it)
- ``model``, ``ema`` (or None), ``optimizer``, ``scheduler``: state dicts
- ``epoch``, ``step``: counters after the last finished epoch
- ``best``: the best validation score so far and its epoch
- ``data``: fine type vocabulary, mapping hashes, names of the training and validation systems,
  learned dt and its time unit, periodicity and the ranges of the training data
- ``metrics``, ``n_parameters``: the last validation row and the size of the model
- ``rng``: torch / numpy states (for an exact resume)
- exported model files (:mod:`cgsim.train.export`) also: ``exported`` (where they came from),
  ``prior`` (a structural prior, :mod:`cgsim.model.prior`) and ``recommended_rollout``

Files are written to a temporary name and renamed, so a kill never leaves a torn checkpoint.
Nothing outside this module and :mod:`cgsim.model.card` reads the dict by its keys: the facts a
model carries are read through :class:`cgsim.model.card.ModelCard`.
"""

from __future__ import annotations

import copy
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cgsim.checks import finite_weights
from cgsim.errors import CgsimInputError
from cgsim.io_utils import atomic_path
from cgsim.model.card import ModelCard
from cgsim.model.prior import StructuralPrior
from cgsim.model.simulator import MultiScaleDynamics

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


def build_model(cfg: DictConfig, n_atom_types: int) -> MultiScaleDynamics:
    """Instantiate ``cfg.model`` (its ``_target_``) for ``n_atom_types`` fine types.

    A model option its class refuses (a negative cutoff, a size of 0) is one
    :class:`~cgsim.errors.CgsimInputError` line naming ``model`` and the class's reason.
    """
    from hydra.errors import InstantiationException

    try:
        return instantiate(cfg.model, n_atom_types=n_atom_types)
    except InstantiationException as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        text = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), type(cause).__name__)
        target = OmegaConf.select(cfg, "model._target_", default="the model")
        raise CgsimInputError("model", f"cannot build {target} from these options ({type(cause).__name__}: {text}); "
                                       "check the model.* overrides") from None


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu", use_ema: bool = True) -> MultiScaleDynamics:
    """Rebuild the model a checkpoint was trained with, weights loaded (EMA if present).

    A structural prior stored with the checkpoint (``prior``) is attached as ``model.prior``.
    """
    cfg = OmegaConf.create(ckpt["config"])
    model = build_model(cfg, len(ckpt["data"]["atom_types"]))
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    if ckpt.get("prior") is not None:
        model.prior = StructuralPrior.from_dict(ckpt["prior"])
    return model.to(device).eval()


def with_refiner(ckpt: dict[str, Any], model: MultiScaleDynamics, refiner: torch.nn.Module, refine: dict[str, Any],
                 exported: dict[str, Any]) -> dict[str, Any]:
    """The model file (:func:`slim_checkpoint`) of ``ckpt`` with ``refiner``'s weights in place of
    ``model``'s refiner and the sampling schedule ``refine`` (a distilled or otherwise retrained
    sampler); ``model`` itself is not changed."""
    trained = copy.deepcopy(model)
    trained.refiner.load_state_dict(refiner.state_dict())
    return slim_checkpoint(ckpt, exported, refine=refine, weights=trained.state_dict())


def load_model_file(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True
                    ) -> tuple[dict[str, Any], ModelCard, MultiScaleDynamics]:
    """A training checkpoint or model file: the loaded dict, its :class:`ModelCard` and the model
    (:func:`model_from_checkpoint`).

    Raises
    ------
    CgsimInputError
        If ``path`` is missing, truncated or not a cgsim checkpoint (:func:`load_checkpoint`).
    """
    ckpt = load_checkpoint(path)
    return ckpt, ModelCard.from_checkpoint(ckpt, str(path)), model_from_checkpoint(ckpt, device, use_ema)


#: entries of a training checkpoint an exported model file keeps (weights are chosen separately)
KEEP = ("config", "epoch", "step", "best", "data", "metrics", "n_parameters")


def kept_weights(ckpt: dict[str, Any]) -> str:
    """Which weights an exported file keeps: ``"ema"`` when the run kept an EMA, else ``"model"``."""
    return "ema" if ckpt.get("ema") is not None else "model"


def slim_checkpoint(ckpt: dict[str, Any], exported: dict[str, Any], refine: dict[str, Any] | None = None,
                    prior: dict[str, Any] | None = None, recommended: dict[str, Any] | None = None,
                    ranges: dict[str, Any] | None = None, weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model file of a training checkpoint (:mod:`cgsim.train.export`): no optimiser, one set of weights.

    Parameters
    ----------
    ckpt : dict
        A loaded training checkpoint.
    exported : dict
        The ``exported`` record (where it came from).
    refine : dict, optional
        Refinement schedule written into ``config.model.refinement`` (already checked).
    prior : dict, optional
        A structural prior record (:meth:`cgsim.model.prior.StructuralPrior.to_dict`); without
        it, one the checkpoint carries is kept.
    recommended : dict, optional
        ``recommended_rollout`` (:data:`cgsim.model.card.RECOMMENDABLE` options); without it,
        the checkpoint's own is kept.
    ranges : dict, optional
        ``data.ranges`` for a checkpoint that lacks them (:class:`cgsim.model.card.TrainingRanges`).
    weights : dict, optional
        A state dict of the same architecture to store instead of the checkpoint's own weights
        (a distilled student, :mod:`cgsim.train.distill`).
    """
    config = copy.deepcopy(ckpt["config"])
    if refine:
        config["model"]["refinement"].update(refine)
    slim = {k: ckpt[k] for k in KEEP if k in ckpt}
    if weights is None:
        weights = ckpt["ema"] if kept_weights(ckpt) == "ema" else ckpt["model"]
    slim.update({"config": config, "model": weights, "ema": None, "exported": exported})
    if ranges is not None and "ranges" not in (slim.get("data") or {}):
        slim["data"] = {**slim.get("data", {}), "ranges": ranges}
    if prior is not None:
        slim["prior"] = prior
    elif ckpt.get("prior") is not None:
        slim["prior"] = ckpt["prior"]
    if recommended:
        slim["recommended_rollout"] = dict(recommended)
    elif ckpt.get("recommended_rollout"):
        slim["recommended_rollout"] = dict(ckpt["recommended_rollout"])
    return slim


def training_state(config: dict[str, Any], model: torch.nn.Module, ema: Any, optimizer: Any, scheduler: Any,
                   epoch: int, step: int, best: dict[str, Any], data: dict[str, Any], metrics: dict[str, Any],
                   n_parameters: int) -> dict[str, Any]:
    """The checkpoint ``cgsim train`` writes after an epoch (module docstring for each entry).

    ``ema`` is the run's EMA (anything with ``state_dict()``) or None. A structural prior the
    model trains with (``model.prior``, fitted when training starts) is stored under ``prior``.
    """
    state = {"config": config, "model": model.state_dict(), "ema": ema.state_dict() if ema else None,
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
             "best": best, "data": data, "metrics": metrics, "n_parameters": n_parameters}
    prior = getattr(model, "prior", None)
    if prior is not None:
        state["prior"] = prior.to_dict()
    return state


def saved_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The resolved config a checkpoint's run was started with."""
    return ckpt["config"]


def restore_training(ckpt: dict[str, Any], model: torch.nn.Module, optimizer: Any, scheduler: Any,
                     ema: Any = None) -> tuple[int, int, dict[str, Any]]:
    """Load a training checkpoint into a run being resumed; return (next epoch, step, best)."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    if ckpt.get("prior") is not None:
        model.prior = StructuralPrior.from_dict(ckpt["prior"])
    return int(ckpt["epoch"]) + 1, int(ckpt["step"]), dict(ckpt["best"])


def set_collective_option(ckpt: dict[str, Any], key: str, value: Any, option: str) -> None:
    """Set ``model.collective.KEY = value`` in ``ckpt``'s config (a bond-tree model's sampling
    setting, e.g. ``shape_temperature``); ``option`` names the setting in the error of a model
    without bond-tree noise."""
    collective = ckpt["config"]["model"].get("collective") or {}
    if not str(collective.get("_target_", "")).endswith("TreeNoise"):
        raise CgsimInputError(option, "the model has no bond-tree noise (model/collective=tree)")
    collective[key] = value
