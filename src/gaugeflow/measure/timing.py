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

:func:`measure_timing_interleaved` times the configurations of one table row together, one
step of each in turn (``gaugeflow measure timing-row``): their ratios, the speed-ups of
Table 1, then come from the same minutes of a machine whose speed drifts (a shared or
virtual one) instead of from separate jobs minutes apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .setup import MeasureSetup, gradient_step

__all__ = [
    "Clock",
    "PhaseTimer",
    "measure_timing",
    "measure_timing_interleaved",
    "rotation",
    "summarize_timing",
]


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


def _timed_step(setup: MeasureSetup, clock: Clock) -> tuple[float, list[float], list[float]]:
    """One timed gradient step: (step seconds, its loss-call seconds, its backward seconds)."""
    timer = PhaseTimer(clock)
    t0 = clock.mark()
    gradient_step(setup, phase_timer=timer)
    t1 = clock.mark()
    clock.sync()
    return clock.seconds(t0, t1), timer.seconds("loss"), timer.seconds("backward")


class _Samples:
    """The timed steps of one configuration, and the results dict made from them."""

    def __init__(self) -> None:
        self.step: list[float] = []
        self.loss: list[float] = []
        self.back: list[float] = []
        self.other: list[float] = []

    def add(self, step: float, loss: list[float], back: list[float]) -> None:
        self.step.append(step)
        self.loss += loss
        self.back += back
        self.other.append(step - sum(loss) - sum(back))

    def results(self, setup: MeasureSetup, warmup: int, total: float, clock: Clock) -> dict:
        stats = {
            "step_seconds": _stats(self.step),
            "loss_seconds": _stats(self.loss),
            "backward_seconds": _stats(self.back),
            "other_seconds": _stats(self.other),
        }
        return {
            **{key: value["median"] for key, value in stats.items()},
            "steps": len(self.step),
            "warmup": warmup,
            "parts_per_step": setup.config["n_batches"],
            "total_seconds": total,
            "clock": "cuda_events" if clock.cuda else "perf_counter",
            "stats": stats,
            "samples": {
                "step_seconds": self.step,
                "loss_seconds": self.loss,
                "backward_seconds": self.back,
            },
        }


def measure_timing(setup: MeasureSetup, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Time `steps` gradient steps after `warmup` untimed ones (see the module docstring)."""
    if steps < 1:
        raise UserError(f"steps must be a positive integer; got {steps}")
    for _ in range(warmup):
        gradient_step(setup)
    clock = Clock(setup.device)
    samples = _Samples()
    clock.sync()
    wall0 = time.perf_counter()
    for _ in range(steps):
        samples.add(*_timed_step(setup, clock))
    clock.sync()
    return samples.results(setup, warmup, time.perf_counter() - wall0, clock)


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``, as a failed measurement records its error."""
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}"


def rotation(labels: Sequence[str], round_index: int) -> list[str]:
    """The order of one interleaved round: `labels` rotated left by `round_index`, so that
    over ``len(labels)`` rounds every configuration runs once in every position."""
    shift = round_index % len(labels) if labels else 0
    return list(labels[shift:]) + list(labels[:shift])


def measure_timing_interleaved(
    setups: dict[str, MeasureSetup],
    steps: int,
    warmup: int = 2,
    is_failure: Callable[[BaseException], bool] = lambda exc: False,
) -> dict[str, dict[str, Any] | str]:
    """Time several configurations of one table row step by step in turn (one process).

    Round r (``warmup`` untimed rounds, then ``steps`` timed ones) runs one gradient step of
    each configuration, in the order :func:`rotation` gives, so all of them are timed in the
    same minutes of the machine's life and none always runs first (after a cache-clearing
    neighbour) or last. A configuration whose step raises an error that `is_failure` accepts
    (out of memory) leaves the rotation and `setups` (so that its memory can be freed): its
    value is the error, as "Type: first line", and the others go on; any other error is
    raised. Each result is :func:`measure_timing`'s dict, with
    ``total_seconds`` the sum of that configuration's timed steps, plus ``interleaved_with``
    (the other labels), ``round_order`` ("rotating") and ``row_seconds`` (the wall time of
    all timed rounds).
    """
    if steps < 1:
        raise UserError(f"steps must be a positive integer; got {steps}")
    labels = list(setups)
    live = dict(setups)
    failed: dict[str, str] = {}
    clocks = {label: Clock(setup.device) for label, setup in setups.items()}
    samples = {label: _Samples() for label in labels}

    def one(label: str, timed: bool) -> None:
        setup = live[label]
        try:
            if timed:
                samples[label].add(*_timed_step(setup, clocks[label]))
            else:
                gradient_step(setup)
        except Exception as exc:
            if not is_failure(exc):
                raise
            failed[label] = error_line(exc)
        if label in failed:  # outside the except block: its traceback holds the tensors
            del live[label]
            setups.pop(label, None)
            del setup

    for r in range(warmup):
        for label in rotation(labels, r):
            if label in live:
                one(label, timed=False)
    for clock in clocks.values():
        clock.sync()
    wall0 = time.perf_counter()
    for r in range(steps):
        for label in rotation(labels, warmup + r):
            if label in live:
                one(label, timed=True)
    row_seconds = time.perf_counter() - wall0
    out: dict[str, dict[str, Any] | str] = {}
    for label in labels:
        if label in failed:
            out[label] = failed[label]
            continue
        result = samples[label].results(
            setups[label], warmup, float(sum(samples[label].step)), clocks[label]
        )
        result["interleaved_with"] = [other for other in labels if other != label]
        result["round_order"] = "rotating"
        result["row_seconds"] = row_seconds
        out[label] = result
    return out


def summarize_timing(results: dict[str, Any]) -> str:
    return (
        f"step {results['step_seconds']:.4g} s (loss {results['loss_seconds']:.4g} s, "
        f"backward {results['backward_seconds']:.4g} s), median of {results['steps']} steps"
    )
