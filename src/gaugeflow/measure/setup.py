"""The measured step: built here, in one place, as the training step itself.

:func:`build_setup` seeds everything and builds a :class:`gaugeflow.training.TrainStep` from a
training config exactly as ``train()`` does, so every measurement runs the model and the step
a training run with the same keys would. The units of work are that step's methods:

- a *part* (one loss call, :func:`loss_call`) is ``TrainStep.loss_part``: the part's prior
  samples, the estimator under autocast (the action in full precision), the loss divided by
  ``n_batches``; its backward (:func:`backward`) is ``TrainStep.backward`` (through the grad
  scaler when there is one);
- a *gradient step* (:func:`gradient_step`) is ``TrainStep.run``: zero_grad, the parts,
  unscale, finiteness checks, grad clip, optimizer and scheduler steps, the step's metrics.

Each loss call and each step uses the samples of the next step index (1, 2, ...), so repeated
loss calls see fresh samples, as consecutive training steps do.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..estimators import EstimatorOutput
from ..runtime import resolve_device, seed_everything
from ..training import StepResult, TrainStep, make_config

__all__ = [
    "MeasureSetup",
    "StepDiverged",
    "build_setup",
    "loss_call",
    "backward",
    "gradient_step",
]


class StepDiverged(RuntimeError):
    """The measured step diverged (non-finite loss, gradient or weights)."""


@dataclass
class MeasureSetup:
    """The training step being measured and how many step indices it has used."""

    train_step: TrainStep
    steps_taken: int = 0

    @property
    def config(self) -> dict[str, Any]:
        return self.train_step.config

    @property
    def device(self) -> torch.device:
        return self.train_step.device

    @property
    def flow(self) -> nn.Module:
        return self.train_step.flow

    @property
    def prior(self) -> Any:
        return self.train_step.prior

    @property
    def action(self) -> Any:
        return self.train_step.action

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.train_step.optimizer

    def next_step(self) -> int:
        """The next step index (its samples are those training draws at that step)."""
        self.steps_taken += 1
        return self.steps_taken

    def autocast(self) -> AbstractContextManager:
        """The training step's autocast context (a no-op without amp)."""
        return self.train_step.autocast()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def build_setup(overrides: dict[str, Any]) -> MeasureSetup:
    """The TrainStep of training-config `overrides` (validated), seeded as ``train()`` seeds."""
    config = make_config(overrides)
    device = resolve_device(config["device"])
    seed_everything(config["seed"])
    return MeasureSetup(TrainStep(config, device))


def loss_call(setup: MeasureSetup) -> tuple[torch.Tensor, EstimatorOutput]:
    """One loss call (part 0 of the next step): (loss / n_batches, estimator output)."""
    result = setup.train_step.loss_part(setup.next_step(), 0)
    return result.loss, result.output


def backward(setup: MeasureSetup, loss: torch.Tensor) -> None:
    """`.backward()` as training calls it (through the grad scaler when there is one)."""
    setup.train_step.backward(loss)


def gradient_step(setup: MeasureSetup, phase_timer: Any = None) -> StepResult:
    """One training step (``TrainStep.run``); `phase_timer` as there. Raises StepDiverged."""
    result = setup.train_step.run(setup.next_step(), phase_timer=phase_timer)
    if result.divergence is not None:
        raise StepDiverged(f"the measured step diverged: {result.divergence.message}")
    return result
