"""Circular rational-quadratic splines: a C^1 diffeomorphism of the circle, exactly invertible."""

from __future__ import annotations

import math

import pytest
import torch

from gaugeflow.flows.splines import (
    TWO_PI,
    charge_symmetric_params,
    n_spline_params,
    reflect_spline_params,
    spline_forward,
    spline_inverse,
    spline_knots,
)

N_BINS = 8


def random_params(n: int, dtype: torch.dtype, scale: float = 2.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, n_spline_params(N_BINS), generator=gen, dtype=dtype)


def test_zero_parameters_give_the_identity():
    x = torch.linspace(0, TWO_PI, 101, dtype=torch.float64)
    y, log_slope = spline_forward(x, torch.zeros(101, 3 * N_BINS, dtype=torch.float64))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_slope, torch.zeros_like(x), rtol=0, atol=1e-12)


def test_knots_span_the_circle_and_increase():
    xs, ys, slopes = spline_knots(random_params(50, torch.float32, scale=10.0))
    for knots in (xs, ys):
        assert (knots[:, 0] == 0).all() and (knots[:, -1] == TWO_PI).all()
        assert (knots.diff(dim=-1) > 0).all(), "knots must increase strictly"
    assert (slopes > 0).all()
    # the slope at 2pi is the slope at 0: the map is C^1 on the circle
    assert torch.equal(slopes[:, 0], slopes[:, -1])


def test_spline_maps_circle_onto_itself_and_fixes_zero():
    params = random_params(200, torch.float64)
    zero = torch.zeros(200, dtype=torch.float64)
    y0, _ = spline_forward(zero, params)
    y1, _ = spline_forward(zero + TWO_PI, params)
    assert y0.abs().max() == 0, f"f(0) = {y0.abs().max()}"
    torch.testing.assert_close(y1, zero + TWO_PI, rtol=0, atol=1e-12)
    x = torch.rand(200, dtype=torch.float64) * TWO_PI
    y, _ = spline_forward(x, params)
    assert ((y >= 0) & (y < TWO_PI)).all()


def test_spline_is_strictly_monotone():
    n = 2000
    x = torch.linspace(0, TWO_PI, n, dtype=torch.float64)
    params = random_params(1, torch.float64, scale=3.0).expand(n, -1)
    y, log_slope = spline_forward(x, params)
    steps = y.diff()
    assert (steps > 0).all(), f"non-increasing step {steps.min().item()}"
    assert torch.isfinite(log_slope).all()


def test_log_derivative_matches_autograd():
    params = random_params(500, torch.float64)
    x = (torch.rand(500, dtype=torch.float64) * TWO_PI).requires_grad_()
    y, log_slope = spline_forward(x, params)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_slope, grad.log(), rtol=0, atol=1e-10)


def test_inverse_log_derivative_matches_autograd():
    params = random_params(500, torch.float64)
    y = (torch.rand(500, dtype=torch.float64) * TWO_PI).requires_grad_()
    x, log_slope = spline_inverse(y, params)
    (grad,) = torch.autograd.grad(x.sum(), y)
    torch.testing.assert_close(log_slope, grad.log(), rtol=0, atol=1e-9)


def test_derivative_is_continuous_across_two_pi():
    params = random_params(100, torch.float64, scale=1.0)
    ends = torch.tensor([0.0, 1e-9, TWO_PI - 1e-9, TWO_PI], dtype=torch.float64)
    _, log_slope = spline_forward(ends.expand(100, -1), params.unsqueeze(1).expand(-1, 4, -1))
    at_zero, above_zero, below_two_pi, at_two_pi = log_slope.unbind(dim=1)
    torch.testing.assert_close(at_two_pi, at_zero, rtol=0, atol=1e-12)
    torch.testing.assert_close(below_two_pi, above_zero, rtol=0, atol=1e-5)


def _points_at_and_near(knots: torch.Tensor) -> torch.Tensor:
    """Each knot, and points one ulp, eight ulps and 1e-3 * 2pi to either side of it."""
    eps = torch.finfo(knots.dtype).eps
    offsets = torch.tensor([-1e-3, -8 * eps, -eps, 0.0, eps, 8 * eps, 1e-3], dtype=knots.dtype)
    return (knots.unsqueeze(-1) + TWO_PI * offsets).flatten(1).clamp(0, TWO_PI)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("direction", ["forward-first", "inverse-first"])
def test_inverse_is_exact_at_and_near_knots(dtype, tol, direction):
    params = random_params(64, dtype, scale=1.0)
    xs, ys, _ = spline_knots(params)
    if direction == "forward-first":
        points, first, second = _points_at_and_near(xs), spline_forward, spline_inverse
    else:
        points, first, second = _points_at_and_near(ys), spline_inverse, spline_forward
    prm = params.unsqueeze(1).expand(-1, points.shape[1], -1)
    mid, log_first = first(points, prm)
    back, log_second = second(mid, prm)
    for t in (mid, log_first, back, log_second):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(back, points, rtol=0, atol=tol)
    # log slopes vary fast inside narrow bins, so their sum inherits the rounding of `back`
    torch.testing.assert_close(
        log_first + log_second, torch.zeros_like(points), rtol=0, atol=1e3 * tol
    )


def test_round_trip_error_is_rounding_times_condition_for_sharp_splines():
    """Where f is flat, f^{-1}(f(x)) can only be as good as ulp(y) / f'(x); no worse."""
    dtype = torch.float32
    params = random_params(64, dtype, scale=6.0)
    xs, _, _ = spline_knots(params)
    points = _points_at_and_near(xs)
    prm = params.unsqueeze(1).expand(-1, points.shape[1], -1)
    y, log_slope = spline_forward(points, prm)
    back, _ = spline_inverse(y, prm)
    in_ulps = (
        (back - points).abs() * log_slope.exp().clamp(max=1) / (torch.finfo(dtype).eps * TWO_PI)
    )
    assert in_ulps.max() <= 16, f"round trip off by {in_ulps.max():.1f} ulps of 2pi (scaled)"


def test_float32_extreme_parameters_stay_finite():
    params = random_params(256, torch.float32, scale=40.0)
    x = torch.rand(256) * TWO_PI
    x[:8] = torch.tensor([0.0, TWO_PI, math.nextafter(TWO_PI, 0), 1e-30, 1e-7, 3.0, 6.2831, 2.0])
    y, log_a = spline_forward(x, params)
    back, log_b = spline_inverse(y, params)
    for t in (y, log_a, back, log_b):
        assert torch.isfinite(t).all()
    assert ((y >= 0) & (y <= TWO_PI)).all()


def test_spline_rejects_mismatched_parameters():
    with pytest.raises(ValueError, match="3 \\* n_bins"):
        spline_forward(torch.zeros(4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="do not match"):
        spline_forward(torch.zeros(4), torch.zeros(3, 24))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_reflected_parameters_give_the_reflected_spline(direction):
    """R p is the spline x -> 2pi - f(2pi - x): values and log slopes, both directions."""
    params = random_params(500, torch.float64, scale=2.5, seed=7)
    x = TWO_PI * torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    apply = spline_forward if direction == "forward" else spline_inverse
    y, log_slope = apply(x, params)
    y_r, log_slope_r = apply(TWO_PI - x, reflect_spline_params(params))
    assert (y - x).abs().max() > 0.5  # far from the identity, so the test can fail
    torch.testing.assert_close(y_r, TWO_PI - y, rtol=0, atol=1e-8)
    torch.testing.assert_close(log_slope_r, log_slope, rtol=0, atol=1e-8)
    # an involution; and not the identity on these parameters
    torch.testing.assert_close(reflect_spline_params(reflect_spline_params(params)), params)
    assert (reflect_spline_params(params) - params).abs().max() > 1.0


def test_charge_symmetric_params_turn_under_sign_flipped_features():
    """params(C f) = R params(f) for any net, with the sine channels last."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 24))
    net = net.double()
    angles = TWO_PI * torch.rand(32, 3, dtype=torch.float64)
    features = torch.cat([angles.cos(), angles.sin()], dim=1)
    conjugated = torch.cat([angles.cos(), -angles.sin()], dim=1)
    with torch.no_grad():
        p = charge_symmetric_params(net, features, n_odd=3)
        p_c = charge_symmetric_params(net, conjugated, n_odd=3)
        torch.testing.assert_close(p_c, reflect_spline_params(p), rtol=0, atol=1e-12)
        # the plain net has no such property (else the test would prove nothing)
        assert (net(conjugated) - reflect_spline_params(net(features))).abs().max() > 0.1


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_hand_written_backward_matches_finite_differences(direction):
    """The splines' backward (hand-written, one autograd node) against numerical derivatives
    in float64, in both the angle and all 3K parameters, through both outputs."""
    apply = spline_forward if direction == "forward" else spline_inverse
    params = random_params(12, torch.float64, scale=2.0, seed=11).requires_grad_()
    gen = torch.Generator().manual_seed(12)
    # keep clear of the knots (the derivative jumps there) and of the circle's ends
    x = 0.05 + (TWO_PI - 0.1) * torch.rand(12, dtype=torch.float64, generator=gen)
    x.requires_grad_()
    assert torch.autograd.gradcheck(apply, (x, params), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_hand_written_backward_equals_autograd_of_the_formulas():
    """Gradients of y and log f' equal those autograd gives for the same formulas written
    with stock torch ops (softmax, cumsum, gather), to 1e-10 in float64."""
    params = random_params(300, torch.float64, scale=3.0, seed=21).requires_grad_()
    gen = torch.Generator().manual_seed(22)
    x = (TWO_PI * torch.rand(300, dtype=torch.float64, generator=gen)).requires_grad_()

    def reference(value):
        K = N_BINS
        frac = 1e-3 + (1 - K * 1e-3) * torch.softmax(params[:, : 2 * K].view(-1, 2, K), -1)
        inner = TWO_PI * torch.cumsum(frac[..., :-1], -1)
        zero = torch.zeros_like(inner[..., :1])
        xs, ys = torch.cat([zero, inner, zero + TWO_PI], -1).unbind(1)
        shift = math.log(math.expm1(1.0 - 1e-3))
        d = 1e-3 + torch.nn.functional.softplus(params[:, 2 * K :] + shift)
        d = torch.cat([d, d[:, :1]], -1)
        k = (value.detach()[:, None] >= xs.detach()[:, 1:-1]).sum(-1, keepdim=True)
        at = lambda t, j: t.gather(-1, k + j).squeeze(-1)  # noqa: E731
        w, h = at(xs, 1) - at(xs, 0), at(ys, 1) - at(ys, 0)
        s, d0, d1 = h / w, at(d, 0), at(d, 1)
        xi = (value - at(xs, 0)) / w
        den = s + (d0 + d1 - 2 * s) * xi * (1 - xi)
        y = at(ys, 0) + h * (s * xi**2 + d0 * xi * (1 - xi)) / den
        num = d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2
        return y, 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)

    weights = torch.randn(2, 300, dtype=torch.float64, generator=gen)
    y, log_slope = spline_forward(x, params)
    y_ref, log_ref = reference(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_slope, log_ref, rtol=0, atol=1e-12)
    got = torch.autograd.grad((weights[0] * y + weights[1] * log_slope).sum(), (x, params))
    want = torch.autograd.grad(
        (weights[0] * y_ref + weights[1] * log_ref).sum(), (x, params), retain_graph=True
    )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the inverse at y = f(x): d f^{-1}(y) / d params = -(d f(x) / d params) / f'(x), row by row
    back, _ = spline_inverse(y.detach(), params)
    (g_inverse,) = torch.autograd.grad(back.sum(), params)
    (g_forward,) = torch.autograd.grad(y_ref.sum(), params)
    slope = log_ref.detach().exp().unsqueeze(-1)
    # (steep bins give derivatives up to ~1e5 here: relative agreement)
    torch.testing.assert_close(g_inverse, -g_forward / slope, rtol=1e-7, atol=1e-10)
