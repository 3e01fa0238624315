"""Which stages of one composition's screening are finished, and how long each took.

Every composition directory holds ``identity.json`` (what is screened there: the checkpoint,
the composition and every option the stages' outputs depend on) and ``stages.json`` (per
finished stage: its wall time in seconds, when it finished and what it produced). Both are
written atomically after a stage's own outputs, so a killed screening leaves a stage either
recorded whole or not at all; a rerun skips the recorded stages (``cgsim generate`` and
``cgsim rollout`` also resume a stage killed half-way). A directory holding another screening
is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cgsim.errors import CgsimInputError
from cgsim.io_utils import write_json_atomic
from cgsim.metadata import now_iso

#: the stages of one composition, in order
STAGES = ("md", "map", "rollout", "analysis")


class StageLog:
    """The stage records of one composition directory.

    Parameters
    ----------
    directory : pathlib.Path
        The composition's directory (created).
    identity : dict
        What its outputs depend on; must equal the stored one when there is one.
    """

    def __init__(self, directory: Path, identity: dict[str, Any]) -> None:
        self.dir = Path(directory)
        self.path = self.dir / "stages.json"
        ident = self.dir / "identity.json"
        new = json.loads(json.dumps(identity))
        if ident.is_file():
            old = json.loads(ident.read_text())
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise CgsimInputError(str(self.dir), f"holds a screening with other settings (differs in: "
                                                     f"{', '.join(diff)}); choose another output")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(ident, new)
        self.records: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def done(self, stage: str, must_match: dict[str, Any] | None = None) -> bool:
        """Whether ``stage`` is recorded (and, when given, recorded with these ``must_match`` settings)."""
        rec = self.records.get(stage)
        if rec is None:
            return False
        return must_match is None or rec.get("settings") == json.loads(json.dumps(must_match))

    def record(self, stage: str, wall_seconds: float, settings: dict[str, Any] | None = None,
               **facts: Any) -> None:
        """Record ``stage`` as finished (atomically)."""
        self.records[stage] = {"wall_seconds": float(wall_seconds), "finished": now_iso(),
                               "settings": json.loads(json.dumps(settings or {})), **facts}
        write_json_atomic(self.path, self.records)

    def wall(self, stage: str) -> float:
        """Recorded wall time of ``stage``, s (0 when not recorded)."""
        return float(self.records.get(stage, {}).get("wall_seconds", 0.0))
