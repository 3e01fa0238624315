"""Pair-count kernels of :mod:`cgsim.observables.rdf` (private): ordered pair histograms per
(label A, label B, distance bin), by the dense fixed-point kernel or by k-d trees, and the cost
model that chooses between them. The method and its accuracy are described in
:mod:`cgsim.observables.rdf`; the public functions there check every input first.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from cgsim.errors import CgsimInputError


def _shell_volumes(edges: np.ndarray) -> np.ndarray:
    return 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)


def _wrap(p: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Positions wrapped into [0, L) (cKDTree's periodic domain)."""
    w = p - box * np.floor(p / box)
    w[(w >= box) | (w < 0)] = 0.0  # rounding of values a hair below 0 or at L
    return w


def _tree_histograms(xyz: np.ndarray, box: np.ndarray | None, la: np.ndarray, lb: np.ndarray,
                     n_la: int, n_lb: int, edges: np.ndarray, workers: int = 1) -> np.ndarray:
    """Ordered pair counts per (label A, label B, bin) from a k-d tree per frame (float64).

    Parameters and result as :func:`_pair_histograms`. Visits only pairs within ``r_max``
    (``scipy.spatial.cKDTree.query_pairs``, periodic via ``boxsize``), so it wins when few
    pairs lie within ``r_max``; distances are float64 minimum-image vectors.
    """
    n_bins = edges.size - 1
    symmetric = la is lb
    keep = np.flatnonzero((la >= 0) | (lb >= 0))
    la, lb = la[keep], lb[keep]
    r_min, r_max = float(edges[0]), float(edges[-1])
    inv_width = n_bins / (r_max - r_min)
    size = n_la * n_lb * n_bins

    def frames(indices: range) -> np.ndarray:
        total = np.zeros(size, dtype=np.int64)
        for f in indices:
            p = xyz[f, keep]
            if box is not None:
                p = _wrap(p, box[f])
                tree = cKDTree(p, boxsize=box[f])
            else:
                tree = cKDTree(p)
            ij = tree.query_pairs(r_max, output_type="ndarray")
            if ij.size == 0:
                continue
            i, j = ij[:, 0], ij[:, 1]
            pt = p.T.copy()  # one contiguous row per dimension: 1-d gathers are several times faster
            r2 = np.zeros(i.size)
            for a in range(3):
                d = pt[a][j] - pt[a][i]
                if box is not None:
                    d -= box[f, a] * np.rint(d / box[f, a])
                r2 += d * d
            k = np.floor((np.sqrt(r2) - r_min) * inv_width).astype(np.int64)
            ok = (k >= 0) & (k < n_bins)
            i, j, k = i[ok], j[ok], k[ok]
            if symmetric:  # unordered pairs keyed by (min label, max label); symmetrised below
                a_, b_ = la[i], la[j]
                key = (np.minimum(a_, b_) * n_lb + np.maximum(a_, b_)) * n_bins + k
                total += np.bincount(key, minlength=size)
                continue
            for x, y in ((i, j), (j, i)):  # both orders of each unordered pair
                m = (la[x] >= 0) & (lb[y] >= 0)
                key = (la[x[m]] * n_lb + lb[y[m]]) * n_bins + k[m]
                total += np.bincount(key, minlength=size)
        return total

    total = _over_frames(frames, xyz.shape[0], workers)
    out = total.reshape(n_la, n_lb, n_bins).astype(np.float64)
    if symmetric:  # U[a, b] (a <= b) -> ordered counts: N(a->b) = N(b->a) = U[a, b] (a != b), 2 U[a, a]
        upper = np.triu(np.ones((n_la, n_lb), dtype=bool), k=1)
        out = out + np.where(upper[:, :, None], out, 0.0).transpose(1, 0, 2)
        diag = np.arange(n_la)
        out[diag, diag] *= 2.0
    return out


def _over_frames(fn: Any, n_frames: int, workers: int) -> Any:
    """``sum(fn(frames))`` over ``workers`` interleaved sets of frame indices (threads)."""
    workers = max(1, min(int(workers), n_frames))
    if workers == 1:
        return fn(range(n_frames))
    chunks = [range(w, n_frames, workers) for w in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(fn, chunks))


#: periodic fixed-point coordinates: 2^32 units per box length, so that int32 differences
#: wrap to the minimum image exactly
_FIXED = 2.0**32
#: elements (frames x rows x columns) per block of the dense kernel: small enough for the
#: CPU caches, large enough to amortise numpy's per-call cost
_BLOCK_ELEMENTS = 1 << 18
_ROWS = 32


def _coordinates(x: np.ndarray, box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of a chunk of frames laid out for the dense kernel, and nm per unit.

    Parameters
    ----------
    x : numpy.ndarray
        Positions, shape (n_frames, n, 3), nm.
    box : numpy.ndarray or None
        Box lengths, shape (n_frames, 3), nm; None = not periodic.

    Returns
    -------
    q : numpy.ndarray
        Shape (3, n_frames, n). Periodic: int32 fixed point, ``floor(frac(x / L) * 2^32)``
        stored modulo 2^32, so an int32 difference wraps to the minimum image exactly.
        Non-periodic: the float64 positions (differences are taken in float64).
    unit : numpy.ndarray
        nm per unit of ``q``, shape (n_frames, 3).
    """
    if box is None:
        return np.ascontiguousarray(x.transpose(2, 0, 1)), np.ones((x.shape[0], 3))
    frac = x / box[:, None, :]
    frac -= np.floor(frac)
    q = np.floor(frac * _FIXED).astype(np.int64) & 0xFFFFFFFF
    return np.ascontiguousarray(q.astype(np.uint32).view(np.int32).transpose(2, 0, 1)), box / _FIXED


def _key_layout(xyz: np.ndarray, box: np.ndarray | None, edges: np.ndarray, n_labels: int
                ) -> tuple[float, int, float, int, np.float32 | None]:
    """Histogram keys of :func:`_dense_histograms`: ``(per_nm, base, shift, stride, cap)``.

    A distance r goes to bin ``int(r * per_nm + shift) - base`` (``shift`` makes every value >= 0);
    each label pair owns ``stride`` keys; ``cap`` (or None) is the overflow key that indices
    beyond the range are clamped to, so the histogram stays small.
    """
    n_bins = edges.size - 1
    r_min, r_max = float(edges[0]), float(edges[-1])
    per_nm = n_bins / (r_max - r_min)
    base = int(np.ceil(r_min * per_nm)) + 1 if r_min > 0 else 0
    shift = base - r_min * per_nm
    if box is not None:
        r_far = float(np.sqrt(((0.5 * box) ** 2).sum(axis=1)).max())
    else:
        r_far = float(np.sqrt(3.0) * (xyz.max(axis=1) - xyz.min(axis=1)).max())
    # keys per label pair: every reachable bin index, and at least the whole requested range (a
    # system smaller than r_max reaches fewer bins than are returned)
    stride = max(int(r_far * per_nm + shift) + 2, base + n_bins + 1)
    cap = None
    # far-flung particles (a rollout that blew up), a short r_max in a big box, or many labels:
    # clamp, so that the histogram stays small
    if stride > 4 * (base + n_bins + 1) or n_labels * n_labels * stride > 1 << 20:
        cap = np.float32(base + n_bins)  # indices beyond the range all go to one overflow key
        stride = base + n_bins + 1
    return per_nm, base, shift, stride, cap


def _dense_histograms(xyz: np.ndarray, box: np.ndarray | None, labels: np.ndarray, n_labels: int,
                      edges: np.ndarray, workers: int = 1) -> np.ndarray:
    """Ordered pair counts per (label, label, bin) over all pairs, frames in blocks (float32).

    Every pair i < j of every frame is visited once, with no neighbour search. Periodic
    positions become 32-bit fixed-point integers (:func:`_coordinates`), so the minimum image
    of a difference is the wrap-around of an int32 subtraction (exact, no rounding);
    non-periodic differences are taken in float64. Squared distances are summed in float32
    (relative error ~1e-7, as mdtraj's float32 distances: a pair that close to a bin edge may
    fall in the neighbouring bin); int32 bin indices plus a label-pair offset are histogrammed
    with one ``torch.bincount`` per block.
    Blocks hold several frames x a band of rows x the columns to their right, so each numpy
    call works on ~2.6e5 elements in cache. Cost ~3 ns per pair and frame on one core,
    whatever ``r_max``.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n, 3), nm.
    box : numpy.ndarray or None
        Orthorhombic box lengths, shape (n_frames, 3), nm; None = no periodicity.
    labels : numpy.ndarray
        Label 0..n_labels-1 of each particle, shape (n,), int.
    n_labels : int
        Number of labels.
    edges : numpy.ndarray
        Equally spaced bin edges, shape (n_bins + 1,), nm.
    workers : int
        Threads over frames.

    Returns
    -------
    numpy.ndarray
        Ordered pairs (i, j), i != j, with labels (a, b) and ``edges[k] <= r_ij < edges[k+1]``,
        summed over frames, shape (n_labels, n_labels, n_bins), float64.
    """
    import torch  # its bincount of int32 keys is faster than numpy's (which widens them to int64)

    n_frames, n, _ = xyz.shape
    n_bins = edges.size - 1
    per_nm, base, shift, stride, cap = _key_layout(xyz, box, edges, n_labels)
    size = n_labels * n_labels * stride
    lab = labels.astype(np.int64)
    row_key, col_key = (lab * n_labels * stride).astype(np.int32), (lab * stride).astype(np.int32)
    cubic = box is None or bool(np.all(np.abs(box - box[:, :1]) <= 1e-12 * box[:, :1]))

    def band(q: np.ndarray, scale: np.ndarray, ratio: np.ndarray | None, a: int, b: int, c0: int, c1: int,
             bufs: dict[str, np.ndarray]) -> np.ndarray:
        """Counts of pairs (i in [a, b), j in [c0, c1)) of the chunk's frames."""
        nf, rows, cols = q.shape[1], b - a, c1 - c0
        m = nf * rows * cols
        d = bufs["d"][: 3 * m].reshape(3, nf, rows, cols)
        r = bufs["r"][:m].reshape(nf, rows, cols)
        k = bufs["k"][:m].reshape(nf, rows, cols)
        np.subtract(q[:, :, a:b, None], q[:, :, None, c0:c1], out=d, dtype=q.dtype, casting="unsafe")
        if ratio is not None:
            d *= ratio[:, :, None, None]
        np.einsum("kfij,kfij->fij", d, d, out=r)
        np.sqrt(r, out=r)
        if shift or cap is not None:
            r *= scale[:, None, None]
            if shift:
                r += np.float32(shift)
            if cap is not None:
                np.minimum(r, cap, out=r)
            np.copyto(k, r, casting="unsafe")
        else:
            np.multiply(r, scale[:, None, None], out=k, casting="unsafe")
        if n_labels > 1:
            off = bufs["off"][: rows * cols].reshape(rows, cols)
            np.add(row_key[a:b, None], col_key[None, c0:c1], out=off)
            k += off[None]
        return torch.bincount(torch.from_numpy(k.ravel()), minlength=size).numpy()

    def frames(indices: range) -> np.ndarray:
        within = np.zeros(size, dtype=np.int64)  # diagonal bands: ordered pairs (and i = i)
        across = np.zeros(size, dtype=np.int64)  # off-diagonal bands: each unordered pair once
        idx = np.asarray(indices, dtype=np.int64)
        rows = max(1, min(n, _ROWS))
        per_chunk = max(1, min(idx.size, _BLOCK_ELEMENTS // max(rows * n, 1)))
        per_chunk = max(per_chunk, min(idx.size, (4 * size) // max(rows * n, 1)))
        m = per_chunk * rows * n
        bufs = {"d": np.empty(3 * m, np.float32), "r": np.empty(m, np.float32), "k": np.empty(m, np.int32),
                "off": np.empty(rows * n, np.int32)}
        for s in range(0, idx.size, per_chunk):
            f = idx[s:s + per_chunk]
            q, unit = _coordinates(xyz[f], None if box is None else box[f])
            scale = (unit[:, 0] * per_nm).astype(np.float32)
            ratio = None if cubic else (unit / unit[:, :1]).T.astype(np.float32)
            for a in range(0, n, rows):
                b = min(a + rows, n)
                within += band(q, scale, ratio, a, b, a, b, bufs)
                if b < n:
                    across += band(q, scale, ratio, a, b, b, n, bufs)
        # i = i sits at r = 0: in bin 0 when r_min = 0, else below the range
        if float(edges[0]) == 0:
            self_key = (lab * n_labels + lab) * stride
            within -= idx.size * np.bincount(self_key, minlength=size)
        return within + across + across.reshape(n_labels, n_labels, stride).transpose(1, 0, 2).ravel()

    total = _over_frames(frames, n_frames, workers).reshape(n_labels, n_labels, stride)
    return total[:, :, base:base + n_bins].astype(np.float64)


def _pair_histograms(xyz: np.ndarray, box: np.ndarray | None, la: np.ndarray, lb: np.ndarray,
                     n_la: int, n_lb: int, edges: np.ndarray, workers: int = 1, method: str = "auto") -> np.ndarray:
    """Ordered pair counts per (label A, label B, bin), summed over frames.

    Parameters
    ----------
    xyz : numpy.ndarray
        Positions, shape (n_frames, n_particles, 3), nm.
    box : numpy.ndarray or None
        Orthorhombic box lengths, shape (n_frames, 3), nm; None = no periodicity.
    la, lb : numpy.ndarray
        Label of each particle as a member of side A / side B, shape (n_particles,), int;
        -1 = not on that side. Passing the same array object twice (type labels) takes a
        faster symmetric path.
    n_la, n_lb : int
        Number of labels on each side.
    edges : numpy.ndarray
        Equally spaced bin edges, shape (n_bins + 1,), nm.
    workers : int
        Threads over frames (the numpy kernels and k-d tree queries release the GIL).
    method : {"auto", "dense", "tree"}
        ``"dense"``: every pair in float32 blocks (:func:`_dense_histograms`); ``"tree"``: a
        k-d tree per frame, float64 (:func:`_tree_histograms`); ``"auto"``: the one expected
        to be faster (dense unless few pairs lie within ``r_max``).

    Returns
    -------
    numpy.ndarray
        Counts of ordered pairs (i, j), i != j, with ``la[i] = a``, ``lb[j] = b`` and
        ``edges[k] <= r_ij < edges[k+1]``, shape (n_la, n_lb, n_bins), float64.
    """
    if method not in METHODS:
        raise CgsimInputError("rdf.method", f"got {method!r}, expected one of {list(METHODS)}")
    keep = np.flatnonzero((la >= 0) | (lb >= 0))
    if method == "auto":
        method = _choose_method(xyz, box, keep.size, float(edges[-1]))
    if method == "tree":
        return _tree_histograms(xyz, box, la, lb, n_la, n_lb, edges, workers)
    sub = np.ascontiguousarray(xyz[:, keep]) if keep.size < xyz.shape[1] else xyz
    if la is lb:
        return _dense_histograms(sub, box, la[keep], n_la, edges, workers)
    # one label per combination (side A label or none, side B label or none); then sum
    combo = (la[keep] + 1) * (n_lb + 1) + (lb[keep] + 1)
    n_combo = (n_la + 1) * (n_lb + 1)
    full = _dense_histograms(sub, box, combo, n_combo, edges, workers)
    a_of = np.arange(n_combo) // (n_lb + 1) - 1
    b_of = np.arange(n_combo) % (n_lb + 1) - 1
    out = np.zeros((n_la, n_lb, edges.size - 1))
    for ca in np.flatnonzero(a_of >= 0):
        for cb in np.flatnonzero(b_of >= 0):
            out[a_of[ca], b_of[cb]] += full[ca, cb]
    return out


#: pair-histogram methods of :func:`rdf` and :func:`rdf_by_type`
METHODS = ("auto", "dense", "tree")
#: measured cost per pair and frame (s) of the dense kernel, and per pair within r_max and
#: per particle of the k-d tree path (2-core development VM, one thread)
_DENSE_PAIR_S = 3.0e-9
_TREE_PAIR_S = 1.5e-7
_TREE_PARTICLE_S = 5e-7


def _choose_method(xyz: np.ndarray, box: np.ndarray | None, n: int, r_max: float) -> str:
    """``"dense"`` or ``"tree"``, whichever the cost model expects to be faster."""
    if n < 2:
        return "dense"
    if box is not None:
        volume = float(box.prod(axis=1).mean())
    else:
        span = xyz[0].max(axis=0) - xyz[0].min(axis=0)
        volume = float(np.prod(np.maximum(span, r_max)))
    fraction = min(1.0, 4.0 / 3.0 * np.pi * r_max**3 / volume)
    pairs = 0.5 * n * (n - 1)
    dense = _DENSE_PAIR_S * pairs
    tree = _TREE_PAIR_S * fraction * pairs + _TREE_PARTICLE_S * n
    return "dense" if dense <= tree else "tree"
