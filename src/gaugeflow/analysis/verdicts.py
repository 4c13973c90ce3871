"""Verdicts (issue 17): every estimate says whether it can be trusted.

- Importance sampling (`nis_verdict`): Pareto-smoothed importance sampling (Vehtari, Simpson,
  Gelman, Yao, Gabry, arXiv:1507.02646) from ArviZ (``arviz_stats``). The estimate is reliable
  when the Pareto shape k-hat of the weights' upper tail is at most
  min(1 - 1/log10 S, 0.7) for S samples: the sample-size-dependent threshold of that paper,
  equivalent to S >= 10^(1/(1 - k-hat)), capped at 0.7 where the PSIS estimate itself stops
  converging usefully.
- Markov chains (`chain_verdict`): an observable is reliable when the chain is long against
  its autocorrelation, N >= 100 (tau_int + d tau_int), when the Gamma method's automatic
  window was found inside the data (pyerrors' search did not run into its maximum, N/2), and
  when the chain visited at least 100 distinct configurations (a chain stuck on a few
  configurations gives constant series that look uncorrelated).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from .stats import (
    CHAIN_OBSERVABLES,
    _as_float64,
    acceptance_rate,
    bridges,
    ess,
    free_energy,
    gamma_analysis,
    log_mean_exp,
)

__all__ = [
    "PARETO_K_CAP",
    "TAU_FACTOR",
    "MIN_DISTINCT",
    "pareto_k_threshold",
    "psis",
    "nis_verdict",
    "chain_facts",
    "observable_verdict",
    "chain_verdict",
]

#: Largest Pareto k-hat for which a PSIS / importance-sampling estimate is trusted.
PARETO_K_CAP = 0.7
#: A chain must be at least this many (tau_int + its error) long.
TAU_FACTOR = 100
#: ... and must have visited at least this many distinct configurations.
MIN_DISTINCT = 100


def pareto_k_threshold(n: int) -> float:
    """min(1 - 1/log10 S, 0.7): the largest k-hat for which S importance samples suffice."""
    if n < 2:
        return float("-inf")
    return float(min(1.0 - 1.0 / math.log10(n), PARETO_K_CAP))


def psis(log_weights: torch.Tensor | np.ndarray, r_eff: float = 1.0) -> dict[str, float]:
    """Pareto-smoothed importance sampling of log weights (ArviZ's ``psislw``).

    Returns pareto_k (shape of the generalised Pareto fit to the upper tail of the weights),
    log_z (the PSIS estimate of log mean(w), i.e. log Z for w = P/q), log_z_error (its
    delta-method error from the smoothed weights) and ess_count (1 / sum of squared
    normalised smoothed weights). ``r_eff`` is the relative efficiency of the draws (1 for
    independent proposals). Where ArviZ cannot fit a tail (fewer than about 25 samples, or
    tail weights all equal) pareto_k is +inf, as ArviZ itself falls back to; where every weight
    is the same (to rounding) the weights are exact and pareto_k is -inf.
    """
    from arviz_stats.base import array_stats

    lw = _as_float64(log_weights)
    n = lw.size
    nan = float("nan")
    if n == 0 or not np.isfinite(lw).all():
        return {"pareto_k": nan, "log_z": nan, "log_z_error": nan, "ess_count": nan}
    if np.ptp(lw) <= 1e-12 * max(1.0, float(np.abs(lw).max())):  # equal up to rounding
        return {
            "pareto_k": -math.inf,
            "log_z": log_mean_exp(lw),
            "log_z_error": 0.0,
            "ess_count": n,
        }
    try:
        # ArviZ's psislw takes log-likelihood-like values: it smooths the upper tail of
        # exp(-x), so it is handed -log w; it returns normalised smoothed log weights. Its
        # RuntimeWarnings (degenerate fits) are summed up by the verdict instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            smoothed, khat = array_stats.psislw(-lw, r_eff=r_eff)
    except ValueError:  # no tail to fit: too few draws, or tail weights all equal
        f, df = free_energy(np.zeros(n), lw)
        return {"pareto_k": math.inf, "log_z": -f, "log_z_error": df, "ess_count": n * ess(lw)}
    smoothed = np.asarray(smoothed, dtype=np.float64).reshape(-1)
    # smoothing replaces only the largest weights; the lower half keeps its log weights up
    # to the common normalisation c = log sum(smoothed raw weights), which they reveal
    lower = np.argsort(lw)[: max(1, n // 2)]
    c = float(np.median(lw[lower] - smoothed[lower]))
    f, df = free_energy(np.zeros(n), smoothed + c)
    return {
        "pareto_k": float(khat),
        "log_z": -f,
        "log_z_error": df,
        "ess_count": float(1.0 / np.exp(2.0 * smoothed).sum()),
    }


def nis_verdict(log_weights: torch.Tensor | np.ndarray, r_eff: float = 1.0) -> dict[str, object]:
    """Whether an importance-sampling estimate from these log weights can be trusted.

    ``log_weights`` = log P - log q of independent proposals. Returns n, ess (fraction),
    ess_count (effective samples, N * ess), pareto_k, pareto_k_threshold
    (`pareto_k_threshold`), psis_log_z and psis_log_z_error (`psis`), psis_ess_count,
    reliable (k-hat <= threshold and every weight finite) and reason (one line, None when
    reliable). The time-to-quality benchmark and `gaugeflow nis` use this one verdict.
    """
    lw = _as_float64(log_weights)
    n = int(lw.size)
    fraction = ess(lw) if n else float("nan")
    smoothed = psis(lw, r_eff)
    k, threshold = smoothed["pareto_k"], pareto_k_threshold(n)
    if n == 0 or not np.isfinite(lw).all():
        bad = n - int(np.isfinite(lw).sum())
        reason = "no log weights" if n == 0 else f"{bad} of {n} log weights are not finite"
    elif math.isnan(k) or (math.isinf(k) and k > 0):
        reason = f"no Pareto tail could be fitted to {n} weights"
    elif k > threshold:
        reason = f"k̂ = {k:.2f} > {threshold:.2f}"
    else:
        reason = None
    return {
        "n": n,
        "ess": fraction,
        "ess_count": n * fraction,
        "pareto_k": k,
        "pareto_k_threshold": threshold,
        "psis_log_z": smoothed["log_z"],
        "psis_log_z_error": smoothed["log_z_error"],
        "psis_ess_count": smoothed["ess_count"],
        "reliable": reason is None,
        "reason": reason,
    }


def chain_facts(accepted: np.ndarray) -> dict[str, object]:
    """Acceptance, number of distinct configurations visited and longest rejection run.

    Every accepted step (the forced first one included) moves the chain to a new proposal, so
    the number of distinct configurations is the number of accepted steps.
    """
    accepted = np.asarray(accepted, dtype=bool).reshape(-1)
    return {
        "n": int(accepted.size),
        "acceptance": acceptance_rate(accepted),
        "n_distinct": int(accepted.sum()),
        "longest_rejection_run": bridges(accepted)["longest"],
    }


def observable_verdict(
    stats: Mapping[str, object],
    n_distinct: int | None = None,
    factor: float = TAU_FACTOR,
    min_distinct: int = MIN_DISTINCT,
) -> dict[str, object]:
    """Whether a Gamma-method estimate (`gamma_analysis` output) of a chain can be trusted.

    Reliable when N >= factor * (tau_int + tau_int_error), when the automatic window stayed
    inside the data (W < N/2 - 1, pyerrors' search limit), and when ``n_distinct`` (if given)
    is at least ``min_distinct``. Returns reliable, reason (None when reliable) and
    n_over_tau = N / tau_int.
    """
    n = int(stats["n"])
    tau = float(stats["tau_int"])  # type: ignore[arg-type]
    dtau = float(stats["tau_int_error"])  # type: ignore[arg-type]
    window = stats.get("window")
    n_over_tau = n / tau if math.isfinite(tau) and tau > 0 else float("nan")
    if not (math.isfinite(tau) and math.isfinite(dtau)):
        reason = f"no autocorrelation analysis of {n} steps (too short or non-finite)"
    elif n < factor * (tau + dtau):
        reason = (
            f"N/(τ_int + δτ_int) = {n / (tau + dtau):.3g} < {factor:g}"
            f" (N = {n}, τ_int = {tau:.3g} ± {dtau:.3g})"
        )
    elif window is not None and int(window) >= n // 2 - 1 and tau > 0.5:  # type: ignore[arg-type]
        reason = f"the Gamma method found no window inside {n} steps"
    elif n_distinct is not None and n_distinct < min_distinct:
        reason = f"only {n_distinct} distinct configurations (< {min_distinct})"
    else:
        reason = None
    return {"reliable": reason is None, "reason": reason, "n_over_tau": n_over_tau}


def chain_verdict(
    chain: Mapping[str, np.ndarray],
    observables: tuple[str, ...] = CHAIN_OBSERVABLES,
    S: float = 2.0,
    stats: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, object]:
    """Whether the estimates of a Markov chain can be trusted.

    ``chain`` holds ``accepted`` and one series per name in ``observables``; ``stats``
    optionally gives their `gamma_analysis` results (computed here otherwise). Returns the
    `chain_facts` plus ``observables`` (name -> `observable_verdict`), reliable (all of them
    reliable) and reason (the first unreliable observable's reason, with its name).
    """
    facts = chain_facts(chain["accepted"])
    verdicts = {}
    for key in observables:
        s = stats[key] if stats is not None and key in stats else gamma_analysis(chain[key], S=S)
        verdicts[key] = observable_verdict(s, n_distinct=facts["n_distinct"])  # type: ignore[arg-type]
    bad = [(k, v["reason"]) for k, v in verdicts.items() if not v["reliable"]]
    return {
        **facts,
        "observables": verdicts,
        "reliable": not bad,
        "reason": f"{bad[0][0]}: {bad[0][1]}" if bad else None,
    }
