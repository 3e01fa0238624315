"""Input checks shared by the observables (private).

Every public observable validates its arrays here, so bad input always ends in one
:class:`cgsim.errors.CgsimInputError` line naming the function, the argument and what was
expected, e.g. ``rdf.box: triclinic box (non-zero off-diagonal vectors); expected an
orthorhombic box``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cgsim.errors import CgsimInputError


def positions(xyz: Any, where: str, min_frames: int = 1) -> np.ndarray:
    """``xyz`` as float64 of shape (n_frames, n_particles, 3), finite, non-empty."""
    arr = np.asarray(xyz, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise CgsimInputError(where, f"expected positions of shape (n_frames, n_particles, 3), got {arr.shape}")
    if arr.shape[0] < min_frames:
        raise CgsimInputError(where, f"expected at least {min_frames} frames, got {arr.shape[0]}")
    if arr.shape[1] == 0:
        raise CgsimInputError(where, "empty selection: no particles")
    if not np.isfinite(arr).all():
        raise CgsimInputError(where, "positions contain NaN or infinite values")
    return arr


def box_lengths(box: Any, n_frames: int, where: str) -> np.ndarray:
    """An orthorhombic box as lengths of shape (n_frames, 3), nm.

    Accepts lengths (3,) or (n_frames, 3), or box vectors (3, 3) or (n_frames, 3, 3) whose
    off-diagonal elements are zero. Triclinic boxes are refused.
    """
    if box is None:
        raise CgsimInputError(where, "no box given; a periodic observable needs the box (or periodic=False)")
    arr = np.asarray(box, dtype=np.float64)
    # a (3, 3) array is ambiguous when n_frames == 3: all-positive = lengths of 3 frames,
    # otherwise box vectors (an orthorhombic matrix has zeros off the diagonal)
    lengths_of_frames = arr.shape == (n_frames, 3) and bool((arr > 0).all())
    if arr.shape in ((3, 3), (n_frames, 3, 3)) and not lengths_of_frames:
        vec = arr.reshape(-1, 3, 3)
        off = vec - np.einsum("fii->fi", vec)[:, :, None] * np.eye(3)
        if np.abs(off).max() > 1e-6 * max(1.0, float(np.abs(vec).max())):
            raise CgsimInputError(where, "triclinic box (non-zero off-diagonal vectors); expected an orthorhombic box")
        arr = np.einsum("fii->fi", vec)
    if arr.shape == (3,):
        arr = np.broadcast_to(arr, (n_frames, 3))
    if arr.shape == (1, 3):
        arr = np.broadcast_to(arr, (n_frames, 3))
    if arr.shape != (n_frames, 3):
        raise CgsimInputError(where, f"expected box lengths of shape (3,) or ({n_frames}, 3) or vectors "
                                     f"({n_frames}, 3, 3), got {np.shape(box)}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise CgsimInputError(where, "expected positive finite box lengths")
    return np.ascontiguousarray(arr)


def selection(sel: Any, n_particles: int, where: str) -> np.ndarray:
    """Indices (sorted, unique) from an index array, a boolean mask or None (= all)."""
    if sel is None:
        return np.arange(n_particles)
    arr = np.asarray(sel)
    if arr.dtype == bool:
        if arr.shape != (n_particles,):
            raise CgsimInputError(where, f"boolean mask of shape {arr.shape}, expected ({n_particles},)")
        idx = np.flatnonzero(arr)
    else:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise CgsimInputError(where, f"expected integer indices or a boolean mask, got dtype {arr.dtype}")
        idx = np.unique(arr.astype(np.int64).ravel())
        if idx.size and (idx[0] < 0 or idx[-1] >= n_particles):
            raise CgsimInputError(where, f"indices out of range [0, {n_particles})")
    if idx.size == 0:
        raise CgsimInputError(where, "empty selection: no particles selected")
    return idx


def labels(values: Any, n_particles: int, where: str) -> tuple[list[str], np.ndarray]:
    """Sorted unique names and an integer label per particle, from one name per particle."""
    if values is None:
        return ["all"], np.zeros(n_particles, dtype=np.int64)
    arr = np.asarray(values).astype(str)
    if arr.shape != (n_particles,):
        raise CgsimInputError(where, f"expected one entry per particle, shape ({n_particles},), got {arr.shape}")
    names, lab = np.unique(arr, return_inverse=True)
    return [str(n) for n in names], lab.astype(np.int64)


def weights(masses: Any, n_particles: int, where: str) -> np.ndarray:
    """Masses (n_particles,), positive and finite; None means equal masses of 1 amu."""
    if masses is None:
        return np.ones(n_particles)
    arr = np.asarray(masses, dtype=np.float64)
    if arr.shape != (n_particles,):
        raise CgsimInputError(where, f"expected one mass per particle, shape ({n_particles},), got {arr.shape}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise CgsimInputError(where, "expected positive finite masses (amu)")
    return arr


def molecule_ids(ids: Any, n_particles: int, where: str) -> tuple[np.ndarray, int]:
    """Dense molecule (chain) labels 0..n-1 per particle and their number; None = one molecule."""
    if ids is None:
        return np.zeros(n_particles, dtype=np.int64), 1
    arr = np.asarray(ids)
    if arr.shape != (n_particles,) or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise CgsimInputError(where, f"expected one integer id per particle, shape ({n_particles},), got "
                                     f"{arr.shape} {arr.dtype}")
    _, dense = np.unique(arr, return_inverse=True)
    return dense.astype(np.int64), int(dense.max()) + 1 if dense.size else 0


def positive(value: Any, where: str) -> float:
    """A positive finite float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CgsimInputError(where, f"expected a positive number, got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise CgsimInputError(where, f"expected a positive number, got {value!r}")
    return v


def index_pairs(pairs: Any, n_particles: int, width: int, where: str) -> np.ndarray:
    """Integer index tuples of shape (n, width) inside [0, n_particles)."""
    arr = np.asarray(pairs)
    if arr.size == 0:
        raise CgsimInputError(where, f"empty selection: expected at least one index {width}-tuple")
    if arr.ndim != 2 or arr.shape[1] != width or not np.issubdtype(arr.dtype, np.integer):
        raise CgsimInputError(where, f"expected integer indices of shape (n, {width}), got {arr.shape} {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n_particles:
        raise CgsimInputError(where, f"indices out of range [0, {n_particles})")
    return arr.astype(np.int64)


def time_step(dt: Any, where: str) -> float:
    """A positive frame interval, ps."""
    return positive(dt, where)


def window(fit_window: Sequence[float], t_max: float, where: str) -> tuple[float, float]:
    """A fit window ``(t_start, t_end)`` in ps inside ``[0, t_max]``."""
    try:
        t0, t1 = (float(x) for x in fit_window)
    except (TypeError, ValueError):
        raise CgsimInputError(where, f"expected a window (t_start, t_end) in ps, got {fit_window!r}") from None
    if not (np.isfinite(t0) and np.isfinite(t1) and 0 <= t0 < t1):
        raise CgsimInputError(where, f"expected 0 <= t_start < t_end, got ({t0}, {t1})")
    if t1 > t_max * (1 + 1e-9):
        raise CgsimInputError(where, f"fit window ends at {t1:g} ps, beyond the longest lag available "
                                     f"({t_max:g} ps); shorten the window or use fewer blocks")
    return t0, t1


def workers(value: Any, where: str) -> int:
    """A thread count: a positive integer, or -1 for every CPU."""
    import os

    if value == -1:
        return os.cpu_count() or 1
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise CgsimInputError(where, f"expected a positive number of threads or -1 (all CPUs), got {value!r}")
    return int(value)


def common_lags(results: Sequence[Any], what: str, where: str) -> np.ndarray:
    """Lag times shared by results to be pooled (each has ``lag_times``); cut to the shortest.

    Raises :class:`CgsimInputError` if ``results`` is empty or the frame intervals differ.
    """
    if not results:
        raise CgsimInputError(where, f"empty selection: no {what} to combine")
    n = min(r.lag_times.size for r in results)
    lags = results[0].lag_times[:n]
    for r in results:
        if not np.allclose(r.lag_times[:n], lags):
            raise CgsimInputError(where, "expected the same time between frames in every trajectory")
    return lags
