"""Gradient estimators of the variational free energy F_q = E_q[log q - log P].

Each estimator is called as ``est(flow, prior, log_prob, z)`` with a batch ``z`` drawn from the
prior and returns a surrogate loss whose gradient (after ``.backward()``) is the estimator,
plus the detached per-sample ``logq`` and ``logp`` of the proposed configurations.

- ``rt``: reparameterisation trick (paper eq. 12), differentiates through flow and action.
- ``reinforce``: REINFORCE with the batch-mean baseline (paper eq. 18, algorithm 1): a
  no-grad forward pass gives phi and the signal s = log q - log P; the reverse flow, with
  grad, gives log q(phi). The action is never differentiated. The sampling pass records each
  layer's conditioner with grad and the reverse pass replays it (gaugeflow.flows.replay), so
  the conditioners run once per step, not twice.
- ``path``: path gradient (Vaitl et al. 2022, arXiv:2207.08219): gradient flows only through
  the sample phi(z), log q is evaluated with the parameters held fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .errors import UserError
from .flows.replay import ConditionerTape

__all__ = ["EstimatorOutput", "ESTIMATORS", "get_estimator", "rt", "reinforce", "path"]

LogProb = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EstimatorOutput:
    loss: torch.Tensor  # surrogate: call .backward() on it
    logq: torch.Tensor  # detached, per sample
    logp: torch.Tensor  # detached, per sample


def rt(flow: nn.Module, prior, log_prob: LogProb, z: torch.Tensor) -> EstimatorOutput:
    """Reparameterisation trick: loss = mean(log q(phi(z)) - log P(phi(z)))."""
    phi, log_det = flow(z)
    logq = prior.log_prob(z) - log_det
    logp = log_prob(phi)
    loss = (logq - logp).mean()
    return EstimatorOutput(loss, logq.detach(), logp.detach())


def reinforce(
    flow: nn.Module, prior, log_prob: LogProb, z: torch.Tensor, replay: bool = True
) -> EstimatorOutput:
    """REINFORCE (paper algorithm 1): loss = mean(log q(phi) * (s - mean s)), s detached.

    With ``replay`` (the default) the sampling pass records each layer's conditioner and the
    reverse pass reuses it (gaugeflow.flows.replay): the same gradient up to rounding, one
    conditioner evaluation fewer per layer. ``replay=False`` evaluates the reverse pass afresh.
    """
    tape = ConditionerTape() if replay else None
    with torch.no_grad(), tape.recording() if tape is not None else nullcontext():
        phi, log_det = flow(z)
        logq = prior.log_prob(z) - log_det
        logp = log_prob(phi)
        signal = logq - logp
        signal = signal - signal.mean()
    with tape.replaying() if tape is not None else nullcontext():
        z_back, log_det_rev = flow.reverse(phi)
    logq_phi = prior.log_prob(z_back) + log_det_rev
    loss = (logq_phi * signal).mean()
    return EstimatorOutput(loss, logq.detach(), logp.detach())


class _ReverseCall(nn.Module):
    """Exposes flow.reverse as forward, so functional_call can run it with fixed parameters."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, phi: torch.Tensor):
        return self.flow.reverse(phi)


def path(flow: nn.Module, prior, log_prob: LogProb, z: torch.Tensor) -> EstimatorOutput:
    """Path gradient: d/dtheta of log q_{theta'}(phi_theta(z)) - log P(phi_theta(z)) at theta'=theta."""
    phi, log_det = flow(z)
    logq_sample = (prior.log_prob(z) - log_det).detach()
    frozen = {f"flow.{k}": v.detach() for k, v in flow.named_parameters()}
    frozen.update({f"flow.{k}": v for k, v in flow.named_buffers()})
    z_back, log_det_rev = functional_call(_ReverseCall(flow), frozen, (phi,))
    logq = prior.log_prob(z_back) + log_det_rev
    logp = log_prob(phi)
    loss = (logq - logp).mean()
    return EstimatorOutput(loss, logq_sample, logp.detach())


ESTIMATORS: dict[str, Callable[..., EstimatorOutput]] = {
    "rt": rt,
    "reinforce": reinforce,
    "path": path,
}


def get_estimator(name: str) -> Callable[..., EstimatorOutput]:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise UserError(
            f"unknown estimator {name!r}; valid estimators are {', '.join(ESTIMATORS)}"
        ) from None
