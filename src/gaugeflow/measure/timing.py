"""Kind ``timing`` (Tables 1, 2): wall time of training steps, split into their phases.

``steps`` steps of the training step itself (``TrainStep.run``, see :mod:`.setup`) after
``warmup`` untimed ones. ``step_seconds`` is the median step (the whole ``run`` call);
``loss_seconds`` and ``backward_seconds`` are the medians of one loss call (sampling +
estimator) and of one backward: ``run``'s phases "loss" and "backward", once per part, timed
by the :class:`PhaseTimer` given to it; ``other_seconds`` is the rest of a step (zero_grad,
finiteness checks, the update, the step's metrics). ``stats`` gives median,
quartiles, min, max of each; ``total_seconds`` is the wall time of all timed steps.
CPU: ``time.perf_counter`` (CPU work is synchronous); CUDA: CUDA events, synchronised once per
step, and ``torch.cuda.synchronize`` around the total.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .setup import MeasureSetup, gradient_step

__all__ = ["Clock", "PhaseTimer", "measure_timing", "summarize_timing"]


class Clock:
    """perf_counter on CPU, CUDA events on CUDA (read after a synchronisation)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


class PhaseTimer:
    """``timer(name)`` is a context manager marking the start and end of one phase.

    Marks are read by :meth:`seconds` after the clock is synchronised (CUDA events).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.marks: list[tuple[str, Any, Any]] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self.clock.mark()
        yield
        self.marks.append((name, start, self.clock.mark()))

    def seconds(self, name: str) -> list[float]:
        return [self.clock.seconds(a, b) for n, a, b in self.marks if n == name]

    def total(self) -> float:
        return sum(self.clock.seconds(a, b) for _, a, b in self.marks)


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    arr = np.asarray(values, dtype=float)
    q25, q50, q75 = np.percentile(arr, [25, 50, 75])
    return {
        "median": float(q50),
        "q25": float(q25),
        "q75": float(q75),
        "iqr": float(q75 - q25),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
        "n": int(arr.size),
    }


def measure_timing(setup: MeasureSetup, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Time `steps` gradient steps after `warmup` untimed ones (see the module docstring)."""
    if steps < 1:
        raise UserError(f"steps must be a positive integer; got {steps}")
    for _ in range(warmup):
        gradient_step(setup)
    clock = Clock(setup.device)
    step_s: list[float] = []
    loss_s: list[float] = []
    back_s: list[float] = []
    other_s: list[float] = []
    clock.sync()
    wall0 = time.perf_counter()
    for _ in range(steps):
        timer = PhaseTimer(clock)
        t0 = clock.mark()
        gradient_step(setup, phase_timer=timer)
        t1 = clock.mark()
        clock.sync()
        step = clock.seconds(t0, t1)
        loss_s += timer.seconds("loss")
        back_s += timer.seconds("backward")
        parts = sum(timer.seconds("loss")) + sum(timer.seconds("backward"))
        step_s.append(step)
        other_s.append(step - parts)
    clock.sync()
    total = time.perf_counter() - wall0
    stats = {
        "step_seconds": _stats(step_s),
        "loss_seconds": _stats(loss_s),
        "backward_seconds": _stats(back_s),
        "other_seconds": _stats(other_s),
    }
    return {
        **{key: value["median"] for key, value in stats.items()},
        "steps": steps,
        "warmup": warmup,
        "parts_per_step": setup.config["n_batches"],
        "total_seconds": total,
        "clock": "cuda_events" if clock.cuda else "perf_counter",
        "stats": stats,
        "samples": {"step_seconds": step_s, "loss_seconds": loss_s, "backward_seconds": back_s},
    }


def summarize_timing(results: dict[str, Any]) -> str:
    return (
        f"step {results['step_seconds']:.4g} s (loss {results['loss_seconds']:.4g} s, "
        f"backward {results['backward_seconds']:.4g} s), median of {results['steps']} steps"
    )
