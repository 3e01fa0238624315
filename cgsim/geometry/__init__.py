"""Geometry on beads: neighbour search (radius graphs, Verlet lists) with and without periodic boxes."""

from cgsim.geometry.neighbors import (
    RadiusGraph,
    brute_force_radius_graph,
    check_orthorhombic,
    radius_graph,
)
from cgsim.geometry.verlet import VerletList

__all__ = ["RadiusGraph", "VerletList", "brute_force_radius_graph", "check_orthorhombic", "radius_graph"]
