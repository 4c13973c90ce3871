"""Statistics of batches and chains: ESS, Gamma-method errors, bridges, free energy.

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
"""

from __future__ import annotations

import math

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
    "CHAIN_OBSERVABLES",
]

#: Observables recorded per step in a chain, analysed by `analyze_chain`.
CHAIN_OBSERVABLES = ("plaquette", "condensate", "sign", "topological_charge")


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
