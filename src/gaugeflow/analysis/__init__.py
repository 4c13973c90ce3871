"""Statistics of batches and chains: ESS, Gamma-method errors, bridges, NIS estimates,
and the verdict of each estimate (whether it can be trusted).

`stats` holds the estimators and their conventions, `verdicts` the reliability rules
(issue 17); this module combines them into the records `gaugeflow analyze` and `gaugeflow
nis` write.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .stats import (
    CHAIN_OBSERVABLES,
    _as_float64,
    acceptance_rate,
    bridges,
    ess,
    free_energy,
    gamma_analysis,
    log_mean_exp,
    reweight,
)
from .verdicts import (
    MIN_DISTINCT,
    PARETO_K_CAP,
    TAU_FACTOR,
    chain_facts,
    chain_verdict,
    nis_verdict,
    observable_verdict,
    pareto_k_threshold,
    psis,
)

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
