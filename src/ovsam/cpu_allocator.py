"""Keep memory that torch frees on the CPU mapped in the process, for the next prompt to reuse.

A batched CPU decode allocates and frees buffers of 1 to 16 MiB for every chunk of prompts.
glibc's malloc serves blocks from a size that it learns at run time (its dynamic mmap
threshold) with ``mmap`` and unmaps them on ``free``, and it hands free memory at the top
of a heap back to the kernel beyond a trim threshold; so the next chunk takes the same
memory again page by page: about 1,600 page faults per prompt of a 16-box batch, and 5 to
20% of its time on the 2-core CI machine (same-process A/B; ``benchmarks/bench_mobilesam.py``).

:func:`keep_freed_memory` fixes glibc's thresholds instead: blocks under 32 MiB (the most
glibc allows) come from the heap, and up to 64 MiB of free memory stays mapped per heap
(one heap per thread that allocates, at most 8 per core). Larger blocks, such as an image
encoder's, are still mapped and unmapped each time. The setting is process-wide:
:func:`~ovsam.modeling.prompt_workers.map_prompt_chunks` applies it once, before the first
batch that it decodes on parallel CPU workers.
``OVSAM_KEEP_FREED_MEMORY=0``, or malloc settings of your own (``glibc.malloc.*`` in
``GLIBC_TUNABLES``, or ``MALLOC_MMAP_THRESHOLD_`` and its siblings), leave malloc as it is;
other C libraries (macOS, Windows, musl) are left alone too. :func:`release_freed_memory`
does the opposite, once, when a burst of large allocations is over (the server's uploads).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

#: glibc ``mallopt`` parameters (``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap: 32 MiB, glibc's largest (half its 64 MiB heaps).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of a heap beyond this goes back to the kernel.
TRIM_THRESHOLD = 64 << 20
OPT_OUT = "OVSAM_KEEP_FREED_MEMORY"
#: glibc's older environment settings of the same thresholds (mallopt(3)): a user's own wins.
_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                     "MALLOC_MMAP_MAX_")  # fmt: skip

_lock = threading.Lock()
_applied: bool | None = None


def _wanted() -> bool:
    """False when the user opted out, set malloc's thresholds, or the C library is not glibc."""
    if os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if any(os.environ.get(name) for name in _MALLOC_VARIABLES):
        return False
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring) once per process.

    Returns whether they are set: False where the user opted out or the C library is not
    glibc. Safe to call from any thread, any number of times.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _wanted() and _set_thresholds()
        return _applied


def _set_thresholds() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, as the trim one alone would
    # also freeze the mmap threshold at its current (possibly 128 KiB) value
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def release_freed_memory() -> bool:
    """Hand memory freed inside glibc's heaps back to the kernel (``malloc_trim(0)``, every
    thread's heap): a server's worker threads each keep one, and large decodes left most of
    a gigabyte free but mapped in each. Returns whether memory was released (False: not
    glibc, or nothing to release). Safe from any thread; costs milliseconds."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
