"""gaugeflow.allocator: freed tensor memory stays mapped between steps (glibc), opt-out works."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# a "step" that allocates and frees tensors of 8-64 MiB (activation sizes at
# the paper scale), five times after a first one; count the minor page faults of the repeats
_CHILD = """
import resource
import torch
from gaugeflow.allocator import tune_allocator
tuned = tune_allocator()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    xs = [torch.ones(n * 2**18) for n in (40, 8, 64, 24, 48)]
    del xs
step()
start = faults()
for _ in range(5):
    step()
print(int(tuned), faults() - start)
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt tuning is for glibc on Linux",
)


def _run(tuning: str) -> tuple[int, int]:
    env = {**os.environ, "GAUGEFLOW_MALLOC_TUNING": tuning, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    tuned, faults = out.stdout.split()
    return int(tuned), int(faults)


def test_tuned_allocator_reuses_freed_tensor_memory():
    tuned, faults_tuned = _run("1")
    off, faults_off = _run("0")
    assert (tuned, off) == (1, 0)
    # untuned: the blocks above glibc's (adaptive) mmap threshold are mapped and faulted in
    # afresh on every repeat (184 MiB a step: 5 x 47104 pages of 4 KiB at most)
    pages = 5 * 184 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert faults_off > pages / 2
    # tuned: most of the freed memory is reused while still resident (measured: 57k vs 215k;
    # what remains is torch's aligned allocations not fitting the holes of the previous step)
    assert faults_tuned < faults_off / 2
