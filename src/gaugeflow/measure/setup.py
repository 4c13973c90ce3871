"""The measured step: built here, in one place, from a training config.

A *part* (one loss call) is what a training step does for one of its ``n_batches`` parts: draw
z from the prior, call the estimator (under autocast when amp is on) and divide the loss by
``n_batches``; its backward is ``.backward()`` through the grad scaler when there is one. A
*gradient step* is ``zero_grad``, ``n_batches`` parts and the optimizer step. Flow, prior and
action come from :func:`gaugeflow.training.build_components`, so a measurement runs exactly the
model a training run with the same keys would.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..estimators import EstimatorOutput, get_estimator
from ..runtime import resolve_device, resolve_dtype
from ..training import amp_settings, build_components, make_config

__all__ = ["MeasureSetup", "build_setup", "loss_call", "backward", "gradient_step"]


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

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


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


def optimizer_step(setup: MeasureSetup) -> None:
    """The update after the parts (through the grad scaler when there is one)."""
    if setup.scaler is not None:
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        setup.optimizer.step()


def gradient_step(setup: MeasureSetup) -> None:
    """One untimed gradient step: zero_grad, n_batches parts, optimizer step."""
    setup.zero_grad()
    for _ in range(setup.config["n_batches"]):
        loss, _ = loss_call(setup)
        backward(setup, loss)
    optimizer_step(setup)
