"""Statistics of batches and chains: ESS, Gamma-method errors, bridges, NIS estimates.

Conventions
-----------
- Integrated autocorrelation times follow pyerrors (Wolff's Gamma method with automatic
  windowing, hep-lat/0306017): tau_int = 1/2 + sum_{t>=1} rho(t), so uncorrelated data give
  tau_int = 0.5 and the error of the mean is sqrt(2 tau_int var / N).
- A constant series (for example sigma = +1 at every step) has no fluctuations: its error is
  0, tau_int is reported as 0.5 and its error as 0 (pyerrors' own convention for a vanishing
  Gamma(0)); nothing is divided by zero.
- Importance weights w = exp(log P - log q) are positive: for two flavours the fermion weight
  is det(D^dagger D) = |det D|^2 >= 0, so the sign sigma = sign Re det D never enters the
  weights; it is an observable like any other and is reweighted the same way.

Verdicts (issue 17): every estimate says whether it can be trusted.
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

__all__ = [
    "ess",
    "log_mean_exp",
    "acceptance_rate",
    "gamma_analysis",
    "bridges",
    "free_energy",
    "reweight",
    "nis_estimates",
    "analyze_chain",
    "CHAIN_OBSERVABLES",
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

#: Observables recorded per step in a chain, analysed by `analyze_chain`.
CHAIN_OBSERVABLES = ("plaquette", "condensate", "sign", "topological_charge")

#: Largest Pareto k-hat for which a PSIS / importance-sampling estimate is trusted.
PARETO_K_CAP = 0.7
#: A chain must be at least this many (tau_int + its error) long.
TAU_FACTOR = 100
#: ... and must have visited at least this many distinct configurations.
MIN_DISTINCT = 100


def _as_float64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def log_mean_exp(log_values: torch.Tensor | np.ndarray) -> float:
    """log((1/N) sum exp(x)), stable for large |x|; -inf entries count as zero."""
    x = _as_float64(log_values)
    if x.size == 0:
        raise ValueError("log_mean_exp() needs at least one value")
    m = x.max()
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.exp(x - m).mean()))


def ess(log_weights: torch.Tensor | np.ndarray) -> float:
    """Normalised effective sample size (paper eq. 26) of a batch, computed in log space.

    ESS = (sum w)^2 / (N sum w^2) with w = exp(log_weights), log_weights = log P - log q;
    it lies in [1/N, 1]. Entries of -inf count as zero weight; NaN or +inf give NaN.
    """
    lw = _as_float64(log_weights)
    n = lw.size
    if n == 0:
        raise ValueError("ess() needs at least one log weight")
    if np.isnan(lw).any() or np.isposinf(lw).any() or np.isneginf(lw).all():
        return float("nan")
    m = lw.max()
    log_s1 = np.log(np.exp(lw - m).sum())
    log_s2 = np.log(np.exp(2.0 * (lw - m)).sum())
    return float(np.exp(2.0 * log_s1 - log_s2 - np.log(n)))


def acceptance_rate(accepted: np.ndarray) -> float:
    """Fraction of accepted proposals, not counting the first step (accepted by construction)."""
    accepted = np.asarray(accepted, dtype=bool).reshape(-1)
    if accepted.size < 2:
        return float("nan")
    return float(accepted[1:].mean())


def gamma_analysis(series: np.ndarray, S: float = 2.0, name: str = "chain") -> dict[str, float]:
    """Mean, error, tau_int and its error of one Monte Carlo history (pyerrors Gamma method).

    Returns a dict with keys mean, error, tau_int, tau_int_error, n and window (the summation
    window W the automatic windowing chose; None where no analysis ran). A series shorter than
    5 entries (pyerrors' minimum) gets NaN errors; a constant one gets error 0, tau_int 0.5.
    """
    import pyerrors as pe

    x = _as_float64(series)
    n = int(x.size)
    mean = float(x.mean()) if n else float("nan")
    nan = float("nan")
    if n < 5 or not np.isfinite(x).all():
        return {
            "mean": mean,
            "error": nan,
            "tau_int": nan,
            "tau_int_error": nan,
            "n": n,
            "window": None,
        }
    obs = pe.Obs([x], [name])
    obs.gamma_method(S=S)
    return {
        "mean": float(obs.value),
        "error": float(obs.dvalue),
        "tau_int": float(obs.e_tauint[name]),
        "tau_int_error": float(obs.e_dtauint[name]),
        "n": n,
        "window": int(obs.e_windowsize[name]),
    }


def bridges(accepted: np.ndarray, threshold: int = 100) -> dict[str, object]:
    """Runs of consecutive rejections ("bridges") of a chain.

    Returns count (number of runs), longest, mean_length, length_distribution (length ->
    number of runs), threshold, and long_starts / long_lengths: the first rejected step and
    length of each run longer than `threshold`.
    """
    rejected = ~np.asarray(accepted, dtype=bool).reshape(-1)
    padded = np.concatenate(([False], rejected, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    lengths = np.flatnonzero(edges == -1) - starts
    values, counts = np.unique(lengths, return_counts=True)
    long = lengths > threshold
    return {
        "count": int(lengths.size),
        "longest": int(lengths.max()) if lengths.size else 0,
        "mean_length": float(lengths.mean()) if lengths.size else 0.0,
        "length_distribution": {int(v): int(c) for v, c in zip(values, counts, strict=True)},
        "threshold": int(threshold),
        "long_starts": [int(s) for s in starts[long]],
        "long_lengths": [int(v) for v in lengths[long]],
    }


def free_energy(logq: np.ndarray, logp: np.ndarray) -> tuple[float, float]:
    """NIS estimate of F = -log Z = -log mean(exp(log P - log q)) and its delta-method error.

    With w normalised by its maximum, dF = std(w) / (sqrt(N) mean(w)); the estimate itself is
    biased by O(1 / (N ESS)), far below the error for any useful sample.
    """
    lw = _as_float64(logp) - _as_float64(logq)
    n = lw.size
    f = -log_mean_exp(lw)
    if n < 2 or not np.isfinite(f):
        return f, float("nan")
    w = np.exp(lw - lw.max())
    return f, float(w.std(ddof=1) / (math.sqrt(n) * w.mean()))


def reweight(values: np.ndarray, log_weights: np.ndarray) -> tuple[float, float]:
    """Self-normalised importance-sampling mean sum(w O) / sum(w) and its delta-method error."""
    o = _as_float64(values)
    lw = _as_float64(log_weights)
    if o.size != lw.size:
        raise ValueError(f"values ({o.size}) and log weights ({lw.size}) differ in length")
    w = np.exp(lw - lw.max())
    w = w / w.sum()
    mean = float(np.dot(w, o))
    error = float(np.sqrt(np.dot(w**2, (o - mean) ** 2)))
    return mean, error


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


def nis_estimates(
    logq: np.ndarray, logp: np.ndarray, observables: Mapping[str, np.ndarray]
) -> dict[str, object]:
    """Neural importance sampling from independent proposals: F, its error, ESS, observables.

    Carries the verdict of `nis_verdict` (pareto_k, pareto_k_threshold, ess_count, PSIS log Z,
    reliable, reason); reweighted observables share it (they use the same weights).
    """
    lw = _as_float64(logp) - _as_float64(logq)
    f, df = free_energy(logq, logp)
    out: dict[str, object] = {
        "n": int(lw.size),
        "free_energy": f,
        "free_energy_error": df,
        "log_z": -f,
        "ess": ess(lw),
    }
    out.update({k: v for k, v in nis_verdict(lw).items() if k not in out})
    for key, values in observables.items():
        mean, error = reweight(values, lw)
        out[key] = {"mean": mean, "error": error}
    return out


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


def analyze_chain(
    chain: Mapping[str, np.ndarray],
    observables: tuple[str, ...] = CHAIN_OBSERVABLES,
    S: float = 2.0,
    bridge_threshold: int = 100,
) -> dict[str, object]:
    """Acceptance, Gamma-method statistics of each observable, bridges, and their verdicts.

    Each observable's entry carries ``reliable`` and ``reason`` (`observable_verdict`); the
    top level has n_distinct, longest_rejection_run, reliable and reason (`chain_verdict`).
    When the chain also holds ``proposal_logq`` and ``proposal_logp`` (the log densities of
    every proposal, as `gaugeflow sample` writes), ``nis`` gives the free energy, ESS and
    PSIS verdict of those independent proposals.
    """
    accepted = np.asarray(chain["accepted"], dtype=bool)
    out: dict[str, object] = {"n": int(accepted.size), "acceptance": acceptance_rate(accepted)}
    stats = {key: gamma_analysis(chain[key], S=S) for key in observables}
    verdict = chain_verdict(chain, observables, S=S, stats=stats)
    for key in observables:
        entry = verdict["observables"][key]  # type: ignore[index]
        out[key] = {**stats[key], "reliable": entry["reliable"], "reason": entry["reason"]}
    out["bridges"] = bridges(accepted, threshold=bridge_threshold)
    for key in ("n_distinct", "longest_rejection_run", "reliable", "reason"):
        out[key] = verdict[key]
    if "proposal_logq" in chain and "proposal_logp" in chain:
        out["nis"] = nis_estimates(chain["proposal_logq"], chain["proposal_logp"], {})
    return out
