"""Atomic file writing: nothing already written is lost or left half-written.

Every file cgsim produces is first written to a temporary file in the same directory and
then renamed over the target (``os.replace`` is atomic on POSIX within one file system).
Inside :func:`committed_together` the renames wait for the end of the block, so a set of
files (a mapped system, a report) is replaced as a whole or not at all.

A write that the file system refuses (a full disk, a read-only file system, a parent that is
a file, no permission) becomes one :class:`cgsim.errors.CgsimOutputError` naming the file
(:func:`output_error`); the temporary is removed and the file already there stays as it was.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from cgsim.errors import CgsimOutputError

#: what each refused write means for the user, by errno
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on device [ENOSPC]; free some space (or choose an output on another disk) and run again",
    errno.EDQUOT: "disk quota exceeded [EDQUOT]; free some space (or choose an output on another disk) and run again",
    errno.EFBIG: "file too large for its file system [EFBIG]; choose an output on another file system",
    errno.EROFS: "read-only file system [EROFS]; choose an output on a writable file system",
    errno.EACCES: "permission denied [EACCES]; choose an output you may write to",
    errno.EPERM: "operation not permitted [EPERM]; choose an output you may write to",
}
#: errnos that only a write gives (an error inside a writer's body is converted only for these)
_ONLY_WRITES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)

#: pending renames of the innermost :func:`committed_together` block (None outside one)
_PENDING: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("cgsim_pending", default=None)


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) when it is not a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def output_error(target: str | os.PathLike, exc: BaseException, writes_only: bool = False) -> CgsimOutputError | None:
    """The one-line :class:`CgsimOutputError` for an ``OSError`` writing ``target``, or None.

    ``writes_only`` converts only the errnos no read can give (a full disk, a read-only file
    system): for errors raised while a writer also reads its inputs.
    """
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    target = Path(target)
    code = exc.errno
    if writes_only and code not in _ONLY_WRITES:
        return None
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR) and not writes_only:
        blocker = _file_in_the_way(target.parent)
        if blocker is not None:
            return CgsimOutputError(str(target), f"cannot be written: {blocker} is a file, not a directory; choose "
                                                 "another output")
        if target.is_dir():
            return CgsimOutputError(str(target), "cannot be written: it is a directory; choose another output")
        return None
    why = _WRITE_ERRORS.get(code)
    if why is None:
        return None
    return CgsimOutputError(str(target), f"cannot be written: {why}; files already there are unchanged")


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
        left untouched; inside :func:`committed_together` the rename waits for the block's end.

    Raises
    ------
    CgsimOutputError
        The directory cannot be made or written (a parent is a file, a read-only file system,
        no permission) or the disk is full.
    """
    target = Path(target)
    suffix = target.suffix if suffix is None else suffix
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        err = output_error(target, exc)
        if err is None:
            raise
        raise err from None
    tmp_path = Path(tmp)
    tmp_path.unlink()  # writers (mdtraj, pytables) want to create the file themselves
    pending = _PENDING.get()
    try:
        yield tmp_path
        if pending is not None:
            pending.append((tmp_path, target))
        else:
            os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        err = output_error(target, exc, writes_only=True) if isinstance(exc, OSError) else _hdf5_write_error(target, exc)
        if err is None:
            raise
        raise err from None


def _hdf5_write_error(target: Path, exc: BaseException) -> CgsimOutputError | None:
    """A one-line error for HDF5 (pytables) failing to write ``target``'s temporary file, or None.

    The HDF5 library reports a full disk (or any failed write) as ``HDF5ExtError``, not as an
    ``OSError``; the target itself is untouched (only the temporary file was being written).
    """
    try:
        from tables.exceptions import HDF5ExtError
    except ImportError:  # pragma: no cover - tables is a dependency
        return None
    if not isinstance(exc, HDF5ExtError):
        return None
    free = shutil.disk_usage(target.parent).free if target.parent.exists() else None
    why = "the disk is full" if free is not None and free < 16 * 2**20 else "the HDF5 library could not write it"
    return CgsimOutputError(str(target), f"cannot be written: {why}; files already there are unchanged")


@contextlib.contextmanager
def committed_together() -> Iterator[None]:
    """Files written through :func:`atomic_path` inside the block replace their targets together
    at its end, in the order they were finished, or none does when the block fails.

    The renames themselves need no space, so a full disk or an error anywhere in the block
    leaves every earlier file as it was. A writer inside the block must not read back a file it
    wrote there (it is not in place yet). Nested blocks commit with the outermost one.
    """
    if _PENDING.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        _PENDING.reset(token)
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    _PENDING.reset(token)
    for k, (tmp, target) in enumerate(pending):
        try:
            os.replace(tmp, target)
        except OSError as exc:
            for later, _ in pending[k:]:
                with contextlib.suppress(FileNotFoundError):
                    later.unlink()
            err = output_error(target, exc)
            if err is None:
                raise
            raise err from None


def check_output_directory(path: str | os.PathLike, key: str = "output") -> Path:
    """Refuse, before any work, an output directory that cannot be made or written.

    It is refused when it, or the nearest of its parents that exists, is a file, or when that
    directory lies on a read-only file system. Returns the path.
    """
    out = Path(path).expanduser()
    for p in (out, *out.parents):
        if not p.exists():
            continue
        if not p.is_dir():
            what = "is a file" if p == out else f"lies under {p}, which is a file"
            raise CgsimOutputError(key, f"{path} {what}, not a directory; choose another output directory")
        with contextlib.suppress(OSError):
            if os.statvfs(p).f_flag & os.ST_RDONLY:
                where = f"{path}" if p == out else f"{path}: {p}"
                raise CgsimOutputError(key, f"{where} is on a read-only file system [EROFS]; choose an output on a "
                                            "writable file system")
        break
    return out


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
