"""The table over every composition screened in one output directory, and its conductivity plot.

It collects every ``OUTPUT/*/results.json`` (so a hydra multirun into one ``output`` builds up
one table, each job adding its composition), sorted by salt concentration, into ``table.csv``,
``table.md`` and ``conductivity.png`` (Nernst-Einstein and Einstein-Helfand conductivity with
their replica error bars against the Li+ molality, mol/kg of PEO, EO:Li on a second axis).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, file output only
import matplotlib.pyplot as plt  # noqa: E402

from cgsim.io_utils import atomic_path, committed_together, write_text_atomic  # noqa: E402
from cgsim.screen.report import ROWS  # noqa: E402

#: leading columns: key in results.json, header
_COMPOSITION = (("label", "composition"), ("eo_li", "EO:Li"), ("chain_length", "chain length"),
                ("n_chains", "chains"), ("molality_mol_kg", "Li+ mol/kg PEO"))


def collect(output: Path) -> list[dict[str, Any]]:
    """Every composition's results under ``output``, sorted by molality."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(output).glob("*/results.json"))]
    return sorted(rows, key=lambda r: (r["composition"]["molality_mol_kg"], r["label"]))


def _cells(r: dict[str, Any]) -> list[Any]:
    c = r["composition"]
    out: list[Any] = [r["label"], c["eo_li"], c["chain_length"], c["n_chains"], round(c["molality_mol_kg"], 5)]
    for key, _ in ROWS:
        out += [r["transport"][key]["mean"], r["transport"][key]["error"]]
    return [*out, r["plateau"]["plateaued"], round(r["timing"]["total"], 1), r["cost"]["speedup_end_to_end"]]


def _header() -> list[str]:
    cols = [h for _, h in _COMPOSITION]
    for key, _ in ROWS:
        unit = {"D_li": "cm2/s", "D_tfsi": "cm2/s", "D_peo": "cm2/s", "sigma_ne": "S/cm", "sigma_eh": "S/cm"}.get(key, "")
        cols += [f"{key}{' (' + unit + ')' if unit else ''}", f"{key}_err"]
    return [*cols, "coordination plateaued", "wall time (s)", "speed-up end to end"]


def conductivity_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Conductivity (NE, EH; replica error bars) against Li+ molality, EO:Li labelled."""
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    x = [r["composition"]["molality_mol_kg"] for r in rows]
    for key, label, marker in (("sigma_ne", "Nernst-Einstein", "o"), ("sigma_eh", "Einstein-Helfand", "s")):
        y = [r["transport"][key]["mean"] for r in rows]
        e = [r["transport"][key]["error"] for r in rows]
        ax.errorbar(x, y, yerr=[v if v == v else 0.0 for v in e], marker=marker, capsize=3, label=label)
    for r, xi in zip(rows, x, strict=True):
        ax.annotate(f"EO:Li {r['composition']['eo_li']:g}\nn={r['composition']['chain_length']}", (xi, 0),
                    xycoords=("data", "axes fraction"), fontsize=7, ha="center", va="bottom")
    ax.set_xlabel("Li+ molality (mol/kg of PEO)")
    ax.set_ylabel("conductivity (S/cm)")
    ax.set_title("learned model; error bars: standard error over replicas", fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_table(output: Path, figures: bool = True) -> dict[str, Any]:
    """Write ``table.csv``, ``table.md`` (and ``conductivity.png``) for every composition in ``output``."""
    rows = collect(output)
    header = _header()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(_cells(r) for r in rows)

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(fmt(v) for v in _cells(r)) + " |" for r in rows]
    with committed_together():
        write_text_atomic(output / "table.csv", buf.getvalue())
        write_text_atomic(output / "table.md", "# Screening table\n\nMean and standard error over replicas; "
                                               "D in cm^2/s, conductivity in S/cm.\n\n" + "\n".join(md) + "\n")
        if figures and rows:
            conductivity_plot(rows, output / "conductivity.png")
    return {"table": str(output / "table.md"), "csv": str(output / "table.csv"), "n_compositions": len(rows)}
