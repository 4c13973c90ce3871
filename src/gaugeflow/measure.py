"""Measurements behind the paper's Tables 1-5: step timing, autograd-graph size, backward time
per node type, and memory of one loss call.

Unit of work. A *part* (one loss call) is what a training step does for one of its
``n_batches`` parts: draw z from the prior, call the estimator (under autocast when amp is on),
divide the loss by ``n_batches`` and call ``.backward()`` on it. A *gradient step* is
``zero_grad``, ``n_batches`` parts and the optimizer step (Adam, as in training). Flow, prior
and action are built from a training config by :func:`gaugeflow.training.build_components`, so a
measurement runs exactly the model a training run with the same keys would.

Kinds (each returns a dict; :func:`run_measurement` adds the inputs and handles OOM):

- ``timing`` (Tables 1, 2): ``steps`` gradient steps after ``warmup`` untimed ones.
  ``step_seconds`` is the median step; ``loss_seconds`` and ``backward_seconds`` are the
  medians of one loss call (sampling + estimator) and of one ``.backward()``; ``stats`` gives
  median, quartiles, min, max of each. ``total_seconds`` is the wall time of all timed steps.
  CPU: ``time.perf_counter`` (CPU work is synchronous); CUDA: CUDA events, synchronised once
  per step, and ``torch.cuda.synchronize`` around the total.
- ``dag`` (Table 3): ``nodes`` = unique autograd nodes (``grad_fn`` objects, including the
  ``AccumulateGrad`` leaves of the parameters) reachable from the estimator's loss, found by an
  iterative walk over ``next_functions``. :func:`fit_quadratic` / :func:`fit_dag_results` fit
  nodes = a L^2 + b over several L (CLI: ``gaugeflow measure dagfit``).
- ``ops`` (Table 4): a pre-hook and a hook on every node of the graph time-stamp its start and
  end; the time in between is attributed to the node's ``name()`` (``torch::autograd::``
  prefix dropped). ``top`` lists the ten node types with most time per backward (median over
  ``repeats`` backward passes), with their counts. On CUDA the hooks synchronise the device,
  which serialises the backward pass (needed to attribute kernel time).
- ``memory`` (Table 5): tensors saved for backward during one loss call, seen through
  ``torch.autograd.graph.saved_tensors_hooks``; only those still held by the graph when the
  forward pass ends are counted (temporaries of discarded graphs are not). Deduplication
  rule: ``saved_bytes`` (M1) sums ``nbytes`` of each distinct *storage* (keyed by the
  storage's device and data pointer), so views of one buffer count once, at the size of the
  whole buffer they keep alive; ``saved_tensors`` (n.t.) counts distinct tensors, keyed by
  (storage, storage offset, shape, strides, dtype). ``peak_bytes`` (M2) is
  ``torch.cuda.max_memory_allocated`` over the part on CUDA (``peak_kind``
  "cuda_max_memory_allocated", absolute, as in the paper) and on CPU the growth of the
  resident set over the part, sampled every millisecond from /proc/self/statm after returning
  freed heap memory to the OS (``peak_kind`` "cpu_rss_growth").

For the benchmark's efficiency figure, :class:`FloorReplay` / :func:`measure_floor` time the
conditioner nets and the action alone on the inputs one loss call gave them.

Out of memory (``torch.cuda.OutOfMemoryError``, a RuntimeError saying "out of memory" or
"can't allocate memory", or MemoryError) ends the measurement with ``status`` "oom" and the
kind's keys set to None, so a table can show the entry as missing.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .errors import UserError
from .estimators import EstimatorOutput, get_estimator
from .runtime import resolve_device, resolve_dtype
from .training import amp_settings, build_components, make_config

__all__ = [
    "KINDS",
    "RESULT_KEYS",
    "MeasureSetup",
    "build_setup",
    "loss_call",
    "backward",
    "gradient_step",
    "graph_nodes",
    "count_graph_nodes",
    "node_type_counts",
    "node_name",
    "BackwardOpTimer",
    "SavedTensorRecorder",
    "measure_timing",
    "measure_dag",
    "measure_ops",
    "measure_memory",
    "FloorReplay",
    "floor_action",
    "measure_floor",
    "fit_quadratic",
    "fit_dag_results",
    "is_oom_error",
    "run_measurement",
    "summary_line",
]

KINDS: tuple[str, ...] = ("timing", "dag", "ops", "memory")

#: the keys each kind promises (None when the configuration ran out of memory)
RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "timing": ("step_seconds", "loss_seconds", "backward_seconds", "steps"),
    "dag": ("nodes",),
    "ops": ("top",),
    "memory": ("saved_bytes", "saved_tensors", "peak_bytes", "peak_kind"),
}


# --------------------------------------------------------------------------------------------
# setup and the unit of work


@dataclass
class MeasureSetup:
    """Everything one training step needs, built from a training config."""

    config: dict[str, Any]
    device: torch.device
    flow: nn.Module
    prior: Any
    action: Any
    estimator: Callable[..., EstimatorOutput]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    log_prob: Callable[[torch.Tensor], torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        dtype = resolve_dtype(self.config["dtype"])
        device_type = self.device.type
        action = self.action

        def log_prob(phi: torch.Tensor) -> torch.Tensor:
            # as in training: the action runs in full precision even under autocast
            with torch.autocast(device_type, enabled=False):
                return action.log_prob(phi.to(dtype))

        self.log_prob = log_prob

    def autocast(self) -> AbstractContextManager:
        """The training step's autocast context (a no-op without amp)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def build_setup(overrides: dict[str, Any]) -> MeasureSetup:
    """Flow, prior, action, estimator and Adam from training-config `overrides` (validated)."""
    config = make_config(overrides)
    device = resolve_device(config["device"])
    torch.manual_seed(config["seed"])
    generator = torch.Generator(device="cpu").manual_seed(config["seed"])
    flow, prior, action = build_components(config, device)
    amp_dtype, use_scaler = amp_settings(config, device)
    return MeasureSetup(
        config=config,
        device=device,
        flow=flow,
        prior=prior,
        action=action,
        estimator=get_estimator(config["estimator"]),
        optimizer=torch.optim.Adam(flow.parameters(), lr=config["lr"]),
        generator=generator,
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
    )


def loss_call(setup: MeasureSetup) -> tuple[torch.Tensor, EstimatorOutput]:
    """One loss call: sample z, run the estimator; returns (loss / n_batches, estimator output)."""
    z = setup.prior.sample(setup.config["batch_size"], generator=setup.generator)
    with setup.autocast():
        out = setup.estimator(setup.flow, setup.prior, setup.log_prob, z.to(setup.device))
    return out.loss / setup.config["n_batches"], out


def backward(setup: MeasureSetup, loss: torch.Tensor) -> None:
    """`.backward()` as training calls it (through the grad scaler when there is one)."""
    (setup.scaler.scale(loss) if setup.scaler is not None else loss).backward()


def _optimizer_step(setup: MeasureSetup) -> None:
    if setup.scaler is not None:
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        setup.optimizer.step()


def gradient_step(setup: MeasureSetup) -> None:
    """One untimed gradient step: zero_grad, n_batches parts, optimizer step."""
    setup.optimizer.zero_grad(set_to_none=True)
    for _ in range(setup.config["n_batches"]):
        loss, _ = loss_call(setup)
        backward(setup, loss)
    _optimizer_step(setup)


# --------------------------------------------------------------------------------------------
# timing


class _Clock:
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
    clock = _Clock(setup.device)
    n_parts = setup.config["n_batches"]
    step_s: list[float] = []
    loss_s: list[float] = []
    back_s: list[float] = []
    other_s: list[float] = []
    clock.sync()
    wall0 = time.perf_counter()
    for _ in range(steps):
        t0 = clock.mark()
        setup.optimizer.zero_grad(set_to_none=True)
        marks = []
        for _ in range(n_parts):
            a = clock.mark()
            loss, _ = loss_call(setup)
            b = clock.mark()
            backward(setup, loss)
            c = clock.mark()
            marks.append((a, b, c))
        _optimizer_step(setup)
        t1 = clock.mark()
        clock.sync()
        step = clock.seconds(t0, t1)
        parts = 0.0
        for a, b, c in marks:
            loss_s.append(clock.seconds(a, b))
            back_s.append(clock.seconds(b, c))
            parts += clock.seconds(a, c)
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
        "step_seconds": stats["step_seconds"]["median"],
        "loss_seconds": stats["loss_seconds"]["median"],
        "backward_seconds": stats["backward_seconds"]["median"],
        "other_seconds": stats["other_seconds"]["median"],
        "steps": steps,
        "warmup": warmup,
        "parts_per_step": n_parts,
        "total_seconds": total,
        "clock": "cuda_events" if clock.cuda else "perf_counter",
        "stats": stats,
        "samples": {"step_seconds": step_s, "loss_seconds": loss_s, "backward_seconds": back_s},
    }


# --------------------------------------------------------------------------------------------
# the autograd graph


def _root_node(root: torch.Tensor | Any) -> Any:
    if isinstance(root, torch.Tensor):
        if root.grad_fn is None:
            raise ValueError("the tensor has no grad_fn: it is not part of an autograd graph")
        return root.grad_fn
    return root


def graph_nodes(root: torch.Tensor | Any) -> list[Any]:
    """Unique autograd nodes reachable from `root` (a tensor or a node), walked iteratively.

    Node objects are kept alive in the result, so their identity is a valid key.
    """
    start = _root_node(root)
    seen: set[Any] = {start}
    order = [start]
    stack = [start]
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                order.append(child)
                stack.append(child)
    return order


def count_graph_nodes(root: torch.Tensor | Any) -> int:
    """Number of unique autograd nodes reachable from `root`."""
    return len(graph_nodes(root))


def node_name(node: Any) -> str:
    """A node's type name without the ``torch::autograd::`` prefix (CopySlices, ...)."""
    return node.name().removeprefix("torch::autograd::")


def node_type_counts(root: torch.Tensor | Any) -> dict[str, int]:
    """Count of reachable nodes per type name, most frequent first."""
    counts = Counter(node_name(n) for n in graph_nodes(root))
    return dict(counts.most_common())


def measure_dag(setup: MeasureSetup, warmup: int = 0) -> dict[str, Any]:
    """Size of the autograd graph of one loss call (the estimator's loss)."""
    for _ in range(warmup):
        gradient_step(setup)
    setup.optimizer.zero_grad(set_to_none=True)
    _, out = loss_call(setup)
    types = node_type_counts(out.loss)
    nodes = sum(types.values())
    del out
    return {
        "nodes": nodes,
        "accumulate_grad_nodes": types.get("AccumulateGrad", 0),
        "node_types": types,
    }


# --------------------------------------------------------------------------------------------
# backward time per node type


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
        setup.optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_call(setup)
        timer = BackwardOpTimer(loss, sync=sync)
        with timer:
            setup.synchronize()
            t0 = time.perf_counter()
            backward(setup, loss)
            setup.synchronize()
            backward_s.append(time.perf_counter() - t0)
        del loss
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


# --------------------------------------------------------------------------------------------
# memory


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
        info["peak_kind"] = "cuda_max_memory_allocated"
    else:
        _release_heap()
        with _RssPeak() as sampler:
            yield info
        info["baseline_bytes"] = sampler.start
        info["peak_bytes"] = sampler.peak - sampler.start
        info["peak_kind"] = "cpu_rss_growth"


def measure_memory(setup: MeasureSetup, warmup: int = 1) -> dict[str, Any]:
    """Saved-tensor memory (M1, n.t.) and peak memory (M2) of one loss call and its backward."""
    for _ in range(warmup):
        gradient_step(setup)
    setup.optimizer.zero_grad(set_to_none=True)  # as training does: .grad is allocated in backward
    with _peak_memory(setup.device) as info:
        recorder = SavedTensorRecorder()
        with recorder:
            loss, _ = loss_call(setup)
        saved = recorder.summary(parameters=setup.flow.parameters())
        backward(setup, loss)
        del loss, recorder
    return {**saved, **info}


# --------------------------------------------------------------------------------------------
# the floor: conditioner nets and determinant alone (benchmark efficiency figure)


def _conditioner_modules(flow: nn.Module) -> list[nn.Module]:
    from .flows.nets import ConditionerCNN

    return [m for m in flow.modules() if isinstance(m, ConditionerCNN)]


class FloorReplay:
    """The inputs one loss call gives the conditioner nets and the action, replayable alone.

    ``FloorReplay(setup)`` runs one loss call with hooks that record each conditioner call's
    input and each action call's configuration, with whether the call was differentiated
    (grad enabled and an input or a weight requiring grad). :meth:`conditioners` and
    :meth:`action` replay them (forward, and backward with a gradient of ones where the
    original was differentiated) and return the seconds taken.
    """

    def __init__(self, setup: MeasureSetup) -> None:
        self.setup = setup
        self.net_calls: list[tuple[nn.Module, torch.Tensor, bool, bool]] = []
        self.action_calls: list[tuple[torch.Tensor, bool]] = []

        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            params_grad = any(p.requires_grad for p in module.parameters())
            grad = torch.is_grad_enabled() and (x.requires_grad or params_grad)
            self.net_calls.append(
                (module, x.detach().clone(), grad and x.requires_grad, grad and params_grad)
            )

        log_prob = setup.log_prob

        def recording_log_prob(phi: torch.Tensor) -> torch.Tensor:
            grad = torch.is_grad_enabled() and phi.requires_grad
            self.action_calls.append((phi.detach().clone(), grad))
            return log_prob(phi)

        handles = [m.register_forward_pre_hook(pre_hook) for m in _conditioner_modules(setup.flow)]
        try:
            setup.log_prob = recording_log_prob
            setup.optimizer.zero_grad(set_to_none=True)
            loss, _ = loss_call(setup)
            del loss
        finally:
            setup.log_prob = log_prob
            for h in handles:
                h.remove()

    @property
    def action_differentiated(self) -> bool:
        return any(grad for _, grad in self.action_calls)

    def _timed(self, fn: Callable[[], None]) -> float:
        self.setup.synchronize()
        t0 = time.perf_counter()
        fn()
        self.setup.synchronize()
        seconds = time.perf_counter() - t0
        self.setup.optimizer.zero_grad(set_to_none=True)  # the replays' gradients are junk
        return seconds

    def conditioners(self) -> float:
        """Seconds to run every recorded conditioner call alone (forward [+ backward])."""
        from torch.func import functional_call

        def run() -> None:
            for module, x, input_grad, params_grad in self.net_calls:
                xin = x.detach().requires_grad_(input_grad)
                with self.setup.autocast():
                    if params_grad or not input_grad:
                        with torch.set_grad_enabled(input_grad or params_grad):
                            y = module(xin)
                    else:  # frozen weights (the path gradient's reverse pass)
                        frozen = {k: v.detach() for k, v in module.named_parameters()}
                        y = functional_call(module, frozen, (xin,))
                if y.requires_grad:
                    y.backward(torch.ones_like(y))

        return self._timed(run)

    def action(self, action: Any = None) -> float:
        """Seconds to run the action (default: the setup's) on every recorded configuration."""
        action = self.setup.action if action is None else action
        dtype = resolve_dtype(self.setup.config["dtype"])

        def run() -> None:
            for phi, grad in self.action_calls:
                x = phi.detach().to(dtype).requires_grad_(grad)
                with torch.set_grad_enabled(grad):
                    s = action(x)
                if grad:
                    s.sum().backward()

        return self._timed(run)


def floor_action(setup: MeasureSetup, assembly: str = "scatter") -> Any:
    """The setup's action with another Dirac assembly (the cheapest way to the determinant)."""
    if assembly == setup.config["assembly"]:
        return setup.action
    from .physics.action import SchwingerAction

    return SchwingerAction(
        beta=setup.config["beta"],
        kappa=setup.config["kappa"],
        method=setup.config["action_method"],
        assembly=assembly,
    )


def measure_floor(
    setup: MeasureSetup,
    repeats: int = 3,
    floor_assembly: str | None = "scatter",
    warmup: int = 1,
) -> dict[str, Any]:
    """Time the conditioner nets and the action alone on one loss call's inputs (FloorReplay).

    Medians over `repeats` timed replays after `warmup` untimed ones. ``action_seconds`` uses
    the setup's assembly; ``determinant_seconds`` uses `floor_assembly` (default scatter).
    """
    replay = FloorReplay(setup)
    cheap = floor_action(setup, floor_assembly) if floor_assembly is not None else None

    def median_of(fn: Callable[[], float]) -> float:
        for _ in range(warmup):
            fn()
        return statistics.median(fn() for _ in range(repeats))

    out: dict[str, Any] = {
        "conditioner_calls": len(replay.net_calls),
        "conditioner_seconds": median_of(replay.conditioners),
        "action_calls": len(replay.action_calls),
        "action_differentiated": replay.action_differentiated,
        "action_seconds": median_of(replay.action),
    }
    if cheap is not None:
        if cheap is setup.action:
            out["determinant_seconds"] = out["action_seconds"]
        else:
            out["determinant_seconds"] = median_of(lambda: replay.action(cheap))
        out["determinant_assembly"] = floor_assembly
    return out


# --------------------------------------------------------------------------------------------
# fits


def fit_quadratic(sizes: Sequence[int], counts: Sequence[float]) -> dict[str, Any]:
    """Least-squares fit counts = a L^2 + b; `exact` when every point lies on it (to 1e-6)."""
    if len(sizes) != len(counts):
        raise ValueError("sizes and counts differ in length")
    if len(set(sizes)) < 2:
        raise UserError("a fit of a L^2 + b needs results at two or more different L")
    L = np.asarray(sizes, dtype=float)
    y = np.asarray(counts, dtype=float)
    design = np.stack([L**2, np.ones_like(L)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ np.array([a, b])
    max_res = float(np.abs(residuals).max())
    integer = bool(abs(a - round(a)) < 1e-6 and abs(b - round(b)) < 1e-6)
    if integer:  # report 20, not 19.999999999998 or 1e-14
        a, b = round(a), round(b)
    return {
        "a": a if integer else float(a),
        "b": b if integer else float(b),
        "L": [int(v) for v in sizes],
        "nodes": [int(v) if float(v).is_integer() else float(v) for v in counts],
        "max_residual": max_res,
        "exact": bool(max_res < 1e-6),
        "integer_coefficients": integer,
        "formula": f"{a:.6g} L^2 + {b:.6g}",
    }


_FIT_GROUP_KEYS = ("estimator", "assembly", "action_method", "amp", "dtype")


def fit_dag_results(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group dag results (as written by run_measurement) by estimator, assembly, method, amp,
    dtype and architecture, and fit nodes = a L^2 + b in each group with two or more L."""
    groups: dict[tuple[Any, ...], dict[int, int]] = defaultdict(dict)
    meta: dict[tuple[Any, ...], dict[str, Any]] = {}
    for res in results:
        if res.get("kind") != "dag":
            raise UserError(f"not a dag result (kind {res.get('kind')!r})")
        if res.get("status") != "ok":
            continue
        inputs = res["inputs"]
        arch = {k: v for k, v in res.get("flow_config", {}).items() if k not in ("L", "device")}
        key = tuple(inputs.get(k) for k in _FIT_GROUP_KEYS) + (repr(sorted(arch.items())),)
        groups[key][int(inputs["L"])] = int(res["nodes"])
        meta[key] = {**{k: inputs.get(k) for k in _FIT_GROUP_KEYS}, "architecture": arch}
    fits = []
    for key, by_L in groups.items():
        sizes = sorted(by_L)
        entry: dict[str, Any] = {**meta[key], "L": sizes, "nodes": [by_L[s] for s in sizes]}
        if len(sizes) >= 2:
            entry["fit"] = fit_quadratic(sizes, entry["nodes"])
        fits.append(entry)
    return fits


# --------------------------------------------------------------------------------------------
# running one measurement with its record


def is_oom_error(exc: BaseException) -> bool:
    """Out of memory on CUDA or CPU (the errors torch and Python raise for it)."""
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg
    return False


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_measurement(
    kind: str,
    overrides: dict[str, Any],
    *,
    steps: int = 100,
    warmup: int | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Build the setup from training-config `overrides`, measure `kind`, return the record.

    The record holds ``kind``, ``status`` ("ok" or "oom"), ``inputs`` (the measurement's
    settings), ``config`` (the full training config), ``flow_config``, device, torch version
    and threads, and the kind's keys (None after an out-of-memory error).
    """
    if kind not in KINDS:
        raise UserError(f"unknown measurement {kind!r}; valid kinds are {', '.join(KINDS)}")
    config = make_config(overrides)
    device = resolve_device(config["device"])
    if warmup is None:
        warmup = {"timing": 2, "dag": 0, "ops": 1, "memory": 1}[kind]
    if warmup < 0 or repeats < 1 or steps < 1:
        raise UserError("warmup must be >= 0, repeats and steps >= 1")
    inputs = {
        "kind": kind,
        "L": config["L"],
        "batch_size": config["batch_size"],
        "n_batches": config["n_batches"],
        "estimator": config["estimator"],
        "assembly": config["assembly"],
        "action_method": config["action_method"],
        "amp": config["amp"],
        "dtype": config["dtype"],
        "beta": config["beta"],
        "kappa": config["kappa"],
        "seed": config["seed"],
        "device": config["device"],
        "n_layers": config["flow"].get("n_layers"),
        "hidden": config["flow"].get("hidden_channels"),
        "steps": steps if kind == "timing" else None,
        "warmup": warmup,
        "repeats": repeats if kind == "ops" else None,
    }
    record: dict[str, Any] = {
        "kind": kind,
        "status": "ok",
        "inputs": inputs,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "gaugeflow_version": __version__,
        "threads": torch.get_num_threads(),
        "config": config,
    }
    error: str | None = None
    try:
        setup = build_setup(config)
        record["flow_config"] = dict(getattr(setup.flow, "config", {}))
        record["inputs"]["n_layers"] = record["flow_config"].get("n_layers")
        record["inputs"]["hidden"] = record["flow_config"].get("hidden_channels")
        record["n_parameters"] = sum(p.numel() for p in setup.flow.parameters())
        if kind == "timing":
            result = measure_timing(setup, steps=steps, warmup=warmup)
        elif kind == "dag":
            result = measure_dag(setup, warmup=warmup)
        elif kind == "ops":
            result = measure_ops(setup, repeats=repeats, warmup=warmup)
        else:
            result = measure_memory(setup, warmup=warmup)
        del setup
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        error = f"{type(exc).__name__}: {first_line}"
    if error is not None:
        _free_memory()  # outside the except block: its traceback no longer holds the tensors
        record["status"] = "oom"
        record["error"] = error
        result = {key: None for key in RESULT_KEYS[kind]}
        if kind == "timing":
            result["steps"] = steps
        if kind == "memory":
            result["peak_kind"] = (
                "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_rss_growth"
            )
    record.update(result)
    return record


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} GiB"  # pragma: no cover


def summary_line(record: dict[str, Any]) -> str:
    """One line for people: what was measured, on what, and the headline numbers."""
    inp = record["inputs"]
    what = (
        f"{inp['estimator']} {inp['assembly']} L={inp['L']} bs={inp['batch_size']}"
        f" nb={inp['n_batches']}{' amp' if inp['amp'] else ''}"
    )
    where = f"{record['device']}, {record['threads']} threads"
    kind = record["kind"]
    if record["status"] != "ok":
        return f"measure {kind}: {what}: {record['status'].upper()} ({record.get('error', '')}) [{where}]"
    if kind == "timing":
        body = (
            f"step {record['step_seconds']:.4g} s (loss {record['loss_seconds']:.4g} s, "
            f"backward {record['backward_seconds']:.4g} s), median of {record['steps']} steps"
        )
    elif kind == "dag":
        body = f"{record['nodes']} graph nodes"
    elif kind == "ops":
        head = ", ".join(
            f"{r['name']} {r['seconds'] * 1e3:.3g} ms ({r['count']})" for r in record["top"][:3]
        )
        body = f"backward {record['backward_seconds']:.4g} s; top: {head}"
    else:
        body = (
            f"M1 {_fmt_bytes(record['saved_bytes'])} in {record['saved_tensors']} saved tensors, "
            f"M2 {_fmt_bytes(record['peak_bytes'])} ({record['peak_kind']})"
        )
    return f"measure {kind}: {what}: {body} [{where}]"
