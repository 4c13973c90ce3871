"""The floor of a step: the conditioner nets and the action alone (bench_step.py's efficiency).

:class:`FloorReplay` records, during one loss call of a measured step
(gaugeflow.measure.setup), the input of each conditioner call and each configuration given to
the action; :func:`measure_floor` replays them alone and times them. Used by benchmarks only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gaugeflow.flows.nets import ConditionerCNN
from gaugeflow.measure.setup import MeasureSetup, loss_call
from gaugeflow.physics.action import SchwingerAction
from gaugeflow.runtime import resolve_dtype

__all__ = ["FloorReplay", "floor_action", "measure_floor"]


def _conditioner_modules(flow: nn.Module) -> list[nn.Module]:
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

        train_step = setup.train_step
        log_prob = train_step.log_prob

        def recording_log_prob(phi: torch.Tensor) -> torch.Tensor:
            grad = torch.is_grad_enabled() and phi.requires_grad
            self.action_calls.append((phi.detach().clone(), grad))
            return log_prob(phi)

        handles = [m.register_forward_pre_hook(pre_hook) for m in _conditioner_modules(setup.flow)]
        try:
            train_step.log_prob = recording_log_prob  # shadows the method for this loss call
            setup.zero_grad()
            loss, _ = loss_call(setup)
            del loss
        finally:
            del train_step.log_prob
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
        self.setup.zero_grad()  # the replays' gradients are junk
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
