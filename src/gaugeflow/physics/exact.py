"""Exact pure U(1) gauge theory on the finite L x L torus (character expansion).

With V = L^2 plaquettes and the Lebesgue measure on [0, 2 pi)^(2V) (docs/INTERFACES.md),

    Z = (2 pi)^(2V) sum_n I_n(beta)^V,
    <cos P> = sum_n I_n^(V-1) (I_(n-1) + I_(n+1)) / 2 / sum_n I_n^V.

The topological charge follows from the theta vacuum: weighting each configuration with
exp(i t Q), Q = sum_x wrap(P(x)) / 2 pi, turns I_n(beta) into f(n + nu), nu = t / 2 pi, with

    f(nu) = (1/pi) int_0^pi exp(beta cos p) cos(nu p) dp    (f(n) = I_n(beta)),

so Z(t) = sum_n f(n + nu)^V and <Q^2> = -Z''(0) / Z(0), d/dt = (1/2 pi) d/dnu. Everything is
computed with exp(-beta)-scaled functions (scipy.special.ive) and log-sum-exp, so large
beta and V do not overflow.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["exact_pure_gauge", "log_partition_function", "mean_plaquette", "mean_q2"]


def _check(beta: float, L: int) -> tuple[float, int]:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < math.inf:
        raise ValueError(f"beta must be a finite real number > 0; got {beta!r}")
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 2:
        raise ValueError(f"L must be an integer >= 2; got {L!r}")
    return beta, int(L)


def _orders(beta: float, volume: int) -> np.ndarray:
    """Orders n = -N..N such that the terms left out are below exp(-60) of the n = 0 one."""
    n_max = int(beta + 10 * math.sqrt(beta)) + 20
    while volume * (_log_ive(np.array(n_max), beta) - _log_ive(np.array(0), beta)) > -60:
        n_max *= 2
    return np.arange(-n_max, n_max + 1)


def _log_ive(n: np.ndarray, beta: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(special.ive(n, beta))


def _logsumexp(x: np.ndarray) -> float:
    top = np.max(x)
    return float(top + np.log(np.sum(np.exp(x - top))))


def log_partition_function(beta: float, L: int) -> float:
    """log Z, including the 2V log(2 pi) of the measure."""
    beta, L = _check(beta, L)
    volume = L * L
    n = _orders(beta, volume)
    # I_n(beta)^V = exp(V beta) ive_n^V
    return (
        2 * volume * math.log(2 * math.pi) + volume * beta + _logsumexp(volume * _log_ive(n, beta))
    )


def _weights(beta: float, volume: int, n: np.ndarray, power: int) -> np.ndarray:
    """ive_n^power / sum_m ive_m^V, evaluated through logs."""
    log_ive = _log_ive(n, beta)
    return np.exp(power * log_ive - _logsumexp(volume * log_ive))


def mean_plaquette(beta: float, L: int) -> float:
    """<cos P> = (1/V) d log Z / d beta."""
    beta, L = _check(beta, L)
    volume = L * L
    n = _orders(beta, volume)
    derivative = 0.5 * (special.ive(n - 1, beta) + special.ive(n + 1, beta))  # I_n'(beta) e^-beta
    return float(np.sum(_weights(beta, volume, n, volume - 1) * derivative))


def _f_derivatives(beta: float, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp(-beta) f'(n) and exp(-beta) f''(n) at integer orders n >= 0.

    Gauss-Legendre quadrature on [0, pi] (the integrands are smooth), with the number of
    nodes doubled until f'(n), f''(n) stop changing and f(n) from the same nodes matches
    ive(n, beta).
    """
    orders = np.asarray(orders, dtype=float)
    previous = None
    start = 64 + 2 * int(orders.max(initial=0))
    for nodes in (start * 2**k for k in range(6)):
        x, w = special.roots_legendre(nodes)
        p = 0.5 * math.pi * (x + 1)
        w = 0.5 * math.pi * w * np.exp(beta * (np.cos(p) - 1))  # times exp(-beta) e^(beta cos p)
        phase = np.outer(orders, p)
        f = np.cos(phase) @ w / math.pi
        first = -(np.sin(phase) @ (w * p)) / math.pi
        second = -(np.cos(phase) @ (w * p * p)) / math.pi
        current = np.concatenate([first, second])
        # |f'|, |f''| <= pi^2: absolute tolerances near double-precision roundoff
        converged = previous is not None and np.max(np.abs(current - previous)) < 1e-13
        if converged and np.max(np.abs(f - special.ive(orders, beta))) < 1e-13:
            return first, second
        previous = current
    raise RuntimeError(f"the quadrature for f'(n), f''(n) did not converge at beta = {beta}")


def mean_q2(beta: float, L: int) -> float:
    """<Q^2> with Q = sum_x wrap(P(x)) / 2 pi."""
    beta, L = _check(beta, L)
    volume = L * L
    n = _orders(beta, volume)
    weights = _weights(beta, volume, n, volume - 2)
    # orders whose weight is negligible need no quadrature (|f'|, |f''| <= pi^2);
    # f' is odd and f'' even in nu, and only f'^2 enters below
    needed = weights > 1e-30
    first, second = np.zeros(n.shape), np.zeros(n.shape)
    first[needed], second[needed] = _f_derivatives(beta, np.abs(n[needed]))
    f = special.ive(n, beta)
    # Z''(nu) = V sum_n f^(V-2) [(V-1) f'^2 + f f''], all scaled by exp(-V beta)
    terms = (volume - 1) * first**2 + f * second
    z2 = volume * np.sum(weights * terms)
    return float(-z2 / (2 * math.pi) ** 2)


def exact_pure_gauge(beta: float, L: int) -> dict[str, float]:
    """Exact log_z, free_energy = -log_z, plaquette = <cos P> and q2 = <Q^2> on L x L."""
    log_z = log_partition_function(beta, L)
    return {
        "log_z": log_z,
        "free_energy": -log_z,
        "plaquette": mean_plaquette(beta, L),
        "q2": mean_q2(beta, L),
    }
