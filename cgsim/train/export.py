"""Slim a training checkpoint into a model file to ship or share (``python -m cgsim.train.export``).

A training checkpoint (``best.pt`` / ``last.pt``) carries the optimiser, scheduler and random
states needed to resume training, about three quarters of its size. A rollout needs only the
config, the weights it runs with and the data record. :func:`export_model` keeps those: the
EMA weights when the run kept an EMA (that is what validation and ``use_ema=true`` rollouts
use), else the raw weights, stored as ``model`` with ``ema: None``. The result is an ordinary
checkpoint (same format and version) that ``cgsim rollout checkpoint=...`` loads; it cannot be
resumed (``exported`` records where it came from).

The refinement *sampling* schedule is not part of what was trained (the denoiser learns every
noise level of its range), so an export may set the schedule rollouts use by default
(``--refine sampler=ode levels=12``); it is checked by the refiner and recorded in
``exported.refine``.

    python -m cgsim.train.export runs/chain/checkpoints/best.pt data/checkpoints/chain.pt
    python -m cgsim.train.export SRC DST --refine sampler=ode levels=12 steps_per_level=0
"""

from __future__ import annotations

import argparse
import copy
import hashlib
from pathlib import Path
from typing import Any

import yaml

from cgsim.errors import CgsimInputError
from cgsim.metadata import now_iso
from cgsim.train.checkpoint import load_checkpoint, save_checkpoint
from cgsim.train.loop import model_from_checkpoint

#: entries of a training checkpoint a rollout needs (weights are chosen separately)
KEEP = ("config", "epoch", "step", "best", "data", "metrics", "n_parameters")


def export_model(src: str | Path, dst: str | Path, refine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the slim model file ``dst`` from the training checkpoint ``src``.

    Parameters
    ----------
    src : path-like
        A checkpoint written by ``cgsim train``.
    dst : path-like
        Output file (written atomically; parent folders are created).
    refine : dict, optional
        Refinement schedule for rollouts of the exported model (keys of
        :meth:`cgsim.model.refinement.ScoreRefiner.set_schedule`).

    Returns
    -------
    dict
        The ``exported`` record: source path, its sha256, which weights were kept, time.

    Raises
    ------
    CgsimInputError
        If ``src`` is missing, truncated or not a cgsim checkpoint, or ``refine`` is given for a
        model without refinement or is out of range.
    """
    ckpt = load_checkpoint(src)
    config = copy.deepcopy(ckpt["config"])
    if refine:
        from cgsim.rollout.command import apply_refine_overrides

        model = model_from_checkpoint(ckpt)
        apply_refine_overrides(model, refine, str(src))  # checks names and ranges, one clear line
        config["model"]["refinement"].update(refine)
    use_ema = ckpt.get("ema") is not None
    weights = ckpt["ema"] if use_ema else ckpt["model"]
    record = {"source": str(src), "source_sha256": _sha256(Path(src)), "weights": "ema" if use_ema else "model",
              "refine": dict(refine or {}), "date": now_iso()}
    slim = {k: ckpt[k] for k in KEEP if k in ckpt}
    slim.update({"config": config, "model": weights, "ema": None, "exported": record})
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, slim)
    return record


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="training checkpoint (best.pt / last.pt)")
    ap.add_argument("dst", help="model file to write")
    ap.add_argument("--refine", nargs="*", default=[], metavar="KEY=VALUE",
                    help="default refinement schedule of the exported model, e.g. sampler=ode levels=12")
    args = ap.parse_args(argv)
    refine = {}
    for item in args.refine:
        key, _, value = item.partition("=")
        refine[key] = yaml.safe_load(value)
    try:
        rec = export_model(args.src, args.dst, refine)
    except CgsimInputError as exc:
        raise SystemExit(f"export: {exc}") from None
    size = Path(args.dst).stat().st_size / 2**20
    print(f"export: {args.src} -> {args.dst} ({size:.2f} MiB, {rec['weights']} weights)")


if __name__ == "__main__":
    main()
