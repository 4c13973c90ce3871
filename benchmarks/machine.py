"""Facts about the machine and the code under test that every benchmark records."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

__all__ = ["alternating_times", "cpu_model", "git_state", "loadavg", "speedup_summary"]


def cpu_model() -> str:
    """The CPU model name as lscpu reports it (platform.processor() as a fallback)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def git_state() -> str:
    """Commit of the code under test, with the files that differ from it (if any)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1::2]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (f" + local changes in {', '.join(dirty)}" if dirty else "")


def loadavg() -> float | None:
    """The 1-minute load average (None where /proc/loadavg is missing)."""
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError):
        return None


def alternating_times(
    variants: dict[str, Callable[[], None]],
    rounds: int,
    steps: int,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Wall-clock seconds of each call of each variant, the variants taking turns.

    Each variant first runs `warmup` untimed calls; then, for `rounds` rounds, each variant runs
    `steps` timed calls in turn, the order reversed every other round, so a machine whose speed
    drifts slows all variants alike. `sync` (e.g. torch.cuda.synchronize) is called before and
    after each timed call.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for _ in range(steps):
                if sync:
                    sync()
                t0 = time.perf_counter()
                variants[name]()
                if sync:
                    sync()
                times[name].append(time.perf_counter() - t0)
    return times


def speedup_summary(times: dict[str, list[float]], baseline: str, candidate: str) -> dict:
    """Median seconds of each variant, every timing, and baseline median / candidate median."""
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "median_seconds": medians,
        "all_seconds": times,
        "speedup": medians[baseline] / medians[candidate],
    }
