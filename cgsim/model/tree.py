"""Bond-tree noise: a correlated Gaussian step whose bonded beads move together.

With independent per-bead noise (or :class:`~cgsim.model.collective.CentreNoise`, which adds a
molecule-centre term) two bonded beads each get their own random step, so over one large time
step their separation changes by ``sqrt(sigma_i^2 + sigma_j^2)``: a bead's step is about a bond
length over 5 tau of the chain, and a drawn step stretches or breaks bonds unless a refiner (23
network calls) repairs it (BENCHMARKS.md "Score-based refinement", "One-call step").

:class:`TreeNoise` draws the step along a spanning tree of each molecule's bead-bond graph,
rooted at the tree's centre (fewest hops to every bead), as a Gaussian Markov chain down it:

- the root moves by ``s_m eps_root`` (``s_m``: the molecule's std, read like the centre std of
  :class:`~cgsim.model.collective.CentreNoise` from the mean of a head over its bead latents);
- every other bead ``i`` moves by ``n_i = A_i n_parent(i) + innovation_i``: a coupling to its
  parent's noise, ``A_i = rho_across I + (rho_along - rho_across) u u^T`` (``u`` the current
  link ``x_i - x_parent``, normalised), plus its own Gaussian innovation with one std *along*
  the link and one *across* it (stretching a bond and turning it are different motions; a
  per-axis std could not tell them apart, and one coupling for all directions fits the
  along-link one, ~0.95, and makes sideways motion pile up down the tree: measured, 2x the
  MD step). The couplings and stds are read from ``[h_i, h_parent, |link|]``.

With ``centred`` the root's own step is fixed at its mean and each tree's centre (the mean of its
beads) moves by ``s_m eps_root`` around the mean of the beads' means instead (:func:`recentre`):
the tree shapes the step, the centre Gaussian alone sets how far the molecule goes. Without it a
molecule's centre moves by the root's step plus the mean of every innovation below it, which
over a 30-bead chain is several times MD's centre step.

The map from the independent innovations to the noise is unit lower-triangular in tree order, so
the exact negative log-likelihood of a true step is that of the innovations ``d_i = r_i - A_i
r_parent(i)`` (``r = z - mean``; ``d_root = r_root``): as cheap as the diagonal one, every bead
at once; a draw goes down the trees level by level (depth ~ half the longest chain,
:func:`tree_noise`). With ``bend`` each link's change turns the link instead of stretching it
(:func:`bent_draw`, an autoregressive flow with an exact likelihood). The whole molecule shares
its root's noise, so molecules move together as in MD; a single bead (an ion) is its own root,
or, with ``contact_cutoff``, hangs onto its nearest contact of a larger molecule
(:func:`attach_single_beads`).

The bond trees depend on the bonds only (computed once per topology, :func:`bond_trees` in a
:class:`~cgsim.model.graph.TopologyMemo`); the
engine's per-member noise streams, batching and resume are untouched (one standard-normal draw
(N, 3) per step, as before).
Status (BENCHMARKS.md, "Bond-tree noise" and "... with its own centre step", 2026-12-07): no
shipped model uses it yet. A bent, centred chain model without drift (stride 2, 10 prior
updates, one call) runs 10x its training length at 0.23 redraws per 1000 steps with D, mean Rg
and bonds within the targets and 2.4x the shipped sampler's speed, but draws non-bonded beads onto
each other (RDF 3.7x the shipped model's error; neither contact links nor a pair score in
training fix that); at stride 4 it meets the chain dynamics targets at 54x OpenMM. The
electrolyte's Li+ shells collide in the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix, csr_matrix
from torch_geometric.utils import scatter

from cgsim.geometry.pbc import minimum_image
from cgsim.model.batch import BeadBatch
from cgsim.model.collective import CentreNoise
from cgsim.model.excluded import CoreFilter, PairCorrection
from cgsim.model.graph import RADIUS_EDGE, TopologyMemo, molecule_index
from cgsim.model.mlp import MLP


@dataclass(frozen=True)
class BondTree:
    """Spanning trees of the molecules of a batch.

    Attributes
    ----------
    parent : torch.Tensor
        Parent of every bead, shape (N,), int64; a root is its own parent.
    root : torch.Tensor
        Whether the bead is its molecule's root, shape (N,), bool.
    molecule : torch.Tensor
        Molecule of every bead, shape (N,), int64, 0..M-1.
    n_molecules : int
        M.
    depth : int
        Largest number of bonds between a root and a bead of its tree.
    levels : tuple of torch.Tensor
        The beads ``k`` links below their root, for ``k = 1 .. depth`` (int64 each): the order in
        which :func:`bent_draw` places them.
    root_of : torch.Tensor
        The root of every bead's tree, shape (N,), int64 (what :func:`component_mean` averages
        over).
    hops : torch.Tensor
        Links between every bead and its root, shape (N,), int64 (its level in a draw).
    """

    parent: torch.Tensor
    root: torch.Tensor
    molecule: torch.Tensor
    n_molecules: int
    depth: int
    levels: tuple[torch.Tensor, ...]
    root_of: torch.Tensor
    hops: torch.Tensor


def _bfs(adj: csr_matrix, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hops from the nearest of ``sources`` (one per component) and the BFS parent of every bead.

    Unreached beads get hop -1 and parent -1; a source is its own parent. Ties (two parents at
    the same hop) go to the first in the frontier's order, so the result is deterministic.
    """
    n = adj.shape[0]
    hops = np.full(n, -1, dtype=np.int64)
    parent = np.full(n, -1, dtype=np.int64)
    hops[sources] = 0
    parent[sources] = sources
    frontier = np.asarray(sources, dtype=np.int64)
    level = 0
    while frontier.size:
        level += 1
        sub = adj[frontier].tocoo()
        fresh = hops[sub.col] < 0
        cand, first = np.unique(sub.col[fresh], return_index=True)
        if cand.size == 0:
            break
        hops[cand] = level
        parent[cand] = frontier[sub.row[fresh][first]]
        frontier = cand
    return hops, parent


def _farthest(hops: np.ndarray, comp: np.ndarray, n_comp: int) -> np.ndarray:
    """Per component, the bead with the most hops (the first such bead on ties), shape (n_comp,)."""
    order = np.lexsort((np.arange(hops.size), -hops, comp))
    starts = np.searchsorted(comp[order], np.arange(n_comp))
    return order[starts]


def bond_tree(n_beads: int, bonds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A spanning tree of every molecule (connected component of the bonds), rooted at its centre.

    Parameters
    ----------
    n_beads : int
        Number of beads N.
    bonds : numpy.ndarray
        Bead bonds, shape (2, E), int (either or both directions).

    Returns
    -------
    parent : numpy.ndarray
        Parent of each bead, shape (N,), int64 (a root is its own parent).
    molecule : numpy.ndarray
        Molecule of each bead, shape (N,), int64 (:func:`cgsim.model.graph.molecule_index`).

    Notes
    -----
    The root is the middle bead of a longest shortest path found by two breadth-first searches
    (exactly a centre for a tree, close to one for a molecule with rings), so a chain of n beads
    has depth ~n/2; the tree is the breadth-first tree from that root.
    """
    bonds = np.asarray(bonds, dtype=np.int64).reshape(2, -1)
    comp = molecule_index(n_beads, bonds)
    n_comp = int(comp.max()) + 1 if n_beads else 0
    if n_beads == 0:
        return np.zeros(0, dtype=np.int64), comp
    adj = coo_matrix((np.ones(2 * bonds.shape[1]), (np.r_[bonds[0], bonds[1]], np.r_[bonds[1], bonds[0]])),
                     shape=(n_beads, n_beads)).tocsr()
    first = np.zeros(n_comp, dtype=np.int64)
    first[comp[::-1]] = np.arange(n_beads)[::-1]
    hops, _ = _bfs(adj, first)
    u = _farthest(hops, comp, n_comp)
    hops_u, parent_u = _bfs(adj, u)
    v = _farthest(hops_u, comp, n_comp)
    centre = v.copy()
    walk = hops_u[v] - hops_u[v] // 2          # steps from v towards u to the path's middle
    for _ in range(int(walk.max()) if walk.size else 0):
        move = walk > 0
        centre[move] = parent_u[centre[move]]
        walk = walk - move
    _, parent = _bfs(adj, centre)
    return parent, comp


def root_hops(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Links between every bead and its root in a forest given by ``parent`` (N,), and that root,
    both shape (N,), int64."""
    hops = np.zeros(parent.size, dtype=np.int64)
    cur = np.arange(parent.size, dtype=np.int64)
    up = parent[cur] != cur
    while up.any():
        hops += up
        cur = np.where(up, parent[cur], cur)
        up = parent[cur] != cur
    return hops, cur


def make_tree(parent: np.ndarray, molecule: torch.Tensor, n_molecules: int) -> BondTree:
    """The :class:`BondTree` of a forest given by ``parent`` (N,) (a root is its own parent), its
    tensors on ``molecule``'s device."""
    dev = molecule.device
    hops, root_of = root_hops(parent)
    depth = int(hops.max()) if hops.size else 0
    order = np.argsort(hops, kind="stable")
    bounds = np.searchsorted(hops[order], np.arange(1, depth + 2))
    levels = tuple(torch.from_numpy(order[bounds[k]:bounds[k + 1]]).to(dev) for k in range(depth))
    t = torch.from_numpy
    return BondTree(parent=t(parent).to(dev), root=t(parent == np.arange(parent.size)).to(dev), molecule=molecule,
                    n_molecules=n_molecules, depth=depth, levels=levels, root_of=t(root_of).to(dev),
                    hops=t(hops).to(dev))


def component_mean(v: torch.Tensor, tree: BondTree) -> torch.Tensor:
    """The mean of ``v`` (N, K) over every bead's tree (unweighted), broadcast back to (N, K)."""
    return scatter(v, tree.root_of, dim=0, dim_size=v.shape[0], reduce="mean")[tree.root_of]


def bond_trees(batch: BeadBatch, bonds: np.ndarray) -> BondTree:
    """The :class:`BondTree` of a batch from its bonds on the host (2, E), tensors on the bonds' device."""
    parent, mol = bond_tree(batch.n_beads, bonds)
    return make_tree(parent, torch.from_numpy(mol).to(batch.bead_bonds.device), int(mol.max()) + 1 if mol.size else 0)


def attach_single_beads(tree: BondTree, batch: BeadBatch, edge_index: torch.Tensor, vec: torch.Tensor,
                        edge_type: torch.Tensor, cutoff: float) -> BondTree:
    """``tree`` with every single-bead molecule (an ion) hung onto its nearest contact.

    A single bead whose nearest radius-edge neighbour closer than ``cutoff`` nm belongs to a
    molecule of *more fine particles* than its own gets that bead as parent (Li+ onto a TFSI- or
    a PEO bead, TFSI- onto PEO), so the ion's step is drawn relative to its partner's instead of
    independently: close pairs move together as in MD. Ranking by fine-particle count keeps the
    result a forest (a bead never hangs onto a molecule of its own size or smaller). The trees
    depend on the current frame, which the step is conditioned on, so the likelihood stays
    exact. Ties in distance go to the lower bead index.
    """
    dev = tree.parent.device
    atom_mol = tree.molecule[batch.atom_to_bead]
    size = torch.zeros(tree.n_molecules, dtype=torch.long, device=dev).index_add_(0, atom_mol, torch.ones_like(atom_mol))
    bead_size = size[tree.molecule]
    single = torch.bincount(tree.molecule, minlength=tree.n_molecules)[tree.molecule] == 1
    src, dst = edge_index
    dist = vec.norm(dim=-1)
    # edges run source -> target; hang the target (an ion) onto the source
    ok = (edge_type == RADIUS_EDGE) & (dist < cutoff) & single[dst] & (bead_size[src] > bead_size[dst])
    if not bool(ok.any()):
        return tree
    src, dst, dist = src[ok], dst[ok], dist[ok]
    key = torch.argsort(src, stable=True)
    src, dst, dist = src[key], dst[key], dist[key]
    key = torch.argsort(dist, stable=True)
    src, dst, dist = src[key], dst[key], dist[key]
    key = torch.argsort(dst, stable=True)   # by ion, then distance, then partner index
    src, dst = src[key], dst[key]
    first = torch.ones_like(dst, dtype=torch.bool)
    first[1:] = dst[1:] != dst[:-1]
    parent = tree.parent.clone()
    parent[dst[first]] = src[first]
    return make_tree(parent.cpu().numpy(), tree.molecule, tree.n_molecules)


@dataclass(frozen=True)
class TreeParams:
    """The bond-tree Gaussian of one step (normalised units).

    Attributes
    ----------
    tree : BondTree
        The batch's trees (contacts included).
    root_std : torch.Tensor
        Std of each molecule's root step, shape (M,), isotropic.
    std : torch.Tensor
        Std of each bead's innovation along and across its link to its parent, shape (N, 2)
        (unused at roots).
    coupling : torch.Tensor
        Each bead's coupling to its parent's noise along and across their link, shape (N, 2), in
        (0, 1) (unused at roots): ``A_i = rho_across I + (rho_along - rho_across) u u^T``.
    direction : torch.Tensor
        Unit vector from each bead's parent to the bead in the current frame (minimum image),
        shape (N, 3); zero at roots.
    links : torch.Tensor or None
        With ``bend``: the current links ``x_i - x_parent`` themselves, shape (N, 3), nm (zero at
        roots), which :func:`bent_draw` turns instead of stretching.
    radial : {"linear", "log"}
        How a bent link's length changes (:func:`_turn`).
    centred : bool
        The tree shapes the step around each tree's centre (the mean over its beads), which moves
        by its own Gaussian (mean: the beads' mean step; std: ``root_std``); the root then moves
        by its mean plus whatever keeps the centre there (:func:`recentre`). ``False``: the root
        moves by ``root_std`` and the centre's step follows from the tree.
    shape_temperature : float
        Scale of every non-root innovation in a *draw* (not in the likelihood): 1 = as trained.
        A sampling setting fitted after training (:func:`cgsim.train.prior_fit.fit_shape_temperature`)
        so that a drawn step moves beads about their centre as far as MD does.
    contacts : torch.Tensor or None
        With ``contact_links``: close pairs of one tree (2, C) ``(j, i)``, ``j`` higher in the tree
        than ``i`` (fewer links to the root) and not its parent: bead ``i``'s linear step also
        follows ``j``'s drawn one, ``+ B_ij (d'_j / scale - mean_j)``.
    contact_coupling : torch.Tensor or None
        ``B_ij`` (C,), each bead's summing to less than 1.
    """

    tree: BondTree
    root_std: torch.Tensor
    std: torch.Tensor
    coupling: torch.Tensor
    direction: torch.Tensor
    links: torch.Tensor | None = None
    radial: str = "linear"
    centred: bool = False
    shape_temperature: float = 1.0
    contacts: torch.Tensor | None = None
    contact_coupling: torch.Tensor | None = None


def link_vectors(x: torch.Tensor, tree: BondTree, batch: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Vectors (N, 3) nm from each bead's parent to the bead in frame ``x`` (N, 3), minimum image
    (``box`` (B, 3) per system, ``batch`` (N,) the system of each bead); zero at roots."""
    vec = x - x[tree.parent]
    if box is not None:
        vec = minimum_image(vec, box[batch])
    return vec


def _own_noise(eps: torch.Tensor, p: TreeParams) -> torch.Tensor:
    """Each bead's own noise in a draw (N, 3): the innovation in its link frame (times the shape
    temperature), or its root's isotropic step (zero when ``p.centred``: the centre's step is added
    after the tree, :func:`recentre`)."""
    innovation = _couple(eps, p.std, p.direction)  # stds along/across the link, like the couplings
    if p.shape_temperature != 1.0:
        innovation = p.shape_temperature * innovation
    root = torch.zeros_like(eps) if p.centred else p.root_std[p.tree.molecule][:, None] * eps
    return torch.where(p.tree.root[:, None], root, innovation)


def _centre_noise(eps: torch.Tensor, p: TreeParams) -> torch.Tensor:
    """Each bead's tree-centre noise (N, 3): ``root_std eps`` of its root (one draw per tree)."""
    t = p.tree
    return (p.root_std[t.molecule][:, None] * eps)[t.root_of]


def recentre(v: torch.Tensor, centre: torch.Tensor, tree: BondTree) -> torch.Tensor:
    """``v`` (N, 3) shifted per tree so that its mean over the tree's beads is ``centre`` (N, 3,
    constant over each tree). With the root's own step fixed, the map from (the non-root
    innovations, the centre step) to the recentred step has a unit Jacobian determinant: a
    tree's relative positions come from the innovations alone and its centre from the centre
    draw, so the likelihood is the product of theirs."""
    return v - component_mean(v, tree) + centre


def _centred_residual(r: torch.Tensor, p: TreeParams) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``p.centred``: a residual (N, 3) with its root's residual removed per tree (what the
    tree draw made before :func:`recentre`) and the tree-centre residual (N, 3)."""
    t = p.tree
    return r - r[t.root_of], component_mean(r, t)


def _couple(v: torch.Tensor, coupling: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``A v`` for vectors ``v`` (K, 3), ``A = c_across I + (c_along - c_across) u u^T`` from
    ``coupling`` (K, 2) = (c_along, c_across) and the unit links ``u`` (K, 3)."""
    along, across = coupling[:, :1], coupling[:, 1:]
    return across * v + (along - across) * (v * u).sum(-1, keepdim=True) * u


def tree_noise(eps: torch.Tensor, p: TreeParams) -> torch.Tensor:
    """Correlated noise (N, 3): ``n_i = A_i n_parent(i) + innovation_i`` down every tree, level by
    level (``A_i``: the coupling along/across bead ``i``'s link).

    Parameters
    ----------
    eps : torch.Tensor
        Standard-normal draw, shape (N, 3).
    p : TreeParams
        The step's trees and parameters.
    """
    t = p.tree
    own = _own_noise(eps, p)
    out = own
    for idx in t.levels:
        out = out.index_copy(0, idx, own[idx] + _couple(out[t.parent[idx]], p.coupling[idx], p.direction[idx]))
    if p.centred:
        out = recentre(out, _centre_noise(eps, p), t)
    return out


def tree_nll(residual: torch.Tensor, p: TreeParams) -> torch.Tensor:
    """Exact NLL of the step residual ``z - mean`` (N, 3), per bead and dimension (a mean).

    The innovations ``d_i = r_i - A_i r_parent(i)`` (a root's own residual) are independent
    Gaussians (along/across its link, or isotropic at a root); the map from them to the
    residuals is unit triangular, so the NLL is theirs.
    """
    t = p.tree
    centre = None
    if p.centred:  # the tree part is the residual relative to the root's; the centre its own term
        residual, centre = _centred_residual(residual, p)
    up = _couple(residual[t.parent], p.coupling, p.direction)
    d = residual - torch.where(t.root[:, None], torch.zeros_like(residual), up)
    if centre is not None:
        d = torch.where(t.root[:, None], centre, d)
    return innovation_nll(d, p)


def innovation_nll(d: torch.Tensor, p: TreeParams) -> torch.Tensor:
    """NLL (a mean per bead and dimension) of innovations ``d`` (N, 3): along/across each bead's
    link with :attr:`TreeParams.std`, isotropic with the root std at roots."""
    t = p.tree
    sq = (d * d).sum(-1)
    along = (d * p.direction).sum(-1)
    w_along, w_across = p.std[:, 0], p.std[:, 1]
    inner = 0.5 * along ** 2 / w_along ** 2 + 0.5 * (sq - along ** 2) / w_across ** 2 \
        + torch.log(w_along) + 2 * torch.log(w_across)
    s = p.root_std[t.molecule]
    rooted = 0.5 * sq / s ** 2 + 3 * torch.log(s)
    return (torch.where(t.root, rooted, inner).sum() / d.numel()) + 0.5 * math.log(2 * math.pi)


def marginal_std(p: TreeParams) -> torch.Tensor:
    """Each bead's marginal std per axis (N, 3) under the (linear) tree noise: the covariance
    ``S_i = A_i S_parent A_i^T + C_i`` down the trees, ``C_i`` the innovation's."""
    t = p.tree
    u = p.direction
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    uu = u[:, :, None] * u[:, None, :]
    along, across = p.std[:, :1, None] ** 2, p.std[:, 1:, None] ** 2
    root_var = (p.root_std[t.molecule] ** 2)[:, None, None]
    own = torch.where(t.root[:, None, None], (0.0 if p.centred else root_var) * eye,
                      across * eye + (along - across) * uu)
    a = p.coupling[:, 1:, None] * eye + (p.coupling[:, :1, None] - p.coupling[:, 1:, None]) * uu
    cov = own
    for idx in t.levels:
        ai = a[idx]
        cov = cov.index_copy(0, idx, own[idx] + ai @ cov[t.parent[idx]] @ ai.transpose(1, 2))
    var = cov.diagonal(dim1=1, dim2=2)
    if p.centred:  # the centre's variance added to the tree's about the root: an approximation
        # (recentring also shifts each bead by minus the tree's own mean, which this ignores)
        var = var + root_var[t.root_of][:, :, 0]
    return var.sqrt()


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    return (v * v).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()


RADIAL = ("linear", "log")
#: what the excluded volume inside the draw checks: close non-bonded pairs, or also every bonded
#: and 1-3 pair (their fitted potentials of mean force tilt each bead's proposal too)
CORE_TERMS = ("nonbonded", "all")


def _turn(link: torch.Tensor, change: torch.Tensor, radial: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """The new link (E, 3) for a link (E, 3) and a linear change (E, 3) of it, and log|det| (E,).

    The change's component along the link changes its length: ``r' = r + a_par`` (``radial =
    "linear"``) or ``r' = r exp(a_par / r)`` (``"log"``: the same to first order, never below
    zero, so a link cannot collapse); its component across the link turns it, by the angle
    ``|a_perp| / r`` towards ``a_perp`` (the exponential map of the sphere of radius ``r``),
    instead of adding to its length. ``log|det d link' / d change| = k log(r' / r) +
    log(sin(alpha) / alpha)`` with ``k = 2`` (linear) or 3 (log).
    """
    r = _safe_norm(link)
    return _turn_unit(r, link / r, change, radial)


def _turn_unit(r: torch.Tensor, u: torch.Tensor, change: torch.Tensor, radial: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_turn` of a link given as its length ``r`` (E, 1) and direction ``u`` (E, 3)."""
    along = (change * u).sum(-1, keepdim=True)
    across = change - along * u
    alpha = _safe_norm(across) / r
    sinc = torch.sinc(alpha / math.pi)
    if radial == "log":
        r_new = r * torch.exp(along / r)
        logdet = 3 * along / r + torch.log(sinc)
    else:
        r_new = r + along
        logdet = 2 * torch.log(r_new.abs() / r) + torch.log(sinc)
    new = r_new * (torch.cos(alpha) * u + sinc * across / r)
    return new, logdet[:, 0]


def _unturn(link: torch.Tensor, new: torch.Tensor, radial: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`_turn`: the linear change (E, 3) that turns ``link`` into ``new``, and
    the forward map's log|det| (E,) there."""
    r = _safe_norm(link)
    u = link / r
    r_new = _safe_norm(new)
    cos_part = (new * u).sum(-1, keepdim=True)
    perp = new - cos_part * u
    alpha = torch.atan2(_safe_norm(perp), cos_part)
    log_ratio = torch.log(r_new / r)
    along = r * log_ratio if radial == "log" else r_new - r
    change = along * u + r * alpha * perp / _safe_norm(perp)
    sinc = torch.sinc(alpha / math.pi)
    logdet = (3 if radial == "log" else 2) * log_ratio + torch.log(sinc)
    return change, logdet[:, 0]


def bent_draw(eps: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, p: TreeParams,
              temperature: float = 1.0, core: CoreFilter | None = None) -> torch.Tensor:
    """A step (N, 3) nm drawn down each tree with its links turned, not stretched.

    Level by level from the roots: bead ``i``'s linear displacement is Gaussian around
    ``mean_i + A_i (d'_parent / scale - mean_parent)`` (conditioned on its parent's *drawn*
    displacement ``d'_parent``) with its own innovation (:attr:`TreeParams.std` along/across
    its link, ``temperature`` times ``eps``); its link change ``a_i = d_i - d'_parent`` is then
    turned (:func:`_turn`): ``d'_i = d'_parent + turn(l_i, a_i) - l_i``, so the link's new
    length is ``r + a_par`` exactly and a large sideways change turns the link instead of
    stretching it. Roots move by ``mean + root_std eps``. An autoregressive flow: its exact
    likelihood is :func:`bent_innovations` (every bead at once).

    Parameters
    ----------
    eps : torch.Tensor
        Standard-normal draw (N, 3).
    mean : torch.Tensor
        Mean displacement (N, 3), normalised units.
    scale : torch.Tensor
        nm per normalised unit (scalar).
    p : TreeParams
        The step's trees and parameters (``links`` set).
    temperature : float
        Scale of the innovations (0 = each bead at its conditional mean, turned).
    core : CoreFilter, optional
        Excluded volume inside the draw (:mod:`cgsim.model.excluded`): each bead proposes
        ``core.tries`` innovations (``eps`` first) and keeps the first its core energy with the
        beads placed before it accepts. ``None``: one proposal, the plain draw.
    """
    t = p.tree
    own = temperature * _own_noise(eps, p)
    out = (mean + own) * scale
    # everything but the parent's drawn step, for every bead at once: the level loop below only
    # gathers the parents, couples them and turns the links (its cost is ~depth small kernels)
    coupled_mean = _couple(mean[t.parent], p.coupling, p.direction)
    base = ((mean + own - coupled_mean) * scale)[None]  # (tries, N, 3): one proposal per try
    if core is not None and core.tries > 1:
        extra = temperature * _own_noise(core.eps, p)
        base = torch.cat([base, ((mean + extra - coupled_mean) * scale)])
        if not p.centred:  # roots move by their own step: level 0 of the filter
            roots = torch.nonzero(t.root)[:, 0]
            cand = torch.cat([out[None, roots], ((mean + extra) * scale)[:, roots]])
            out[roots] = core.choose(0, roots, cand, out)
    r = _safe_norm(p.links)
    u = p.links / r
    loose = p.coupling - 1.0  # (A_i - I): the change of the link is base + (A_i - I) parent's step
    by_level = _contacts_by_level(p)
    for k, idx in enumerate(t.levels):
        par = out[t.parent[idx]]
        ui = u[idx]
        change = base[:, idx] + _couple(par, loose[idx], ui)
        if by_level[k] is not None:  # close beads placed at earlier levels pull this one along
            j, i, b = by_level[k]
            pull = torch.zeros_like(out).index_add(0, i, b[:, None] * (out[j] - mean[j] * scale))
            change = change + pull[idx]
        new, _ = _turn_unit(r[idx], ui, change, p.radial)
        cand = par + new - p.links[idx]  # (tries, n, 3)
        out[idx] = cand[0] if core is None else core.choose(k + 1, idx, cand, out)
    if p.centred:
        out = recentre(out, (component_mean(mean, t) + temperature * _centre_noise(eps, p)) * scale, t)
    return out


def _contacts_by_level(p: TreeParams) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """The contact links ``(j, i, B_ij)`` whose bead ``i`` is placed at each level of the draw."""
    t = p.tree
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(t.levels)
    if p.contacts is None or not p.contacts.shape[1]:
        return out
    j, i = p.contacts
    level = t.hops[i] - 1
    for k in torch.unique(level).tolist():
        sel = level == k
        out[k] = (j[sel], i[sel], p.contact_coupling[sel])
    return out


def bent_innovations(step: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                     p: TreeParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`bent_draw` for a true step (N, 3) nm: the innovations (N, 3)
    (normalised units; :func:`innovation_nll` scores them) and the sum over links of the turns'
    log|det| (a scalar). The step's density is the innovations' divided by the turns' Jacobian
    determinants, so its NLL is the innovations' *plus* that sum. Every bead at once."""
    t = p.tree
    centre = None
    if p.centred:  # the draw before recentring had the root at its mean: undo the shift
        rel, centre = _centred_residual(step / scale - mean, p)
        step = (rel + mean) * scale
    par = step[t.parent]
    change, logdet = _unturn(p.links, step - par + p.links, p.radial)
    cond = mean + _couple(par / scale - mean[t.parent], p.coupling, p.direction)
    if p.contacts is not None and p.contacts.shape[1]:
        j, i = p.contacts
        cond = cond.index_add(0, i, p.contact_coupling[:, None] * (step[j] / scale - mean[j]))
    d = torch.where(t.root[:, None], step / scale - mean if centre is None else centre, (par + change) / scale - cond)
    return d, torch.where(t.root, torch.zeros_like(logdet), logdet).sum()


def conditional_proposals(eps: torch.Tensor, step: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                          p: TreeParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws of every bead's step given the *true* steps of the beads placed before it.

    What :func:`bent_draw` proposes for bead ``i`` when its parent (and, with contact links, its
    close beads higher in the tree) have taken their true step: the conditional the excluded
    volume (:mod:`cgsim.model.excluded`) filters, here for every bead at once, ``K`` times
    (reparameterised: differentiable in ``mean``, ``scale`` and ``p``).

    Parameters
    ----------
    eps : torch.Tensor
        Standard-normal innovations (K, N, 3).
    step : torch.Tensor
        The true step (N, 3), nm.
    mean, scale : torch.Tensor
        The Gaussian's mean (N, 3), normalised units, and nm per unit (scalar).
    p : TreeParams
        The step's trees and parameters (``links`` set).

    Returns
    -------
    proposals : torch.Tensor
        Each bead's proposed step (K, N, 3), nm, in the frame of ``placed`` (roots: their own step).
    placed : torch.Tensor
        The true steps in the draw's frame (N, 3), nm: before the recentring of a centred draw
        (a rigid shift per tree, which leaves distances within a tree unchanged).
    """
    t = p.tree
    if p.centred:
        rel, _ = _centred_residual(step / scale - mean, p)
        step = (rel + mean) * scale
    par = step[t.parent]
    own = _own_noise(eps, p)
    change = (mean + own - _couple(mean[t.parent], p.coupling, p.direction)) * scale \
        + _couple(par, p.coupling - 1.0, p.direction)
    if p.contacts is not None and p.contacts.shape[1]:
        j, i = p.contacts
        change = change + torch.zeros_like(step).index_add(0, i, p.contact_coupling[:, None] * (step[j] - mean[j] * scale))
    r = _safe_norm(p.links)
    new, _ = _turn_unit(r, p.links / r, change, p.radial)
    # roots: their own step (centred: held at the mean, nothing to propose)
    root_step = step.expand_as(new) if p.centred else (mean + own) * scale
    proposals = torch.where(t.root[:, None], root_step, par + new - p.links)
    return proposals, step


class TreeNoise(CentreNoise):
    """Bond-tree noise: each bead's step is its parent's noise times a coupling plus an innovation
    along/across their link, and a molecule std (read as
    :class:`~cgsim.model.collective.CentreNoise` reads its centre std) moves the root and with it
    the whole molecule.

    Parameters
    ----------
    dim, mlp_layers, min_std : int, int, float
        As :class:`~cgsim.model.collective.CentreNoise` (its head gives the root std).
    contact_cutoff : float
        nm; > 0 hangs each single-bead molecule onto its nearest bead of a larger molecule within
        it (:func:`attach_single_beads`); 0 = bonds only.
    bend : bool
        Turn links instead of stretching them (:func:`bent_draw`, an autoregressive flow down
        each tree: exact likelihood; the model's target must be the displacement).
    radial : {"linear", "log"}
        With ``bend``: a link's new length is ``r + a_par`` or ``r exp(a_par / r)`` (never below
        zero: ions cannot be drawn onto their partner).
    centred : bool
        Each tree's centre (the mean of its beads) moves by its own Gaussian, the molecule std,
        and the tree only shapes the step around it (:attr:`TreeParams.centred`). Without it the
        centre's step is the root's plus the mean of every innovation down the tree: each
        molecule moves too far per step (measured: chain centres 1-8x MD's, D 12x).
    drift : bool
        With ``centred``: the centre's mean step is the mean of its beads' mean steps (``True``)
        or zero (``False``: the model's bead means lose their per-tree average, so a molecule's
        centre takes a zero-mean Gaussian step, a random walk at the scale of the step; where
        momentum is lost within one step, as for chains in a Langevin bath over 5 tau, the
        history cannot predict where the centre goes and a learned drift only feeds back on the
        model's own moves). Needs ``target="displacement"``.
    shape_temperature : float
        Scale of the innovations in a draw (:attr:`TreeParams.shape_temperature`; 1 in training).
    contact_links : float
        nm; > 0 (needs ``bend``): beads of one tree closer than this that are not parent and
        child also couple, each bead's linear step following the drawn steps of its close
        beads higher in the tree with weights ``B_ij`` read from ``[h_i, h_j, r_ij]`` (summing to
        less than 1 per bead): beads of different branches in contact move together instead of
        being drawn onto each other. The draw stays triangular (a bead only follows beads of
        earlier levels), so the likelihood stays exact.
    pair_score, pair_cutoff : float, float
        Weight of an energy score of the distances of non-bonded pairs closer than ``pair_cutoff``
        nm, scored on two reparameterised draws against the true next frame, added to the
        training loss (0 = likelihood only). The likelihood scores each bead's step given its
        parent's; it cannot see two beads of different branches drawn onto each other.
    core_samples, core_cutoff : int, float
        ``core_samples > 0`` (needs ``bend``): train for the excluded volume inside the draw
        (:mod:`cgsim.model.excluded`). A structural prior is fitted to the training systems when
        training starts (non-bonded cores up to ``core_cutoff`` nm) and stored with the model;
        the loss is the exact NLL of the filtered draw, the Gaussian one plus ``s E_i(true)``
        plus each bead's ``log Z_i`` estimated from ``core_samples`` proposals
        (:func:`conditional_proposals`), so the network need not keep beads apart itself (which,
        with the filter on top, would count the excluded volume twice and swell the chains). The
        acceptance's exponent ``s`` is the prior's ``strength`` (1), or with
        ``learn_core_strength`` a parameter learned with the rest (``core_log_strength``): the
        fitted core is a potential of mean force, too soft to undo what a Gaussian step puts
        into it, and maximum likelihood sets ``s`` so that the true steps' core energy matches
        the filtered draws'.
    """

    def __init__(self, dim: int, mlp_layers: int = 2, min_std: float = 1e-3, contact_cutoff: float = 0.0,
                 bend: bool = False, radial: str = "linear", centred: bool = False, drift: bool = True,
                 shape_temperature: float = 1.0, pair_score: float = 0.0, pair_cutoff: float = 2.5,
                 contact_links: float = 0.0, core_samples: int = 0, core_cutoff: float = 2.0,
                 learn_core_strength: bool = False, core_terms: str = "nonbonded", core_learned_bins: int = 0,
                 core_learned_range: float = 3.0) -> None:
        super().__init__(dim, mlp_layers=mlp_layers, min_std=min_std, loss_weight=0.0)
        if radial not in RADIAL:
            raise ValueError(f"radial must be one of {RADIAL}, got {radial!r}")
        self.bend = bool(bend)
        self.centred = bool(centred)
        if not drift and not centred:
            raise ValueError("drift=false needs centred=true (it sets the mean of each tree's centre step)")
        self.drift = bool(drift)
        if not shape_temperature > 0:
            raise ValueError(f"shape_temperature must be > 0, got {shape_temperature}")
        self.shape_temperature = float(shape_temperature)
        if pair_score < 0 or pair_cutoff <= 0:
            raise ValueError(f"pair_score must be >= 0 and pair_cutoff > 0 nm, got {pair_score}, {pair_cutoff}")
        self.pair_score = float(pair_score)
        self.pair_cutoff = float(pair_cutoff)
        if core_samples < 0 or (core_samples > 0 and not bend) or core_cutoff <= 0:
            raise ValueError(f"core_samples must be >= 0 and needs bend=true, core_cutoff > 0 nm; got {core_samples}, "
                             f"{core_cutoff} (bend={bend})")
        self.core_samples = int(core_samples)
        self.core_cutoff = float(core_cutoff)
        if core_terms not in CORE_TERMS:
            raise ValueError(f"core_terms must be one of {CORE_TERMS}, got {core_terms!r}")
        self.core_terms = str(core_terms)
        if core_learned_bins and not core_samples:
            raise ValueError("core_learned_bins needs core_samples > 0 (it is learned with the filtered likelihood)")
        #: learned pair energies added to the fitted tables in the filter (kinds: non-bonded, bonded, 1-3)
        self.core_correction = PairCorrection(core_learned_bins, core_learned_range) if core_learned_bins else None
        #: log of the exponent of the core's acceptance, learned with the rest (maximum likelihood
        #: of the filtered draw matches the core energy of the true steps to that of the draws)
        self.core_log_strength = (torch.nn.Parameter(torch.zeros(())) if self.core_samples > 0 and learn_core_strength
                                  else None)
        if contact_links < 0 or (contact_links > 0 and not bend):
            raise ValueError(f"contact_links must be >= 0 nm and needs bend=true, got {contact_links} (bend={bend})")
        self.contact_links = float(contact_links)
        # [h_i, h_j, |r_ij| nm] -> weight of bead i following bead j's drawn step
        self.contact_head = MLP(2 * dim + 1, dim, 1, mlp_layers, layer_norm=False) if contact_links > 0 else None
        self.radial = radial
        if contact_cutoff < 0:
            raise ValueError(f"contact_cutoff must be >= 0 nm, got {contact_cutoff}")
        self.trees = TopologyMemo(bond_trees)
        # [h_i, h_parent, |link| nm] -> innovation std along, across; coupling along, across
        self.link_head = MLP(2 * dim + 1, dim, 4, mlp_layers, layer_norm=False)
        self.contact_cutoff = float(contact_cutoff)

    def tree_forward(self, h: torch.Tensor, batch: BeadBatch,
                     edges: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> TreeParams:
        """The step's :class:`TreeParams` from latents (N, dim) and the batch's current frame.

        With ``contact_cutoff > 0`` the model's edges of the current frame (``edge_index`` (2, E),
        ``vec`` (E, 3) nm, ``edge_type`` (E,)) hang single beads onto their contacts
        (:func:`attach_single_beads`)."""
        tree = self.trees(batch)
        if self.contact_cutoff > 0:
            if edges is None:
                raise ValueError("contact_cutoff > 0 needs the model's edges of the current frame")
            tree = attach_single_beads(tree, batch, *edges, self.contact_cutoff)
        raw = scatter(self.head(h)[:, 0], tree.molecule, dim=0, dim_size=tree.n_molecules, reduce="mean")
        vec = link_vectors(batch.pos[:, -1], tree, batch.batch, batch.box)
        length = vec.norm(dim=-1, keepdim=True)
        direction = torch.where(tree.root[:, None], torch.zeros_like(vec), vec / length.clamp_min(1e-9))
        out = self.link_head(torch.cat([h, h[tree.parent], length.to(h.dtype)], dim=-1))
        std = torch.nn.functional.softplus(out[:, :2]) + self.min_std
        coupling = torch.sigmoid(out[:, 2:4])
        contacts = weights = None
        if self.contact_head is not None:
            if edges is None:
                raise ValueError("contact_links > 0 needs the model's edges of the current frame")
            contacts, weights = self._contact_links(h, tree, *edges)
        return TreeParams(tree=tree, root_std=torch.nn.functional.softplus(raw) + self.min_std, std=std,
                          coupling=coupling, direction=direction.to(h.dtype), links=vec if self.bend else None,
                          radial=self.radial, centred=self.centred,
                          shape_temperature=1.0 if self.training else self.shape_temperature,
                          contacts=contacts, contact_coupling=weights)

    def _contact_links(self, h: torch.Tensor, tree: BondTree, edge_index: torch.Tensor, vec: torch.Tensor,
                       edge_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Close pairs ``(j, i)`` (2, C) of one tree, ``j`` at an earlier level than ``i`` and not
        its parent, and their weights ``B_ij`` (C,) (each bead's summing to less than 1)."""
        j, i = edge_index
        dist = vec.norm(dim=-1)
        ok = (edge_type == RADIUS_EDGE) & (dist < self.contact_links) & (tree.root_of[j] == tree.root_of[i]) \
            & (tree.hops[j] < tree.hops[i]) & (tree.parent[i] != j)
        j, i, dist = j[ok], i[ok], dist[ok]
        raw = self.contact_head(torch.cat([h[i], h[j], dist[:, None].to(h.dtype)], dim=-1))[:, 0]
        w = torch.nn.functional.softplus(raw)
        total = torch.ones(h.shape[0], dtype=w.dtype, device=w.device).index_add(0, i, w)
        return torch.stack([j, i]), w / total[i]
