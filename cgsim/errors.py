"""Errors that are the user's to fix.

Every bad input is reported as one line that names the file (or option), the field and what
was expected. The command line prints that line and exits with status 2, no traceback.
"""

from __future__ import annotations


class CgsimInputError(ValueError):
    """A bad input: a file, config option or argument that cgsim cannot use.

    Parameters
    ----------
    where : str
        The file path or config key holding the bad value (e.g. ``"system.sequence"``).
    message : str
        What is wrong and what was expected, in one sentence.
    """

    def __init__(self, where: str, message: str) -> None:
        self.where = str(where)
        self.message = message
        super().__init__(f"{self.where}: {message}")


class CgsimOutputError(CgsimInputError):
    """An output that cannot be written: a parent that is a file, a read-only file system, a full
    disk. Reported like a bad input (one line naming the file, exit status 2); files already
    there are left as they were (:mod:`cgsim.io_utils`)."""


class NonFinitePositions(CgsimInputError):
    """Positions that hold NaN or infinity where finite ones are needed (a diverged step)."""
