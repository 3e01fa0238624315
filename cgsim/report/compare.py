"""JSON summaries of a suite and the error measures between two suites.

:func:`summarise` turns the observables of a :class:`cgsim.report.suite.Suite` into JSON
numbers (units in the key names); :func:`compare` gives the error measures of one suite
against another (the table in :mod:`cgsim.report.suite`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cgsim.observables.conductivity import ConductivityResult
from cgsim.observables.distributions import Distribution, js_divergence, relative_error
from cgsim.units import NM2_PER_PS_TO_CM2_PER_S

if TYPE_CHECKING:
    from cgsim.report.suite import Suite


def _f(x: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _dist_summary(d: Distribution, scale: float = 1.0, unit: str = "nm") -> dict[str, Any]:
    return {f"mean_{unit}": _f(d.mean * scale), f"std_{unit}": _f(d.std * scale), "n_samples": d.n_samples,
            "fraction_outside_range": _f((d.n_below + d.n_above) / max(d.n_samples, 1))}


def summarise(suite: Suite) -> dict[str, dict[str, Any]]:
    """JSON numbers describing each computed observable of a suite (units in the key names)."""
    out: dict[str, dict[str, Any]] = {}
    if suite.rdf:
        out["rdf"] = {}
        for k, r in suite.rdf.items():
            i = int(np.argmax(r.g))
            out["rdf"][k] = {"peak_r_nm": _f(r.r[i]), "peak_g": _f(r.g[i]), "n_frames": r.n_frames,
                             "periodic": r.periodic}
    if suite.bond_lengths:
        out["bond_lengths"] = {k: _dist_summary(d) for k, d in suite.bond_lengths.items()}
    if suite.bond_angles:
        out["bond_angles"] = {k: _dist_summary(d, 180 / math.pi, "deg") for k, d in suite.bond_angles.items()}
    if suite.rg is not None:
        out["rg"] = {"all": {**_dist_summary(suite.rg), "rms_nm": _f(math.sqrt(suite.rg.sum_sq / suite.rg.n_samples)),
                             "n_chains": len(suite.rg_chain_means)}}
    if suite.end_to_end is not None:
        d = suite.end_to_end
        out["end_to_end"] = {"all": {**_dist_summary(d), "rms_nm": _f(math.sqrt(d.sum_sq / d.n_samples))}}
    if suite.contact_maps:
        out["contact_map"] = {k: {"mean_frequency": _f(c.frequency.mean()), "n_beads": int(c.indices.size),
                                  "cutoff_nm": c.cutoff} for k, c in suite.contact_maps.items()}
    if suite.msd is not None:
        m = suite.msd
        out["msd"] = {g: {"max_lag_ps": _f(m.lag_times[-1]), "msd_at_max_lag_nm2": _f(m.msd[i, -1]),
                          "n_particles": int(m.n_particles[i])} for i, g in enumerate(m.groups)}
    if suite.diffusion is not None:
        d = suite.diffusion
        out["diffusion"] = {g: {"D_nm2_ps": _f(d.D[i]), "D_err_nm2_ps": _f(d.D_err[i]), "D_cm2_s": _f(d.D_cm2_s[i]),
                                "D_err_cm2_s": _f(d.D_err_cm2_s[i]), "fit_window_ps": list(d.window)}
                            for i, g in enumerate(d.groups)}
    if suite.rg_acf is not None:
        a = suite.rg_acf
        out["rg_acf"] = {"rg^2": {"tau_ps": _f(a.tau), "method": a.method, "converged": a.converged,
                                  "n_chains": a.n_series}}
    if suite.conductivity:
        out["conductivity"] = {"system": _conductivity_summary(suite.conductivity)}
    return out


def _mean_err(values: list[float], errors: list[float]) -> tuple[float, float]:
    """Mean over replicas; error = spread over replicas when several, else the block error."""
    v = np.asarray(values, dtype=float)
    if v.size > 1:
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    return float(v[0]), float(errors[0])


def _conductivity_summary(results: list[ConductivityResult]) -> dict[str, Any]:
    ne, ne_err = _mean_err([r.sigma_ne for r in results], [r.sigma_ne_err for r in results])
    eh, eh_err = _mean_err([r.sigma_eh for r in results], [r.sigma_eh_err for r in results])
    species = results[0].species
    out: dict[str, Any] = {"sigma_ne_S_cm": _f(ne), "sigma_ne_err_S_cm": _f(ne_err), "sigma_eh_S_cm": _f(eh),
                           "sigma_eh_err_S_cm": _f(eh_err), "n_replicas": len(results),
                           "temperature_K": results[0].temperature, "volume_nm3": _f(np.mean([r.volume for r in results])),
                           "fit_window_ps": list(results[0].window)}
    for k, sp in enumerate(species):
        if any(r.species != species for r in results):
            break
        out[f"transference_ne[{sp}]"] = _f(np.mean([r.transference_ne[k] for r in results]))
        out[f"transference_eh[{sp}]"] = _f(np.mean([r.transference_eh[k] for r in results]))
        out[f"D_cm2_s[{sp}]"] = _f(np.mean([r.diffusion[k] for r in results]) * NM2_PER_PS_TO_CM2_PER_S)
        out[f"charge_e[{sp}]"] = _f(results[0].charges[k])
        for j, sp2 in enumerate(species[k:], start=k):
            out[f"sigma_eh[{sp},{sp2}]_S_cm"] = _f(np.mean([r.sigma_matrix[k, j] for r in results]))
    return out


def _curve_deviation(t_ref: np.ndarray, y_ref: np.ndarray, t: np.ndarray, y: np.ndarray, relative: bool) -> float | None:
    """Mean deviation of curve (t, y) from (t_ref, y_ref) at the reference's lags > 0 in the common range."""
    hi = min(t_ref[-1], t[-1])
    sel = (t_ref > 0) & (t_ref <= hi + 1e-12)
    if not sel.any():
        return None
    yi = np.interp(t_ref[sel], t, y)
    d = np.abs(yi - y_ref[sel])
    if relative:
        ok = y_ref[sel] > 0
        if not ok.any():
            return None
        return _f((d[ok] / y_ref[sel][ok]).mean())
    return _f(d.mean())


def compare(ref: Suite, other: Suite) -> dict[str, dict[str, dict[str, Any]]]:
    """Error measures of ``other`` against ``ref`` for every observable both hold.

    Returns
    -------
    dict
        ``{observable: {key: {measure: value}}}``; a key present in only one suite gets
        ``{"missing_in": "rollout"}`` (or ``"reference"``).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}

    def keyed(name: str, a: dict[str, Any], b: dict[str, Any], fn: Callable[[Any, Any], dict[str, Any]]) -> None:
        if not a and not b:
            return
        res: dict[str, dict[str, Any]] = {}
        for k in sorted(set(a) | set(b)):
            if k not in b:
                res[k] = {"missing_in": other.label}
            elif k not in a:
                res[k] = {"missing_in": ref.label}
            else:
                res[k] = fn(a[k], b[k])
        out[name] = res

    keyed("rdf", ref.rdf, other.rdf, lambda a, b: {"max_abs_dg": _f(np.abs(a.g - b.g).max()),
                                                   "mean_abs_dg": _f(np.abs(a.g - b.g).mean())})

    def dist_err(a: Distribution, b: Distribution) -> dict[str, Any]:
        return {"jsd": _f(js_divergence(a, b)), "relative_error_mean": _f(relative_error(b.mean, a.mean))}

    keyed("bond_lengths", ref.bond_lengths, other.bond_lengths, dist_err)
    keyed("bond_angles", ref.bond_angles, other.bond_angles, dist_err)
    if ref.rg is not None and other.rg is not None:
        e = dist_err(ref.rg, other.rg)
        common = sorted(set(ref.rg_chain_means) & set(other.rg_chain_means))
        if common and len(common) == len(ref.rg_chain_means):
            e["chain_mean_relative_error"] = _f(np.mean([relative_error(other.rg_chain_means[c], ref.rg_chain_means[c])
                                                         for c in common]))
        out["rg"] = {"all": e}
    if ref.end_to_end is not None and other.end_to_end is not None:
        a, b = ref.end_to_end, other.end_to_end
        out["end_to_end"] = {"all": {"jsd": _f(js_divergence(a, b)),
                                     "relative_error_rms": _f(relative_error(math.sqrt(b.sum_sq / b.n_samples),
                                                                             math.sqrt(a.sum_sq / a.n_samples)))}}
    keyed("contact_map", ref.contact_maps, other.contact_maps,
          lambda a, b: {"max_abs_dfreq": _f(np.abs(a.frequency - b.frequency).max()),
                        "mean_abs_dfreq": _f(np.abs(a.frequency - b.frequency).mean())}
          if a.frequency.shape == b.frequency.shape else {"shape_mismatch": True})
    if ref.msd is not None and other.msd is not None:
        ma, mb = ref.msd, other.msd
        keyed("msd", {g: ma.msd[i] for i, g in enumerate(ma.groups)}, {g: mb.msd[i] for i, g in enumerate(mb.groups)},
              lambda a, b: {"mean_relative_deviation": _curve_deviation(ma.lag_times, a, mb.lag_times, b, True)})
    if ref.diffusion is not None and other.diffusion is not None:
        da, db = ref.diffusion, other.diffusion
        keyed("diffusion", {g: da.D[i] for i, g in enumerate(da.groups)}, {g: db.D[i] for i, g in enumerate(db.groups)},
              lambda a, b: {"relative_error": _f(relative_error(b, a))})
    if ref.rg_acf is not None and other.rg_acf is not None:
        a, b = ref.rg_acf, other.rg_acf
        out["rg_acf"] = {"rg^2": {"relative_error_tau": _f(relative_error(b.tau, a.tau)),
                                  "mean_abs_dacf": _curve_deviation(a.lag_times, a.acf, b.lag_times, b.acf, False)}}
    if ref.conductivity and other.conductivity:
        sa, sb = _conductivity_summary(ref.conductivity), _conductivity_summary(other.conductivity)
        err = {}
        for key in sa:
            if (key.startswith(("sigma_ne_S", "sigma_eh_S", "transference")) and sa[key] is not None
                    and sb.get(key) is not None):
                err[f"relative_error[{key}]"] = _f(relative_error(sb[key], sa[key]))
        out["conductivity"] = {"system": err}
    return out
