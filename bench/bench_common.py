"""Helpers shared by the learned-simulator benchmarks (``bench_rollout.py``, ``bench_speed.py``).

- :func:`untrained_model`: a model of an experiment's size (``cgsim train experiment=NAME``),
  built from the composed hydra config, normalised on a trajectory, with its decoders' last
  layers zeroed so that a rollout at temperature 0 keeps its graph (speed depends on the graph,
  not on the weights);
- :func:`set_refinement`: switch a model's refiner off the way ``cgsim rollout`` does it
  (``refine.levels=0 refine.steps_per_level=0 refine.final_denoise=false``: no refiner calls);
  :func:`refinement`: the same for a ``with`` block, restoring the schedule after it;
- :class:`StepTimer`: a rollout hook that records the wall time of every engine step;
- :func:`write_json`: a benchmark's ``--json`` output (parent folders made, indented JSON).
(the OpenMM side of the benchmarks lives in :mod:`cgsim.reference.md_cost`: ``openmm_context``,
``time_openmm``, the chain and electrolyte systems.)

The scripts are run as ``python bench/NAME.py``, so ``bench/`` is on ``sys.path`` and they
import this module as ``bench_common``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cgsim.model.simulator import MultiScaleDynamics
from cgsim.rollout.engine import RolloutEngine, RolloutHook, RolloutState


def compose_train(overrides: list[str]) -> Any:
    """The composed ``cgsim train`` config for ``overrides`` (e.g. ``["experiment=chain"]``)."""
    from hydra import compose, initialize_config_dir

    from cgsim.cli import conf_dir, load_verb

    load_verb("train")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides)


def set_refinement(model: MultiScaleDynamics, on: bool, where: str = "model") -> None:
    """Leave the refiner's schedule as built (``on``) or empty it (no refiner calls per step).

    Emptying goes through :func:`cgsim.model.sampling.apply_refine_overrides`, i.e. exactly
    ``cgsim rollout ... refine.levels=0 refine.steps_per_level=0 refine.final_denoise=false``.
    A model without a refiner is left alone.
    """
    from cgsim.model.sampling import apply_refine_overrides

    if not on and getattr(model, "refiner", None) is not None:
        apply_refine_overrides(model, {"levels": 0, "steps_per_level": 0, "final_denoise": False}, where)


@contextlib.contextmanager
def refinement(model: MultiScaleDynamics, on: bool, where: str = "model") -> Iterator[int]:
    """``with refinement(model, on) as calls:`` the refiner as built (``on``) or without calls inside the block.

    Yields the refiner calls per learned step inside the block; the schedule is restored after it.
    """
    refiner = getattr(model, "refiner", None)
    saved = None if refiner is None else {"levels": refiner.levels, "steps_per_level": refiner.steps_per_level,
                                          "final_denoise": refiner.final_denoise}
    set_refinement(model, on, where)
    try:
        yield refiner_calls(model)
    finally:
        if saved is not None:
            refiner.set_schedule(**saved)


def refiner_calls(model: MultiScaleDynamics) -> int:
    """Refiner network calls per learned step (0 without a refiner)."""
    refiner = getattr(model, "refiner", None)
    return 0 if refiner is None else int(refiner.calls_per_step)


def untrained_model(experiment: str, n_atom_types: int, positions: torch.Tensor, refine: bool | None = None,
                    extra_overrides: list[str] | None = None) -> tuple[MultiScaleDynamics, Any]:
    """Untrained model of ``experiment=NAME``'s size, and the composed config.

    Its cost per step is that of a trained one: the network's cost depends on the graph, not on
    the weights. So that the graph stays the one of the physical system, the target is the
    displacement and the last layer of each decoder is zeroed: the mean step is 0 and at
    temperature 0 a replica stays at its initial configuration (a refiner only adds its
    Langevin noise). Normalisation is fitted to ``positions`` (T, N, 3), nm, with windows of
    ``history + 1`` frames ``data.stride`` apart, as in training.

    Parameters
    ----------
    experiment : str
        ``chain`` or ``electrolyte`` (``conf/experiment/NAME.yaml``).
    n_atom_types : int
        Size of the fine-type vocabulary.
    positions : torch.Tensor
        Bead trajectory (T, N, 3), nm, for the normalisation.
    refine : bool, optional
        None: as the experiment composes it; True: with a refiner (``model/refinement=score``
        added when the experiment has none); False: without a refiner (removed when the
        experiment composes one, as ``experiment=chain`` does). To time one set of weights
        with and without refiner calls, build it with one and use :func:`refinement`.
    extra_overrides : list of str, optional
        More hydra overrides.
    """
    from cgsim.model.checkpoint import build_model

    overrides = [f"experiment={experiment}", "model.target=displacement", *(extra_overrides or [])]
    cfg = compose_train(overrides)
    if refine and cfg.model.refinement is None:
        cfg = compose_train([*overrides, "model/refinement=score"])
    torch.manual_seed(0)
    model = build_model(cfg, n_atom_types)
    h, stride = model.history, int(cfg.data.stride)
    span = h * stride
    starts = range(0, positions.shape[0] - span, max(1, (positions.shape[0] - span) // 64))
    windows = torch.cat([positions[k:k + span + 1:stride].permute(1, 0, 2) for k in starts])
    model.fit_normalization(windows)
    with torch.no_grad():
        for decoder in [model.decoder] + ([model.refiner.decoder] if getattr(model, "refiner", None) is not None else []):
            last = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()
    if refine is False:
        model.refiner = None
    return model.eval(), cfg


class StepTimer(RolloutHook):
    """Wall time of every committed engine step, and the members active in it."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.active: list[int] = []
        self._last = 0.0

    def on_start(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        self._last = time.perf_counter()

    def on_step(self, engine: RolloutEngine, state: RolloutState) -> None:  # noqa: D102
        now = time.perf_counter()
        self.step_s.append(now - self._last)
        self.active.append(len(state.active))
        self._last = time.perf_counter()


def write_json(path: str | Path, data: Any, indent: int = 2) -> None:
    """Write ``data`` as indented JSON to ``path``, making its parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent))
