"""Observables of bead trajectories: pure functions, arrays in, small results with units out.

One family per module (after mdtraj's layout); each public function validates its input,
raising :class:`cgsim.errors.CgsimInputError` with one line on bad input, and calls a private
array function. Inputs are in MD units (nm, ps, amu, e, K); results state their units.

============================  =========================================================
module                        observables
============================  =========================================================
:mod:`.rdf`                   g(r) per selection or bead-type pair, coordination number
:mod:`.shells`                first coordination shell: peak, minimum, coordination number
:mod:`.bonds`                 bond-length and bond-angle distributions per type
:mod:`.polymer`               radius of gyration, end-to-end distance, contact map
:mod:`.msd`                   MSD over all time origins (FFT), wrapped-input check
:mod:`.diffusion`             self-diffusion coefficient with block-average error
:mod:`.correlation`           autocorrelation (e.g. of Rg^2) and relaxation time
:mod:`.conductivity`          Nernst-Einstein / Einstein-Helfand conductivity, transference
:mod:`.distributions`         histograms, Jensen-Shannon divergence, relative error
============================  =========================================================
"""

from cgsim.observables.bonds import (
    angle_triplets,
    bond_angle_distributions,
    bond_angles,
    bond_length_distributions,
    bond_lengths,
)
from cgsim.observables.conductivity import ConductivityResult, ionic_conductivity
from cgsim.observables.correlation import (
    ACFResult,
    autocorrelation,
    relaxation_time,
    rg2_autocorrelation,
)
from cgsim.observables.diffusion import DiffusionResult, self_diffusion
from cgsim.observables.distributions import Distribution, histogram, js_divergence, relative_error
from cgsim.observables.msd import MSDResult, check_unwrapped, msd
from cgsim.observables.polymer import (
    ChainSeries,
    ContactMap,
    contact_map,
    end_to_end_distance,
    molecule_centres,
    radius_of_gyration,
)
from cgsim.observables.rdf import RDFResult, coordination_number, rdf, rdf_by_type
from cgsim.observables.shells import first_peak_and_minimum, first_shell

__all__ = [
    "ACFResult",
    "ChainSeries",
    "ConductivityResult",
    "ContactMap",
    "DiffusionResult",
    "Distribution",
    "MSDResult",
    "RDFResult",
    "angle_triplets",
    "autocorrelation",
    "bond_angle_distributions",
    "bond_angles",
    "bond_length_distributions",
    "bond_lengths",
    "check_unwrapped",
    "contact_map",
    "coordination_number",
    "end_to_end_distance",
    "first_peak_and_minimum",
    "first_shell",
    "histogram",
    "ionic_conductivity",
    "js_divergence",
    "molecule_centres",
    "msd",
    "radius_of_gyration",
    "rdf",
    "rdf_by_type",
    "relative_error",
    "relaxation_time",
    "rg2_autocorrelation",
    "self_diffusion",
]
