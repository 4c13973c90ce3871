"""Exact pure-gauge results against finite differences, limits and a Monte Carlo of our own."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special

from gaugeflow.physics.exact import (
    exact_pure_gauge,
    log_partition_function,
    mean_plaquette,
    mean_q2,
)


def _single_plaquette_q2(beta: float) -> float:
    """<(P / 2 pi)^2> for one plaquette angle P in [-pi, pi) with weight exp(beta cos P)."""
    num = integrate.quad(lambda p: p * p * math.exp(beta * math.cos(p)), -math.pi, math.pi)[0]
    den = integrate.quad(lambda p: math.exp(beta * math.cos(p)), -math.pi, math.pi)[0]
    return num / den / (2 * math.pi) ** 2


@pytest.mark.parametrize("L", [2, 4, 8])
@pytest.mark.parametrize("beta", [0.5, 2.0, 5.0])
def test_plaquette_is_the_beta_derivative_of_log_z(beta, L):
    h = 1e-4
    derivative = (log_partition_function(beta + h, L) - log_partition_function(beta - h, L)) / (
        2 * h * L * L
    )
    assert mean_plaquette(beta, L) == pytest.approx(derivative, abs=1e-8)


@pytest.mark.parametrize("beta", [0.5, 2.0, 5.0])
def test_large_volume_limits(beta):
    """For large V only n = 0 survives: <cos P> = I1/I0, <Q^2> = V <(P/2pi)^2> of one plaquette,
    log Z = 2V log 2pi + V log I0(beta)."""
    L = 32
    volume = L * L
    exact = exact_pure_gauge(beta, L)
    assert exact["plaquette"] == pytest.approx(special.i1(beta) / special.i0(beta), abs=1e-12)
    assert exact["q2"] / volume == pytest.approx(_single_plaquette_q2(beta), rel=1e-9)
    expected_log_z = 2 * volume * math.log(2 * math.pi) + volume * math.log(special.i0(beta))
    assert exact["log_z"] == pytest.approx(expected_log_z, rel=1e-13)
    assert exact["free_energy"] == -exact["log_z"]


def test_small_volumes_differ_from_the_infinite_volume():
    # the finite-torus constraint matters at L = 4, beta = 2: the test above is not trivial
    assert abs(mean_plaquette(2.0, 4) - special.i1(2.0) / special.i0(2.0)) > 1e-3
    assert abs(mean_q2(2.0, 4) / 16 - _single_plaquette_q2(2.0)) > 1e-3


def test_large_beta_and_volume_do_not_overflow():
    exact = exact_pure_gauge(100.0, 64)
    assert all(math.isfinite(v) for v in exact.values())
    assert exact["plaquette"] == pytest.approx(special.i1e(100.0) / special.i0e(100.0), abs=1e-12)


@pytest.mark.parametrize(
    ("beta", "L"), [(0.0, 4), (-1.0, 4), (float("inf"), 4), (1.0, 1), (1.0, 2.5)]
)
def test_bad_parameters_raise_value_error(beta, L):
    with pytest.raises(ValueError, match="beta|L must"):
        exact_pure_gauge(beta, L)


# --- Monte Carlo -----------------------------------------------------------------------------


def _plaquette(theta: np.ndarray) -> np.ndarray:
    """P(x) for theta[chains, 2, L, L]; axis 1 + mu of theta[:, mu] is direction mu."""
    t0, t1 = theta[:, 0], theta[:, 1]
    return t0 + np.roll(t1, -1, axis=1) - np.roll(t0, -1, axis=2) - t1


def _metropolis(
    beta: float, L: int, chains: int, sweeps: int, thermalise: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain means of cos P and Q^2 from a local Metropolis update of pure U(1).

    Links of one direction whose other coordinate has one parity share no plaquette, so they
    are updated at once: four independent sub-sweeps per sweep.
    """
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-np.pi, np.pi, size=(chains, 2, L, L))
    coords = np.indices((L, L))
    step = 1.5
    plaq_sum = np.zeros(chains)
    q2_sum = np.zeros(chains)
    for sweep in range(thermalise + sweeps):
        for mu in (0, 1):
            nu = 1 - mu
            for parity in (0, 1):
                mask = coords[nu] % 2 == parity
                proposal = theta.copy()
                proposal[:, mu] += np.where(mask, rng.uniform(-step, step, (chains, L, L)), 0)
                # link mu at x sits in P(x) and P(x - nu)
                d_plaq = -beta * (np.cos(_plaquette(proposal)) - np.cos(_plaquette(theta)))
                d_action = d_plaq + np.roll(d_plaq, 1, axis=1 + nu)
                accept = mask & (rng.random((chains, L, L)) < np.exp(-d_action))
                theta[:, mu] = np.where(accept, proposal[:, mu], theta[:, mu])
        if sweep >= thermalise:
            plaq = _plaquette(theta)
            charge = (np.mod(plaq + np.pi, 2 * np.pi) - np.pi).sum(axis=(1, 2)) / (2 * np.pi)
            plaq_sum += np.cos(plaq).mean(axis=(1, 2))
            q2_sum += charge**2
    return plaq_sum / sweeps, q2_sum / sweeps


@pytest.mark.parametrize(("beta", "L"), [(2.0, 4), (1.0, 2)])
def test_exact_values_agree_with_monte_carlo(beta, L):
    """At L = 2 the f'(n)^2 term of <Q^2> and the torus constraint are large effects."""
    plaq, q2 = _metropolis(beta, L, chains=64, sweeps=300, thermalise=50, seed=7)
    exact = exact_pure_gauge(beta, L)
    for name, per_chain, value in (
        ("plaquette", plaq, exact["plaquette"]),
        ("q2", q2, exact["q2"]),
    ):
        mean = per_chain.mean()
        error = per_chain.std(ddof=1) / math.sqrt(per_chain.size)
        assert abs(mean - value) < 4 * error, f"{name}: MC {mean} +- {error}, exact {value}"
