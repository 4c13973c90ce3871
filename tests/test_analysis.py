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
    chain_facts,
    chain_verdict,
    ess,
    free_energy,
    gamma_analysis,
    log_mean_exp,
    nis_estimates,
    nis_verdict,
    observable_verdict,
    pareto_k_threshold,
    psis,
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
    assert res == {
        "mean": 1.0,
        "error": 0.0,
        "tau_int": 0.5,
        "tau_int_error": 0.0,
        "n": 1000,
        "window": 0,
    }


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
    assert out["reliable"] is True and out["pareto_k"] == -math.inf  # exact weights
    assert out["free_energy"] == pytest.approx(-2.0)
    assert out["free_energy_error"] == pytest.approx(0.0, abs=1e-12)
    assert out["plaquette"]["mean"] == pytest.approx(obs["plaquette"].mean())
    assert out["plaquette"]["error"] == pytest.approx(obs["plaquette"].std(ddof=0) / math.sqrt(100))


def test_nis_estimates_carry_the_psis_verdict():
    rng = np.random.default_rng(10)
    logq = rng.normal(size=4096)
    out = nis_estimates(logq, logq + 0.01 * rng.normal(size=4096), {})
    for key in ("pareto_k", "pareto_k_threshold", "ess_count", "psis_log_z", "reliable", "reason"):
        assert key in out, key
    assert out["ess_count"] == pytest.approx(4096 * out["ess"])
    assert out["reliable"] is True and out["reason"] is None


# --- verdicts: PSIS for importance sampling ---------------------------------------------------


def test_pareto_k_threshold_follows_the_sample_size_rule():
    assert pareto_k_threshold(100) == pytest.approx(0.5)
    assert pareto_k_threshold(1000) == pytest.approx(2 / 3)
    assert pareto_k_threshold(8192) == pytest.approx(0.7)  # 1 - 1/log10 S = 0.744, capped
    assert pareto_k_threshold(10**6) == pytest.approx(0.7)


def test_log_normal_weights_with_a_large_sigma_are_flagged():
    # w = exp(sigma * z): the upper tail of a log-normal is heavier than any finite Pareto
    # sample can resolve; at sigma = 3 PSIS sees k-hat well above 0.7
    lw = 3.0 * np.random.default_rng(20).standard_normal(8192)
    v = nis_verdict(lw)
    assert v["pareto_k"] > v["pareto_k_threshold"] == pytest.approx(0.7)
    assert v["reliable"] is False
    assert v["reason"] == f"k̂ = {v['pareto_k']:.2f} > 0.70"
    assert v["ess_count"] < 200  # about 1% of 8192


def test_pareto_tail_of_known_shape_gives_that_k_hat_and_is_flagged():
    # weights with a generalised-Pareto upper tail of shape k = 1.2: P(w > t) ~ t^(-1/1.2)
    rng = np.random.default_rng(21)
    lw = np.log1p(rng.pareto(1 / 1.2, 8192))
    v = nis_verdict(lw)
    assert 0.9 < v["pareto_k"] < 1.5, v
    assert v["reliable"] is False and "k̂" in v["reason"]


def test_well_matched_weights_are_reliable_and_psis_keeps_log_z():
    # q = p up to small noise: k-hat far below the threshold, PSIS changes nothing
    lw = 2.5 + 0.05 * np.random.default_rng(22).standard_normal(8192)
    v = nis_verdict(lw)
    assert v["pareto_k"] < 0.3 and v["reliable"] is True and v["reason"] is None
    assert v["ess_count"] > 0.99 * 8192
    assert abs(v["psis_log_z"] - log_mean_exp(lw)) < 0.1 * v["psis_log_z_error"], v


def test_psis_log_z_recovers_a_known_normalisation():
    # q = N(0, 1), target P = Z N(0.3, 1.2^2): tails of p/q grow but stay Pareto-light
    rng = np.random.default_rng(23)
    x = rng.standard_normal(50_000)
    log_z, s = 3.7, 1.2
    lw = (
        log_z
        - 0.5 * ((x - 0.3) / s) ** 2
        - 0.5 * math.log(2 * math.pi * s**2)
        + 0.5 * x**2
        + 0.5 * math.log(2 * math.pi)
    )
    res = psis(lw)
    assert res["pareto_k"] < 0.7
    assert abs(res["log_z"] - log_z) < 3 * res["log_z_error"], res


def test_nis_verdict_of_bad_or_degenerate_weights():
    v = nis_verdict(np.array([0.0, np.nan, 1.0] * 20))
    assert v["reliable"] is False and "20 of 60 log weights are not finite" == v["reason"]
    few = nis_verdict(np.random.default_rng(24).standard_normal(10))
    assert few["reliable"] is False and "no Pareto tail" in few["reason"]
    same = nis_verdict(np.full(50, 4.0))  # q proportional to p exactly: exact weights
    assert same["reliable"] is True and same["psis_log_z"] == pytest.approx(4.0)


# --- verdicts: Markov chains ------------------------------------------------------------------


def ar1_tau(tau: float, n: int, seed: int) -> np.ndarray:
    """AR(1) with integrated autocorrelation time tau = (1 + rho) / (2 (1 - rho))."""
    return ar1((2 * tau - 1) / (2 * tau + 1), n, seed)


@pytest.mark.parametrize("seed", [30, 31])
def test_ar1_chain_with_tau_500_and_8192_steps_is_flagged(seed):
    x = ar1_tau(500.0, 8192, seed)
    chain = {"accepted": np.ones(x.size, dtype=bool), "condensate": x}
    v = chain_verdict(chain, observables=("condensate",))
    cond = v["observables"]["condensate"]
    assert cond["reliable"] is False and cond["reason"].startswith("N/(τ_int + δτ_int) = ")
    assert v["reliable"] is False and v["reason"].startswith("condensate: ")


def test_ar1_chain_with_tau_5_and_2_17_steps_is_not_flagged():
    x = ar1_tau(5.0, 2**17, 32)
    chain = {"accepted": np.ones(x.size, dtype=bool), "condensate": x}
    v = chain_verdict(chain, observables=("condensate",))
    assert v["reliable"] is True and v["reason"] is None, v
    assert v["observables"]["condensate"]["n_over_tau"] > 1000


def test_tau_error_counts_in_the_chain_length_rule():
    # N = 100 tau_int exactly passes only without the error of tau_int
    stats = {"n": 1000, "tau_int": 10.0, "tau_int_error": 0.0, "window": 40}
    assert observable_verdict(stats)["reliable"] is True
    assert observable_verdict({**stats, "tau_int_error": 1.0})["reliable"] is False


def test_window_at_the_search_limit_is_flagged():
    stats = {"n": 10_000, "tau_int": 20.0, "tau_int_error": 5.0, "window": 10_000 // 2 - 1}
    v = observable_verdict(stats)
    assert v["reliable"] is False and "window" in v["reason"]


def test_a_stuck_chain_is_flagged_although_its_series_are_constant():
    # 50 accepted steps, then the chain sits on one configuration: constant series look
    # uncorrelated (tau_int = 0.5), only the count of distinct configurations tells
    accepted = np.zeros(20_000, dtype=bool)
    accepted[:50] = True
    plaq = np.concatenate([np.random.default_rng(33).random(50), np.full(20_000 - 50, 0.4)])
    chain = {"accepted": accepted, "plaquette": plaq, "sign": np.ones(20_000)}
    v = chain_verdict(chain, observables=("plaquette", "sign"))
    assert v["n_distinct"] == 50 and v["longest_rejection_run"] == 20_000 - 50
    assert v["observables"]["sign"]["reliable"] is False
    assert "only 50 distinct configurations" in v["observables"]["sign"]["reason"]
    assert v["reliable"] is False


def test_chain_facts_count_distinct_configurations_and_rejection_runs():
    accepted = np.array([True, False, False, True, True, False, False, False, True])
    facts = chain_facts(accepted)
    assert facts == {
        "n": 9,
        "acceptance": pytest.approx(3 / 8),
        "n_distinct": 4,
        "longest_rejection_run": 3,
    }


def test_analyze_chain_carries_the_verdicts():
    x = ar1_tau(500.0, 8192, 34)
    n = x.size
    chain = {
        "accepted": np.ones(n, dtype=bool),
        "plaquette": np.random.default_rng(35).random(n),
        "condensate": x,
        "sign": np.ones(n),
        "topological_charge": np.zeros(n),
    }
    out = analyze_chain(chain)
    assert out["plaquette"]["reliable"] is True and out["plaquette"]["reason"] is None
    assert out["condensate"]["reliable"] is False
    assert out["reliable"] is False and out["reason"].startswith("condensate: ")
    assert out["n_distinct"] == n and out["longest_rejection_run"] == 0
