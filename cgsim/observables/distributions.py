"""Histograms of scalar samples and the distances between them.

A :class:`Distribution` keeps raw counts (so histograms of several trajectories pool by
adding counts) and the samples that fell below or above its range (so a rollout whose
bonds blew up is not silently truncated to the reference's range).

Distances between distributions:

- Jensen-Shannon divergence, base 2, in [0, 1] (Lin, IEEE Trans. Inf. Theory 37, 145 (1991)):
  ``JSD(P, Q) = H(M) - (H(P) + H(Q)) / 2`` with ``M = (P + Q) / 2`` and Shannon entropy ``H``.
  Under- and overflow are two extra bins.
- relative error of scalars ``|x - x_ref| / |x_ref|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cgsim.errors import CgsimInputError


@dataclass(frozen=True, eq=False)
class Distribution:
    """A histogram of scalar samples.

    Attributes
    ----------
    edges : numpy.ndarray
        Bin edges, shape (n_bins + 1,), in ``units``.
    counts : numpy.ndarray
        Samples per bin, shape (n_bins,), int64.
    n_below, n_above : int
        Samples below ``edges[0]`` and at or above ``edges[-1]`` (not in ``counts``).
    sum, sum_sq : float
        Sum and sum of squares of all samples (for the mean and standard deviation).
    units : str
        Unit of the samples (``"nm"``, ``"rad"``, ...).
    """

    edges: np.ndarray
    counts: np.ndarray
    n_below: int
    n_above: int
    sum: float
    sum_sq: float
    units: str

    @property
    def n_samples(self) -> int:
        """All samples, in range or not."""
        return int(self.counts.sum()) + self.n_below + self.n_above

    @property
    def centers(self) -> np.ndarray:
        """Bin centres, shape (n_bins,)."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def density(self) -> np.ndarray:
        """Probability density per unit of ``units``, shape (n_bins,); integrates to the
        fraction of samples inside the range."""
        n = max(self.n_samples, 1)
        return self.counts / (n * np.diff(self.edges))

    @property
    def mean(self) -> float:
        """Mean of all samples."""
        return self.sum / self.n_samples if self.n_samples else float("nan")

    @property
    def std(self) -> float:
        """Population standard deviation of all samples."""
        if not self.n_samples:
            return float("nan")
        return float(np.sqrt(max(self.sum_sq / self.n_samples - self.mean**2, 0.0)))

    def probabilities(self) -> np.ndarray:
        """Probabilities of [underflow, bins..., overflow], shape (n_bins + 2,), summing to 1."""
        full = np.concatenate([[self.n_below], self.counts, [self.n_above]]).astype(np.float64)
        return full / max(full.sum(), 1.0)


def histogram(values: np.ndarray, edges: np.ndarray, units: str) -> Distribution:
    """Histogram of ``values`` on fixed ``edges``.

    Parameters
    ----------
    values : numpy.ndarray
        Samples, any shape (flattened); non-finite samples count as overflow.
    edges : numpy.ndarray
        Increasing bin edges, shape (n_bins + 1,), n_bins >= 1.
    units : str
        Unit of the samples.

    Returns
    -------
    Distribution
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise CgsimInputError("histogram.edges", "expected at least two strictly increasing bin edges")
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    vf = v[finite]
    below = int((vf < edges[0]).sum())
    above = int((vf >= edges[-1]).sum()) + int((~finite).sum())
    inside = vf[(vf >= edges[0]) & (vf < edges[-1])]
    idx = np.searchsorted(edges, inside, side="right") - 1
    counts = np.bincount(idx, minlength=edges.size - 1).astype(np.int64)
    return Distribution(edges=edges, counts=counts, n_below=below, n_above=above,
                        sum=float(vf.sum()), sum_sq=float((vf**2).sum()), units=units)


def combine_distributions(dists: Sequence[Distribution]) -> Distribution:
    """Pool histograms on identical edges by adding their counts."""
    if not dists:
        raise CgsimInputError("combine_distributions.dists", "empty selection: no distributions to combine")
    first = dists[0]
    for d in dists[1:]:
        if d.edges.shape != first.edges.shape or not np.allclose(d.edges, first.edges) or d.units != first.units:
            raise CgsimInputError("combine_distributions.dists", "expected histograms with identical edges and units")
    return Distribution(edges=first.edges, counts=sum(d.counts for d in dists),
                        n_below=sum(d.n_below for d in dists), n_above=sum(d.n_above for d in dists),
                        sum=sum(d.sum for d in dists), sum_sq=sum(d.sum_sq for d in dists), units=first.units)


def _entropy_bits(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log2(nz)).sum())


def js_divergence(p: Distribution | np.ndarray, q: Distribution | np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two histograms.

    Parameters
    ----------
    p, q : Distribution or numpy.ndarray
        Histograms on the same bins (for :class:`Distribution`, under- and overflow are
        extra bins), or non-negative weight vectors of equal length (normalised here).

    Returns
    -------
    float
        0 for identical distributions, 1 for disjoint ones.
    """
    if isinstance(p, Distribution) and isinstance(q, Distribution):
        if p.edges.shape != q.edges.shape or not np.allclose(p.edges, q.edges):
            raise CgsimInputError("js_divergence", "expected histograms on identical edges")
        pa, qa = p.probabilities(), q.probabilities()
    else:
        pa = np.asarray(p.probabilities() if isinstance(p, Distribution) else p, dtype=np.float64)
        qa = np.asarray(q.probabilities() if isinstance(q, Distribution) else q, dtype=np.float64)
        if pa.shape != qa.shape or pa.ndim != 1:
            raise CgsimInputError("js_divergence", f"expected two weight vectors of equal length, got {pa.shape} and {qa.shape}")
        if (pa < 0).any() or (qa < 0).any() or pa.sum() <= 0 or qa.sum() <= 0:
            raise CgsimInputError("js_divergence", "expected non-negative weights with a positive sum")
        pa, qa = pa / pa.sum(), qa / qa.sum()
    m = 0.5 * (pa + qa)
    return float(min(max(_entropy_bits(m) - 0.5 * (_entropy_bits(pa) + _entropy_bits(qa)), 0.0), 1.0))


def relative_error(value: float, reference: float) -> float:
    """``|value - reference| / |reference|`` (inf when the reference is 0 and they differ)."""
    value, reference = float(value), float(reference)
    if value == reference:
        return 0.0
    if reference == 0 or not np.isfinite(reference):
        return float("inf")
    return abs(value - reference) / abs(reference)
