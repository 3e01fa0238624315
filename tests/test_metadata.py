import json

import pytest

from cgsim.errors import CgsimInputError
from cgsim.metadata import SystemInfo, TrajectoryMetadata, read_sidecar, sidecar_path, write_sidecar
from cgsim.units import units_block


def _meta() -> TrajectoryMetadata:
    info = SystemInfo(name="toy", units=units_block("md"), temperature=300.0, md_timestep=0.002,
                      periodic=True, particle_types=["A", "B"], particle_masses=[1.0, 2.0],
                      box=[3.0, 3.0, 3.0, 90.0, 90.0, 90.0])
    return TrajectoryMetadata(kind="reference_md", trajectory="x.xtc", topology="x.pdb", system=info,
                              save_interval=2.0, n_frames=10, extra={"note": "hi"})


def test_sidecar_round_trip(tmp_path):
    meta = _meta()
    path = write_sidecar(meta, tmp_path / "x.xtc")
    assert path == tmp_path / "x.json" == sidecar_path(tmp_path / "x.xtc")
    back = read_sidecar(tmp_path / "x.xtc")
    assert back == meta
    assert back.system.n_particles == 2
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_sidecar_missing(tmp_path):
    with pytest.raises(CgsimInputError, match="sidecar not found"):
        read_sidecar(tmp_path / "nothing.xtc")


def test_sidecar_not_json(tmp_path):
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(CgsimInputError, match=r"x\.json: not valid JSON"):
        read_sidecar(tmp_path / "x.xtc")


def test_sidecar_wrong_format_names_field(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CgsimInputError, match="field 'format'"):
        read_sidecar(tmp_path / "x.json")


def test_sidecar_missing_field(tmp_path):
    data = _meta().to_dict()
    del data["n_frames"]
    (tmp_path / "x.json").write_text(json.dumps(data))
    with pytest.raises(CgsimInputError, match="malformed metadata"):
        read_sidecar(tmp_path / "x.json")
