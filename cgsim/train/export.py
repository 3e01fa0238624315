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
draws, refiner off; ``refine_off=false``: under the ``--refine`` schedule), ``windows``,
``damping``, ``rollout_steps`` (1 = one step from true histories; N = short N-step rollouts,
their second half compared).

``--shape-temperature fit`` (bond-tree models, ``model/collective=tree``) fits the scale of the
draw's innovations so that one drawn step (after the prior) moves beads about their molecule's
centre as far as MD's next frame does (:func:`cgsim.train.prior_fit.fit_shape_temperature`); a
number sets it. It is stored in the model's config and reported by its card.

``--recommend`` records the ``cgsim rollout`` settings the model is meant to run with
(``--recommend guard.redraws=3 exclusion.enabled=true``; the options of
:data:`cgsim.model.card.RECOMMENDABLE`) as ``recommended_rollout``; its model card
(:class:`cgsim.model.card.ModelCard`) reports them and ``cgsim demo`` starts from them. A
checkpoint written before the ranges of its training data were recorded gets them here,
measured on its listed training systems when those are found (:mod:`cgsim.data.ranges`).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import yaml

from cgsim.data.ranges import with_training_ranges
from cgsim.errors import CgsimInputError
from cgsim.io_utils import check_output_directory
from cgsim.metadata import now_iso
from cgsim.model.card import RECOMMENDABLE, ModelCard
from cgsim.model.checkpoint import (
    KEEP,
    kept_weights,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    set_collective_option,
    slim_checkpoint,
)
from cgsim.model.prior import StructuralPrior
from cgsim.model.sampling import apply_refine_overrides
from cgsim.train.core_calibration import CoreCalibration, calibrate_core
from cgsim.train.prior_fit import (
    calibrate_prior,
    fit_prior,
    fit_shape_temperature,
    training_systems,
)

__all__ = ["KEEP", "export_model", "main"]


def export_model(src: str | Path, dst: str | Path, refine: dict[str, Any] | None = None,
                 prior: dict[str, Any] | None = None, recommend: dict[str, Any] | None = None,
                 shape_temperature: str | float | None = None) -> dict[str, Any]:
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
    recommend : dict, optional
        Recommended ``cgsim rollout`` settings (:data:`cgsim.model.card.RECOMMENDABLE` keys).
    shape_temperature : "fit" or float, optional
        Bond-tree models only: the draw's shape temperature, a value or ``"fit"``
        (:func:`cgsim.train.prior_fit.fit_shape_temperature` on the training systems, after the
        prior), stored in the model's config.

    Returns
    -------
    dict
        The ``exported`` record: source path, its sha256, which weights were kept, time.

    Raises
    ------
    CgsimInputError
        If ``src`` is missing, truncated or not a cgsim checkpoint, ``refine`` is given for a
        model without refinement or is out of range, or ``recommend`` names another option.
    """
    check_output_directory(Path(dst).parent, "dst")
    if Path(dst).is_dir():
        raise CgsimInputError("dst", f"{dst} is a directory; expected the path of the model file to write")
    if Path(dst).exists() and Path(dst).resolve() == Path(src).resolve():
        raise CgsimInputError("dst", f"{dst} is the source checkpoint: exporting over it would lose what it keeps to "
                                     "resume training; choose another file")
    ckpt = load_checkpoint(src)
    card = ModelCard.from_checkpoint(ckpt, src)
    if refine:
        apply_refine_overrides(model_from_checkpoint(ckpt), refine, str(src))  # checks names and ranges, one clear line
    unknown = sorted(set(recommend or {}) - set(RECOMMENDABLE))
    if unknown:
        raise CgsimInputError(f"--recommend {unknown[0]}", f"not a rollout option a model may recommend; expected one of {RECOMMENDABLE}")
    record = {"source": str(src), "source_sha256": _sha256(Path(src)), "weights": kept_weights(ckpt),
              "refine": dict(refine or {}), "date": now_iso()}
    fitted = None
    if prior:
        fitted = _fitted_prior(ckpt, card, prior, refine).to_dict()
        record["prior"] = dict(prior)
    if shape_temperature is not None:
        record["shape_temperature"] = _shape_temperature(ckpt, card, shape_temperature, fitted)
    ranges = with_training_ranges(card).ranges if card.ranges is None else None
    slim = slim_checkpoint(ckpt, record, refine=refine, prior=fitted, recommended=recommend,
                           ranges=None if ranges is None else ranges.to_dict())
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, slim)
    return record


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


#: ``--prior`` keys of the filter calibration of a model trained with its prior -> CoreCalibration fields
CORE_CALIBRATION_KEYS = {"calibrate": "iterations", "calibrate_steps": "steps", "burn_in": "burn_in",
                         "every": "every", "damping": "damping", "systems": "systems", "seed": "seed"}


def _fitted_prior(ckpt: dict[str, Any], card: ModelCard, options: dict[str, Any],
                  refine: dict[str, Any] | None = None) -> StructuralPrior:
    """Fit (and with ``calibrate=N`` calibrate over N iterations) the prior of ``ckpt``; the
    calibration draws with the refiner off, or with ``refine_off=false`` under the exported
    schedule ``refine`` (the sampler the prior will follow in rollouts).

    A model trained with the excluded volume in its draw (``collective.core_samples``) carries
    the prior it was trained with: its tables are kept (a refit could differ from what the
    network learned to work with) and only the sampling schedule of ``options`` is applied; with
    ``calibrate=N`` its filter tables are then calibrated on N rounds of long rollouts of the
    training systems (:func:`cgsim.train.core_calibration.calibrate_core`; ``calibrate_steps``,
    ``burn_in``, ``every``, ``damping``, ``systems``, ``seed`` set the rounds), which switches
    the filter to ``core_select=weighted``."""
    trained_model = model_from_checkpoint(ckpt) if card.sampler.parameters["gaussian"].get("core_samples") else None
    trained = trained_model.prior if trained_model is not None else None
    if trained is not None:
        schedule = {k: options[k] for k in ("steps", "tau", "anchor", "settle", "core_tries", "core_select")
                    if k in options}
        calib = {k: options[k] for k in CORE_CALIBRATION_KEYS if k in options}
        refit = sorted(set(options) - set(schedule) - set(calib) - {"nb_cutoff"})
        if refit:
            raise CgsimInputError(f"--prior {refit[0]}", "the model was trained with its prior (collective.core_samples); "
                                                        "only steps, tau, anchor, settle, core_tries, core_select and "
                                                        "the filter calibration (" + ", ".join(CORE_CALIBRATION_KEYS)
                                                        + ") can be set")
        prior = trained.with_schedule(**schedule)
        if int(calib.get("calibrate", 0)) > 0:
            trained_model.prior = prior
            try:
                settings = CoreCalibration(**{CORE_CALIBRATION_KEYS[k]: (float(v) if k == "damping" else int(v))
                                              for k, v in calib.items()})
            except ValueError as exc:
                raise CgsimInputError("--prior calibrate", str(exc)) from None
            prior, errors = calibrate_core(trained_model, training_systems(card), card.stride, settings)
            print("filter calibration on rollouts, mean |ln P_rollout/P_MD| per round: "
                  + " ".join(f"{e:.3f}" for e in errors))
        return prior
    systems = training_systems(card)
    prior = fit_prior(card, options, systems)
    n_iter = int(options.get("calibrate", 0))
    if n_iter > 0:
        model = model_from_checkpoint(ckpt)
        if options.get("refine_off", True) and model.refiner is not None:
            model.refiner.set_schedule(levels=0, final_denoise=False)
        elif refine:
            apply_refine_overrides(model, refine, str(card.path))
        prior, errors = calibrate_prior(model, prior, systems, card.stride, n_iter,
                                        int(options.get("windows", 64)), float(options.get("damping", 0.5)),
                                        rollout_steps=int(options.get("rollout_steps", 1)))
        print("prior calibration, mean |ln P_drawn/P_true| per iteration: " + " ".join(f"{e:.3f}" for e in errors))
    return prior


def _shape_temperature(ckpt: dict[str, Any], card: ModelCard, value: str | float,
                       prior: dict[str, Any] | None) -> dict[str, Any]:
    """Set (or fit, ``value="fit"``) the bond-tree draw's shape temperature in ``ckpt``'s config."""
    if card.sampler.parameters["gaussian"].get("noise") != "bond tree":
        raise CgsimInputError("--shape-temperature", "the model has no bond-tree noise (model/collective=tree)")
    if value == "fit":
        model = model_from_checkpoint(ckpt)
        if prior is not None:
            model.prior = StructuralPrior.from_dict(prior)
        temperature, ratios = fit_shape_temperature(model, training_systems(card), card.stride)
        print("shape temperature: drawn / MD mean square about the centre per iteration: "
              + " ".join(f"{r:.3f}" for r in ratios) + f" -> T = {temperature:.3f}")
        out = {"value": temperature, "fitted": True, "ratios": ratios}
    else:
        try:
            temperature = float(value)
        except (TypeError, ValueError):
            raise CgsimInputError("--shape-temperature", f"expected 'fit' or a number > 0, got {value!r}") from None
        if not temperature > 0:
            raise CgsimInputError("--shape-temperature", f"expected 'fit' or a number > 0, got {value!r}")
        out = {"value": temperature, "fitted": False}
    set_collective_option(ckpt, "shape_temperature", out["value"], "--shape-temperature")
    return out


def _pairs(items: list[str], option: str = "--refine") -> dict[str, Any]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise CgsimInputError(f"{option} {item}", "expected KEY=VALUE, e.g. levels=12")
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
    ap.add_argument("--recommend", nargs="*", default=[], metavar="KEY=VALUE",
                    help="recommended cgsim rollout settings, e.g. guard.redraws=3 exclusion.enabled=true")
    ap.add_argument("--shape-temperature", default=None, metavar="fit|T",
                    help="bond-tree models: scale of the draw's innovations, or 'fit' (one step about each "
                         "molecule's centre as far as MD's, after the prior)")
    args = ap.parse_args(argv)
    try:
        refine = _pairs(args.refine)
        prior = _pairs(args.prior, "--prior") if args.prior is not None else None
        rec = export_model(args.src, args.dst, refine, prior, _pairs(args.recommend, "--recommend"),
                           args.shape_temperature)
    except CgsimInputError as exc:  # one line, exit status 2, as every cgsim verb
        print(f"export: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    size = Path(args.dst).stat().st_size / 2**20
    print(f"export: {args.src} -> {args.dst} ({size:.2f} MiB, {rec['weights']} weights)")


if __name__ == "__main__":
    main()
