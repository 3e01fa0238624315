"""The multi-scale graph network (fine chemistry embedding -> bead dynamics)."""

from cgsim.model.batch import BeadBatch, SystemGraph, collate
from cgsim.model.equivariant import EquivariantDynamics
from cgsim.model.simulator import ChemistryEmbedding, GaussianStep, MultiScaleDynamics

__all__ = ["BeadBatch", "ChemistryEmbedding", "EquivariantDynamics", "GaussianStep", "MultiScaleDynamics",
           "SystemGraph", "collate"]
