"""CPU memory allocator settings for long-running tensor work (no torch import: the CLI
calls this before it loads a verb)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap, not from a fresh mmap per allocation
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap kept for the next step rather than given back
TRIM_THRESHOLD = (1 << 31) - 1
_TUNED: bool | None = None


def tune_allocator() -> bool:
    """Keep freed CPU tensor memory in the process between training steps (glibc only).

    glibc's malloc serves each block above its mmap threshold (128 KiB, adapting up to
    32 MiB) with a fresh mmap and unmaps it when freed, and gives the heap's free top back
    to the OS; every step of a flow then faults much of the same memory in again, page by
    page (paper flow at L = 16, batch 64: a benchmark process of about a dozen steps took
    1.1 M page faults and 5-6 s of system time, 0.4 M and 3.7 s with this;
    benchmarks/RESULTS.md, session 7). Raising both thresholds keeps that memory
    mapped: the resident set stays at the step's peak instead of following it up and down.
    Numbers are unchanged (only where memory comes from). Off with
    ``GAUGEFLOW_MALLOC_TUNING=0``; a no-op where libc is not glibc. Returns whether it applied.
    """
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = False
    if os.environ.get("GAUGEFLOW_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _TUNED = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _TUNED
