"""Kind ``ops`` (Table 4): backward time per autograd node type.

A pre-hook and a hook on every node of the graph time-stamp its start and end; the time in
between is attributed to the node's ``name()`` (``torch::autograd::`` prefix dropped). ``top``
lists the ten node types with most time per backward (median over ``repeats`` backward
passes), with their counts. On CUDA the hooks synchronise the device, which serialises the
backward pass (needed to attribute kernel time).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from ..errors import UserError
from .graph import graph_nodes, node_name
from .setup import MeasureSetup, backward, gradient_step, loss_call

__all__ = ["BackwardOpTimer", "measure_ops", "summarize_ops"]


class BackwardOpTimer:
    """Hooks on every node of a graph; time between a node's pre-hook and hook, by type.

    Use as ``with BackwardOpTimer(loss, sync=...) as t: loss.backward()``; then ``t.seconds``
    and ``t.counts`` map node type names to time and executions in that backward pass.
    """

    def __init__(self, root: torch.Tensor | Any, sync: Callable[[], None] | None = None) -> None:
        self.nodes = graph_nodes(root)
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._handles: list[Any] = []
        self._started: dict[int, float] = {}

    def _pre(self, key: int) -> Callable[..., None]:
        def hook(grad_outputs: Any) -> None:
            if self.sync is not None:
                self.sync()
            self._started[key] = time.perf_counter()

        return hook

    def _post(self, key: int, name: str) -> Callable[..., None]:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            if self.sync is not None:
                self.sync()
            end = time.perf_counter()
            start = self._started.pop(key, None)
            if start is not None:
                self.seconds[name] += end - start
                self.counts[name] += 1

        return hook

    def __enter__(self) -> BackwardOpTimer:
        for key, node in enumerate(self.nodes):
            name = node_name(node)
            self._handles.append(node.register_prehook(self._pre(key)))
            self._handles.append(node.register_hook(self._post(key, name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.nodes = []


def _hooked_backward(setup: MeasureSetup, sync: Callable[[], None] | None) -> tuple:
    """One loss call and its backward under a BackwardOpTimer: (timer, backward seconds)."""
    setup.zero_grad()
    loss, _ = loss_call(setup)
    timer = BackwardOpTimer(loss, sync=sync)
    with timer:
        setup.synchronize()
        t0 = time.perf_counter()
        backward(setup, loss)
        setup.synchronize()
        seconds = time.perf_counter() - t0
    return timer, seconds


def measure_ops(
    setup: MeasureSetup, repeats: int = 3, warmup: int = 1, top: int = 10
) -> dict[str, Any]:
    """Backward time per node type over `repeats` loss calls; the `top` types by median time."""
    if repeats < 1:
        raise UserError(f"repeats must be a positive integer; got {repeats}")
    for _ in range(warmup):
        gradient_step(setup)
    sync = setup.synchronize if setup.device.type == "cuda" else None
    per_type: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = {}
    backward_s: list[float] = []
    hooked_s: list[float] = []
    for r in range(repeats):
        timer, seconds = _hooked_backward(setup, sync)
        backward_s.append(seconds)
        for name in set(per_type) | set(timer.seconds):
            # a type missing in one pass contributes zero there
            per_type[name].extend([0.0] * (r - len(per_type[name])))
            per_type[name].append(timer.seconds.get(name, 0.0))
        for name, n in timer.counts.items():
            counts[name] = max(counts.get(name, 0), n)
        hooked_s.append(sum(timer.seconds.values()))
    medians = {name: statistics.median(v) for name, v in per_type.items()}
    ranked = sorted(medians, key=lambda n: medians[n], reverse=True)
    rows = [{"name": n, "count": counts.get(n, 0), "seconds": medians[n]} for n in ranked]
    return {
        "top": rows[:top],
        "all": rows,
        "repeats": repeats,
        "backward_seconds": statistics.median(backward_s),
        "hooked_seconds": statistics.median(hooked_s),
        "synchronised_hooks": sync is not None,
    }


def summarize_ops(results: dict[str, Any]) -> str:
    head = ", ".join(
        f"{r['name']} {r['seconds'] * 1e3:.3g} ms ({r['count']})" for r in results["top"][:3]
    )
    return f"backward {results['backward_seconds']:.4g} s; top: {head}"
