"""The Schwinger-model action S = -beta sum_x cos P(x) - log det D^+ D, as a callable."""

from __future__ import annotations

import math

import torch

from .dirac import check_kappa, fermion_action, resolve_method
from .u1 import check_theta, gauge_action

__all__ = ["check_beta", "SchwingerAction"]


def check_beta(beta: float) -> float:
    """Validate the gauge coupling: a finite real number >= 0."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ValueError(f"beta must be a real number >= 0; got {beta!r}")
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite real number >= 0; got {beta!r}")
    return float(beta)


class SchwingerAction:
    """S(theta) per configuration, differentiable in theta; kappa = 0 is pure gauge.

    ``assembly`` is "scatter" (vectorised, ours; the default) or "loop" (the paper's
    implementation: per-site block assignment and the determinant of the full D).
    ``method`` is "eo" (even-odd Schur complement, half-size determinant) or "full"; None
    (the default) takes the assembly's own: "eo" for scatter, "full" for loop. "eo" with
    "loop" is a ValueError (the paper's implementation has no even-odd step).
    """

    def __init__(
        self, beta: float, kappa: float, method: str | None = None, assembly: str = "scatter"
    ) -> None:
        self.beta = check_beta(beta)
        self.kappa = check_kappa(kappa)
        self.method = resolve_method(method, assembly)
        self.assembly = assembly

    def __repr__(self) -> str:
        return (
            f"SchwingerAction(beta={self.beta}, kappa={self.kappa}, "
            f"method={self.method!r}, assembly={self.assembly!r})"
        )

    def gauge(self, theta: torch.Tensor) -> torch.Tensor:
        """-beta sum_x cos P(x), [B]."""
        return gauge_action(theta, self.beta)

    def fermion(self, theta: torch.Tensor) -> torch.Tensor:
        """-2 log|det D|, [B]; zeros when kappa = 0."""
        if self.kappa == 0:
            check_theta(theta)
            return torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device)
        return fermion_action(theta, self.kappa, method=self.method, assembly=self.assembly)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """S(theta), [B]."""
        if self.kappa == 0:
            return self.gauge(theta)
        return self.gauge(theta) + self.fermion(theta)

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density -S(theta), [B]."""
        return -self(theta)
