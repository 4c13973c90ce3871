"""U(1) gauge fields on an L x L torus.

Layout: angles ``theta[batch, mu, x0, x1]``; mu = 0 is time; a step +mu moves along array
axis 2 + mu of ``theta`` (axis 1 + mu of a per-direction slice ``theta[:, mu]``).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_theta",
    "shift",
    "plaquette",
    "rect_loops",
    "wrap",
    "gauge_action",
    "topological_charge",
    "mean_plaquette",
    "gauge_transform",
    "random_gauge",
]


def check_theta(theta: torch.Tensor) -> int:
    """Validate a batch of configurations; return L."""
    if not isinstance(theta, torch.Tensor):
        raise ValueError(
            f"theta must be a torch.Tensor of shape [batch, 2, L, L]; got {type(theta)}"
        )
    if theta.dim() != 4 or theta.shape[1] != 2 or theta.shape[2] != theta.shape[3]:
        raise ValueError(f"theta must have shape [batch, 2, L, L]; got {tuple(theta.shape)}")
    if not theta.is_floating_point():
        raise ValueError(f"theta must be a floating-point tensor; got dtype {theta.dtype}")
    return int(theta.shape[-1])


def shift(field: torch.Tensor, mu: int, step: int = 1) -> torch.Tensor:
    """field(x + step * mu_hat) for a field of shape [..., L, L] (periodic)."""
    return torch.roll(field, shifts=-step, dims=field.dim() - 2 + mu)


def plaquette(theta: torch.Tensor) -> torch.Tensor:
    """P(x) = theta_0(x) + theta_1(x + 0) - theta_0(x + 1) - theta_1(x); shape [batch, L, L]."""
    t0, t1 = theta[:, 0], theta[:, 1]
    return t0 + shift(t1, 0) - shift(t0, 1) - t1


def rect_loops(plaq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles of the 2x1 (two steps in mu = 0) and 1x2 Wilson loops based at x.

    For an abelian field a rectangle is the sum of the two plaquettes it covers.
    """
    return plaq + shift(plaq, 0), plaq + shift(plaq, 1)


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """Map angles to [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def gauge_action(theta: torch.Tensor, beta: float) -> torch.Tensor:
    """Wilson plaquette action -beta * sum_x cos P(x), per configuration."""
    check_theta(theta)
    return -beta * torch.cos(plaquette(theta)).sum(dim=(-2, -1))


def mean_plaquette(theta: torch.Tensor) -> torch.Tensor:
    """(1/V) sum_x cos P(x), per configuration."""
    check_theta(theta)
    return torch.cos(plaquette(theta)).mean(dim=(-2, -1))


def topological_charge(theta: torch.Tensor, rounded: bool = True) -> torch.Tensor:
    """Q = sum_x wrap(P(x)) / 2 pi, an integer on a torus, in theta's dtype.

    The sum is an integer up to float rounding (~1e-5 in float32 at L = 16); by default it
    is rounded to that integer, so that histograms and means of Q carry no rounding noise.
    ``rounded=False`` returns the sum itself.
    """
    check_theta(theta)
    charge = wrap(plaquette(theta)).sum(dim=(-2, -1)) / (2 * math.pi)
    return torch.round(charge) if rounded else charge


def gauge_transform(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """theta_mu(x) -> alpha(x) + theta_mu(x) - alpha(x + mu); alpha has shape [batch, L, L]."""
    check_theta(theta)
    if alpha.shape != theta[:, 0].shape:
        raise ValueError(
            f"alpha must have shape {tuple(theta[:, 0].shape)} (batch, L, L); got {tuple(alpha.shape)}"
        )
    return torch.stack([alpha + theta[:, mu] - shift(alpha, mu) for mu in (0, 1)], dim=1)


def random_gauge(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random gauge transformation alpha(x) matching theta's batch, L, dtype."""
    alpha = torch.rand(theta[:, 0].shape, generator=generator, dtype=theta.dtype)
    return (2 * math.pi * alpha).to(theta.device)
