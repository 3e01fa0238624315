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
    python -m cgsim.train.export SRC DST --refine levels=0 final_denoise=false --prior nb_cutoff=1.0 steps=10

``--prior`` fits the structural prior (:mod:`cgsim.model.prior`) to the model's own training
systems (``data.train_systems`` of the checkpoint) and stores it under ``prior``; rollouts then
apply it after every draw (no network call). Its keys: ``nb_cutoff`` (nm), ``steps``, ``tau``,
``strength``, ``anchor``, ``max_frames``, ``min_samples``, ``dr`` (:func:`cgsim.train.prior_fit.fit_prior`),
and ``calibrate=N`` (iterations of :func:`cgsim.train.prior_fit.calibrate_prior` on the model's own
draws, refiner off), ``windows``, ``damping``.
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
from cgsim.model.prior import StructuralPrior
from cgsim.train.checkpoint import load_checkpoint, save_checkpoint
from cgsim.train.loop import model_from_checkpoint
from cgsim.train.prior_fit import calibrate_prior, fit_prior, training_systems

#: entries of a training checkpoint a rollout needs (weights are chosen separately)
KEEP = ("config", "epoch", "step", "best", "data", "metrics", "n_parameters")


def export_model(src: str | Path, dst: str | Path, refine: dict[str, Any] | None = None,
                 prior: dict[str, Any] | None = None) -> dict[str, Any]:
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
    prior : dict, optional
        Fit a structural prior with these options (:func:`fit_prior`) and store it.

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
    if prior:
        slim["prior"] = _fitted_prior(ckpt, prior).to_dict()
        record["prior"] = dict(prior)
    elif ckpt.get("prior") is not None:
        slim["prior"] = ckpt["prior"]
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, slim)
    return record


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _fitted_prior(ckpt: dict[str, Any], options: dict[str, Any]) -> StructuralPrior:
    """Fit (and with ``calibrate=N`` calibrate over N iterations) the prior of ``ckpt``."""
    systems = training_systems(ckpt)
    prior = fit_prior(ckpt, options, systems)
    n_iter = int(options.get("calibrate", 0))
    if n_iter > 0:
        model = model_from_checkpoint(ckpt)
        if options.get("refine_off", True) and model.refiner is not None:
            model.refiner.set_schedule(levels=0, final_denoise=False)
        prior, errors = calibrate_prior(model, prior, systems, int(ckpt["config"]["data"]["stride"]), n_iter,
                                        int(options.get("windows", 64)), float(options.get("damping", 0.5)))
        print("prior calibration, mean |ln P_drawn/P_true| per iteration: " + " ".join(f"{e:.3f}" for e in errors))
    return prior


def _pairs(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="training checkpoint (best.pt / last.pt)")
    ap.add_argument("dst", help="model file to write")
    ap.add_argument("--refine", nargs="*", default=[], metavar="KEY=VALUE",
                    help="default refinement schedule of the exported model, e.g. sampler=ode levels=12")
    ap.add_argument("--prior", nargs="*", default=None, metavar="KEY=VALUE",
                    help="fit and store a structural prior, e.g. nb_cutoff=1.0 steps=10")
    args = ap.parse_args(argv)
    refine = _pairs(args.refine)
    prior = _pairs(args.prior) if args.prior is not None else None
    try:
        rec = export_model(args.src, args.dst, refine, prior)
    except CgsimInputError as exc:
        raise SystemExit(f"export: {exc}") from None
    size = Path(args.dst).stat().st_size / 2**20
    print(f"export: {args.src} -> {args.dst} ({size:.2f} MiB, {rec['weights']} weights)")


if __name__ == "__main__":
    main()
