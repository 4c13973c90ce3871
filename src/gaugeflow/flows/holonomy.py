"""Holonomy coupling: a learned map of one global Polyakov-loop angle (not in the paper).

Why: every gauge-equivariant coupling layer (gaugeflow.flows.coupling) moves links by
functions of plaquettes and small loops, so, given the plaquettes, a flow of such layers on a
uniform prior leaves the two global holonomies uniform; the Schwinger target's fermion
determinant (antiperiodic in time) depends on them strongly at small L. This layer transforms
the holonomy of direction mu, conditioned on everything it leaves unchanged.

Definitions. For direction mu (nu = 1 - mu) the Polyakov loop through the line with
transverse coordinate x_nu = j is W_mu(j) = sum_{x_mu} theta_mu(x) (all L links of the line);
the layer's holonomy is h = W_mu(0) mod 2pi. With g the circular rational-quadratic spline
(gaugeflow.flows.splines), whose parameters come from the conditioner below,

    theta_mu(x) -> theta_mu(x) + (g(h) - h) / L    for every x (all L^2 mu-links),

so every W_mu(j) moves by delta = g(h) - h: the line-0 holonomy becomes g(h) (mod 2pi).
Plaquettes are unchanged (each holds two mu-links with opposite signs), and so are the
differences W_mu(j) - W_mu(0), the nu-links and the loops W_nu(i) (up to rounding: the
shift is added, not cancelled exactly). Since g(0) = 0 and g(2pi) = 2pi, delta is a
continuous 2pi-periodic function of W_mu(0), so links are not wrapped and no 2pi jump
appears at the cut. All of it is gauge invariant (Polyakov loops and plaquettes are, and a
constant shift of the mu-links commutes with gauge transformations), so the layer is gauge
equivariant.

Conditioner inputs ([B, 6, L, L]; all unchanged by the layer, so forward and reverse get the
same spline): cos, sin of the plaquettes P(x); of W_mu(x_nu) - W_mu(0) (the offsets of the
other mu-lines from line 0, constant along mu); and of W_nu(x_mu) (constant along nu). The
offsets give the conditioner the position of line 0, which a pooled function of plaquettes
alone would not know. Two circular 3x3 convolutions with LeakyReLU, a mean over sites and a
Linear to the 3 n_bins spline parameters, initialised to zero: a fresh layer is the identity.

log|det J|. The map is theta -> theta + u delta(theta), with u = 1/L on every mu-link and 0
on nu-links, so J = I + u w^T with w = grad delta (through h and through the conditioner's
inputs). By the matrix determinant lemma det J = 1 + w.u = 1 + (1/L) D delta, where D is the
derivative along a uniform shift of all mu-links. Such a shift changes no conditioner input
and moves W_mu(0) by L, so D delta = L (g'(h) - 1) and det J = g'(h): log|det J| = log g'(h).
(Without the conditioner's dependence, w = (g'(h) - 1) on the L line-0 mu-links and the
same number follows.) The reverse map takes h' = W_mu(0) mod 2pi of its input, h =
g^{-1}(h') and adds (h - h') / L to every mu-link; its log|det| is -log g'(h).
"""

from __future__ import annotations

import torch
from torch import nn

from ..physics.u1 import plaquette
from .replay import conditioner_forward, conditioner_reverse
from .splines import (
    TWO_PI,
    charge_symmetric_params,
    n_spline_params,
    spline_forward,
    spline_inverse,
)

__all__ = ["HolonomyCoupling", "polyakov_loops"]


def polyakov_loops(theta: torch.Tensor, mu: int) -> torch.Tensor:
    """W_mu(j) = sum over x_mu of theta_mu(x) on the line x_nu = j (not wrapped): [B, L]."""
    # theta[:, mu] is [B, L, L] with the mu axis at 1 + mu
    return theta[:, mu].sum(dim=1 + mu)


def _along(lines: torch.Tensor, mu: int) -> torch.Tensor:
    """[B, L] per-line values of direction mu, broadcast along mu to [B, L, L]."""
    L = lines.shape[-1]
    return lines.unsqueeze(1 + mu).expand(-1, L, L)


class HolonomyCoupling(nn.Module):
    """Spline of the line-0 holonomy of direction mu; see the module docstring."""

    def __init__(
        self,
        L: int,
        mu: int,
        n_bins: int = 8,
        hidden_channels: int = 64,
        charge_symmetric: bool = False,
    ) -> None:
        super().__init__()
        if mu not in (0, 1):
            raise ValueError(f"mu must be 0 or 1; got {mu!r}")
        self.L, self.mu = L, mu
        self.charge_symmetric = charge_symmetric
        self.net = nn.Sequential(
            nn.Conv2d(6, hidden_channels, 3, padding=1, padding_mode="circular"),
            nn.LeakyReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, padding_mode="circular"),
            nn.LeakyReLU(),
        )
        self.head = nn.Linear(hidden_channels, n_spline_params(n_bins))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def extra_repr(self) -> str:
        return f"mu={self.mu}" + (", charge_symmetric=True" if self.charge_symmetric else "")

    def conditioner_features(self, theta: torch.Tensor, loops: torch.Tensor) -> torch.Tensor:
        """cos, sin of P(x), W_mu(x_nu) - W_mu(0) and W_nu(x_mu): [B, 6, L, L]."""
        offsets = _along(loops - loops[:, :1], self.mu)
        other = _along(polyakov_loops(theta, 1 - self.mu), 1 - self.mu)
        angles = torch.stack([plaquette(theta), offsets, other], dim=1)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)

    def _params_of(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The conditioner: features -> spline parameters [B, 3 n_bins] in `dtype`."""

        def net(f: torch.Tensor) -> torch.Tensor:
            return self.head(self.net(f).mean(dim=(2, 3)))

        if self.charge_symmetric:  # cos of the 3 angles, then their sines
            return charge_symmetric_params(net, features, 3).to(dtype)
        return net(features).to(dtype)

    def _spline_params(
        self, theta: torch.Tensor, loops: torch.Tensor, reverse: bool = False
    ) -> torch.Tensor:
        """Spline parameters [B, 3 n_bins] in theta's dtype (the net may run under autocast;
        recorded or replayed by an active gaugeflow.flows.replay.ConditionerTape)."""
        features = self.conditioner_features(theta, loops)
        call = conditioner_reverse if reverse else conditioner_forward
        return call(self, features, lambda f: self._params_of(f, theta.dtype))

    def _shift_links(self, theta: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """theta with delta / L added to every mu-link (out of place)."""
        links = theta[:, self.mu] + (delta / self.L).view(-1, 1, 1)
        other = theta[:, 1 - self.mu]
        return torch.stack((links, other) if self.mu == 0 else (other, links), dim=1)

    def _transform(self, theta: torch.Tensor, spline) -> tuple[torch.Tensor, torch.Tensor]:
        """Map the line-0 holonomy through `spline` (forward or inverse) and shift the links."""
        loops = polyakov_loops(theta, self.mu)
        params = self._spline_params(theta, loops, reverse=spline is spline_inverse)
        with torch.autocast(theta.device.type, enabled=False):
            old = torch.remainder(loops[:, 0], TWO_PI)
            new, log_slope = spline(old, params)
        return self._shift_links(theta, new - old), log_slope

    def forward(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior side -> target side: (new theta, log g'(h) per sample)."""
        return self._transform(theta, spline_forward)

    def reverse(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target side -> prior side: (old theta, -log g'(h) per sample)."""
        return self._transform(theta, spline_inverse)
