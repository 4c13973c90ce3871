"""Conditioner replay: REINFORCE's reverse pass reuses the sampling pass's conditioners.

REINFORCE (gaugeflow.estimators.reinforce) runs the flow twice per step: a no-grad forward
pass z -> phi that draws the samples, then the reverse pass phi -> z with grad, whose log q
it differentiates. In exact arithmetic the reverse pass visits the same configurations as the
forward pass (layer i's reverse reads x_i and writes x_{i-1}), and each coupling layer's
conditioner reads only links the layer does not change. So the conditioner of layer i gets
the same input in both passes, and its output, the spline parameters, is the same too.

A `ConditionerTape` uses that. While it records, each layer's forward call evaluates its
conditioner with grad enabled, on a detached copy of the features that requires grad, and
keeps that small graph (what the reverse pass would have built anyway). While it replays,
the layer's reverse call takes the recorded parameters instead of running the conditioner
again: one node, `_Replay`, whose backward sends the incoming gradient through the recorded
graph (``torch.autograd.grad``) to the layer's weights and to the features of the reverse
pass. The conditioners' forward arithmetic per step drops from two passes to one (with the
backward it is three evaluations' worth of convolution instead of four).

The numbers differ from a fresh reverse-pass evaluation only by rounding: the reverse pass
reconstructs x_i by inverting later layers, which reproduces the forward pass's links up to
float rounding, and the replayed parameters are those of the forward pass's links (the ones
the samples were drawn with). tests/test_replay.py checks the REINFORCE gradient against the
plain reverse pass to 1e-10 in float64.

Only REINFORCE uses it: r.t. and the path gradient differentiate the forward pass itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ConditionerTape",
    "conditioner_forward",
    "conditioner_reverse",
    "replayed_graph_root",
]


@dataclass
class _Entry:
    layer: nn.Module
    leaf: torch.Tensor  # the recorded features: a detached copy that requires grad
    out: torch.Tensor  # the conditioner's output, with its graph back to leaf and weights
    weights: tuple[torch.Tensor, ...]  # the layer's trainable parameters at record time


class _Replay(torch.autograd.Function):
    """Returns the recorded parameters; backward runs the recorded conditioner graph."""

    @staticmethod
    def forward(ctx, features, entry, *weights):  # type: ignore[override]
        ctx.entry = entry
        return entry.out.detach()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        entry: _Entry = ctx.entry
        ctx.entry = None  # the graph is freed below; a second backward must not find it
        if entry is None:
            raise RuntimeError(
                "a replayed conditioner was differentiated twice; the recorded graph is "
                "freed by the first backward (record the forward pass again)"
            )
        want_features = ctx.needs_input_grad[0]
        wanted = [
            w for w, need in zip(entry.weights, ctx.needs_input_grad[2:], strict=True) if need
        ]
        inputs = ([entry.leaf] if want_features else []) + wanted
        if not inputs:
            return (None, None, *(None for _ in entry.weights))
        grads = list(torch.autograd.grad(entry.out, inputs, grad, allow_unused=True))
        g_features = grads.pop(0) if want_features else None
        g_weights = [grads.pop(0) if need else None for need in ctx.needs_input_grad[2:]]
        return (g_features, None, *g_weights)


def replayed_graph_root(node) -> object | None:
    """The recorded conditioner graph behind an autograd node of a replay (its root node), or
    None for any other node: graph walks (gaugeflow.measure.graph) follow it, since backward
    runs that graph too."""
    entry = getattr(node, "entry", None) if isinstance(node, _Replay._backward_cls) else None
    return entry.out.grad_fn if isinstance(entry, _Entry) else None


class ConditionerTape:
    """Records each layer's conditioner in a forward pass, replays it in the reverse pass.

    Usage (what REINFORCE does)::

        tape = ConditionerTape()
        with torch.no_grad(), tape.recording():
            phi, log_det = flow(z)
        with tape.replaying():
            z_back, log_det_rev = flow.reverse(phi)   # with grad; conditioners replayed

    Layers take part through `conditioner_forward` / `conditioner_reverse`. The reverse pass
    must visit the layers in the opposite order of the forward pass, each once (as
    Flow.reverse does); anything else is an error. Entries not replayed are dropped when the
    replaying block ends.
    """

    def __init__(self) -> None:
        self._stack: list[_Entry] = []
        self._mode: str | None = None

    @property
    def pending(self) -> int:
        """Recorded conditioners not yet replayed."""
        return len(self._stack)

    @contextmanager
    def _active(self, mode: str) -> Iterator[ConditionerTape]:
        if _TAPE.get() is not None:
            raise RuntimeError("a ConditionerTape is already active; tapes do not nest")
        self._mode = mode
        token = _TAPE.set(self)
        try:
            yield self
        finally:
            _TAPE.reset(token)
            self._mode = None

    @contextmanager
    def recording(self) -> Iterator[ConditionerTape]:
        """Forward calls in this block record their conditioners (the block may be no-grad)."""
        self._stack.clear()
        with self._active("record"):
            yield self

    @contextmanager
    def replaying(self) -> Iterator[ConditionerTape]:
        """Reverse calls in this block take their conditioners' outputs from the recording."""
        try:
            with self._active("replay"):
                yield self
        finally:
            self._stack.clear()

    def _record(self, layer: nn.Module, features: torch.Tensor, net: Callable) -> torch.Tensor:
        weights = tuple(p for p in layer.parameters() if p.requires_grad)
        with torch.enable_grad():
            leaf = features.detach().requires_grad_(True)
            out = net(leaf)
        self._stack.append(_Entry(layer, leaf, out, weights))
        return out.detach()

    def _replay(self, layer: nn.Module, features: torch.Tensor) -> torch.Tensor:
        if not self._stack:
            raise RuntimeError(
                f"conditioner replay: nothing recorded for {type(layer).__name__}; the reverse "
                "pass must follow a recorded forward pass of the same flow"
            )
        entry = self._stack.pop()
        if entry.layer is not layer:
            raise RuntimeError(
                "conditioner replay: layers reversed out of order (the reverse pass must visit "
                "the recorded layers in the opposite order, each once)"
            )
        if entry.leaf.shape != features.shape:
            raise RuntimeError(
                f"conditioner replay: features of shape {tuple(features.shape)} do not match "
                f"the recorded {tuple(entry.leaf.shape)} (a different batch?)"
            )
        return _Replay.apply(features, entry, *entry.weights)


_TAPE: ContextVar[ConditionerTape | None] = ContextVar("gaugeflow_conditioner_tape", default=None)


def conditioner_forward(layer: nn.Module, features: torch.Tensor, net: Callable) -> torch.Tensor:
    """``net(features)`` in a layer's forward call; recorded while a tape records."""
    tape = _TAPE.get()
    if tape is not None and tape._mode == "record":
        return tape._record(layer, features, net)
    return net(features)


def conditioner_reverse(layer: nn.Module, features: torch.Tensor, net: Callable) -> torch.Tensor:
    """``net(features)`` in a layer's reverse call; replayed while a tape replays."""
    tape = _TAPE.get()
    if tape is not None and tape._mode == "replay":
        return tape._replay(layer, features)
    return net(features)
