"""Input checks shared by several verbs; each raises :class:`cgsim.errors.CgsimInputError` in one line.

- :func:`finite_weights`: a checkpoint's weights hold no NaN or infinity (a diverged training run);
- :func:`positive_temperature`: a temperature option is a positive finite number of kelvin
  (or of reduced units);
- :func:`output_apart_from_inputs`: an output directory neither is nor lies inside (nor would write
  into, by its per-system subdirectories) an input directory;
- :func:`same_systems`: validation systems that are training systems under another path or as a copy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError


def first_non_finite(state: Mapping[str, Any]) -> tuple[str, int] | None:
    """Name and count of non-finite values of the first floating tensor in ``state`` holding any.

    ``state`` is a ``state_dict`` (name -> tensor); entries that are not floating tensors are
    skipped. Returns None when every value is finite.
    """
    import torch

    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                return str(name), int(bad.sum())
    return None


def finite_weights(checkpoint: Mapping[str, Any], where: str, keys: Sequence[str] = ("model", "ema")) -> None:
    """Refuse a checkpoint whose weights (``model``, ``ema`` state dicts) hold NaN or infinity.

    Parameters
    ----------
    checkpoint : mapping
        The loaded checkpoint (:func:`cgsim.train.checkpoint.load_checkpoint`).
    where : str
        The checkpoint's path, named in the error.
    keys : sequence of str
        Entries of ``checkpoint`` that are state dicts to check (missing or None ones are skipped).
    """
    for key in keys:
        state = checkpoint.get(key)
        if not isinstance(state, Mapping):
            continue
        hit = first_non_finite(state)
        if hit is not None:
            name, count = hit
            raise CgsimInputError(where, f"weights hold NaN or infinity ({count} value(s) of '{key}.{name}'); the training "
                                         "that wrote it diverged: use an earlier checkpoint or retrain")


def required(cfg: Any, keys: Sequence[str], verb: str) -> None:
    """Refuse a config whose required options (``keys``, dotted) are left unset (``???``), in the
    order given, before anything is loaded: one line naming the first one."""
    from omegaconf import OmegaConf

    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node.keys() and OmegaConf.is_missing(node, leaf):
            raise CgsimInputError(key, f"is required; give {key}=VALUE (see `cgsim {verb} --cfg job`)")


def torch_device(value: Any, where: str = "device") -> Any:
    """``value`` as a ``torch.device`` that this machine has: one line for a misspelt device or a GPU
    that torch cannot use here."""
    import torch

    try:
        device = torch.device(str(value))
    except (RuntimeError, ValueError):
        raise CgsimInputError(where, f"{value!r} is not a torch device; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CgsimInputError(where, f"{value!r}: torch has no usable CUDA device here (a CPU build, or no GPU "
                                         "visible); use device=cpu or install a CUDA build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CgsimInputError(where, f"{value!r}: there are {torch.cuda.device_count()} CUDA device(s) here, "
                                         f"numbered 0-{torch.cuda.device_count() - 1}")
    elif device.type not in ("cpu", "mps"):
        raise CgsimInputError(where, f"{value!r}: device type {device.type!r} is not supported; expected cpu or cuda")
    return device


def positive_int(value: Any, where: str, allow_none: bool = False, minimum: int = 1, what: str = "") -> int | None:
    """``value`` as an int >= ``minimum`` (None kept with ``allow_none``), else one line naming ``where``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok:
        tail = " or null" if allow_none else ""
        raise CgsimInputError(where, f"expected an integer >= {minimum}{what}{tail}, got {value!r}")
    return int(value)


def positive_temperature(value: Any, where: str, allow_zero: bool = False, unit: str = "K") -> float | None:
    """``value`` as a float if it is a finite temperature > 0 (>= 0 with ``allow_zero``); None stays None."""
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t) or t < 0 or (t == 0 and not allow_zero):
        what = "a non-negative" if allow_zero else "a positive"
        raise CgsimInputError(where, f"expected {what} temperature ({unit}), got {value!r}")
    return t


def finite_frames(xyz: np.ndarray, where: str, what: str = "bead") -> None:
    """Refuse frames holding NaN or infinity, naming the first such frame and particle (0-based)."""
    ok = np.isfinite(xyz).all(axis=-1)  # (F, N)
    if ok.all():
        return
    f = int(np.flatnonzero(~ok.all(axis=1))[0])
    n = int(np.flatnonzero(~ok[f])[0])
    raise CgsimInputError(where, f"frame {f} holds non-finite coordinates ({what} {n}, {int((~ok).sum())} coordinate "
                                 "triple(s) in all); expected finite positions in nm: cut the trajectory before frame "
                                 f"{f} or remap it")


def output_apart_from_inputs(output: str | Path, inputs: Iterable[str | Path], where: str = "output",
                             input_key: str = "initial") -> None:
    """Refuse an output directory that would write into an input directory.

    An output is refused when it is an input directory, lies inside one, or is the parent of
    one (per-system subdirectories ``OUTPUT/<system name>/`` would then be the input itself).
    """
    out = Path(output).expanduser().resolve()
    for d in inputs:
        src = Path(d).expanduser().resolve()
        if out == src or src in out.parents:
            raise CgsimInputError(where, f"{output} is (inside) the {input_key} directory {d}: the output would be written "
                                         "into the input; choose another output directory")
        if out == src.parent:
            raise CgsimInputError(where, f"{output} holds the {input_key} directory {d}: the outputs of system "
                                         f"{src.name!r} would be written into it; choose another output directory")


def content_digest(*arrays: np.ndarray, extra: str = "") -> str:
    """sha256 of the bytes of ``arrays`` (and ``extra``): equal data, equal digest."""
    h = hashlib.sha256(extra.encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def same_systems(first: Sequence[tuple[str, str]], second: Sequence[tuple[str, str]]) -> tuple[str, str, str] | None:
    """The first system of ``second`` that is one of ``first``: by resolved path or by content digest.

    Each entry is ``(path, digest)``. Returns ``(path in second, path in first, how)`` with
    ``how`` ``"the same directory as"`` or ``"a copy (...) of"``, or None when the sets are apart.
    """
    by_path = {str(Path(p).resolve()): p for p, _ in first}
    by_digest = {h: p for p, h in first}
    for p, h in second:
        other = by_path.get(str(Path(p).resolve()))
        if other is not None:
            return p, other, "the same directory as"
        other = by_digest.get(h)
        if other is not None:
            return p, other, "a copy (same mapping and frames) of"
    return None


def model_periodic(checkpoint: Mapping[str, Any]) -> bool | None:
    """Whether a checkpoint's model was trained on periodic systems; None when it cannot be told.

    Checkpoints record it (``data.periodic``); older ones are judged by the sidecars of their
    training systems (``data.train_systems``) when those directories are still there.
    """
    data = checkpoint.get("data") if isinstance(checkpoint.get("data"), Mapping) else {}
    if isinstance(data.get("periodic"), bool):
        return data["periodic"]
    from cgsim.metadata import read_sidecar

    seen: list[bool] = []
    for d in data.get("train_systems") or []:
        for name in ("beads.h5", "beads.xtc", "beads.dcd"):
            path = Path(str(d)) / name
            if path.is_file():
                try:
                    seen.append(bool(read_sidecar(path).system.periodic))
                except CgsimInputError:
                    pass
                break
    return any(seen) if seen else None


def periodic_initial(periodic: bool | None | Mapping[str, Any], systems: Sequence[Any], where: str) -> None:
    """Refuse initial systems without a periodic box for a model trained on periodic systems.

    ``periodic`` is the model's periodicity (:attr:`cgsim.model.card.ModelCard.periodic`; None:
    unknown, nothing refused) or a loaded checkpoint (judged by :func:`model_periodic`).
    ``systems`` are :class:`cgsim.data.windows.BeadTrajectory` (``graph.box`` None without a box);
    ``where`` names the checkpoint.
    """
    if isinstance(periodic, Mapping):
        periodic = model_periodic(periodic)
    if not periodic:
        return
    for t in systems:
        if t.graph.box is None:
            raise CgsimInputError(str(t.name), f"has no periodic box (its sidecar's system.periodic is false or its frames "
                                               f"carry no box) but the model {where} was trained on periodic systems; "
                                               "map the initial state with its box (a trajectory that stores one)")
