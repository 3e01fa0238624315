"""Process-level settings for long CPU runs.

:func:`keep_freed_memory` stops glibc's allocator from handing large freed blocks back to the
operating system. By default every tensor above the mmap threshold (up to 32 MiB) is a fresh
``mmap`` whose pages fault in again on first touch and are unmapped on free, so a rollout or
training step that allocates the same large tensors every step pays kernel time that grows with
the system (measured: 240 s kernel against 197 s user CPU over the neighbour/step scaling run,
and a 1.7x faster 188-bead electrolyte step without it; BENCHMARKS.md, "Speed"). With it, freed
memory stays in the process heap and is reused: memory stays at its peak, which for a run that
repeats the same step is the steady state anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Keep freed heap memory in the process (glibc only); return whether it was applied.

    Equivalent to ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=<large>``
    but set from inside the process, for allocations from now on. A no-op returning ``False``
    on other C libraries (macOS, musl) or if ``mallopt`` refuses.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
