"""Saved run configs against today's schema: options added since a run was written.

A training or rollout run records its config and refuses to resume under a different one. A
run written before an option existed lacks that key; it is the same run as long as the new
option is left at its default (off), so it is filled in at that default before comparing.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def with_added_defaults(saved: Any, schema: Any) -> Any:
    """``saved`` plus the fields of dataclass instance ``schema`` it lacks, at their defaults.

    Parameters
    ----------
    saved : Any
        A saved config (nested dicts, as ``OmegaConf.to_container`` gives); anything else is
        returned as is.
    schema : Any
        A dataclass instance holding today's defaults (nested dataclasses are followed).

    Returns
    -------
    Any
        A new dict: ``saved``'s values, and for each field missing from it the schema's
        default (a nested dataclass as a dict). Keys of ``saved`` outside the schema stay.
    """
    if not (isinstance(saved, dict) and dataclasses.is_dataclass(schema)):
        return saved
    out = dict(saved)
    for f in dataclasses.fields(schema):
        value = getattr(schema, f.name)
        if f.name in out:
            out[f.name] = with_added_defaults(out[f.name], value)
        else:
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out
