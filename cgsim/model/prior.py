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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cgsim.geometry import radius_graph
from cgsim.geometry.pbc import minimum_image
from cgsim.model.collective import without_molecule_shift
from cgsim.model.prior_tables import (  # noqa: F401 - re-exported: the prior's public names live here too
    LOWER_WALL,
    PairTable,
    StackedTables,
    _pair_key,
    _stack,
    _table_slope,
    _table_value,
    bead_classes,
    fit_table,
    histogram_on_table,
    ibi_update,
    pair_lists,
)

#: table kinds, in the order of :attr:`StructuralPrior.tables`
KINDS = ("bond", "angle", "nb")
ANCHORS = ("mean", "draw")
#: how the excluded-volume filter picks among a bead's proposals (:class:`cgsim.model.excluded.CoreFilter`)
CORE_SELECTS = ("first", "weighted")
POOLED = "*"
PRIOR_FORMAT = "cgsim-structural-prior"
PRIOR_VERSION = 1


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
    core_tries : int
        Excluded volume inside a bent bond-tree draw (:mod:`cgsim.model.excluded`): each bead
        proposes up to this many innovations and keeps the first that the core tables accept
        (probability ``exp(-strength u_nb)`` over its pairs with the beads placed before it);
        0 or 1 = off. Applied before the Langevin updates (``steps`` may then be 0).
    core_select : {"first", "weighted"}
        ``"first"``: rejection sampling (the first proposal accepted with ``exp(-strength u)``;
        the tables must be >= 0, as fitted cores are). ``"weighted"``: one of the ``core_tries``
        proposals picked with probability proportional to ``exp(-strength u)`` (sampling
        importance resampling), so the tables may also be negative and attract (what
        :func:`cgsim.train.core_calibration.calibrate_core` fits on the model's rollouts).
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
    core_tries: int = 0
    core_select: str = "first"

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, stored in checkpoints under ``"prior"``."""
        return {"format": PRIOR_FORMAT, "version": PRIOR_VERSION, "nb_cutoff": self.nb_cutoff, "steps": self.steps,
                "tau": self.tau, "strength": self.strength, "fitted_on": list(self.fitted_on),
                "atom_types": list(self.atom_types), "anchor": self.anchor, "settle": self.settle, "core_tries": self.core_tries,
                "core_select": self.core_select, "tables": {k: {key: t.to_dict() for key, t in v.items()} for k, v in self.tables.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StructuralPrior:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != PRIOR_FORMAT or d.get("version") != PRIOR_VERSION:
            raise ValueError(f"not a {PRIOR_FORMAT} v{PRIOR_VERSION} record")
        tables = {k: {key: PairTable.from_dict(t) for key, t in v.items()} for k, v in d["tables"].items()}
        return cls(tables=tables, nb_cutoff=float(d["nb_cutoff"]), steps=int(d["steps"]), tau=float(d["tau"]),
                   strength=float(d["strength"]), fitted_on=list(d.get("fitted_on", [])),
                   atom_types=list(d.get("atom_types", [])), anchor=str(d.get("anchor", "mean")),
                   settle=int(d.get("settle", 0)), core_tries=int(d.get("core_tries", 0)),
                   core_select=str(d.get("core_select", "first")))

    def with_schedule(self, steps: int | None = None, tau: float | None = None,
                      strength: float | None = None, anchor: str | None = None,
                      settle: int | None = None, core_tries: int | None = None,
                      core_select: str | None = None) -> StructuralPrior:
        """A copy with other sampling settings (``None`` keeps the value)."""
        if steps is not None and int(steps) < 0:
            raise ValueError(f"prior steps must be >= 0, got {steps}")
        if tau is not None and not 0.0 < float(tau) < 1.0:
            raise ValueError(f"prior tau must be in (0, 1), got {tau}")
        if strength is not None and float(strength) < 0.0:
            raise ValueError(f"prior strength must be >= 0, got {strength}")
        if settle is not None and int(settle) < 0:
            raise ValueError(f"prior settle must be >= 0, got {settle}")
        if core_tries is not None and int(core_tries) < 0:
            raise ValueError(f"prior core_tries must be >= 0, got {core_tries}")
        if anchor is not None and anchor not in ANCHORS:
            raise ValueError(f"prior anchor must be one of {ANCHORS}, got {anchor!r}")
        if core_select is not None and core_select not in CORE_SELECTS:
            raise ValueError(f"prior core_select must be one of {CORE_SELECTS}, got {core_select!r}")
        return StructuralPrior(tables=self.tables, nb_cutoff=self.nb_cutoff,
                               steps=self.steps if steps is None else int(steps),
                               tau=self.tau if tau is None else float(tau),
                               strength=self.strength if strength is None else float(strength),
                               fitted_on=self.fitted_on, atom_types=self.atom_types,
                               anchor=self.anchor if anchor is None else str(anchor),
                               settle=self.settle if settle is None else int(settle),
                               core_tries=self.core_tries if core_tries is None else int(core_tries),
                               core_select=self.core_select if core_select is None else str(core_select))

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
                move = without_molecule_shift(move, molecule, n_molecules)
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
