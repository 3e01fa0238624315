"""``cgsim evaluate``: reference vs rollout observables -> metrics.json, report.md, figures.

    cgsim evaluate reference=data/chain/test rollout=outputs/rollout/chain output=outputs/eval/chain
    cgsim evaluate reference=data/chain/mapped/test/seq_000 rollout=outputs/rollout/chain file_index=-1 ...
    cgsim evaluate reference=data/electrolyte/ref.xtc output=outputs/eval/el observables_preset=electrolyte \\
        'conductivity.charges={Li: 1.0, TFSI: -1.0}'

``reference`` / ``rollout`` name a trajectory file with its cgsim sidecar, a directory with
``dataset.json``, a ``cgsim map`` output directory, or a glob of these (see
:mod:`cgsim.report.loading`); ``rollout`` is optional. ``file_index=-1`` loads every file of a
dataset's systems (all rollout replicas): statistics pool over them and diffusion errors come
from their spread. The observables
follow from the config: ``observables`` lists them, or, when null, ``presets[<system>]`` is
used, where ``<system>`` is ``observables_preset`` or else the ``system.name`` that the
reference's sidecar declares; a trajectory mapped from outside data is named after its file,
and then its content chooses (charged beads: ``electrolyte``; one bonded molecule per
trajectory: ``chain``; else one line says what to pass, :func:`cgsim.report.settings.choose_preset`).
Bins are fixed from the reference and the default fit window from the shortest trajectory of
both sets (on a short run widened to two lags, with fewer blocks, as the notes say), so every
set is measured identically. Rollout replicas that
the stability guard stopped early (their ``rollout.json`` says so) are left out of the dynamical
observables (MSD, D, Rg^2 ACF, conductivity) and of that window, but kept for the structural
ones over the frames they have (:func:`cgsim.report.suite.dynamical_set` gives the reasons);
the report says how many and why, and a set with no replica left for the dynamics is refused
in one line. Replicas of a rollout that did not finish (killed: their ``rollout.json`` still
says ``running``) are marked UNFINISHED in the report and the summary line and left out of the
dynamics too, unless ``include_unfinished=true``. The conductivity states the charges it used
(``conductivity.charges=formal``: integer ion charges). With ``noise_floor`` the first and second halves of every reference
trajectory are compared with the same measures, so a reader can tell whether a rollout's error
is beyond MD-vs-MD noise.

Writes into ``output``: ``metrics.json`` (per observable and key: reference, rollout, error,
noise_floor), ``report.md`` and ``figures/*.png``. All files are written atomically and replace
an earlier report's together (a full disk leaves the earlier report whole).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cgsim.checks import positive_int, positive_temperature, required
from cgsim.errors import CgsimInputError
from cgsim.io_utils import (
    check_output_directory,
    committed_together,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from cgsim.metadata import now_iso, software_versions


@dataclass
class RDFOptions:
    """RDF bins (nm)."""

    #: largest distance; null = half the smallest box length (periodic) or nonperiodic_r_max
    r_max: float | None = None
    nonperiodic_r_max: float = 5.0
    n_bins: int = 100
    #: null = from the sidecars' system.periodic
    periodic: bool | None = None
    #: frames per trajectory used for the RDF (evenly spread); null = all
    max_frames: int | None = 1000
    #: threads over frames; -1 = every CPU
    workers: int = 1
    #: pair counting: auto | dense (every pair, float32 blocks) | tree (k-d tree, float64)
    method: str = "auto"


@dataclass
class DistributionOptions:
    """Histogram bins for bond lengths, Rg and end-to-end distance (range from the reference)."""

    n_bins: int = 60
    angle_bins: int = 90
    #: range = reference min/max widened by this fraction of the span on each side (x2 for Rg, Ree)
    pad: float = 0.1


@dataclass
class PolymerOptions:
    """Chain observables."""

    #: bead types whose first/last bead of each chain define the end-to-end vector; null = any
    end_types: list[str] | None = None
    #: contact distance of the contact map, nm
    contact_cutoff: float = 1.5


@dataclass
class DynamicsOptions:
    """MSD, diffusion and ACF options (ps)."""

    #: [t_start, t_end] of the linear MSD fits, ps; null = fit_window_fraction of the shortest reference
    fit_window: list[float] | None = None
    fit_window_fraction: list[float] = field(default_factory=lambda: [0.02, 0.2])
    #: blocks for block-averaged errors (the fit window must fit inside one block)
    n_blocks: int = 4
    #: subtract each system's centre of mass first (never for one-molecule trajectories)
    remove_com_drift: bool = False
    #: relaxation time of the Rg^2 ACF: integral (to the first zero) or exponential (fit)
    acf_method: str = "integral"


@dataclass
class ConductivityOptions:
    """Charges and temperature for the conductivity."""

    #: charge per bead type, e, as a mapping (types not listed are neutral); null = the
    #: trajectories' bead charges (the force field's, ion charges scaled as it scales them);
    #: ``formal`` = those rounded to integer ion charges (each molecule's net charge).
    #: Typed Any so that ``conductivity.charges={Li: 1.0, TFSI: -1.0}`` replaces the whole
    #: mapping from the command line (a typed dict would only accept existing keys).
    charges: Any = None
    #: K; null = the sidecar's thermostat temperature
    temperature: float | None = None


@dataclass
class EvaluateConfig:
    """Root options of ``cgsim evaluate``."""

    reference: str = MISSING
    rollout: str | None = None
    output: str = "outputs/evaluate"
    #: observables to compute; null = presets[observables_preset or the reference's system name,
    #: or, for a system named after its file, the preset its content implies]
    observables: list[str] | None = None
    observables_preset: str | None = None
    #: replicas of a rollout that did not finish (killed) count for the dynamical observables too
    include_unfinished: bool = False
    presets: dict[str, list[str]] = field(default_factory=lambda: {
        "chain": ["rdf", "bond_lengths", "bond_angles", "rg", "end_to_end", "contact_map", "msd", "diffusion",
                  "rg_acf"],
        "electrolyte": ["rdf", "msd", "diffusion", "conductivity"],
    })
    #: rollout trajectories must match the reference one to one (names, bead types, bonds);
    #: false = compare pooled statistics of different molecules (e.g. held-out vs training chains)
    match_topology: bool = True
    #: compare first vs second half of each reference trajectory
    noise_floor: bool = True
    #: for dataset directories: which entry of each molecule's files list; -1 = all (replicas)
    file_index: int = 0
    stride: int = 1
    figures: bool = True
    dpi: int = 110
    #: progress bar per trajectory set (stderr)
    progress: bool = True
    rdf: RDFOptions = field(default_factory=RDFOptions)
    distributions: DistributionOptions = field(default_factory=DistributionOptions)
    polymer: PolymerOptions = field(default_factory=PolymerOptions)
    dynamics: DynamicsOptions = field(default_factory=DynamicsOptions)
    conductivity: ConductivityOptions = field(default_factory=ConductivityOptions)


def register_configs() -> None:
    """Put the schema of ``conf/evaluate.yaml`` into hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def _observables(cfg: DictConfig, reference: list[Any]) -> tuple[tuple[str, ...], str | None]:
    """The observables to compute, and a note when the reference's content chose their preset."""
    from cgsim.report.suite import OBSERVABLES, choose_preset

    note = None
    if cfg.observables is not None:
        chosen = [str(x) for x in cfg.observables]
        where = "observables"
    else:
        preset, note = choose_preset(reference, cfg.presets, cfg.observables_preset)
        chosen = [str(x) for x in cfg.presets[preset]]
        where = f"presets.{preset}"
    unknown = [o for o in chosen if o not in OBSERVABLES]
    if unknown:
        raise CgsimInputError(where, f"unknown observables {unknown}; expected some of {list(OBSERVABLES)}")
    if not chosen:
        raise CgsimInputError(where, "empty selection: no observables to compute")
    return tuple(o for o in OBSERVABLES if o in chosen), note


def _set_info(path: str, trajs: list[Any], observables: tuple[str, ...], include_unfinished: bool = False
              ) -> dict[str, Any]:
    from cgsim.report.suite import DYNAMIC, stopped_early, unfinished_info

    dynamic = [o for o in observables if o in DYNAMIC]
    stopped = stopped_early(trajs) if dynamic else []
    return {"path": str(path), "n_trajectories": len(trajs), "n_frames": int(sum(t.n_frames for t in trajs)),
            "dt_ps": float(trajs[0].dt), "system": trajs[0].system, "names": [t.name for t in trajs][:50],
            "n_particles": int(sum(t.n_particles for t in trajs)),
            "excluded_from_dynamics": {"n": len(stopped), "of": len(trajs), "observables": dynamic,
                                       "reason": "stopped early by the rollout's stability guard, or diverged",
                                       "trajectories": stopped},
            "unfinished": unfinished_info(trajs, include_unfinished)}


def _unfinished_clause(metrics: dict[str, Any]) -> str:
    """For the summary line: a rollout (or reference) that did not finish, and what was done with it."""
    parts = []
    for label in ("reference", "rollout"):
        un = (metrics.get(label) or {}).get("unfinished") or {}
        if un.get("n"):
            used = "used for the dynamics too" if un["in_dynamics"] else "left out of the dynamics"
            parts.append(f" (UNFINISHED {label} ({un['n']} of {un['of']} trajectories): {used})")
    return "".join(parts)


#: every figure a report may write (cgsim.report.figures), relative to the output folder
REPORT_FIGURES = tuple(f"figures/{n}" for n in ("rdf.png", "bond_lengths.png", "bond_angles.png", "chain_size.png",
                                                 "rg_acf.png", "msd.png", "contact_map.png", "conductivity.png"))


def _remove_stale_report_files(out: Path, written: set[str]) -> None:
    """Remove the figures of an earlier report in ``out`` that this one did not write (and temporaries
    that a killed run left), so the folder holds one report. Other files are never touched."""
    stale = [out / name for name in REPORT_FIGURES if name not in written and (out / name).is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    remove_stale_temporaries([out / "metrics.json", out / "report.md", *(out / n for n in REPORT_FIGURES)])
    fig_dir = out / "figures"
    if fig_dir.is_dir() and not any(fig_dir.iterdir()):
        fig_dir.rmdir()


def _load_sets(cfg: DictConfig) -> tuple[list[Any], list[Any] | None]:
    """The reference set and (``cfg.rollout``) the rollout set, topologies matched when asked."""
    from cgsim.report.loading import check_same_topology, load_set

    reference = load_set(cfg.reference, int(cfg.file_index), int(cfg.stride), "reference")
    rollout = None
    if cfg.rollout is not None:
        rollout = load_set(cfg.rollout, int(cfg.file_index), int(cfg.stride), "rollout")
        if cfg.match_topology:
            check_same_topology(reference, rollout, "rollout")
    return reference, rollout


def _check_conductivity_temperature(cfg: DictConfig, observables: tuple[str, ...], trajectories: list[Any]) -> None:
    """The conductivity needs a temperature: from the config or every sidecar."""
    if "conductivity" not in observables or cfg.conductivity.temperature is not None:
        return
    unknown = next((t for t in trajectories if t.temperature is None), None)
    if unknown is not None:
        raise CgsimInputError("conductivity.temperature", f"{unknown.path.with_suffix('.json')} states no temperature "
                                                          "(system.temperature is null: mapped without a cgsim "
                                                          "sidecar); the conductivity needs it: give "
                                                          "conductivity.temperature=K (or temperature=K to `cgsim map`), "
                                                          "or leave conductivity out of observables")


def _noise_floor_suites(reference: list[Any], settings: Any, bar: bool) -> tuple[tuple[Any, Any] | None, str | None]:
    """The suites of the reference's two halves (the MD-vs-MD noise floor), or why there are none."""
    from cgsim.report.suite import compute_suite, halves, noise_settings

    split = halves(reference)
    if split is None:
        return None, "noise floor skipped: a reference trajectory has fewer than 8 frames"
    ns = noise_settings(settings)
    try:
        return (compute_suite(split[0], ns, "reference[first half]", bar),
                compute_suite(split[1], ns, "reference[second half]", bar)), None
    except CgsimInputError as exc:  # e.g. a fit window longer than half the reference
        return None, f"noise floor skipped: {exc}"


def _observable_table(observables: tuple[str, ...], ref_suite: Any, roll_suite: Any,
                      halves_suites: tuple[Any, Any] | None) -> dict[str, dict[str, Any]]:
    """Per observable and key: reference, rollout, error and noise floor."""
    from cgsim.report.suite import compare, summarise

    ref_sum = summarise(ref_suite)
    roll_sum = summarise(roll_suite) if roll_suite is not None else {}
    errors = compare(ref_suite, roll_suite) if roll_suite is not None else {}
    floor = compare(*halves_suites) if halves_suites is not None else {}
    table: dict[str, dict[str, Any]] = {}
    for obs in observables:
        keys = sorted(set(ref_sum.get(obs, {})) | set(roll_sum.get(obs, {})))
        if not keys:
            continue
        table[obs] = {k: {"reference": ref_sum.get(obs, {}).get(k), "rollout": roll_sum.get(obs, {}).get(k),
                          "error": errors.get(obs, {}).get(k), "noise_floor": floor.get(obs, {}).get(k)}
                      for k in keys}
    return table


def _timings(ref_suite: Any, roll_suite: Any, halves_suites: tuple[Any, Any] | None, load_seconds: float) -> dict[str, Any]:
    timings: dict[str, Any] = {"reference": ref_suite.timings}
    if roll_suite is not None:
        timings["rollout"] = roll_suite.timings
    if halves_suites is not None:
        timings["noise_floor"] = {k: halves_suites[0].timings[k] + halves_suites[1].timings[k]
                                  for k in halves_suites[0].timings}
    timings["loading"] = load_seconds
    return timings


def _figures(cfg: DictConfig, out: Path, ref_suite: Any, roll_suite: Any, halves_suites: tuple[Any, Any] | None,
             settings: Any) -> dict[str, str]:
    """The PNG overlays (``cfg.figures``): ``{name: relative path}``."""
    from cgsim.report import figures as fig

    suites = [ref_suite] + ([roll_suite] if roll_suite is not None else []) + list(halves_suites or ())
    fig_dir = out / "figures"
    dpi = int(cfg.dpi)
    made = [fig.rdf_figure(suites, fig_dir, dpi), fig.bond_figure(suites, fig_dir, dpi),
            fig.angle_figure(suites, fig_dir, dpi), fig.size_figure(suites, fig_dir, dpi),
            fig.acf_figure(suites, fig_dir, dpi), fig.msd_figure(suites, fig_dir, dpi, settings.fit_window),
            fig.contact_figure(ref_suite, roll_suite, fig_dir, dpi),
            fig.conductivity_figure(suites, fig_dir, dpi, settings.fit_window)]
    return {m: f"figures/{m}" for m in made if m is not None}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.reference`` (and ``cfg.rollout``); write the report into ``cfg.output``.

    Parameters
    ----------
    cfg : DictConfig
        Composed ``evaluate`` config (:class:`EvaluateConfig`).

    Returns
    -------
    dict
        The metrics written to ``metrics.json``.
    """
    from cgsim.report.suite import compute_suite, make_settings

    t_start = time.perf_counter()
    required(cfg, ("reference", "output"), "evaluate")
    out = check_output_directory(str(cfg.output))
    positive_temperature(cfg.conductivity.temperature, "conductivity.temperature")
    if cfg.figures:
        positive_int(cfg.dpi, "dpi", what=" (figure resolution, dots per inch)")
    reference, rollout = _load_sets(cfg)
    load_seconds = time.perf_counter() - t_start
    observables, preset_note = _observables(cfg, reference)
    _check_conductivity_temperature(cfg, observables, [*reference, *(rollout or [])])
    settings = make_settings(reference, cfg, observables, rollout)

    bar = bool(cfg.progress)
    ref_suite = compute_suite(reference, settings, "reference", bar)
    roll_suite = compute_suite(rollout, settings, "rollout", bar) if rollout is not None else None
    halves_suites, floor_note = _noise_floor_suites(reference, settings, bar) if cfg.noise_floor else (None, None)
    table = _observable_table(observables, ref_suite, roll_suite, halves_suites)
    timings = _timings(ref_suite, roll_suite, halves_suites, load_seconds)
    notes = list(dict.fromkeys([preset_note] * bool(preset_note) + ref_suite.notes + (roll_suite.notes if roll_suite else [])))
    if floor_note is not None:
        notes.append(floor_note)

    with committed_together():  # figures, metrics.json and report.md replace an earlier report together
        metrics, figures = _write_report(cfg, out, reference, rollout, observables, settings, (ref_suite, roll_suite),
                                         halves_suites, table, timings, notes, t_start)
    _remove_stale_report_files(out, set(figures.values()))
    n_obs = sum(len(v) for v in table.values())
    print(f"evaluate: {len(observables)} observables ({n_obs} entries) on {len(reference)} reference"
          + (f" + {len(rollout)} rollout" if rollout is not None else "") + f" trajectories{_unfinished_clause(metrics)} -> {out} "
          f"in {metrics['wall_seconds']:.1f} s")
    return metrics


def _write_report(cfg: DictConfig, out: Path, reference: list[Any], rollout: list[Any] | None,
                  observables: tuple[str, ...], settings: Any, suites: tuple[Any, Any],
                  halves_suites: tuple[Any, Any] | None, table: dict[str, Any], timings: dict[str, Any],
                  notes: list[str], t_start: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Figures, ``metrics.json`` and ``report.md``; returns the metrics and the figures written."""
    from cgsim.report.markdown import render

    ref_suite, roll_suite = suites
    figures: dict[str, str] = {}
    if cfg.figures:
        t0 = time.perf_counter()
        figures = _figures(cfg, out, ref_suite, roll_suite, halves_suites, settings)
        timings["figures"] = time.perf_counter() - t0

    units_note = ("lengths nm, times ps, D in cm^2/s (and nm^2/ps), conductivity S/cm, angles deg, temperature K")
    if any(t.system == "chain" for t in reference):
        units_note += "; chain systems are in reduced LJ units with sigma = 1 nm, tau = 1 ps by default"
    metrics = {
        "format": "cgsim-evaluation", "version": 1, "created": now_iso(),
        "reference": _set_info(cfg.reference, reference, observables, bool(cfg.include_unfinished)),
        "rollout": _set_info(cfg.rollout, rollout, observables, bool(cfg.include_unfinished)) if rollout is not None else None,
        "match_topology": bool(cfg.match_topology), "observables_computed": list(observables),
        "settings": {"rdf_r_max_nm": float(settings.rdf_edges[-1]), "rdf_n_bins": int(settings.rdf_edges.size - 1),
                     "rdf_periodic": settings.rdf_periodic, "rdf_method": settings.rdf_method,
                     "fit_window_ps": list(settings.fit_window),
                     "n_blocks": settings.n_blocks, "acf_method": settings.acf_method,
                     "remove_com_drift": settings.remove_drift},
        "units_note": units_note,
        "noise_floor": halves_suites is not None,
        "observables": table,
        "notes": notes,
        "timings_s": timings,
        "wall_seconds": time.perf_counter() - t_start,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "software": software_versions(),
    }
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render(metrics, figures))
    return metrics, figures
