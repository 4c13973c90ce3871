"""Gauge-equivariant coupling layer (Kanwar et al. 2020; Albergo et al. 2022; paper app. A).

One layer (mu, k) updates a quarter of the links of direction mu (see gaugeflow.flows.masks).
Each updated link theta_mu(x) is the only updated link in its active plaquette P(x). With
p = P(x) mod 2pi and the circular spline h (conditioned on frozen plaquettes and loops):

    theta_mu(x) -> theta_mu(x) + sign * delta,    delta = h(p) - p,

so P(x) -> P(x) + delta, i.e. p -> h(p) on the circle. Since h(0) = 0 and h(2pi) = 2pi,
delta is a continuous 2pi-periodic function of P, and so is its counterpart in the reverse
direction, delta = p' - h^{-1}(p') with p' = P'(x) mod 2pi. Hence no 2pi jumps appear when a
plaquette sits at the cut: links are not wrapped (they may leave [0, 2pi); physics is
periodic) and reverse subtracts, up to rounding, exactly what forward added. The conditioner
inputs are computed from non-updated links only, so they are bitwise the same in both
directions.

The Jacobian of the link map is triangular (updated links depend on themselves and on frozen
links only) with diagonal entries h'(p), so log|det| = sum over active plaquettes of log h'(p).
"""

from __future__ import annotations

import torch
from torch import nn

from ..physics.u1 import plaquette, shift
from .masks import coupling_masks, link_sign
from .nets import ConditionerCNN, Sites
from .replay import conditioner_forward, conditioner_reverse
from .splines import (
    TWO_PI,
    charge_symmetric_params,
    n_spline_params,
    spline_forward,
    spline_inverse,
)

__all__ = ["GaugeEquivariantCoupling", "rect_loops_from_links"]


def rect_loops_from_links(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles of the 2x1 and 1x2 loops based at x, summed link by link.

    Equal to ``u1.rect_loops(plaquette(theta))``, but a loop whose boundary links did not
    change comes out bitwise unchanged (the plaquette sum would carry the rounding of the
    interior link), which keeps reverse(forward(z)) exact.
    """
    t0, t1 = theta[:, 0], theta[:, 1]
    t0_up = shift(t0, 1)  # theta_0(x + 1)
    t1_right = shift(t1, 0)  # theta_1(x + 0)
    long_0 = t0 + shift(t0, 0) + shift(t1, 0, 2) - shift(t0_up, 0) - t0_up - t1
    long_1 = t0 + t1_right + shift(t1_right, 1) - shift(t0, 1, 2) - shift(t1, 1) - t1
    return long_0, long_1


def _active_cosets(L: int, mu: int, k: int) -> list[tuple[int, int, int, int]]:
    """The active sites of layer (mu, k) (gaugeflow.flows.masks.link_mask) as two strided
    cosets (row0, col0, row_step, col_step): along mu every 4th site, across every 2nd."""
    if mu == 0:  # rows run along mu = 0
        return [(k, 0, 4, 2), ((k + 2) % 4, 1, 4, 2)]
    return [(0, k, 2, 4), (1, (k + 2) % 4, 2, 4)]


class GaugeEquivariantCoupling(nn.Module):
    """One coupling layer: transforms active plaquettes, moves their links by the change."""

    def __init__(
        self,
        L: int,
        mu: int,
        k: int,
        n_bins: int = 8,
        hidden_channels: int = 64,
        kernel_size: int = 3,
        dilations: tuple[int, ...] = (1, 2, 3),
        loops: bool = True,
        charge_symmetric: bool = False,
    ) -> None:
        super().__init__()
        masks = coupling_masks(L, mu, k)
        self.L, self.mu, self.k, self.loops = L, mu, k, loops
        self.charge_symmetric = charge_symmetric
        self.sign = link_sign(mu)
        frozen = [masks.frozen]
        if loops:
            frozen += [masks.frozen_loops_2x1, masks.frozen_loops_1x2]
        # active plaquette P(x) and its link theta_mu(x) share the flat site index
        sites = Sites.from_mask(masks.active, _active_cosets(L, mu, k))
        self.register_buffer("active_sites", sites.flat, persistent=False)
        self.register_buffer("_site_order", sites.order, persistent=False)
        self._cosets = sites.cosets
        self.register_buffer(
            "feature_mask", torch.stack(frozen).to(torch.get_default_dtype()), persistent=False
        )
        self.net = ConditionerCNN(
            in_channels=2 * len(frozen),
            out_channels=n_spline_params(n_bins),
            hidden_channels=hidden_channels,
            kernel_size=kernel_size,
            dilations=dilations,
        )

    def extra_repr(self) -> str:
        extra = ", charge_symmetric=True" if self.charge_symmetric else ""
        return f"mu={self.mu}, k={self.k}, loops={self.loops}{extra}"

    def conditioner_features(self, theta: torch.Tensor, plaq: torch.Tensor) -> torch.Tensor:
        """(cos, sin) of frozen plaquettes [and loops], zero elsewhere: [B, 2 or 6, L, L]."""
        angles = [plaq]
        if self.loops:
            angles += list(rect_loops_from_links(theta))
        angles = torch.stack(angles, dim=1)
        mask = self.feature_mask.to(angles.dtype)
        return torch.cat([torch.cos(angles) * mask, torch.sin(angles) * mask], dim=1)

    def _params_of(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The conditioner: features -> spline parameters at the active sites, [B, n_active, 3K]."""
        sites = Sites(self.L, self._cosets, self.active_sites, self._site_order)
        if self.charge_symmetric:  # the sines are the second half of the channels
            n_odd = features.shape[1] // 2
            out = charge_symmetric_params(lambda f: self.net(f, sites), features, n_odd)
        else:
            out = self.net(features, sites)
        # under autocast the net may answer in bf16/fp16; the spline runs in theta's dtype
        return out.to(dtype)

    def _spline_params(
        self, theta: torch.Tensor, plaq: torch.Tensor, reverse: bool = False
    ) -> torch.Tensor:
        """Spline parameters at the active sites, [B, n_active, 3K], in theta's dtype
        (recorded or replayed by an active gaugeflow.flows.replay.ConditionerTape)."""
        features = self.conditioner_features(theta, plaq)
        call = conditioner_reverse if reverse else conditioner_forward
        return call(self, features, lambda f: self._params_of(f, theta.dtype))

    def _active_angles(self, plaq: torch.Tensor) -> torch.Tensor:
        """Active plaquettes mod 2pi, [B, n_active]."""
        return torch.remainder(plaq.flatten(1).index_select(1, self.active_sites), TWO_PI)

    def _move_links(self, theta: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """theta with theta_mu(x) += sign * delta at the active sites (out of place)."""
        batch, L = theta.shape[0], self.L
        links = theta[:, self.mu].reshape(batch, L * L)
        links = links.index_add(1, self.active_sites, delta, alpha=self.sign).view(batch, L, L)
        other = theta[:, 1 - self.mu]
        return torch.stack((links, other) if self.mu == 0 else (other, links), dim=1)

    def forward(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior side -> target side: (new theta, log|det J| per sample)."""
        plaq = plaquette(theta)
        params = self._spline_params(theta, plaq)
        with torch.autocast(theta.device.type, enabled=False):
            p = self._active_angles(plaq)
            p_new, log_slope = spline_forward(p, params)
            delta = p_new - p
        return self._move_links(theta, delta), log_slope.sum(dim=1)

    def reverse(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target side -> prior side: (old theta, log|det J| of the inverse per sample)."""
        plaq = plaquette(theta)
        params = self._spline_params(theta, plaq, reverse=True)
        with torch.autocast(theta.device.type, enabled=False):
            p_new = self._active_angles(plaq)
            p, log_slope = spline_inverse(p_new, params)
            delta = p_new - p
        return self._move_links(theta, -delta), log_slope.sum(dim=1)
