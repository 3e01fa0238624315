"""A structural prior of bead pairs, fitted to the training data, applied after each draw.

The dynamics network draws every bead's next position from a Gaussian ``q(x) = N(mu, sigma^2)``
in one call. Its noise is (nearly) independent per bead, so over a learned step of hundreds of MD
steps a draw stretches bonds and lets beads overlap: rollouts leave the physical manifold within
a few steps (BENCHMARKS.md, "One-call step with a structural prior"). What MD moves together
(the two ends of a bond, a bead and its neighbour's neighbour, two ions that never touch) is
exactly what the pair distributions of the training frames describe. This module turns them into
a potential of mean force and samples the tilted step distribution

    p(x) ~ q(x) * exp(-U(x)),      U = sum_bonds u_1(r) + sum_{1-3 pairs} u_2(r) + sum_close u_nb(r)

(U in kT) with a few preconditioned Langevin updates that start at the network's draw. No
network is called: its cost is that of the pair terms (bonds, 1-3 pairs, a short-range
neighbour list), a few per cent of one network call.

Terms (Boltzmann inversion of distance histograms of the training frames, per pair of bead
*classes*; a bead's class is the multiset of its fine particle types, so the prior applies to
any system mapped the same way; classes with too few samples fall back to the pooled table):

- ``u_1``, ``u_2``: bonded and 1-3 (two bonds apart) distances, ``u(r) = -ln(P(r) / r^2)``;
- ``u_nb``: the repulsive core of every other pair closer than ``nb_cutoff``:
  ``-ln(g(r) / g(r_peak))`` below the first peak of the pair's ``g``-like histogram, 0 beyond,
  so the prior only forbids what MD never shows and leaves the liquid structure to the network.

Beyond the data, every table continues with its edge slope plus a harmonic wall: above the
largest bonded distance seen as stiff as the well itself, below the smallest distance seen
:data:`LOWER_WALL` times stiffer (a soft hard core); a non-bonded core is flat beyond its peak. The Langevin update of bead
``i`` (``h_i = tau / (1/sigma_i^2 + c_i)``, ``c_i`` the curvature of its bonded terms)::

    x_i <- x_i + h_i [-(x_i - mu_i) / sigma_i^2 - grad_i U] + sqrt(2 h_i) z_i

With collective noise (a molecule centre step of its own, :mod:`cgsim.model.collective`) the
updates keep every multi-bead molecule's centre where the draw put it, so the centre motion the
network learned is not changed; single beads (ions) move freely.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch_geometric.utils import scatter

from cgsim.geometry import radius_graph
from cgsim.geometry.pbc import minimum_image

#: table kinds, in the order of :attr:`StructuralPrior.tables`
KINDS = ("bond", "angle", "nb")
ANCHORS = ("mean", "draw")
#: stiffness of every table's wall below the smallest distance in the data, in units of its well's
LOWER_WALL = 25.0
POOLED = "*"
PRIOR_FORMAT = "cgsim-structural-prior"
PRIOR_VERSION = 1


def bead_classes(atom_type: torch.Tensor, atom_to_bead: torch.Tensor, n_beads: int,
                 atom_types: Sequence[str]) -> list[str]:
    """Class of every bead: its fine particle types with counts, e.g. ``"B1x2+S1x2"``.

    Parameters
    ----------
    atom_type : torch.Tensor
        Fine type index of each fine particle, shape (n_atoms,), int64.
    atom_to_bead : torch.Tensor
        Bead of each fine particle, shape (n_atoms,), int64.
    n_beads : int
        Number of beads.
    atom_types : sequence of str
        Names of the fine types (the model's vocabulary).
    """
    counts = np.zeros((n_beads, len(atom_types)), dtype=np.int64)
    np.add.at(counts, (atom_to_bead.cpu().numpy(), atom_type.cpu().numpy()), 1)
    names = []
    for row in counts:
        names.append("+".join(f"{atom_types[t]}x{row[t]}" for t in np.nonzero(row)[0]))
    return names


def pair_lists(bonds: torch.Tensor, n_beads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique bonded pairs and 1-3 pairs (two bonds apart, not bonded) of a bond graph.

    Parameters
    ----------
    bonds : torch.Tensor
        Bead bonds, shape (2, E), int64 (either or both directions).
    n_beads : int
        Number of beads N.

    Returns
    -------
    bonded, angle : torch.Tensor
        Shape (2, E1) and (2, E2), int64, each pair once with ``i < j``.
    """
    b = bonds.cpu().numpy().reshape(2, -1)
    b = np.unique(np.sort(b, axis=0), axis=1) if b.size else np.zeros((2, 0), dtype=np.int64)
    b = b[:, b[0] != b[1]]
    neighbours: list[list[int]] = [[] for _ in range(n_beads)]
    for i, j in b.T:
        neighbours[i].append(int(j))
        neighbours[j].append(int(i))
    bonded = {(int(i), int(j)) for i, j in b.T}
    angle = set()
    for centre in range(n_beads):
        nb = neighbours[centre]
        for a in range(len(nb)):
            for c in range(a + 1, len(nb)):
                i, j = min(nb[a], nb[c]), max(nb[a], nb[c])
                if (i, j) not in bonded:
                    angle.add((i, j))
    ang = np.array(sorted(angle), dtype=np.int64).T.reshape(2, -1)
    return torch.from_numpy(b.astype(np.int64)), torch.from_numpy(ang)


def _pair_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


@dataclass
class PairTable:
    """A tabulated pair potential in kT on a uniform grid, with its extension beyond the data.

    Attributes
    ----------
    r0, dr : float
        First grid point and spacing, nm.
    u : numpy.ndarray
        Potential on the grid, shape (G,), kT.
    lo, hi : float
        Data support, nm: outside ``[lo, hi]`` the table is extended by its edge slope plus a
        harmonic wall of stiffness ``k``.
    k : float
        Wall stiffness and curvature scale of the well, kT / nm^2.
    n_samples : int
        Distances the table was fitted to.
    upper_wall : bool
        Whether the table rises beyond its grid (bonded terms); a non-bonded core is flat there.
    """

    r0: float
    dr: float
    u: np.ndarray
    lo: float
    hi: float
    k: float
    n_samples: int
    upper_wall: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists) for checkpoints and JSON."""
        return {"r0": self.r0, "dr": self.dr, "u": [float(v) for v in self.u], "lo": self.lo, "hi": self.hi,
                "k": self.k, "n_samples": self.n_samples, "upper_wall": self.upper_wall}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairTable:
        """Inverse of :meth:`to_dict`."""
        return cls(r0=float(d["r0"]), dr=float(d["dr"]), u=np.asarray(d["u"], dtype=np.float64), lo=float(d["lo"]),
                   hi=float(d["hi"]), k=float(d["k"]), n_samples=int(d["n_samples"]),
                   upper_wall=bool(d.get("upper_wall", True)))


def _smooth(y: np.ndarray, width: float) -> np.ndarray:
    """Gaussian smoothing of ``y`` with a kernel of ``width`` bins (std)."""
    if width <= 0:
        return y
    half = int(math.ceil(3 * width))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / width) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(y, half, mode="edge"), k, mode="valid")


def fit_table(distances: np.ndarray, kind: str, dr: float, r_max: float, smooth_bins: float = 2.0,
              tail: float = 5e-4, core_only: bool = True) -> PairTable:
    """Boltzmann-invert a distance sample into a :class:`PairTable`.

    Parameters
    ----------
    distances : numpy.ndarray
        Pair distances, shape (n,), nm (every frame, every pair of the class).
    kind : {"bond", "angle", "nb"}
        ``bond``/``angle``: the whole well ``-ln(P(r)/r^2)``; ``nb``: only the repulsive core below
        the first peak of ``P(r)/r^2``, zero beyond.
    dr : float
        Grid spacing, nm.
    r_max : float
        Grid end, nm.
    smooth_bins : float
        Std of the Gaussian smoothing of the histogram, in bins.
    tail : float
        Fraction of the sample left out at each end when the support ``[lo, hi]`` is placed
        (so one outlier does not widen it).
    core_only : bool
        ``nb`` only: keep just the repulsive core (default); ``False`` keeps the whole
        ``-ln g(r)`` (shells included), relative to its mean over the last tenth of the grid and
        switched smoothly to 0 there.
    """
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 10:
        raise ValueError(f"need at least 10 distances to fit a {kind} table, got {d.size}")
    edges = np.arange(0.0, r_max + dr, dr)
    centres = 0.5 * (edges[1:] + edges[:-1])
    hist, _ = np.histogram(d, bins=edges)
    dens = _smooth(hist.astype(np.float64), smooth_bins) / np.maximum(centres, dr) ** 2
    lo = float(np.quantile(d, tail))
    hi = float(np.quantile(d, 1.0 - tail)) if kind != "nb" else float(r_max)
    inside = (centres >= lo) & (centres <= hi) & (dens > 0)
    if not inside.any():
        raise ValueError(f"no populated bins between {lo:.3f} and {hi:.3f} nm")
    u = np.full_like(centres, np.nan)
    u[inside] = -np.log(dens[inside])
    spread = float(np.std(d[(d >= lo) & (d <= hi)])) if kind != "nb" else 0.0
    if kind == "nb" and not core_only:
        idx = np.nonzero(inside)[0]
        r_sw = 0.9 * r_max
        tail_u = u[inside & (centres >= r_sw)]
        u = u - (float(np.mean(tail_u)) if tail_u.size else 0.0)
        x = np.clip((centres - r_sw) / (r_max - r_sw), 0.0, 1.0)
        u = u * (1.0 - x * x * (3.0 - 2.0 * x))  # smoothstep to 0 at the grid's end
        hi = r_sw
        spread = max(float(np.std(d[d <= centres[idx[0]] + 0.1])), dr) if idx.size else dr
    elif kind == "nb":
        # the core only: up to the first maximum of the g-like density (after smoothing)
        idx = np.nonzero(inside)[0]
        peak = idx[int(np.argmin(u[idx]))]
        for j in range(idx[0] + 1, idx[-1]):
            if inside[j] and u[j] <= u[j - 1] and u[j] <= u[j + 1] and u[j] < u[idx[0]] - 2.0:
                peak = j
                break
        u = u - u[peak]
        u[peak:] = 0.0
        hi = float(centres[peak])
        core = max(hi - lo, 2 * dr)
        spread = core / 3.0
    else:
        u = u - np.nanmin(u)
    k = 1.0 / max(spread, dr) ** 2
    # fill the grid outside the support by the extension rule (edge slope + wall)
    first, last = np.nonzero(np.isfinite(u))[0][[0, -1]]
    u_lo, u_hi = u[first], u[last]
    s_lo = min((u[first + 1] - u[first]) / dr, 0.0) if last > first else 0.0
    s_hi = max((u[last] - u[last - 1]) / dr, 0.0) if last > first else 0.0
    r_lo, r_hi = centres[first], centres[last]
    below = centres < r_lo
    above = centres > r_hi
    # below the data: a hard core, LOWER_WALL times stiffer than the well (MD never brings them closer)
    u[below] = u_lo + (-s_lo) * (r_lo - centres[below]) + 0.5 * LOWER_WALL * k * (r_lo - centres[below]) ** 2
    u[above] = u_hi + s_hi * (centres[above] - r_hi) + 0.5 * k * (centres[above] - r_hi) ** 2 if kind != "nb" else u_hi
    u = np.nan_to_num(u, nan=0.0)
    return PairTable(r0=float(centres[0]), dr=float(dr), u=u, lo=float(r_lo), hi=float(hi if kind == "nb" else r_hi),
                     k=float(k), n_samples=int(d.size), upper_wall=kind != "nb")


@dataclass
class StructuralPrior:
    """Fitted pair tables and the Langevin schedule that applies them after a draw.

    Attributes
    ----------
    tables : dict
        ``{kind: {class_pair_key: PairTable}}`` for kind in :data:`KINDS`; ``"*"`` is the table
        pooled over every class pair of that kind (the fallback).
    nb_cutoff : float
        Neighbour-list radius of the non-bonded core, nm (>= every core table's ``hi``).
    steps : int
        Langevin updates per learned step (0 = the prior is off).
    tau : float
        Step size as a fraction of each bead's inverse curvature (0 < tau < 1).
    strength : float
        Exponent of the prior, ``q * exp(-strength * U)`` (1 = the fitted potential of mean force).
    fitted_on : list of str
        Names of the training systems.
    atom_types : list of str
        The fine-type vocabulary the bead classes are written in (the model's).
    anchor : {"mean", "draw"}
        Centre of the Gaussian factor: the network's mean (``q * exp(-U)``, the product of
        the two) or the draw itself (a proximal step: the draw moved to where the prior allows,
        staying within ``sigma`` of where it landed).
    settle : int
        The last ``settle`` of the ``steps`` updates move by the drift alone (no noise): the
        unadjusted Langevin step leaves one update's noise in the sample, which puts a few
        bonded pairs deep in the tail; settling removes it (the narrowing it causes is what the
        calibration then corrects).
    """

    tables: dict[str, dict[str, PairTable]]
    nb_cutoff: float
    steps: int = 10
    tau: float = 0.3
    strength: float = 1.0
    fitted_on: list[str] = field(default_factory=list)
    atom_types: list[str] = field(default_factory=list)
    anchor: str = "mean"
    settle: int = 0

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, stored in checkpoints under ``"prior"``."""
        return {"format": PRIOR_FORMAT, "version": PRIOR_VERSION, "nb_cutoff": self.nb_cutoff, "steps": self.steps,
                "tau": self.tau, "strength": self.strength, "fitted_on": list(self.fitted_on),
                "atom_types": list(self.atom_types), "anchor": self.anchor, "settle": self.settle, "tables": {k: {key: t.to_dict() for key, t in v.items()} for k, v in self.tables.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StructuralPrior:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != PRIOR_FORMAT or d.get("version") != PRIOR_VERSION:
            raise ValueError(f"not a {PRIOR_FORMAT} v{PRIOR_VERSION} record")
        tables = {k: {key: PairTable.from_dict(t) for key, t in v.items()} for k, v in d["tables"].items()}
        return cls(tables=tables, nb_cutoff=float(d["nb_cutoff"]), steps=int(d["steps"]), tau=float(d["tau"]),
                   strength=float(d["strength"]), fitted_on=list(d.get("fitted_on", [])),
                   atom_types=list(d.get("atom_types", [])), anchor=str(d.get("anchor", "mean")),
                   settle=int(d.get("settle", 0)))

    def with_schedule(self, steps: int | None = None, tau: float | None = None,
                      strength: float | None = None, anchor: str | None = None,
                      settle: int | None = None) -> StructuralPrior:
        """A copy with other sampling settings (``None`` keeps the value)."""
        if steps is not None and int(steps) < 0:
            raise ValueError(f"prior steps must be >= 0, got {steps}")
        if tau is not None and not 0.0 < float(tau) < 1.0:
            raise ValueError(f"prior tau must be in (0, 1), got {tau}")
        if strength is not None and float(strength) < 0.0:
            raise ValueError(f"prior strength must be >= 0, got {strength}")
        if settle is not None and int(settle) < 0:
            raise ValueError(f"prior settle must be >= 0, got {settle}")
        if anchor is not None and anchor not in ANCHORS:
            raise ValueError(f"prior anchor must be one of {ANCHORS}, got {anchor!r}")
        return StructuralPrior(tables=self.tables, nb_cutoff=self.nb_cutoff,
                               steps=self.steps if steps is None else int(steps),
                               tau=self.tau if tau is None else float(tau),
                               strength=self.strength if strength is None else float(strength),
                               fitted_on=self.fitted_on, atom_types=self.atom_types,
                               anchor=self.anchor if anchor is None else str(anchor),
                               settle=self.settle if settle is None else int(settle))

    # -- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, systems: Sequence[tuple[str, list[str], torch.Tensor, np.ndarray, torch.Tensor | None]],
            nb_cutoff: float, atom_types: Sequence[str] = (), dr: float = 0.005, min_samples: int = 2000, max_frames: int = 200,
            nb_range: str = "core",
            **schedule: Any) -> StructuralPrior:
        """Fit every table to training frames.

        Parameters
        ----------
        systems : sequence of (name, classes, bonds, positions, box)
            Per training system: its name, the class of each bead (:func:`bead_classes`),
            its bead bonds (2, E), its frames (F, N, 3) nm and its box (3,) nm or ``None``.
        nb_cutoff : float
            Radius within which non-bonded pairs are histogrammed, nm; it should reach past
            the first peak of every pair's distribution.
        dr : float
            Grid spacing, nm.
        min_samples : int
            A class pair with fewer distances uses the pooled table of its kind.
        max_frames : int
            At most this many evenly spaced frames per system are used for the non-bonded pairs.
        atom_types : sequence of str
            The vocabulary the classes are written in (recorded).
        nb_range : {"core", "full"}
            Non-bonded tables keep only the repulsive core, or the whole ``-ln g(r)`` up to
            ``nb_cutoff`` (shells included; meant to be calibrated, :func:`calibrate_prior`).
        **schedule
            ``steps``, ``tau``, ``strength`` of the sampler.
        """
        if nb_range not in ("core", "full"):
            raise ValueError(f"nb_range must be 'core' or 'full', got {nb_range!r}")
        samples: dict[str, dict[str, list[np.ndarray]]] = {k: {} for k in KINDS}
        r_bond_max = 0.0
        for _, classes, bonds, x, box in systems:
            n = x.shape[1]
            bonded, angle = pair_lists(bonds, n)
            for kind, pairs in (("bond", bonded), ("angle", angle)):
                if pairs.shape[1] == 0:
                    continue
                i, j = pairs.numpy()
                dist = np.linalg.norm(x[:, i] - x[:, j], axis=-1)  # unwrapped: molecules whole
                r_bond_max = max(r_bond_max, float(dist.max()))
                for p in range(i.size):
                    samples[kind].setdefault(_pair_key(classes[i[p]], classes[j[p]]), []).append(dist[:, p])
            excl = torch.cat([bonded, angle], dim=1).numpy()
            excl_code = np.sort(excl[0] * n + excl[1])
            names = sorted(set(classes))
            cidx = np.array([names.index(c) for c in classes], dtype=np.int64)
            frames = np.unique(np.linspace(0, x.shape[0] - 1, min(max_frames, x.shape[0])).round().astype(int))
            boxt = None if box is None else torch.as_tensor(np.asarray(box), dtype=torch.float64)
            per: dict[int, list[np.ndarray]] = {}
            for f in frames:
                g = radius_graph(torch.from_numpy(np.ascontiguousarray(x[f], dtype=np.float64)), nb_cutoff, boxt)
                src, dst = g.edge_index.numpy()
                keep = (src < dst) & ~np.isin(src * n + dst, excl_code)
                src, dst, dist = src[keep], dst[keep], g.dist.numpy()[keep]
                a, b = np.minimum(cidx[src], cidx[dst]), np.maximum(cidx[src], cidx[dst])
                code = a * len(names) + b
                for c in np.unique(code):
                    per.setdefault(int(c), []).append(dist[code == c])
            for c, v in per.items():
                key = _pair_key(names[c // len(names)], names[c % len(names)])
                samples["nb"].setdefault(key, []).append(np.concatenate(v))
        tables: dict[str, dict[str, PairTable]] = {}
        for kind in KINDS:
            r_max = nb_cutoff if kind == "nb" else 1.5 * max(r_bond_max, dr * 10)
            pooled_parts = [np.concatenate([np.ravel(a) for a in v]) for v in samples[kind].values()]
            tables[kind] = {}
            if not pooled_parts:
                continue
            core = nb_range == "core"
            tables[kind][POOLED] = fit_table(np.concatenate(pooled_parts), kind, dr, r_max, core_only=core)
            for key, v in samples[kind].items():
                d = np.concatenate([np.ravel(a) for a in v])
                if d.size >= min_samples:
                    tables[kind][key] = fit_table(d, kind, dr, r_max, core_only=core)
        return cls(tables=tables, nb_cutoff=float(nb_cutoff), fitted_on=[s[0] for s in systems],
                   atom_types=list(atom_types), **schedule)

    # -- applying -----------------------------------------------------------------------------
    def classes_of(self, atom_type: torch.Tensor, atom_to_bead: torch.Tensor, n_beads: int) -> list[str]:
        """Bead classes (:func:`bead_classes`) in this prior's vocabulary."""
        return bead_classes(atom_type, atom_to_bead, n_beads, self.atom_types)

    def table_index(self, kind: str, classes: Sequence[str], pairs: torch.Tensor) -> tuple[torch.Tensor, list[PairTable]]:
        """Table of each pair (E,) int64 into the returned list (class pair, else pooled)."""
        names = list(self.tables.get(kind, {}))
        order = {k: n for n, k in enumerate(names)}
        if not names:
            return torch.zeros(pairs.shape[1], dtype=torch.long), []
        pooled = order.get(POOLED, 0)
        idx = [order.get(_pair_key(classes[i], classes[j]), pooled) for i, j in pairs.t().tolist()]
        return torch.tensor(idx, dtype=torch.long), [self.tables[kind][k] for k in names]

    def topology(self, classes: Sequence[str], bonds: torch.Tensor, n_beads: int, device: torch.device,
                 dtype: torch.dtype) -> PriorTopology:
        """The per-system constant part of the prior (pairs, tables, curvatures) on ``device``."""
        bonded, angle = pair_lists(bonds, n_beads)
        parts = []
        for kind, pairs in (("bond", bonded), ("angle", angle)):
            idx, tabs = self.table_index(kind, classes, pairs)
            parts.append((pairs.to(device), idx.to(device), _stack(tabs, device, dtype)))
        names = sorted(set(classes))
        cls_index = torch.tensor([names.index(c) for c in classes], dtype=torch.long, device=device)
        nb_keys = list(self.tables.get("nb", {}))
        lookup = torch.zeros(len(names), len(names), dtype=torch.long)
        for a, ca in enumerate(names):
            for b, cb in enumerate(names):
                key = _pair_key(ca, cb)
                lookup[a, b] = nb_keys.index(key) if key in nb_keys else nb_keys.index(POOLED) if nb_keys else 0
        nb_tabs = _stack([self.tables["nb"][k] for k in nb_keys], device, dtype) if nb_keys else None
        curv = torch.zeros(n_beads, dtype=dtype, device=device)
        for pairs, idx, tab in parts:
            if tab is not None and pairs.shape[1]:
                k = tab.k[idx] * self.strength
                curv.index_add_(0, pairs[0], k)
                curv.index_add_(0, pairs[1], k)
        excl = torch.cat([bonded, angle], dim=1)
        excl_code = (excl[0] * n_beads + excl[1]).to(device) if excl.shape[1] else torch.zeros(0, dtype=torch.long, device=device)
        return PriorTopology(bond=parts[0], angle=parts[1], cls=cls_index, nb_lookup=lookup.to(device), nb=nb_tabs,
                             curvature=curv, exclude=torch.sort(excl_code).values, n_beads=n_beads)

    @torch.no_grad()
    def sample(self, x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, topo: PriorTopology,
               batch: torch.Tensor, box: torch.Tensor | None, noise: Callable[[], torch.Tensor],
               molecule: torch.Tensor | None = None, n_molecules: int = 0) -> torch.Tensor:
        """Tilt a draw towards the prior: ``steps`` Langevin updates of ``q * exp(-strength U)``.

        Parameters
        ----------
        x0 : torch.Tensor
            The network's draw, shape (N, 3), nm.
        mean, std : torch.Tensor
            Mean positions and per-bead std of the draw, (N, 3), nm.
        topo : PriorTopology
            From :meth:`topology` for the same beads (global indices of the batch).
        batch : torch.Tensor
            System of each bead, (N,), int64.
        box : torch.Tensor or None
            Box lengths per system (B, 3), nm; ``None`` = not periodic.
        noise : callable
            Standard-normal draws shaped (N, 3) (the member's own streams in a rollout).
        molecule, n_molecules : torch.Tensor or None, int
            With collective noise: molecule of each bead (its multi-bead molecules keep their centre).
        """
        if self.steps == 0:
            return x0
        x = x0.clone()
        centre = mean if self.anchor == "mean" else x0
        var = std.pow(2).clamp_min(1e-12)
        prec = 1.0 / var + topo.curvature[:, None]
        h = self.tau / prec
        pairs = self._nb_pairs(x, batch, box, topo)
        # trust region of the drift per update: half the bead's std, and half the thermal width of
        # its bonded terms, so that stiff table edges never throw a bead across its well
        limit = 0.5 * std.norm(dim=-1, keepdim=True)
        width = 0.5 / topo.curvature.clamp_min(1e-12).sqrt()[:, None]
        limit = torch.where(topo.curvature[:, None] > 0, torch.minimum(limit, width), limit)
        for k in range(self.steps):
            g = -(x - centre) / var - self.strength * self.grad(x, topo, pairs, batch, box)
            # a bead whose drift would leave the trust region takes a shorter step (drift and
            # noise alike): the step size adapts to the local stiffness
            h_eff = h * torch.clamp(limit / (h * g).norm(dim=-1, keepdim=True).clamp_min(1e-30), max=1.0)
            z = noise()  # drawn in every update, so the member's noise stream does not depend on `settle`
            move = h_eff * g + (torch.sqrt(2 * h_eff) * z if k < self.steps - self.settle else 0.0)
            if molecule is not None:
                move = _keep_centres(move, molecule, n_molecules)
            x = x + move
        return x

    def _nb_pairs(self, x: torch.Tensor, batch: torch.Tensor, box: torch.Tensor | None,
                  topo: PriorTopology) -> torch.Tensor | None:
        """Non-bonded pairs (2, P) within the core range (+ a skin), bonded and 1-3 pairs left out."""
        if topo.nb is None:
            return None
        g = radius_graph(x, self.nb_cutoff + 0.1, box, batch)
        src, dst = g.edge_index
        keep = src < dst
        src, dst = src[keep], dst[keep]
        if topo.exclude.numel():
            code = src * topo.n_beads + dst
            pos = torch.searchsorted(topo.exclude, code).clamp_max(topo.exclude.numel() - 1)
            keep = topo.exclude[pos] != code
            src, dst = src[keep], dst[keep]
        return torch.stack([src, dst])

    def grad(self, x: torch.Tensor, topo: PriorTopology, nb_pairs: torch.Tensor | None, batch: torch.Tensor,
             box: torch.Tensor | None) -> torch.Tensor:
        """Gradient of U (kT/nm) at ``x`` (N, 3)."""
        out = torch.zeros_like(x)
        for pairs, idx, tab in (topo.bond, topo.angle):
            if tab is not None and pairs.shape[1]:
                _accumulate(out, x, pairs, idx, tab, box, batch)  # minimum image: wrapped input is fine
        if topo.nb is not None and nb_pairs is not None and nb_pairs.shape[1]:
            idx = topo.nb_lookup[topo.cls[nb_pairs[0]], topo.cls[nb_pairs[1]]]
            _accumulate(out, x, nb_pairs, idx, topo.nb, box, batch)
        return out

    def energy(self, x: torch.Tensor, topo: PriorTopology, batch: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        """U (kT) at ``x``, summed over all terms (a scalar; for tests and diagnostics)."""
        total = x.new_zeros(())
        nb_pairs = self._nb_pairs(x, batch, box, topo)
        for pairs, idx, tab in (topo.bond, topo.angle, (nb_pairs, None, topo.nb)):
            if tab is None or pairs is None or not pairs.shape[1]:
                continue
            if idx is None:
                idx = topo.nb_lookup[topo.cls[pairs[0]], topo.cls[pairs[1]]]
            vec = x[pairs[0]] - x[pairs[1]]
            if box is not None:
                vec = minimum_image(vec, box[batch[pairs[1]]])
            total = total + _table_value(tab, idx, vec.norm(dim=-1)).sum()
        return total


@dataclass
class StackedTables:
    """Pair tables on one grid as tensors (T tables, G points)."""

    r0: torch.Tensor   # (T,)
    dr: torch.Tensor   # (T,)
    u: torch.Tensor    # (T, G)
    du: torch.Tensor   # (T, G) derivative on the grid, kT/nm
    lo: torch.Tensor   # (T,)
    hi: torch.Tensor   # (T,)
    k: torch.Tensor    # (T,)
    k_hi: torch.Tensor  # (T,) stiffness beyond the grid's end (0 = flat)


@dataclass
class PriorTopology:
    """The pairs, their tables and per-bead curvatures of a batch of systems (see :meth:`StructuralPrior.topology`)."""

    bond: tuple[torch.Tensor, torch.Tensor, StackedTables | None]
    angle: tuple[torch.Tensor, torch.Tensor, StackedTables | None]
    cls: torch.Tensor
    nb_lookup: torch.Tensor
    nb: StackedTables | None
    curvature: torch.Tensor
    exclude: torch.Tensor
    n_beads: int


def _stack(tabs: Sequence[PairTable], device: torch.device, dtype: torch.dtype) -> StackedTables | None:
    if not tabs:
        return None
    g = max(t.u.size for t in tabs)
    u = np.stack([np.pad(t.u, (0, g - t.u.size), mode="edge") for t in tabs])
    du = np.gradient(u, axis=1) / np.array([t.dr for t in tabs])[:, None]

    def tens(a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

    return StackedTables(r0=tens([t.r0 for t in tabs]), dr=tens([t.dr for t in tabs]), u=tens(u), du=tens(du),
                         lo=tens([t.lo for t in tabs]), hi=tens([t.hi for t in tabs]), k=tens([t.k for t in tabs]),
                         k_hi=tens([t.k if t.upper_wall else 0.0 for t in tabs]))


def _lookup(tab: StackedTables, idx: torch.Tensor, r: torch.Tensor, field_: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``field_`` (T, G) of table ``idx`` (E,) at ``r`` (E,), clamped to the grid."""
    g = field_.shape[1]
    r = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    s = ((r - tab.r0[idx]) / tab.dr[idx]).clamp(0.0, g - 1.000001)
    j = s.floor().long()
    w = s - j
    return field_[idx, j] * (1 - w) + field_[idx, (j + 1).clamp_max(g - 1)] * w


def _table_slope(tab: StackedTables, idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """du/dr (E,), kT/nm, with the analytic extension beyond the grid."""
    slope = _lookup(tab, idx, r, tab.du)
    g = tab.u.shape[1]
    r_first, r_last = tab.r0[idx], tab.r0[idx] + (g - 1) * tab.dr[idx]
    k = tab.k[idx]
    slope = torch.where(r < r_first, tab.du[idx, 0] - LOWER_WALL * k * (r_first - r), slope)
    return torch.where(r > r_last, tab.du[idx, -1] + tab.k_hi[idx] * (r - r_last), slope)


def _table_value(tab: StackedTables, idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """u(r) (E,), kT, with the analytic extension beyond the grid."""
    u = _lookup(tab, idx, r, tab.u)
    g = tab.u.shape[1]
    r_first, r_last = tab.r0[idx], tab.r0[idx] + (g - 1) * tab.dr[idx]
    k = tab.k[idx]
    d_lo, d_hi = (r_first - r).clamp_min(0), (r - r_last).clamp_min(0)
    return u - tab.du[idx, 0] * d_lo + 0.5 * LOWER_WALL * k * d_lo**2 + tab.du[idx, -1] * d_hi + 0.5 * tab.k_hi[idx] * d_hi**2


def _accumulate(out: torch.Tensor, x: torch.Tensor, pairs: torch.Tensor, idx: torch.Tensor, tab: StackedTables,
                box: torch.Tensor | None, batch: torch.Tensor) -> None:
    """Add the pair terms' gradient of U to ``out`` (N, 3)."""
    i, j = pairs
    vec = x[i] - x[j]
    if box is not None:
        vec = minimum_image(vec, box[batch[j]])
    r = vec.norm(dim=-1).clamp_min(1e-9)
    f = (_table_slope(tab, idx, r) / r)[:, None] * vec  # dU/dx_i
    out.index_add_(0, i, f)
    out.index_add_(0, j, -f)


def _keep_centres(move: torch.Tensor, molecule: torch.Tensor, n_molecules: int) -> torch.Tensor:
    """``move`` (N, 3) without its mean over every molecule of two or more beads."""
    counts = torch.bincount(molecule, minlength=n_molecules)
    centre = scatter(move, molecule, dim=0, dim_size=n_molecules, reduce="mean")
    centre = centre * (counts > 1).to(move.dtype)[:, None]
    return move - centre[molecule]


# -- calibration: iterative Boltzmann inversion of the one-step sampler ----------------------------
def histogram_on_table(table: PairTable, r: np.ndarray, smooth_bins: float = 2.0) -> np.ndarray:
    """Counts of ``r`` (nm) in the bins of ``table``'s grid, Gaussian-smoothed, shape (G,)."""
    g = table.u.size
    edges = table.r0 - 0.5 * table.dr + table.dr * np.arange(g + 1)
    h, _ = np.histogram(np.asarray(r, dtype=np.float64), bins=edges)
    return _smooth(h.astype(np.float64), smooth_bins)


def ibi_update(table: PairTable, sampled: np.ndarray, target: np.ndarray, n_sampled: int, n_target: int,
               damping: float = 0.5, min_count: float = 5.0, max_change: float = 2.0,
               upto: float | None = None, smooth_nm: float = 0.04) -> tuple[PairTable, float]:
    """One iterative-Boltzmann-inversion update of ``table`` (Reith, Puetz & Mueller-Plathe 2003).

    ``u <- u + damping * ln(P_sampled(r) / P_target(r))`` on every bin where both histograms hold
    at least ``min_count``; where only the sampler visits (a distance the targets never show) the
    table rises by ``damping * max_change``. Histograms are normalised per window (``n_sampled``,
    ``n_target``), so a sampler that makes too many close pairs is pushed back, not only one
    whose shape is off. Each bin changes by at most ``max_change`` kT; with ``upto`` (nm) only
    bins below it change (the non-bonded core stays zero beyond its peak). Both histograms are
    taken on bins of ``smooth_nm`` (at least the table's spacing) and the correction is
    interpolated onto the table's grid.

    Returns
    -------
    table : PairTable
        The updated table (a new object).
    error : float
        The mean |ln(P_sampled / P_target)| over the compared bins (0 = converged).
    """
    grid = table.r0 + table.dr * np.arange(table.u.size)
    width = max(smooth_nm, table.dr)
    edges = np.arange(grid[0] - 0.5 * table.dr, grid[-1] + 0.5 * table.dr + width, width)
    centres = 0.5 * (edges[1:] + edges[:-1])
    cs = np.histogram(np.asarray(sampled, dtype=np.float64), bins=edges)[0].astype(np.float64)
    ct = np.histogram(np.asarray(target, dtype=np.float64), bins=edges)[0].astype(np.float64)
    hs, ht = cs / max(n_sampled, 1), ct / max(n_target, 1)
    both = (cs >= min_count) & (ct >= min_count)
    only_sampled = (cs >= min_count) & (ct == 0)
    if upto is not None:
        both &= centres <= upto
        only_sampled &= centres <= upto
    delta_c = np.zeros_like(centres)
    delta_c[both] = np.log(hs[both] / ht[both])
    delta_c[only_sampled] = max_change
    delta_c = np.clip(delta_c, -max_change, max_change)
    # spread the coarse correction onto the table's grid (zero outside the compared bins)
    touched = both | only_sampled
    delta = np.zeros_like(table.u)
    if touched.any():
        delta = np.interp(grid, centres, delta_c, left=0.0, right=0.0)
        delta[(grid < centres[touched][0] - width) | (grid > centres[touched][-1] + width)] = 0.0
        if upto is not None:
            delta[grid > upto] = 0.0
    u = table.u + damping * delta
    err = float(np.abs(np.log(hs[both] / ht[both])).mean()) if both.any() else 0.0
    return PairTable(r0=table.r0, dr=table.dr, u=u, lo=table.lo, hi=table.hi, k=table.k,
                     n_samples=table.n_samples, upper_wall=table.upper_wall), err
