"""`cgsim rollout compile=true`: the forward goes through torch.compile, with an eager fallback.

A real compilation takes minutes on the CPU (BENCHMARKS.md), so ``torch.compile`` is replaced
here: by an identity wrapper (the wiring), and by failures at wrap time and at the first call
(the fallback).
"""

from __future__ import annotations

import logging

import mdtraj as md
import numpy as np
import pytest
import torch

from cgsim.rollout.command import rollout
from cgsim.rollout.compile import compile_model
from tests.conftest import SEQ


class _Wrapper(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule: forwards calls and attributes."""

    def __init__(self, mod: torch.nn.Module, fail: bool = False) -> None:
        super().__init__()
        self._orig_mod, self.fail, self.calls = mod, fail, 0

    def forward(self, *args, **kwargs):  # noqa: D102
        self.calls += 1
        if self.fail:
            raise RuntimeError("inductor: no C++ compiler found\nlong traceback text")
        return self._orig_mod(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["_orig_mod"], name)


def _run(compose_cfg, ckpt, out, *extra):
    cfg = compose_cfg("rollout", [f"checkpoint={ckpt}", f"initial={SEQ}", f"output={out}", "progress=false", "steps=4",
                                  "replicas=2", "guard.enabled=false", *extra])
    return rollout(cfg)


def test_compile_option_defaults_to_false(compose_cfg):
    cfg = compose_cfg("rollout", ["checkpoint=x", "initial=y", "steps=1", "output=z"])
    assert cfg.compile is False


@pytest.mark.parametrize("mode", ["ok", "fails_at_wrap", "fails_at_first_call"])
def test_compile_true_uses_wrapper_or_falls_back(compose_cfg, ckpt, tmp_path, monkeypatch, caplog, mode):
    made: list[_Wrapper] = []

    def fake_compile(mod, dynamic=None, **kw):
        if mode == "fails_at_wrap":
            raise RuntimeError("torch.compile is not supported on this Python")
        made.append(_Wrapper(mod, fail=mode == "fails_at_first_call"))
        return made[-1]

    _run(compose_cfg, ckpt, tmp_path / "eager")
    monkeypatch.setattr(torch, "compile", fake_compile)
    with caplog.at_level(logging.WARNING, logger="cgsim.rollout.compile"):
        _run(compose_cfg, ckpt, tmp_path / "comp", "compile=true")
    warnings = [r.getMessage() for r in caplog.records if r.name == "cgsim.rollout.compile"]
    if mode == "ok":
        assert not warnings and made[0].calls == 1 + 4  # the compile example + one forward per step
    else:
        assert len(warnings) == 1 and "\n" not in warnings[0] and "running the model eagerly" in warnings[0]
    for r in range(2):  # same frames either way (the identity wrapper computes the same thing)
        member = f"seq_000/replica_{r:03d}/rollout.h5"
        a, b = md.load(str(tmp_path / "eager" / member)).xyz, md.load(str(tmp_path / "comp" / member)).xyz
        assert a.shape == (5, 30, 3) and np.array_equal(a, b)


def test_compile_model_reports_error_and_returns_eager(monkeypatch, caplog):
    model = torch.nn.Linear(3, 3)
    monkeypatch.setattr(torch, "compile", lambda mod, dynamic=None: _Wrapper(mod, fail=True))
    with caplog.at_level(logging.WARNING, logger="cgsim.rollout.compile"):
        out, error = compile_model(model, example=lambda m: m(torch.zeros(2, 3)))
    assert out is model and error == "RuntimeError: inductor: no C++ compiler found"
    assert "torch.compile failed (RuntimeError: inductor: no C++ compiler found); running the model eagerly" in caplog.text
    out, error = compile_model(model)  # no example: nothing runs, the wrapper is returned
    assert isinstance(out, _Wrapper) and error is None
