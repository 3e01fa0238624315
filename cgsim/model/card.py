"""The model card: the facts a trained model carries, read from its checkpoint into one object.

Rollout, export, validation, the demo and the bench scripts read a checkpoint's facts through
:class:`ModelCard` instead of digging string keys out of the checkpoint dict
(:mod:`cgsim.model.checkpoint` is the only other module that knows the dict's layout)::

    ckpt = load_checkpoint(path)
    card = ModelCard.from_checkpoint(ckpt, path)
    card.stride, card.learned_dt, card.time_unit, card.sampler.calls_per_step

What a card holds:

- the model's inputs: fine atom types (the chemistry vocabulary), history length and spacing
  (recorded frames between history frames, today always the stride), stride, learned time step
  and its unit, bead cutoff, periodicity, the hashes of the mappings it was trained on;
- :class:`SamplerCard`: how one learned step is drawn (its kind, network calls per step and
  parameters: the dynamics Gaussian, the score refiner's schedule, the structural prior's);
- recommended rollout settings (``cgsim rollout`` options such as ``guard.redraws``; an export
  records them, :data:`RECOMMENDABLE` lists which), parameter count, epoch, validation metrics;
- the training data: the systems it was trained and validated on, and :class:`TrainingRanges`,
  the ranges they span (bond lengths per pair of bead classes, bead density of periodic
  systems, compositions).

Checkpoints written before a fact was recorded give ``None`` (or empty) for it: periodicity is
then judged from the training systems' sidecars (:func:`cgsim.checks.model_periodic`), and
:func:`cgsim.data.ranges.with_training_ranges` computes the ranges from the listed training
systems when those directories can still be found (``python -m cgsim.train.export`` stores them
in the exported file). A checkpoint lacking a fact every card needs (atom types, learned dt,
time unit, stride, history, cutoff) is refused by :meth:`ModelCard.from_checkpoint` with one
line naming the file and the field.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cgsim.checks import model_periodic
from cgsim.errors import CgsimInputError
from cgsim.model.refinement import SCHEDULE_KEYS, ScoreRefiner, refiner_calls

#: ``cgsim rollout`` options a model file may recommend (``recommended_rollout``); the refinement
#: and prior schedules are not among them: they are the sampler's own parameters
RECOMMENDABLE = ("temperature", "guard.enabled", "guard.max_bond_factor", "guard.min_distance_factor",
                 "guard.by_type_pair", "guard.scan_frames", "guard.redraws", "exclusion.enabled", "exclusion.factor",
                 "exclusion.iterations")
#: structural-prior settings a sampler card reports
PRIOR_KEYS = ("steps", "tau", "strength", "anchor", "settle", "nb_cutoff", "core_tries", "core_select")


@dataclass(frozen=True)
class SamplerCard:
    """How one learned step is drawn.

    Attributes
    ----------
    kind : str
        The stages of the step joined by ``+``: ``gaussian`` (the dynamics network's draw),
        then ``score_refiner`` and/or ``structural_prior`` when the model has them.
    calls_per_step : int
        Network evaluations per learned step (the dynamics network + the refiner's schedule;
        the structural prior calls none).
    parameters : dict
        Per stage, its settings: ``gaussian`` (``target``, ``collective``; for bond-tree noise
        also ``noise``, ``bend``, ``radial``, ``contact_cutoff``), ``score_refiner``
        (the sampling schedule, :data:`cgsim.model.refinement.SCHEDULE_KEYS`),
        ``structural_prior`` (:data:`PRIOR_KEYS`).
    """

    kind: str
    calls_per_step: int
    parameters: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class TrainingRanges:
    """The ranges the training systems span (what a model has seen).

    Attributes
    ----------
    bond_lengths : dict
        ``{"classA|classB": (min, max)}``, nm, over every frame of every training system; a
        bead's class is the multiset of its fine types (:func:`cgsim.model.prior.bead_classes`).
    bead_classes : tuple of str
        The bead classes of the training systems, sorted.
    density : tuple of float or None
        ``(min, max)`` bead number density over the periodic training systems, beads / nm^3
        (None: no periodic system).
    compositions : dict
        ``{system: {bead type: count}}`` where the system's sidecar names its bead types.
    source : str
        ``"training"`` (computed by ``cgsim train``) or ``"train_systems"`` (computed later from
        the systems the checkpoint lists).
    """

    bond_lengths: dict[str, tuple[float, float]]
    bead_classes: tuple[str, ...]
    density: tuple[float, float] | None
    compositions: dict[str, dict[str, int]]
    source: str = "training"

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists), stored in checkpoints under ``data.ranges``."""
        return {"bond_lengths": {k: [float(a), float(b)] for k, (a, b) in self.bond_lengths.items()},
                "bead_classes": list(self.bead_classes),
                "density": None if self.density is None else [float(v) for v in self.density],
                "compositions": {k: dict(v) for k, v in self.compositions.items()}, "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingRanges:
        """Inverse of :meth:`to_dict`."""
        density = d.get("density")
        return cls(bond_lengths={str(k): (float(v[0]), float(v[1])) for k, v in dict(d.get("bond_lengths", {})).items()},
                   bead_classes=tuple(str(c) for c in d.get("bead_classes", [])),
                   density=None if density is None else (float(density[0]), float(density[1])),
                   compositions={str(k): {str(t): int(n) for t, n in dict(v).items()}
                                 for k, v in dict(d.get("compositions", {})).items()},
                   source=str(d.get("source", "training")))


@dataclass(frozen=True)
class ModelCard:
    """The facts a trained model carries (module docstring).

    Attributes
    ----------
    path : str
        The checkpoint file (named in errors).
    atom_types : tuple of str
        Fine particle types the chemistry embedding knows, in its order.
    history : int
        Frames of position history the model reads (H).
    history_spacing : int
        Recorded frames between two history frames (today always ``stride``).
    stride : int
        Recorded frames per learned step.
    learned_dt : float
        One learned step, in ``time_unit`` (= ``stride`` x the training data's save interval).
    time_unit : str
        ``"ps"`` or ``"tau"`` (reduced units).
    cutoff : float
        Bead-level radius-graph cutoff, nm.
    periodic : bool or None
        Trained on periodic systems; None when it cannot be told.
    mapping_hashes : tuple of str
        Hashes of the mappings of the training systems.
    sampler : SamplerCard
        How a learned step is drawn.
    recommended_rollout : dict
        ``{option: value}`` of ``cgsim rollout`` the model is meant to run with
        (:data:`RECOMMENDABLE`); empty when the file records none.
    n_parameters : int or None
        Trainable parameters.
    train_systems, val_systems : tuple of str
        Mapped-system directories it was trained and validated on.
    ranges : TrainingRanges or None
        What the training data span (None: not recorded, see the module docstring).
    epoch : int or None
        Last finished epoch (0-based) of the run that wrote it.
    metrics : dict
        The validation row of that epoch (``val_nll``, ``rollout_bond_w1``, ...).
    exported : dict or None
        Where an exported model file came from (:mod:`cgsim.train.export`).
    """

    path: str
    atom_types: tuple[str, ...]
    history: int
    history_spacing: int
    stride: int
    learned_dt: float
    time_unit: str
    cutoff: float
    periodic: bool | None
    mapping_hashes: tuple[str, ...]
    sampler: SamplerCard
    recommended_rollout: dict[str, Any] = field(default_factory=dict)
    n_parameters: int | None = None
    train_systems: tuple[str, ...] = ()
    val_systems: tuple[str, ...] = ()
    ranges: TrainingRanges | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    exported: dict[str, Any] | None = None

    @property
    def save_interval(self) -> float:
        """Time between recorded frames of the training data, ``time_unit``."""
        return self.learned_dt / self.stride

    @property
    def history_frames(self) -> int:
        """Recorded frames one history spans: ``(history - 1) * history_spacing + 1``."""
        return (self.history - 1) * self.history_spacing + 1

    def matches_save_interval(self, save_interval: float) -> bool:
        """Whether frames ``save_interval`` apart, ``stride`` per step, give the learned dt."""
        return math.isclose(save_interval * self.stride, self.learned_dt, rel_tol=1e-6)

    def rollout_overrides(self) -> list[str]:
        """The recommended rollout settings as ``cgsim rollout`` overrides (``KEY=VALUE``)."""
        def text(v: Any) -> str:
            return str(v).lower() if isinstance(v, bool) else str(v)

        return [f"{k}={text(v)}" for k, v in self.recommended_rollout.items()]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-ready)."""
        d = asdict(self)
        d["ranges"] = None if self.ranges is None else self.ranges.to_dict()
        return d

    def summary(self) -> str:
        """One line: the step, its sampler and the training data."""
        trained = f"trained on {len(self.train_systems)} system(s)" if self.train_systems else "training systems not recorded"
        return (f"learned dt {self.learned_dt:g} {self.time_unit} (stride {self.stride} x {self.save_interval:g} "
                f"{self.time_unit}), history {self.history}, cutoff {self.cutoff:g} nm, {self.sampler.kind} "
                f"({self.sampler.calls_per_step} network calls/step), {trained}")

    def markdown(self) -> str:
        """The card as a two-column markdown table (for model cards ``*.md``)."""
        rows = [("fine atom types", ", ".join(self.atom_types)),
                ("history", f"{self.history} frames, {self.history_spacing} recorded frame(s) apart"),
                ("learned dt", f"{self.learned_dt:g} {self.time_unit} = stride {self.stride} x {self.save_interval:g} {self.time_unit}"),
                ("cutoff", f"{self.cutoff:g} nm"),
                ("periodic", "unknown" if self.periodic is None else str(self.periodic).lower()),
                ("sampler", f"{self.sampler.kind}, {self.sampler.calls_per_step} network calls per step"),
                *[(f"sampler: {stage}", ", ".join(f"{k}={v}" for k, v in p.items()))
                  for stage, p in self.sampler.parameters.items()],
                ("recommended rollout", " ".join(self.rollout_overrides()) or "(none recorded)"),
                ("parameters", "unknown" if self.n_parameters is None else f"{self.n_parameters:,}"),
                ("training systems", f"{len(self.train_systems)}"), ("validation systems", f"{len(self.val_systems)}")]
        if self.ranges is not None:
            rows += [(f"bond {k}", f"{a:.3f} - {b:.3f} nm") for k, (a, b) in sorted(self.ranges.bond_lengths.items())]
            if self.ranges.density is not None:
                rows.append(("bead density", f"{self.ranges.density[0]:.3f} - {self.ranges.density[1]:.3f} / nm^3"))
        def cell(x: str) -> str:
            return str(x).replace("|", "\\|")  # class pairs are written a|b: escaped inside a table

        return "| fact | value |\n|---|---|\n" + "\n".join(f"| {cell(k)} | {cell(v)} |" for k, v in rows) + "\n"

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any], path: str | Any = "checkpoint") -> ModelCard:
        """Read the card of a loaded checkpoint (:func:`cgsim.model.checkpoint.load_checkpoint`).

        Raises
        ------
        CgsimInputError
            Naming ``path`` and the first missing field, when the checkpoint lacks one every
            card needs (``data.atom_types``, ``data.learned_dt``, ``data.time_unit``,
            ``config.data.stride``, ``config.model.history``, ``config.model.cutoff``).
        """
        where = str(path)
        data = _required(ckpt, "data", where)
        model_cfg = _required(ckpt, "config.model", where)
        stride = int(_required(ckpt, "config.data.stride", where))
        spacing = _optional(ckpt, "config.data.history_spacing")
        prior = ckpt.get("prior")
        return cls(
            path=where, atom_types=tuple(str(t) for t in _required(ckpt, "data.atom_types", where)),
            history=int(_required(ckpt, "config.model.history", where)),
            history_spacing=stride if spacing is None else int(spacing), stride=stride,
            learned_dt=float(_required(ckpt, "data.learned_dt", where)),
            time_unit=str(_required(ckpt, "data.time_unit", where)),
            cutoff=float(_required(ckpt, "config.model.cutoff", where)),
            periodic=model_periodic(ckpt), mapping_hashes=tuple(data.get("mapping_hashes") or ()),
            sampler=sampler_card(model_cfg, prior if isinstance(prior, Mapping) else None, _core_strength(ckpt)),
            recommended_rollout=dict(ckpt.get("recommended_rollout") or {}),
            n_parameters=None if ckpt.get("n_parameters") is None else int(ckpt["n_parameters"]),
            train_systems=tuple(str(s) for s in data.get("train_systems") or ()),
            val_systems=tuple(str(s) for s in data.get("val_systems") or ()),
            ranges=TrainingRanges.from_dict(data["ranges"]) if isinstance(data.get("ranges"), Mapping) else None,
            epoch=None if ckpt.get("epoch") is None else int(ckpt["epoch"]),
            metrics=dict(ckpt.get("metrics") or {}),
            exported=dict(ckpt["exported"]) if isinstance(ckpt.get("exported"), Mapping) else None)


def _core_strength(ckpt: Mapping[str, Any]) -> float | None:
    """The learned exponent of the excluded volume's acceptance (``collective.core_log_strength``
    of the weights a model samples with), or None."""
    weights = ckpt.get("ema") if isinstance(ckpt.get("ema"), Mapping) else ckpt.get("model")
    if not isinstance(weights, Mapping) or weights.get("collective.core_log_strength") is None:
        return None
    return float(weights["collective.core_log_strength"].exp())


def sampler_card(model_cfg: Mapping[str, Any], prior: Mapping[str, Any] | None = None,
                 core_strength: float | None = None) -> SamplerCard:
    """The :class:`SamplerCard` of a model config (``config.model``), a stored prior record and
    a learned exponent of the excluded volume in the draw (reported with the prior)."""
    stages = ["gaussian"]
    collective = model_cfg.get("collective")
    params: dict[str, dict[str, Any]] = {"gaussian": {"target": str(model_cfg.get("target", "acceleration")),
                                                      "collective": collective is not None}}
    if isinstance(collective, Mapping) and str(collective.get("_target_", "")).endswith("TreeNoise"):
        params["gaussian"]["noise"] = "bond tree"
        for key, default in (("bend", False), ("radial", "linear"), ("contact_cutoff", 0.0), ("centred", False),
                             ("drift", True), ("shape_temperature", 1.0), ("pair_score", 0.0),
                             ("contact_links", 0.0), ("core_samples", 0), ("learn_core_strength", False),
                             ("core_terms", "nonbonded")):
            params["gaussian"][key] = collective.get(key, default)
    calls = 1
    refinement = model_cfg.get("refinement")
    if isinstance(refinement, Mapping):
        defaults = {k: p.default for k, p in inspect.signature(ScoreRefiner.__init__).parameters.items()
                    if k in SCHEDULE_KEYS}
        schedule = {k: refinement.get(k, defaults[k]) for k in SCHEDULE_KEYS}
        if schedule["sigma_end"] is None:  # the ladder ends at the trained floor
            schedule["sigma_end"] = refinement.get("sigma_min", 0.02)
        stages.append("score_refiner")
        params["score_refiner"] = schedule
        calls += refiner_calls(schedule["sampler"], schedule["levels"], schedule["steps_per_level"],
                               schedule["final_denoise"])
    if prior is not None:
        stages.append("structural_prior")
        params["structural_prior"] = {k: prior.get(k) for k in PRIOR_KEYS}
        if core_strength is not None:
            params["structural_prior"]["core_strength"] = round(core_strength, 4)
    return SamplerCard(kind="+".join(stages), calls_per_step=calls, parameters=params)


def _lookup(ckpt: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = ckpt
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _optional(ckpt: Mapping[str, Any], dotted: str) -> Any:
    return _lookup(ckpt, dotted)[1]


def _required(ckpt: Mapping[str, Any], dotted: str, where: str) -> Any:
    found, value = _lookup(ckpt, dotted)
    if not found or value is None:
        raise CgsimInputError(where, f"checkpoint lacks field '{dotted}'; not a training checkpoint of this cgsim")
    return value


#: the generated facts section of a model card file (data/checkpoints/*.md) lies between these
FACTS_BEGIN = "<!-- facts: generated by `python -m cgsim.model.card CKPT --update CARD.md`; do not edit -->"
FACTS_END = "<!-- end of facts -->"


def with_facts(text: str, card: ModelCard) -> str:
    """``text`` (a model card in markdown) with its generated facts section set to ``card``'s table.

    The section lies between :data:`FACTS_BEGIN` and :data:`FACTS_END`; a card without one gets
    it appended under a heading.
    """
    block = f"{FACTS_BEGIN}\n{card.markdown().rstrip()}\n{FACTS_END}"
    if FACTS_BEGIN in text and FACTS_END in text:
        head, rest = text.split(FACTS_BEGIN, 1)
        return head + block + rest.split(FACTS_END, 1)[1]
    return text.rstrip("\n") + "\n\n## Facts read from the file (`ModelCard`)\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m cgsim.model.card CKPT [--update CARD.md]``: print a checkpoint's facts table, or
    write it into the generated section of a model card file."""
    import argparse
    from pathlib import Path

    from cgsim.io_utils import atomic_path
    from cgsim.model.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--update", default=None, help="model card markdown file to update in place")
    args = ap.parse_args(argv)
    try:
        card = ModelCard.from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
    except CgsimInputError as exc:
        raise SystemExit(f"card: {exc}") from None
    if args.update is None:
        print(card.markdown())
        return
    path = Path(args.update)
    text = with_facts(path.read_text() if path.is_file() else "", card)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    print(f"card: facts of {args.checkpoint} -> {path}")


if __name__ == "__main__":
    main()
