"""The notebooks in notebooks/: they run end to end at tiny size, and are stored without outputs.

Each notebook reads ``CGSIM_NOTEBOOK_SIZE`` (``tiny`` here: a few frames, ``debug=tiny``
training, a few rollout steps) and writes into ``$CGSIM_NOTEBOOK_OUT/<notebook>/``, including a
``summary.json`` whose numbers are checked below. The kernel is ipykernel's ``python3`` on the
interpreter running the tests (``sys.executable``, the .venv's python): a kernel spec of the same
name elsewhere (e.g. ~/.local/share/jupyter/kernels/python3 pointing at another Python) is not
used, so the kernel always sees this cgsim.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ipykernel  # noqa: F401 - the kernel (dev dependency); fail here, not in a kernel start-up timeout
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]


def test_the_three_notebooks_exist():
    assert NAMES == ["01_map_a_trajectory", "02_train_and_roll_out", "03_electrolyte_transport"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_stored_without_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {cell.get('id')} has outputs"
    assert nb.cells[0].cell_type == "markdown"
    assert "CGSIM_NOTEBOOK_SIZE" in nb.cells[1].source, "the second cell must be the parameters cell"


def _execute(name: str, out: Path, monkeypatch) -> dict:
    """Run notebooks/NAME.ipynb at tiny size (kernel cwd: notebooks/) and return its summary.json."""
    monkeypatch.setenv("CGSIM_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("CGSIM_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(str(ROOT / "notebooks" / f"{name}.ipynb"), as_version=4)
    # no kernel directories: jupyter_client then serves ipykernel's built-in python3 spec on sys.executable
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, kernel_name="python3", timeout=300, startup_timeout=120,
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute(cleanup_kc=True)  # raises CellExecutionError naming the failing cell; shuts the kernel down
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    return json.loads((out / name / "summary.json").read_text())


def test_map_a_trajectory(tmp_path, monkeypatch):
    s = _execute("01_map_a_trajectory", tmp_path, monkeypatch)
    assert s["size"] == "tiny" and s["n_frames"] >= 20  # every 15th frame of a run of >= 300 (it grows with re-exports)
    assert s["n_atoms"] == 1352 and 1 < s["atoms_per_bead_mean"] < 15
    assert sorted(s["ion_bead_charges"].values()) == pytest.approx([-0.8, 0.8])
    assert abs(s["total_charge"]) < 1e-6
    assert all(0.2 < v < 0.6 for v in s["mean_bond_length_nm"].values())
    assert s["same_as_cgsim_map"] is True
    assert not list(tmp_path.glob("*/data")), "notebook wrote a data/ folder"


def test_train_and_roll_out(tmp_path, monkeypatch):
    s = _execute("02_train_and_roll_out", tmp_path, monkeypatch)
    assert s["epochs"] == 2 and math.isfinite(s["val_nll"])
    assert s["rollout_frames"] == [s["rollout_steps"] + 1]
    assert 1.0 < s["rg_reference_nm"] < 10.0
    assert 0.0 <= s["evaluate_rg_jsd"] <= 1.0
    assert (tmp_path / "02_train_and_roll_out" / "evaluate" / "report.md").is_file()


def test_electrolyte_transport(tmp_path, monkeypatch):
    s = _execute("03_electrolyte_transport", tmp_path, monkeypatch)
    ref = s["reference"]
    for ion in (s["cation"], s["anion"]):
        assert 1e-9 < ref[f"D_{ion}_cm2_s"] < 1e-4  # cm2/s, finite and positive
    assert math.isfinite(ref["sigma_ne_S_cm"]) and ref["sigma_ne_S_cm"] > 0
    assert math.isfinite(ref["sigma_eh_S_cm"])
    assert s["checkpoint"] == "data/checkpoints/electrolyte.pt" and s["reference_frames"] >= 750
    assert s["rollout_steps"] == 10 and len(s["rollout_frames"]) == 1
    # the shipped model with its guard finishes 10 steps; a stopped replica would have fewer frames
    assert s["rollout_status"] == ["finished"] and s["rollout_frames"] == [11] and len(s["rollout"]) == 1
    assert all(math.isfinite(v) for v in s["rollout"][0].values() if isinstance(v, float))
