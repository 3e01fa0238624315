"""Periodic boxes: minimum image, and making molecules whole and continuous in time.

Boxes are given as box vectors in rows, ``box[f] = [a, b, c]`` (mdtraj's
``unitcell_vectors``), shape (n_frames, 3, 3), nm; any triclinic cell works (GROMACS
rhombic dodecahedra and truncated octahedra included). A position ``r`` has fractional
coordinates ``s = r @ inv(box)``.

Making whole
    Atoms are joined into *units* by a spanning forest of the bond graph (plus, for beads
    whose atoms are not all bonded together, edges from each such atom to the bead's first
    atom). Each tree edge is replaced by its minimum-image vector and positions are rebuilt
    from the unit's root outwards, level by level (vectorised over all units and frames).
    This is exact as long as every bond is shorter than half the box's smallest width,
    whatever the size of the molecule.

Continuity in time
    The root of every unit is unwrapped through time by adding minimum-image displacements
    between consecutive frames (the box of the later frame), so a unit never jumps by a box
    vector between frames; this needs a root to move less than half the box between frames.
    The state carries over between chunks of frames (:class:`Unwrapper`). This is the scheme
    of von Bulow, Bullerjahn & Hummer (J. Chem. Phys. 153, 021101, 2020), right under constant
    pressure too: ``u[i+1] = u[i] + (w[i+1] - w[i]) - L[i+1] round((w[i+1] - w[i]) / L[i+1])``.

Image flags under constant pressure
    Positions rebuilt from image flags as ``w[i] + n[i] L[i]`` (what LAMMPS writes as ``xu``)
    move every particle by ``n (L[i] - L[i-1])`` whenever the box changes, a displacement that
    grows with the number of boxes ``n`` the particle has crossed, and so inflate the MSD and
    the diffusion coefficient of an NPT run (von Bulow et al. 2020). :class:`ImageUnwrapper`
    counts each crossing with the box of the frame it happens in instead,
    ``u[i+1] = u[i] + (w[i+1] - w[i]) + (n[i+1] - n[i]) L[i+1]``: the same displacements as the
    scheme above, without its limit on the motion between frames. At constant volume it gives
    ``w + n L`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def is_orthorhombic(box: np.ndarray, tol: float = 1e-9) -> bool:
    """Whether all boxes (n_frames, 3, 3) are diagonal (relative tolerance ``tol``)."""
    box = np.asarray(box)
    off = box - np.einsum("fii->fi", box)[:, :, None] * np.eye(3)
    return bool(np.all(np.abs(off) <= tol * np.abs(box).max()))


def minimum_image(d: np.ndarray, box: np.ndarray, orthorhombic: bool | None = None) -> np.ndarray:
    """Minimum-image form of difference vectors.

    Parameters
    ----------
    d : numpy.ndarray
        Difference vectors, nm, shape (n_frames, k, 3).
    box : numpy.ndarray
        Box vectors as rows, nm, shape (n_frames, 3, 3).
    orthorhombic : bool, optional
        Skip the check when known.

    Returns
    -------
    numpy.ndarray
        ``d`` minus the lattice vector nearest to it in fractional coordinates, shape of ``d``.
        For a vector shorter than half of every box width this is the vector itself, whatever
        image it was measured across.
    """
    if orthorhombic is None:
        orthorhombic = is_orthorhombic(box)
    if orthorhombic:
        lengths = np.einsum("fii->fi", box)[:, None, :]
        return d - lengths * np.rint(d / lengths)
    frac = d @ np.linalg.inv(box)
    frac -= np.rint(frac)
    return frac @ box


@dataclass
class UnwrapPlan:
    """Spanning forest used to make units whole.

    Attributes
    ----------
    roots : numpy.ndarray
        Root atom of each unit (its lowest index), shape (n_units,), int64.
    child : numpy.ndarray
        Child atom of each tree edge, in breadth-first order, shape (n_atoms - n_units,).
    parent : numpy.ndarray
        Parent atom of each tree edge, shape (n_atoms - n_units,).
    level_bounds : numpy.ndarray
        Edges of level ``l`` are ``child[level_bounds[l]:level_bounds[l + 1]]``, shape (n_levels + 1,).
    n_unbonded_beads : int
        Beads whose atoms are not all joined by bonds (made whole by minimum image about their
        first atom instead).
    """

    roots: np.ndarray
    child: np.ndarray
    parent: np.ndarray
    level_bounds: np.ndarray
    n_unbonded_beads: int = 0

    @property
    def n_levels(self) -> int:
        """Depth of the deepest tree."""
        return int(len(self.level_bounds) - 1)


def unwrap_plan(n_atoms: int, bonds: np.ndarray, atom_bead: np.ndarray | None = None) -> UnwrapPlan:
    """The forest of :class:`UnwrapPlan` for atoms joined by ``bonds``.

    Parameters
    ----------
    n_atoms : int
        Number of atoms.
    bonds : numpy.ndarray
        Bonded atom pairs, shape (n_bonds, 2).
    atom_bead : numpy.ndarray, optional
        Bead of each atom, shape (n_atoms,). Atoms of a bead that bonds do not join to the
        bead's first atom are attached to it directly, so every bead ends up whole.
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    edges = [bonds]
    n_unbonded = 0
    if atom_bead is not None:
        comp = _components(n_atoms, bonds)
        n_beads = int(atom_bead.max()) + 1
        first = np.full(n_beads, n_atoms, dtype=np.int64)
        np.minimum.at(first, atom_bead, np.arange(n_atoms))
        head = first[atom_bead]
        loose = np.flatnonzero(comp != comp[head])
        if len(loose):
            edges.append(np.stack([head[loose], loose], axis=1))
            n_unbonded = int(len(np.unique(atom_bead[loose])))
    edges_all = np.concatenate(edges)
    comp = _components(n_atoms, edges_all)
    n_units = int(comp.max()) + 1
    roots = np.full(n_units, n_atoms, dtype=np.int64)
    np.minimum.at(roots, comp, np.arange(n_atoms))
    adj = coo_matrix((np.ones(2 * len(edges_all)),
                      (np.concatenate([edges_all[:, 0], edges_all[:, 1]]),
                       np.concatenate([edges_all[:, 1], edges_all[:, 0]]))), shape=(n_atoms, n_atoms)).tocsr()
    adj.sum_duplicates()
    indptr, indices = adj.indptr, adj.indices
    visited = np.zeros(n_atoms, dtype=bool)
    visited[roots] = True
    frontier = roots
    children, parents, bounds = [], [], [0]
    while len(frontier):
        starts, counts = indptr[frontier], indptr[frontier + 1] - indptr[frontier]
        total = int(counts.sum())
        if total == 0:
            break
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
        nbrs = indices[offsets]
        par = np.repeat(frontier, counts)
        new = ~visited[nbrs]
        nbrs, par = nbrs[new], par[new]
        nbrs, keep = np.unique(nbrs, return_index=True)
        par = par[keep]
        if not len(nbrs):
            break
        visited[nbrs] = True
        children.append(nbrs)
        parents.append(par)
        bounds.append(bounds[-1] + len(nbrs))
        frontier = nbrs
    child = np.concatenate(children) if children else np.zeros(0, dtype=np.int64)
    parent = np.concatenate(parents) if parents else np.zeros(0, dtype=np.int64)
    return UnwrapPlan(roots=roots, child=child.astype(np.int64), parent=parent.astype(np.int64),
                      level_bounds=np.asarray(bounds, dtype=np.int64), n_unbonded_beads=n_unbonded)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    if len(edges) == 0:
        return np.arange(n, dtype=np.int64)
    g = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1].astype(np.int64)


@dataclass
class Unwrapper:
    """Makes units whole and keeps their roots continuous in time, chunk after chunk.

    Attributes
    ----------
    plan : UnwrapPlan
        The forest.
    last_wrapped : numpy.ndarray or None
        Input position of each root in the last frame seen, nm, shape (n_units, 3).
    last_unwrapped : numpy.ndarray or None
        Output position of each root in the last frame seen, nm, shape (n_units, 3).
    """

    plan: UnwrapPlan
    last_wrapped: np.ndarray | None = field(default=None, repr=False)
    last_unwrapped: np.ndarray | None = field(default=None, repr=False)

    def __call__(self, xyz: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Whole, time-continuous positions.

        Parameters
        ----------
        xyz : numpy.ndarray
            Positions, nm, shape (n_frames, n_atoms, 3), float64 (frames in time order,
            following those of the previous call).
        box : numpy.ndarray
            Box vectors as rows, nm, shape (n_frames, 3, 3).

        Returns
        -------
        numpy.ndarray
            New array, same shape: every unit whole, roots continuous across frames.
        """
        plan = self.plan
        ortho = is_orthorhombic(box)
        x = np.array(xyz, dtype=np.float64, copy=True)
        roots_w = x[:, plan.roots]
        if self.last_wrapped is None:
            self.last_wrapped = roots_w[0].copy()
            self.last_unwrapped = roots_w[0].copy()
        prev = np.concatenate([self.last_wrapped[None], roots_w[:-1]], axis=0)
        step = minimum_image(roots_w - prev, box, ortho)
        roots_u = self.last_unwrapped[None] + np.cumsum(step, axis=0)
        self.last_wrapped = roots_w[-1].copy()
        self.last_unwrapped = roots_u[-1].copy()
        x[:, plan.roots] = roots_u
        if len(plan.child):
            edge = minimum_image(x[:, plan.child] - x[:, plan.parent], box, ortho)
            b = plan.level_bounds
            for lvl in range(plan.n_levels):
                sl = slice(b[lvl], b[lvl + 1])
                x[:, plan.child[sl]] = x[:, plan.parent[sl]] + edge[:, sl]
        return x


@dataclass
class ImageUnwrapper:
    """Unwrapped positions from image flags, unbiased when the box changes (see the module docstring).

    ``u[i] = w[i] + n[i] L[i] + c[i]`` with ``c[0] = 0`` and ``c[i+1] = c[i] - n[i] (L[i+1] - L[i])``,
    which is ``u[i+1] = u[i] + (w[i+1] - w[i]) + (n[i+1] - n[i]) L[i+1]``; ``c`` stays exactly 0
    while the box does not change. The state carries over between chunks of frames.

    Attributes
    ----------
    last_images : numpy.ndarray or None
        Image flags of the last frame seen, shape (n_atoms, 3).
    last_box : numpy.ndarray or None
        Box of the last frame seen, nm, shape (3, 3).
    correction : numpy.ndarray or None
        ``c`` of the last frame seen, nm, shape (n_atoms, 3).
    """

    last_images: np.ndarray | None = field(default=None, repr=False)
    last_box: np.ndarray | None = field(default=None, repr=False)
    correction: np.ndarray | None = field(default=None, repr=False)

    def __call__(self, xyz: np.ndarray, box: np.ndarray, images: np.ndarray, unwrapped: bool = False) -> np.ndarray:
        """Unwrapped positions of a chunk of frames.

        Parameters
        ----------
        xyz : numpy.ndarray
            Positions, nm, shape (n_frames, n_atoms, 3): wrapped (``w``), or, with
            ``unwrapped``, already ``w + n L`` (LAMMPS ``xu yu zu``).
        box : numpy.ndarray
            Box vectors as rows, nm, shape (n_frames, 3, 3).
        images : numpy.ndarray
            Image flags ``n``, shape (n_frames, n_atoms, 3), int.
        unwrapped : bool
            ``xyz`` already holds ``w + n L``.

        Returns
        -------
        numpy.ndarray
            New array, shape of ``xyz``, float64.
        """
        n = np.asarray(images, dtype=np.float64)
        box = np.asarray(box, dtype=np.float64)
        base = np.asarray(xyz, dtype=np.float64) if unwrapped else xyz + np.einsum("fni,fij->fnj", n, box)
        if self.last_images is None:
            self.last_images, self.last_box, self.correction = n[0], box[0], np.zeros(n.shape[1:])
        prev_n = np.concatenate([self.last_images[None], n[:-1]])
        prev_box = np.concatenate([self.last_box[None], box[:-1]])
        term = np.einsum("fni,fij->fnj", prev_n, box - prev_box)
        corr = self.correction[None] - np.cumsum(term, axis=0)
        self.last_images, self.last_box, self.correction = n[-1], box[-1], corr[-1]
        return base + corr
