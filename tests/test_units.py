import math

import pytest

from cgsim import units


def test_boltzmann_in_md_units():
    # R = 8.314462618 J/(mol K) (CODATA 2018) -> kJ/(mol K)
    assert units.BOLTZMANN == pytest.approx(8.314462618e-3, rel=1e-10)
    assert units.kT(300.0) == pytest.approx(2.494338785, rel=1e-9)


def test_lj_units_default_maps_tau_to_ps():
    lj = units.LJUnits()
    assert lj.tau == pytest.approx(1.0)
    assert lj.temperature == pytest.approx(1.0 / units.BOLTZMANN)
    assert lj.to_md(2.5, "length") == pytest.approx(2.5)


def test_lj_units_argon_like():
    # argon: sigma 0.3405 nm, epsilon/kB = 119.8 K, m = 39.948 amu -> tau = 2.156 ps
    lj = units.LJUnits(sigma=0.3405, epsilon=119.8 * units.BOLTZMANN, mass=39.948)
    assert lj.tau == pytest.approx(2.156, rel=2e-3)
    assert lj.temperature == pytest.approx(119.8)
    x = 3.7
    for q in ("length", "time", "mass", "energy", "temperature"):
        assert lj.from_md(lj.to_md(x, q), q) == pytest.approx(x)


@pytest.mark.parametrize("field", ["sigma", "epsilon", "mass"])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_lj_units_reject_non_positive(field, bad):
    with pytest.raises(ValueError, match=field):
        units.LJUnits(**{field: bad})


def test_units_block():
    assert units.units_block("md")["length"] == "nm"
    lj = units.units_block("lj", units.LJUnits())
    assert lj["system"] == "lj" and lj["files"]["time"] == "ps"
    with pytest.raises(ValueError):
        units.units_block("lj")
    with pytest.raises(ValueError):
        units.units_block("cgs")
    with pytest.raises(ValueError):
        units.LJUnits().to_md(1.0, "charge")
