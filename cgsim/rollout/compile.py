"""``torch.compile`` of the model forward for rollouts, with an eager fallback.

Compilation is lazy in torch: it happens at the first call. :func:`compile_model` therefore
runs one example forward right away, so a failure (no C++ compiler, an unsupported operation,
a torch build without inductor) is caught here, reported in one warning line, and the rollout
goes on with the eager model instead of failing at its first step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["compile_model"]


def compile_model(model: nn.Module, example: Callable[[nn.Module], Any] | None = None,
                  dynamic: bool | None = True) -> tuple[nn.Module, str | None]:
    """Wrap ``model``'s forward in ``torch.compile``; fall back to ``model`` if that fails.

    Parameters
    ----------
    model : torch.nn.Module
        The learned simulator. Its other methods (``chemistry``, ``positions_from_target``) and
        attributes stay reachable through the wrapper and are not compiled.
    example : callable, optional
        ``example(m)`` runs one forward of ``m`` on a representative input (in inference
        mode), so compilation happens, and fails, here rather than in the first rollout step.
    dynamic : bool or None
        ``torch.compile``'s ``dynamic``: True (default) compiles for symbolic sizes, since the
        number of edges changes from step to step.

    Returns
    -------
    module : torch.nn.Module
        The compiled wrapper, or ``model`` itself if compilation failed.
    error : str or None
        Why compilation failed (one line), ``None`` on success.
    """
    try:
        compiled = torch.compile(model, dynamic=dynamic)
        if example is not None:
            with torch.inference_mode():
                example(compiled)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        lines = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
        log.warning("torch.compile failed (%s); running the model eagerly", error)
        return model, error
    return compiled, None
