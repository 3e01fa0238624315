"""Monomer sequences of sequence-defined graft copolymer chains.

A sequence is a string of monomer letters, e.g. ``"AABAB..."``. Each letter names a monomer
made of one backbone bead and one side-chain bead (``{"A": ("B1", "S1"), "B": ("B2", "S2")}``
by default, see ``conf/system/chain.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cgsim.errors import CgsimInputError


def validate_sequence(sequence: str, monomers: Mapping[str, Sequence[str]], where: str) -> str:
    """Check that ``sequence`` is non-empty and uses only known monomer letters.

    Parameters
    ----------
    sequence : str
        Monomer letters, one per monomer.
    monomers : mapping
        Known monomer letters -> (backbone bead type, side-chain bead type).
    where : str
        Config key or file named in the error message.

    Returns
    -------
    str
        The sequence, unchanged.
    """
    if not isinstance(sequence, str) or len(sequence) == 0:
        raise CgsimInputError(where, f"expected a non-empty string of monomer letters, got {sequence!r}")
    unknown = sorted(set(sequence) - set(monomers))
    if unknown:
        raise CgsimInputError(
            where,
            f"unknown monomer letter(s) {''.join(unknown)!r} in sequence; expected letters from {''.join(sorted(monomers))!r}",
        )
    return sequence


def draw_sequences(
    n: int,
    length_range: tuple[int, int],
    letters: Sequence[str],
    rng: np.random.Generator,
) -> list[str]:
    """Draw ``n`` distinct random sequences.

    Each sequence gets a length uniform in ``length_range`` (inclusive) and a composition
    uniform in [0, 1] (fraction of the first letter for two letters; Dirichlet(1) weights in
    general), so a set spans globular to swollen chains.

    Parameters
    ----------
    n : int
        Number of sequences.
    length_range : (int, int)
        Smallest and largest number of monomers.
    letters : sequence of str
        Monomer letters to draw from.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    list of str
        ``n`` distinct sequences.
    """
    lo, hi = int(length_range[0]), int(length_range[1])
    letters = list(letters)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        length = int(rng.integers(lo, hi + 1))
        weights = rng.dirichlet(np.ones(len(letters)))
        seq = "".join(rng.choice(letters, size=length, p=weights))
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out
