"""Tests of gaugeflow.analysis: ESS, Gamma-method autocorrelation, bridges, NIS estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gaugeflow.analysis import (
    acceptance_rate,
    analyze_chain,
    bridges,
    ess,
    free_energy,
    gamma_analysis,
    log_mean_exp,
    nis_estimates,
    reweight,
)


def ar1(rho: float, n: int, seed: int) -> np.ndarray:
    """x_t = rho x_{t-1} + sqrt(1 - rho^2) eps_t, started in equilibrium."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = eps[0]
    c = math.sqrt(1.0 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + c * eps[t]
    return x


# --- ESS -------------------------------------------------------------------------------------


def test_ess_matches_direct_formula_for_moderate_weights():
    lw = np.random.default_rng(0).normal(size=1000)
    w = np.exp(lw)
    expected = w.sum() ** 2 / (w.size * (w**2).sum())
    assert ess(lw) == pytest.approx(expected, rel=1e-12)
    assert ess(torch.from_numpy(lw).float()) == pytest.approx(expected, rel=1e-5)


def test_ess_is_stable_for_huge_log_weights():
    # exp(1e4) overflows; the log-space formula must not care about a common shift
    lw = np.random.default_rng(1).normal(size=500)
    assert ess(lw + 1e4) == pytest.approx(ess(lw), rel=1e-10)
    assert ess(lw - 1e4) == pytest.approx(ess(lw), rel=1e-10)


def test_ess_limits():
    assert ess(np.zeros(64)) == pytest.approx(1.0)
    # one weight dominates: ESS -> 1/N
    assert ess(np.array([0.0, -1e6, -1e6, -1e6])) == pytest.approx(0.25)
    assert ess(np.array([0.0, -np.inf])) == pytest.approx(0.5)
    assert math.isnan(ess(np.array([0.0, np.nan])))


def test_log_mean_exp_matches_numpy():
    x = np.array([0.1, -2.0, 3.0])
    assert log_mean_exp(x) == pytest.approx(np.log(np.exp(x).mean()), rel=1e-14)
    assert log_mean_exp(x + 2000.0) == pytest.approx(np.log(np.exp(x).mean()) + 2000.0)


# --- Gamma method ----------------------------------------------------------------------------


@pytest.mark.parametrize(("rho", "seed"), [(0.5, 11), (0.8, 12), (0.9, 13)])
def test_tau_int_of_ar1_matches_exact_value(rho, seed):
    exact = (1.0 + rho) / (2.0 * (1.0 - rho))
    res = gamma_analysis(ar1(rho, 2**16, seed))
    deviation = abs(res["tau_int"] - exact)
    assert deviation < 3 * res["tau_int_error"], (
        f"rho={rho}: tau_int {res['tau_int']:.3f} +- {res['tau_int_error']:.3f}, exact {exact:.3f}"
    )
    # the error of the mean includes the autocorrelation: sqrt(2 tau var / N), var = 1
    naive = 1.0 / math.sqrt(2**16)
    assert res["error"] == pytest.approx(naive * math.sqrt(2 * exact), rel=0.15)


def test_tau_int_of_uncorrelated_data_is_one_half():
    res = gamma_analysis(np.random.default_rng(5).standard_normal(2**14))
    assert abs(res["tau_int"] - 0.5) < 3 * res["tau_int_error"] + 1e-12, res
    assert res["error"] == pytest.approx(1 / math.sqrt(2**14), rel=0.1)


def test_constant_series_gives_zero_error_and_tau_one_half():
    res = gamma_analysis(np.ones(1000))
    assert res == {"mean": 1.0, "error": 0.0, "tau_int": 0.5, "tau_int_error": 0.0, "n": 1000}


def test_too_short_or_nonfinite_series_gives_nan_errors():
    short = gamma_analysis(np.array([1.0, 2.0, 3.0]))
    assert short["mean"] == pytest.approx(2.0)
    assert math.isnan(short["error"]) and math.isnan(short["tau_int"])
    bad = gamma_analysis(np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.0]))
    assert math.isnan(bad["error"])


# --- bridges and acceptance ------------------------------------------------------------------


def test_bridges_finds_runs_of_rejections():
    acc = np.ones(400, dtype=bool)
    acc[3:5] = False  # length 2 at 3
    acc[10] = False  # length 1 at 10
    acc[50:152] = False  # length 102 at 50
    acc[200:301] = False  # length 101 at 200
    acc[350:450] = False  # length 50 at 350, runs to the end
    res = bridges(acc, threshold=100)
    assert res["count"] == 5
    assert res["longest"] == 102
    assert res["long_starts"] == [50, 200]
    assert res["long_lengths"] == [102, 101]
    assert res["length_distribution"] == {1: 1, 2: 1, 50: 1, 101: 1, 102: 1}


def test_bridges_of_a_chain_without_rejections():
    res = bridges(np.ones(10, dtype=bool))
    assert res["count"] == 0 and res["longest"] == 0 and res["long_starts"] == []


def test_acceptance_rate_ignores_the_forced_first_step():
    assert acceptance_rate(np.array([True, False, True, False, False])) == pytest.approx(0.25)


def test_analyze_chain_has_the_cli_contract_keys():
    rng = np.random.default_rng(3)
    n = 1000
    chain = {
        "accepted": rng.random(n) < 0.5,
        "plaquette": rng.random(n),
        "condensate": rng.random(n),
        "sign": np.ones(n),
        "topological_charge": rng.integers(-2, 3, n).astype(float),
    }
    out = analyze_chain(chain)
    assert 0.4 < out["acceptance"] < 0.6
    for key in ("plaquette", "condensate", "sign", "topological_charge"):
        assert set(out[key]) >= {"mean", "error", "tau_int", "tau_int_error"}
    assert out["sign"]["error"] == 0.0
    assert set(out["bridges"]) >= {"count", "longest", "long_lengths", "long_starts"}


# --- NIS -------------------------------------------------------------------------------------


def test_free_energy_recovers_known_normalisation():
    # q = N(0, 1) proposals, unnormalised target P(x) = Z * N(x; 0.3, 1.2^2): log Z known
    rng = np.random.default_rng(7)
    x = rng.standard_normal(200_000)
    logq = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    log_z = 3.7
    s = 1.2
    logp = log_z - 0.5 * ((x - 0.3) / s) ** 2 - 0.5 * math.log(2 * math.pi * s**2)
    f, df = free_energy(logq, logp)
    assert df > 0
    assert abs(f - (-log_z)) < 3 * df, (f, df, -log_z)
    # shifting every log weight by a constant shifts F and leaves its error alone
    f2, df2 = free_energy(logq - 1000.0, logp)
    assert f2 == pytest.approx(f - 1000.0) and df2 == pytest.approx(df)


def test_reweighting_recovers_target_mean():
    rng = np.random.default_rng(8)
    x = rng.standard_normal(100_000)
    lw = 0.5 * x  # target ∝ N(x; 0.5, 1) * const  => mean 0.5
    mean, err = reweight(x, lw)
    assert abs(mean - 0.5) < 3 * err, (mean, err)
    assert err < 0.01


def test_nis_estimates_keys_and_equal_weights():
    rng = np.random.default_rng(9)
    logq = rng.normal(size=100)
    obs = {"plaquette": rng.random(100), "condensate": rng.random(100)}
    out = nis_estimates(logq, logq + 2.0, obs)
    assert out["ess"] == pytest.approx(1.0)
    assert out["free_energy"] == pytest.approx(-2.0)
    assert out["free_energy_error"] == pytest.approx(0.0, abs=1e-12)
    assert out["plaquette"]["mean"] == pytest.approx(obs["plaquette"].mean())
    assert out["plaquette"]["error"] == pytest.approx(obs["plaquette"].std(ddof=0) / math.sqrt(100))
