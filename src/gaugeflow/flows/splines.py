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


def _knots(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All knots of the splines as one tensor, and what their backward needs.

    Returns ``knots`` [..., 3, K + 1] (rows: positions 0 = x_0 < ... < x_K = 2pi, values
    0 = y_0 < ... < y_K = 2pi, slopes d_0, ..., d_{K-1}, d_K = d_0), the softmax of the width
    and height logits [..., 2, K] and the slopes' softplus input [..., K].
    """
    if params.shape[-1] % 3:
        raise ValueError(
            f"spline parameters must have 3 * n_bins entries on the last axis; got {params.shape[-1]}"
        )
    n_bins = params.shape[-1] // 3
    # width and height logits side by side: one pass of the knot arithmetic for both
    # (contiguous: the element-wise kernels run ~2x faster than on the strided slice)
    logits = params[..., : 2 * n_bins].unflatten(-1, (2, n_bins)).contiguous()
    probabilities = _softmax_last(logits)
    fractions = MIN_BIN_FRACTION + (1 - n_bins * MIN_BIN_FRACTION) * probabilities
    inner = TWO_PI * torch.cumsum(fractions[..., :-1], dim=-1)
    zero = torch.zeros_like(logits[..., :1])
    positions = torch.cat([zero, inner, zero + TWO_PI], dim=-1)
    pre = params[..., 2 * n_bins :] + _SLOPE_SHIFT
    slopes = MIN_DERIVATIVE + F.softplus(pre)
    slopes = torch.cat([slopes, slopes[..., :1]], dim=-1)
    return torch.cat([positions, slopes.unsqueeze(-2)], dim=-2), probabilities, pre


def _knots_backward(
    grad: torch.Tensor, probabilities: torch.Tensor, pre: torch.Tensor
) -> torch.Tensor:
    """Gradient of the spline parameters [..., 3K] from the gradient of `_knots`' knots."""
    n_bins = pre.shape[-1]
    # x_j = 2pi sum_{i < j} f_i for 0 < j < K (x_0, x_K fixed): dF/df_i = 2pi sum_{i < j < K}
    inner = grad[..., :2, 1:n_bins]
    suffix = inner.flip(-1).cumsum(-1).flip(-1)
    g_fractions = TWO_PI * F.pad(suffix, (0, 1))
    g_prob = (1 - n_bins * MIN_BIN_FRACTION) * g_fractions
    g_logits = probabilities * (g_prob - (probabilities * g_prob).sum(-1, keepdim=True))
    g_slopes = grad[..., 2, :n_bins].clone()
    g_slopes[..., 0] += grad[..., 2, n_bins]  # d_K is d_0
    g_pre = torch.ops.aten.softplus_backward(g_slopes, pre, 1.0, 20.0)
    return torch.cat([g_logits.flatten(-2), g_pre], dim=-1)


def spline_knots(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knot positions, knot values and knot slopes, each of shape [..., K + 1]."""
    knots, _, _ = _knots(params)
    return knots.unbind(dim=-2)


def _bin_of(value: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Index k in [0, K - 1] of the bin [t_k, t_{k+1}) holding `value`, shape [..., 1].

    Values outside [0, 2pi] (rounding) fall into the first or last bin and are clamped there
    by the callers; counting comparisons instead of searchsorted keeps this trivially batched.
    """
    inner = knots[..., 1:-1]
    return (value.unsqueeze(-1) >= inner).sum(dim=-1, keepdim=True)


class _Bin:
    """The knots at both ends of each point's bin, read with one gather.

    ``index`` [..., 3, 2] (bin k, k + 1 for each knot row); x0, y0, d0 at the left end,
    width, height, d1, and the mean slope s = height / width.
    """

    def __init__(self, knots: torch.Tensor, value: torch.Tensor, row: int) -> None:
        k = _bin_of(value, knots[..., row, :])
        pair = torch.cat([k, k + 1], dim=-1).unsqueeze(-2)
        self.index = pair.expand(*pair.shape[:-2], 3, 2)
        ends = knots.gather(-1, self.index)
        self.x0, self.y0, self.d0 = ends[..., 0].unbind(-1)
        x1, y1, self.d1 = ends[..., 1].unbind(-1)
        self.width, self.height = x1 - self.x0, y1 - self.y0
        self.s = self.height / self.width

    def scatter(self, like: torch.Tensor, g_x0, g_width, g_y0, g_height, g_d0, g_d1):
        """Gradient of the knots [..., 3, K + 1] from those of the bin quantities."""
        ends = torch.stack([g_x0 - g_width, g_width, g_y0 - g_height, g_height, g_d0, g_d1], dim=-1)
        return torch.zeros_like(like).scatter_add_(-1, self.index, ends.unflatten(-1, (3, 2)))


def _terms(xi: torch.Tensor, b: _Bin):
    """A = s xi^2 + d0 xi (1 - xi), D = s + (d0 + d1 - 2 s) xi (1 - xi) and
    N = d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2 at relative position xi in the bin:
    y = y0 + height A / D and dy/dx = s^2 N / D^2 (Durkan et al. 2019, eqs. 4-5)."""
    mix = xi * (1 - xi)
    numerator_y = b.s * xi.square() + b.d0 * mix
    denominator = b.s + (b.d0 + b.d1 - 2 * b.s) * mix
    numerator_slope = b.d1 * xi.square() + 2 * b.s * mix + b.d0 * (1 - xi).square()
    return mix, numerator_y, denominator, numerator_slope


def _log_slope(b: _Bin, denominator: torch.Tensor, numerator_slope: torch.Tensor):
    """log dy/dx inside the bin (Durkan et al. 2019, eq. 5)."""
    return 2 * torch.log(b.s) + torch.log(numerator_slope) - 2 * torch.log(denominator)


def _partials(xi, b: _Bin, mix, numerator_y, denominator, numerator_slope):
    """Partial derivatives of Y = height A / D and of G = log dy/dx (as functions of xi, s,
    d0, d1 and, for Y, height) at fixed bin: ((Y_xi, Y_s, Y_d0, Y_d1, Y_height),
    (G_xi, G_s, G_d0, G_d1))."""
    A, D, N, s, d0, d1, h = numerator_y, denominator, numerator_slope, b.s, b.d0, b.d1, b.height
    one_minus_2xi = 1 - 2 * xi
    curvature = d0 + d1 - 2 * s
    dA = 2 * s * xi + d0 * one_minus_2xi
    dD = curvature * one_minus_2xi
    dN = 2 * d1 * xi + 2 * s * one_minus_2xi - 2 * d0 * (1 - xi)
    h_D2 = h / D.square()
    y_partials = (
        h_D2 * (dA * D - A * dD),
        h_D2 * (xi.square() * D - A * (1 - 2 * mix)),
        h_D2 * mix * (D - A),
        -h_D2 * A * mix,
        A / D,
    )
    two_mix_D = 2 * mix / D
    g_partials = (
        dN / N - 2 * dD / D,
        2 / s + 2 * mix / N - 2 * (1 - 2 * mix) / D,
        (1 - xi).square() / N - two_mix_D,
        xi.square() / N - two_mix_D,
    )
    return y_partials, g_partials


def _save(ctx, raw: torch.Tensor, xi: torch.Tensor, b: _Bin, terms, knots, probabilities, pre):
    """Keep what `_restore` needs: xi, where the clamp of its raw value is inactive, the bin,
    the rational terms and the knots' backward inputs."""
    ctx.save_for_backward(xi, (raw >= 0) & (raw <= 1), probabilities, pre, knots)
    ctx.bin, ctx.terms = b, terms


def _restore(ctx):
    """(xi, inside, bin, partials of Y and G at xi, knots, probabilities, pre) from `_save`."""
    xi, inside, probabilities, pre, knots = ctx.saved_tensors
    b = ctx.bin
    return xi, inside, b, _partials(xi, b, *ctx.terms), knots, probabilities, pre


class _SplineForward(torch.autograd.Function):
    """y = f(x), log f'(x), with a hand-written backward (one autograd node, not ~80)."""

    @staticmethod
    def forward(ctx, x, params):  # type: ignore[override]
        knots, probabilities, pre = _knots(params)
        b = _Bin(knots, x, 0)
        raw = (x - b.x0) / b.width
        xi = raw.clamp(0, 1)
        mix, A, D, N = _terms(xi, b)
        _save(ctx, raw, xi, b, (mix, A, D, N), knots, probabilities, pre)
        return b.y0 + b.height * A / D, _log_slope(b, D, N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_y, g_log):  # type: ignore[override]
        xi, inside, b, partials, knots, probabilities, pre = _restore(ctx)
        (y_xi, y_s, y_d0, y_d1, y_h), (l_xi, l_s, l_d0, l_d1) = partials
        g_xi = torch.where(inside, g_y * y_xi + g_log * l_xi, 0.0) / b.width
        g_s = (g_y * y_s + g_log * l_s) / b.width
        # xi = (x - x0) / width, s = height / width
        g_width = -g_xi * xi - g_s * b.s
        grad_params = None
        if ctx.needs_input_grad[1]:
            g_knots = b.scatter(
                knots,
                -g_xi,
                g_width,
                g_y,
                g_y * y_h + g_s,
                g_y * y_d0 + g_log * l_d0,
                g_y * y_d1 + g_log * l_d1,
            )
            grad_params = _knots_backward(g_knots, probabilities, pre)
        return (g_xi if ctx.needs_input_grad[0] else None), grad_params


class _SplineInverse(torch.autograd.Function):
    """x = f^{-1}(y), log (f^{-1})'(y); backward by the implicit function theorem."""

    @staticmethod
    def forward(ctx, y, params):  # type: ignore[override]
        knots, probabilities, pre = _knots(params)
        b = _Bin(knots, y, 1)
        dy = torch.minimum((y - b.y0).clamp_min(0), b.height)
        # y - y0 = height * (s xi^2 + d0 xi (1 - xi)) / (s + D xi (1 - xi)) is the quadratic
        # a xi^2 + b xi + c = 0 with c <= 0, whose root in [0, 1] is taken in the form that
        # adds numbers of one sign: 2c / (-b - sqrt) for b >= 0, (-b + sqrt) / 2a for b < 0
        # (then a > 0). The other form cancels catastrophically, e.g. near the top of a flat
        # bin with a steep end.
        curvature = b.d0 + b.d1 - 2 * b.s
        qa = b.height * (b.s - b.d0) + dy * curvature
        qb = b.height * b.d0 - dy * curvature
        qc = -b.s * dy
        root = torch.sqrt((qb.square() - 4 * qa * qc).clamp_min(0))
        b_positive = qb >= 0
        # the branch not taken gets a harmless denominator, so no inf/nan appears
        xi_b_positive = 2 * qc / torch.where(b_positive, -qb - root, -1.0)
        xi_b_negative = (root - qb) / torch.where(b_positive, 1.0, 2 * qa)
        raw = torch.where(b_positive, xi_b_positive, xi_b_negative)
        xi = raw.clamp(0, 1)
        mix, A, D, N = _terms(xi, b)
        _save(ctx, raw, xi, b, (mix, A, D, N), knots, probabilities, pre)
        return b.x0 + xi * b.width, -_log_slope(b, D, N)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_x, g_log):  # type: ignore[override]
        xi, inside, b, partials, knots, probabilities, pre = _restore(ctx)
        (y_xi, y_s, y_d0, y_d1, y_h), (l_xi, l_s, l_d0, l_d1) = partials
        # x = x0 + xi width and log slope = -G(xi); height A(xi) / D(xi) = y - y0 defines xi:
        # d xi = (dy - dy0 - Y_s ds - Y_d0 dd0 - Y_d1 dd1 - Y_height dheight) / Y_xi
        q = torch.where(inside, (g_x * b.width - g_log * l_xi) / y_xi, 0.0)
        g_s = (-q * y_s - g_log * l_s) / b.width
        grad_params = None
        if ctx.needs_input_grad[1]:
            g_knots = b.scatter(
                knots,
                g_x,
                g_x * xi - g_s * b.s,
                -q,
                -q * y_h + g_s,
                -q * y_d0 - g_log * l_d0,
                -q * y_d1 - g_log * l_d1,
            )
            grad_params = _knots_backward(g_knots, probabilities, pre)
        return (q if ctx.needs_input_grad[0] else None), grad_params


def _check_shapes(value: torch.Tensor, params: torch.Tensor) -> None:
    if params.shape[:-1] != value.shape:
        raise ValueError(
            f"spline parameters of shape {tuple(params.shape)} do not match values of shape "
            f"{tuple(value.shape)} (expected values.shape + (3 * n_bins,))"
        )


def spline_forward(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y = f(x) for x in [0, 2pi] and log f'(x); `params` has shape x.shape + (3K,).

    First derivatives (in x and params) by a hand-written backward; not twice differentiable.
    """
    _check_shapes(x, params)
    return _SplineForward.apply(x, params)


def spline_inverse(y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = f^{-1}(y) for y in [0, 2pi] and log (f^{-1})'(y) = -log f'(x).

    First derivatives (in y and params) by a hand-written backward; not twice differentiable.
    """
    _check_shapes(y, params)
    return _SplineInverse.apply(y, params)


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
