"""Kind ``memory`` (Table 5): saved-tensor memory (M1, n.t.) and peak memory (M2) of one part.

Tensors saved for backward during one loss call are seen through
``torch.autograd.graph.saved_tensors_hooks``; only those still held by the graph when the
forward pass ends are counted (temporaries of discarded graphs are not). Deduplication rule:
``saved_bytes`` (M1) sums ``nbytes`` of each distinct *storage* (keyed by the storage's device
and data pointer), so views of one buffer count once, at the size of the whole buffer they
keep alive; ``saved_tensors`` (n.t.) counts distinct tensors, keyed by (storage, storage
offset, shape, strides, dtype). ``peak_bytes`` (M2) is ``torch.cuda.max_memory_allocated``
over the part on CUDA (``peak_kind`` "cuda_max_memory_allocated", absolute, as in the paper)
and on CPU the growth of the resident set over the part, sampled every millisecond from
/proc/self/statm after returning freed heap memory to the OS (``peak_kind``
"cpu_rss_growth").
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .setup import MeasureSetup, backward, gradient_step, loss_call

__all__ = ["SavedTensorRecorder", "peak_kind", "measure_memory", "summarize_memory"]


class SavedTensorRecorder:
    """Saved-tensor hooks that remember what autograd saves (see the module docstring's rule).

    ``with rec: ...forward...`` then ``rec.summary(exclude=params)`` while the graph is alive.
    """

    def __init__(self) -> None:
        self._seen: list[Any] = []
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        # A detached alias (same storage, no grad_fn): returning the tensor itself would make
        # a saved output and its own node hold each other, a cycle that outlives the graph.
        packed = tensor.detach()
        self._seen.append(weakref.ref(packed))
        return packed

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> SavedTensorRecorder:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)

    @staticmethod
    def storage_key(t: torch.Tensor) -> tuple[str, int]:
        return (str(t.device), t.untyped_storage().data_ptr())

    @staticmethod
    def tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
        return (
            *SavedTensorRecorder.storage_key(t),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )

    def alive(self) -> list[torch.Tensor]:
        """Saved tensors still referenced (by the graph or by anyone else)."""
        return [t for t in (ref() for ref in self._seen) if t is not None]

    def summary(self, parameters: Iterable[torch.Tensor] = ()) -> dict[str, int]:
        """Distinct saved tensors and storages, their bytes, and how much of it is parameters."""
        param_storages = {self.storage_key(p) for p in parameters}
        storages: dict[tuple[str, int], int] = {}
        tensors: set[tuple[Any, ...]] = set()
        view_bytes = 0
        for t in self.alive():
            if t.untyped_storage().nbytes() == 0:
                continue
            skey = self.storage_key(t)
            storages[skey] = t.untyped_storage().nbytes()
            tkey = self.tensor_key(t)
            if tkey not in tensors:
                tensors.add(tkey)
                view_bytes += t.numel() * t.element_size()
        param_bytes = sum(n for k, n in storages.items() if k in param_storages)
        return {
            "saved_bytes": sum(storages.values()),
            "saved_tensors": len(tensors),
            "saved_storages": len(storages),
            "saved_view_bytes": view_bytes,
            "saved_parameter_bytes": param_bytes,
            "saved_calls": len(self._seen),
        }


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_heap() -> None:
    """Return freed heap memory to the OS (glibc malloc_trim), so RSS growth means new memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssPeak:
    """Samples the resident set size in a thread; `peak` is the largest value seen."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.start = _rss_bytes() or 0
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = _rss_bytes()
        if rss is not None and rss > self.peak:
            self.peak = rss

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()


def peak_kind(device: torch.device) -> str:
    """What ``peak_bytes`` means on `device`."""
    return "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_rss_growth"


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    info: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        info["baseline_bytes"] = torch.cuda.memory_allocated(device)
        yield info
        torch.cuda.synchronize(device)
        info["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        _release_heap()
        with _RssPeak() as sampler:
            yield info
        info["baseline_bytes"] = sampler.start
        info["peak_bytes"] = sampler.peak - sampler.start
    info["peak_kind"] = peak_kind(device)


def measure_memory(setup: MeasureSetup, warmup: int = 1) -> dict[str, Any]:
    """Saved-tensor memory (M1, n.t.) and peak memory (M2) of one loss call and its backward."""
    for _ in range(warmup):
        gradient_step(setup)
    setup.zero_grad()  # as training does: .grad is allocated in backward
    with _peak_memory(setup.device) as info:
        recorder = SavedTensorRecorder()
        with recorder:
            loss, _ = loss_call(setup)
        saved = recorder.summary(parameters=setup.flow.parameters())
        backward(setup, loss)
        del loss, recorder
    return {**saved, **info}


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} GiB"  # pragma: no cover


def summarize_memory(results: dict[str, Any]) -> str:
    return (
        f"M1 {_fmt_bytes(results['saved_bytes'])} in {results['saved_tensors']} saved tensors, "
        f"M2 {_fmt_bytes(results['peak_bytes'])} ({results['peak_kind']})"
    )
