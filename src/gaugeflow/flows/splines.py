"""Circular rational-quadratic splines on [0, 2pi) (Durkan et al. 2019; Rezende et al. 2020).

A spline with K bins is described by 3K unconstrained numbers per point, laid out along the
last axis as [K width logits | K height logits | K derivative pre-activations]:

- knot positions x_0 = 0 < x_1 < ... < x_K = 2pi from a softmax of the width logits,
- knot values   y_0 = 0 < y_1 < ... < y_K = 2pi from a softmax of the height logits,
- slopes d_0, ..., d_{K-1} > 0 from a softplus; the slope at 2pi is d_0, so the map glues
  into a C^1 diffeomorphism of the circle that fixes the point 0 = 2pi.

A zero parameter vector is the identity map (equal bins, all slopes 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "TWO_PI",
    "MIN_BIN_FRACTION",
    "MIN_DERIVATIVE",
    "n_spline_params",
    "spline_knots",
    "spline_forward",
    "spline_inverse",
    "reflect_spline_params",
    "charge_symmetric_params",
]

TWO_PI = 2 * math.pi
#: every bin is at least this fraction of the circle wide and high (keeps float32 safe)
MIN_BIN_FRACTION = 1e-3
#: every knot slope is at least this
MIN_DERIVATIVE = 1e-3
# softplus(_SLOPE_SHIFT) + MIN_DERIVATIVE = 1, so a zero pre-activation means slope one
_SLOPE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def n_spline_params(n_bins: int) -> int:
    """Number of unconstrained parameters of one spline with `n_bins` bins."""
    return 3 * n_bins


def _softmax_last(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis as exp / sum (the same function as ``torch.softmax``).

    torch's CPU softmax kernel is slow for a short last axis (8 bins: ~150 us for 8k numbers
    in torch 2.13, 4x these four element-wise kernels; benchmarks/RESULTS.md, session 7).
    """
    # the shift only keeps exp finite: softmax does not depend on it, so no gradient flows
    e = torch.exp(logits - logits.detach().amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _knot_positions(logits: torch.Tensor) -> torch.Tensor:
    """Knots 0 = t_0 < ... < t_K = 2pi from K logits (along the last axis); exact end points."""
    n_bins = logits.shape[-1]
    fractions = MIN_BIN_FRACTION + (1 - n_bins * MIN_BIN_FRACTION) * _softmax_last(logits)
    inner = TWO_PI * torch.cumsum(fractions[..., :-1], dim=-1)
    zero = torch.zeros_like(logits[..., :1])
    return torch.cat([zero, inner, zero + TWO_PI], dim=-1)


def spline_knots(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knot positions, knot values and knot slopes, each of shape [..., K + 1]."""
    if params.shape[-1] % 3:
        raise ValueError(
            f"spline parameters must have 3 * n_bins entries on the last axis; got {params.shape[-1]}"
        )
    n_bins = params.shape[-1] // 3
    # width and height logits side by side: one pass of the knot arithmetic for both
    # (contiguous: the element-wise kernels run ~2x faster than on the strided slice)
    logits = params[..., : 2 * n_bins].unflatten(-1, (2, n_bins)).contiguous()
    both = _knot_positions(logits)
    xs, ys = both.unbind(dim=-2)
    slope_raw = params[..., 2 * n_bins :]
    slopes = MIN_DERIVATIVE + F.softplus(slope_raw + _SLOPE_SHIFT)
    slopes = torch.cat([slopes, slopes[..., :1]], dim=-1)
    return xs, ys, slopes


def _bin_of(value: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Index k in [0, K - 1] of the bin [t_k, t_{k+1}) holding `value`, shape [..., 1].

    Values outside [0, 2pi] (rounding) fall into the first or last bin and are clamped there
    by the callers; counting comparisons instead of searchsorted keeps this trivially batched.
    """
    inner = knots[..., 1:-1]
    return (value.unsqueeze(-1) >= inner).sum(dim=-1, keepdim=True)


def _select_bin(
    index: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, slopes: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Left knot, width, left value, height, slopes at both ends and mean slope of a bin."""

    def pick(t: torch.Tensor, shift: int) -> torch.Tensor:
        return torch.gather(t, -1, index + shift).squeeze(-1)

    x0, y0 = pick(xs, 0), pick(ys, 0)
    width, height = pick(xs, 1) - x0, pick(ys, 1) - y0
    d0, d1 = pick(slopes, 0), pick(slopes, 1)
    return x0, width, y0, height, d0, d1, height / width


def _log_slope(
    xi: torch.Tensor, s: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor
) -> torch.Tensor:
    """log dy/dx inside a bin at relative position xi (Durkan et al. 2019, eq. 5)."""
    mix = xi * (1 - xi)
    numerator = d1 * xi.square() + 2 * s * mix + d0 * (1 - xi).square()
    denominator = s + (d0 + d1 - 2 * s) * mix
    return 2 * torch.log(s) + torch.log(numerator) - 2 * torch.log(denominator)


def _check_shapes(value: torch.Tensor, params: torch.Tensor) -> None:
    if params.shape[:-1] != value.shape:
        raise ValueError(
            f"spline parameters of shape {tuple(params.shape)} do not match values of shape "
            f"{tuple(value.shape)} (expected values.shape + (3 * n_bins,))"
        )


def spline_forward(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y = f(x) for x in [0, 2pi] and log f'(x); `params` has shape x.shape + (3K,)."""
    _check_shapes(x, params)
    xs, ys, slopes = spline_knots(params)
    x0, width, y0, height, d0, d1, s = _select_bin(_bin_of(x, xs), xs, ys, slopes)
    xi = ((x - x0) / width).clamp(0, 1)
    mix = xi * (1 - xi)
    y = y0 + height * (s * xi.square() + d0 * mix) / (s + (d0 + d1 - 2 * s) * mix)
    return y, _log_slope(xi, s, d0, d1)


def spline_inverse(y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = f^{-1}(y) for y in [0, 2pi] and log (f^{-1})'(y) = -log f'(x)."""
    _check_shapes(y, params)
    xs, ys, slopes = spline_knots(params)
    x0, width, y0, height, d0, d1, s = _select_bin(_bin_of(y, ys), xs, ys, slopes)
    dy = torch.minimum((y - y0).clamp_min(0), height)
    # y - y0 = height * (s xi^2 + d0 xi (1 - xi)) / (s + D xi (1 - xi)) is the quadratic
    # a xi^2 + b xi + c = 0 with c <= 0, whose root in [0, 1] is taken in the form that adds
    # numbers of one sign: 2c / (-b - sqrt) for b >= 0, (-b + sqrt) / 2a for b < 0 (then a > 0).
    # The other form cancels catastrophically, e.g. near the top of a flat bin with a steep end.
    curvature = d0 + d1 - 2 * s
    a = height * (s - d0) + dy * curvature
    b = height * d0 - dy * curvature
    c = -s * dy
    root = torch.sqrt((b.square() - 4 * a * c).clamp_min(0))
    b_positive = b >= 0
    # the branch not taken gets a harmless denominator, so no inf/nan reaches autograd
    xi_b_positive = 2 * c / torch.where(b_positive, -b - root, -1.0)
    xi_b_negative = (root - b) / torch.where(b_positive, 1.0, 2 * a)
    xi = torch.where(b_positive, xi_b_positive, xi_b_negative).clamp(0, 1)
    return x0 + xi * width, -_log_slope(xi, s, d0, d1)


def reflect_spline_params(params: torch.Tensor) -> torch.Tensor:
    """Parameters of the reflected spline x -> 2pi - f(2pi - x).

    Reflection reverses the bins: widths and heights in reverse order, and the knot slopes
    d_0, d_1, ..., d_{K-1} become d_0, d_{K-1}, ..., d_1 (knot j moves to K - j; the slope at
    0 = 2pi stays). Within a bin the rational-quadratic interpolant is symmetric under this,
    so the reflected parameters give that map exactly, up to rounding (tested).
    """
    n_bins = params.shape[-1] // 3
    widths, heights, slopes = params.split(n_bins, dim=-1)
    slopes = torch.cat([slopes[..., :1], slopes[..., 1:].flip(-1)], dim=-1)
    return torch.cat([widths.flip(-1), heights.flip(-1), slopes], dim=-1)


def charge_symmetric_params(
    net: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, n_odd: int
) -> torch.Tensor:
    """Spline parameters that make a layer equivariant under theta -> -theta.

    ``features`` [B, C, ...] hold n_odd channels that change sign under charge conjugation
    (sines) as their last n_odd channels, the others (cosines) do not. With o = net(.),
    params(f) = (o(f) + R o(C f)) / 2 (R: `reflect_spline_params`) satisfies
    params(C f) = R params(f): the transformed angle p -> f(p) then maps -p to -f(p) mod 2pi.
    The net runs once, on the batch of f and C f together.
    """
    flipped = torch.cat([features[:, :-n_odd], -features[:, -n_odd:]], dim=1)
    both = net(torch.cat([features, flipped], dim=0))
    plain, mirrored = both.chunk(2, dim=0)
    return 0.5 * (plain + reflect_spline_params(mirrored))
