"""Atomic file writing: nothing already written is lost or left half-written.

Every file cgsim produces is first written to a temporary file in the same directory and
then renamed over the target (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it to ``target`` on success.

    Parameters
    ----------
    target : path-like
        Final file path.
    suffix : str, optional
        Suffix of the temporary file (defaults to the target's), so writers that pick the
        format from the extension (mdtraj) still work.

    Yields
    ------
    pathlib.Path
        The temporary path to write to. On an exception it is removed and the target is
        left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # writers (mdtraj, pytables) want to create the file themselves
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def stale_temporaries(target: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """Temporary files that :func:`atomic_path` left next to ``target`` (a killed writer).

    They are named ``.<stem>.<random>.<suffix>`` (``tempfile.mkstemp``'s 8 random characters of
    ``[a-z0-9_]``), so only such names are matched, never the target or other hidden files.
    """
    target = Path(target)
    suffix = target.suffix if suffix is None else suffix
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{target.stem}.") + r"[a-z0-9_]{8}" + re.escape(suffix) + r"\Z")
    return sorted(p for p in target.parent.iterdir() if pattern.match(p.name) and p.is_file())


def remove_stale_temporaries(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove the temporaries a killed run left next to each of ``targets``; return them."""
    removed = []
    for target in targets:
        for p in stale_temporaries(target):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_finite(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None, recursively (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_finite(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as YAML to ``path`` atomically."""
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
