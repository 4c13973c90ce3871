"""U(1) gauge-field basics against explicit link-by-link sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaugeflow.physics import u1


def _random_theta(generator: torch.Generator, batch: int = 3, L: int = 4) -> torch.Tensor:
    return 2 * math.pi * torch.rand(batch, 2, L, L, generator=generator, dtype=torch.float64)


def _link_sum(theta: np.ndarray, x: tuple[int, int], path: list[int]) -> np.ndarray:
    """Sum of link angles along a closed path of steps +-(mu + 1) starting at site x."""
    L = theta.shape[-1]
    total = np.zeros(theta.shape[0])
    pos = list(x)
    for step in path:
        mu = abs(step) - 1
        if step > 0:
            total += theta[:, mu, pos[0], pos[1]]
            pos[mu] = (pos[mu] + 1) % L
        else:
            pos[mu] = (pos[mu] - 1) % L
            total -= theta[:, mu, pos[0], pos[1]]
    assert pos == list(x), "path is not closed"
    return total


def test_plaquette_and_rect_loops_match_explicit_link_paths(generator):
    theta = _random_theta(generator, L=5)
    plaq = u1.plaquette(theta)
    rect_20, rect_02 = u1.rect_loops(plaq)
    t = theta.numpy()
    for x0 in range(5):
        for x1 in range(5):
            x = (x0, x1)
            np.testing.assert_allclose(plaq[:, x0, x1], _link_sum(t, x, [1, 2, -1, -2]), atol=1e-12)
            np.testing.assert_allclose(
                rect_20[:, x0, x1], _link_sum(t, x, [1, 1, 2, -1, -1, -2]), atol=1e-12
            )
            np.testing.assert_allclose(
                rect_02[:, x0, x1], _link_sum(t, x, [1, 2, 2, -1, -2, -2]), atol=1e-12
            )


def test_wrap_maps_into_minus_pi_pi(generator):
    angles = 40 * (torch.rand(1000, generator=generator, dtype=torch.float64) - 0.5)
    wrapped = u1.wrap(angles)
    assert wrapped.min() >= -math.pi and wrapped.max() < math.pi
    turns = (angles - wrapped) / (2 * math.pi)
    np.testing.assert_allclose(turns, torch.round(turns), atol=1e-12)


def _unit_charge_field(L: int) -> torch.Tensor:
    """Constant field strength 2 pi / V on every plaquette: topological charge exactly 1."""
    theta = torch.zeros(1, 2, L, L, dtype=torch.float64)
    x0 = torch.arange(L, dtype=torch.float64)
    theta[0, 1] = (2 * math.pi * x0 / L**2)[:, None]
    theta[0, 0, L - 1] = -2 * math.pi * torch.arange(L, dtype=torch.float64) / L
    return theta


@pytest.mark.parametrize("L", [3, 4, 6])
def test_unit_charge_configuration(L):
    theta = _unit_charge_field(L)
    volume = L * L
    assert u1.topological_charge(theta).item() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(u1.wrap(u1.plaquette(theta)), 2 * math.pi / volume, atol=1e-12)
    expected = -1.7 * volume * math.cos(2 * math.pi / volume)
    assert u1.gauge_action(theta, 1.7).item() == pytest.approx(expected, rel=1e-13)
    assert u1.mean_plaquette(theta).item() == pytest.approx(math.cos(2 * math.pi / volume))


def test_topological_charge_is_an_integer(generator):
    theta = _random_theta(generator, batch=50, L=6)
    raw = u1.topological_charge(theta, rounded=False)
    np.testing.assert_allclose(raw, torch.round(raw), atol=1e-10)  # the sum itself
    assert torch.equal(u1.topological_charge(theta), torch.round(raw))
    assert raw.abs().max() > 0.5, "50 random configurations all with Q = 0 is implausible"


def test_topological_charge_is_exactly_integer_in_float32():
    gen = torch.Generator().manual_seed(5)
    theta = (2 * math.pi * torch.rand(20, 2, 16, 16, generator=gen)).float()
    raw = u1.topological_charge(theta, rounded=False)
    charge = u1.topological_charge(theta)
    assert charge.dtype == torch.float32
    assert (raw - torch.round(raw)).abs().max() < 1e-3  # only rounding noise was removed
    assert torch.equal(charge, torch.round(charge))
    reference = u1.topological_charge(theta.double()).float()
    assert torch.equal(charge, reference)


def test_gauge_action_charge_and_loops_are_gauge_invariant(generator):
    theta = _random_theta(generator)
    transformed = u1.gauge_transform(theta, u1.random_gauge(theta, generator=generator))
    assert not torch.allclose(theta, transformed)
    np.testing.assert_allclose(u1.gauge_action(transformed, 2.0), u1.gauge_action(theta, 2.0))
    np.testing.assert_allclose(
        u1.topological_charge(transformed), u1.topological_charge(theta), atol=1e-12
    )
    np.testing.assert_allclose(
        torch.cos(u1.plaquette(transformed)), torch.cos(u1.plaquette(theta)), atol=1e-12
    )


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 5), torch.zeros(2, 4, 4), [0.0]]
)
def test_bad_shapes_raise_value_error(bad):
    with pytest.raises(ValueError, match=r"\[batch, 2, L, L\]"):
        u1.check_theta(bad)


def test_integer_angles_raise_value_error():
    with pytest.raises(ValueError, match="floating-point"):
        u1.gauge_action(torch.zeros(1, 2, 4, 4, dtype=torch.int64), 1.0)
