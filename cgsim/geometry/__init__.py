"""Geometry on beads: neighbour search (radius graphs) with and without periodic boxes."""

from cgsim.geometry.neighbors import (
    RadiusGraph,
    brute_force_radius_graph,
    check_orthorhombic,
    radius_graph,
)

__all__ = ["RadiusGraph", "brute_force_radius_graph", "check_orthorhombic", "radius_graph"]
