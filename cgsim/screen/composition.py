"""The compositions a user asks to screen, checked into :class:`Request` objects.

A composition is EO:Li (ether oxygens per Li+), the chain length in EO units and the number of
chains; the salt count is ``round(n_chains * chain_length / eo_li)`` as in ``cgsim generate``
(:meth:`cgsim.reference.electrolyte.Composition.from_ratio`). They come from the
``compositions`` list and/or the top-level ``eo_li`` / ``chain_length`` / ``n_chains`` options
(:mod:`cgsim.screen.config`); every bad value is one line naming the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from cgsim.errors import CgsimInputError
from cgsim.reference import electrolyte as el
from cgsim.screen.training import molality


@dataclass(frozen=True)
class Request:
    """One composition to screen.

    Attributes
    ----------
    key : str
        The option prefix it came from (``compositions[1]``; empty for the top-level options),
        named in errors.
    eo_li : float
        EO:Li as asked.
    chain_length, n_chains, n_salt : int
        EO units per chain, chains, LiTFSI pairs.
    molality : float
        Li+ per kg of PEO, mol/kg.
    """

    key: str
    eo_li: float
    chain_length: int
    n_chains: int
    n_salt: int
    molality: float

    @property
    def label(self) -> str:
        """Directory name, e.g. ``peo8x20_eoli12``."""
        return f"peo{self.n_chains}x{self.chain_length}_eoli{self.eo_li:g}"

    @property
    def actual_eo_li(self) -> float:
        """EO:Li of the box (the salt count is rounded)."""
        return self.n_chains * self.chain_length / self.n_salt

    @property
    def composition(self) -> el.Composition:
        """The generator's composition."""
        return el.Composition(self.n_chains, self.chain_length, self.n_salt)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"eo_li": self.eo_li, "chain_length": self.chain_length, "n_chains": self.n_chains,
                "n_salt": self.n_salt, "actual_eo_li": self.actual_eo_li, "molality_mol_kg": self.molality}


def _integer(value: Any, key: str, lo: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise CgsimInputError(key, f"expected {what} (an integer >= {lo}), got {value!r}")
    return int(value)


def make_request(eo_li: Any, chain_length: Any, n_chains: Any, key: str) -> Request:
    """Check one composition; ``key`` prefixes the option names in errors (empty: top level)."""
    dot = f"{key}." if key else ""
    if eo_li is None or isinstance(eo_li, bool) or not isinstance(eo_li, int | float) or not math.isfinite(eo_li) \
            or eo_li <= 0:
        raise CgsimInputError(f"{dot}eo_li", f"expected a positive EO:Li ratio (ether oxygens per Li+), got {eo_li!r}")
    length = _integer(chain_length, f"{dot}chain_length", 2, "the chain length in EO units")
    chains = _integer(n_chains, f"{dot}n_chains", 1, "the number of PEO chains")
    n_salt = int(round(chains * length / float(eo_li)))
    if n_salt < 1:
        raise CgsimInputError(f"{dot}eo_li", f"EO:Li {eo_li:g} leaves no Li+ in {chains} chain(s) of {length} EO units; "
                                             "add chains or lower eo_li")
    comp = el.Composition(chains, length, n_salt)
    top = el.build_topology(comp)
    peo = el.species_indices(top)["peo"]
    return Request(key=key, eo_li=float(eo_li), chain_length=length, n_chains=chains, n_salt=n_salt,
                   molality=molality(n_salt, float(el.masses(top)[peo].sum())))


def requests_from_config(cfg: DictConfig) -> list[Request]:
    """Every composition of ``cfg`` (the list, then the top-level one), refusing none or duplicates."""
    out: list[Request] = []
    for k, c in enumerate(cfg.get("compositions") or []):
        key = f"compositions[{k}]"
        for name in ("eo_li", "chain_length", "n_chains"):
            if c.get(name) is None or str(c.get(name)) == "???":
                raise CgsimInputError(f"{key}.{name}", "is required; each composition needs eo_li, chain_length and n_chains")
        out.append(make_request(c.eo_li, c.chain_length, c.n_chains, key))
    top = {name: cfg.get(name) for name in ("eo_li", "chain_length", "n_chains")}
    if any(v is not None for v in top.values()):
        missing = [n for n, v in top.items() if v is None]
        if missing:
            raise CgsimInputError(missing[0], "is required with the other top-level composition options "
                                              "(eo_li, chain_length, n_chains)")
        out.append(make_request(top["eo_li"], top["chain_length"], top["n_chains"], ""))
    if not out:
        raise CgsimInputError("compositions", "no composition given; expected eo_li=R chain_length=N n_chains=C, or "
                                              "'compositions=[{eo_li: R, chain_length: N, n_chains: C}, ...]'")
    labels = [r.label for r in out]
    dup = next((lab for lab in labels if labels.count(lab) > 1), None)
    if dup is not None:
        raise CgsimInputError("compositions", f"composition {dup} is given twice")
    return out
