"""Figures 2-5 of the paper: training histories and Monte Carlo histories.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state, no display
backend) and saved as PDF (for the paper) and PNG (for the Snakemake report).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..choices import ESTIMATORS
from ..errors import UserError
from ..io import atomic_path, load_npz, read_json, require_file
from . import reliability
from .records import variant_label

__all__ = [
    "TrainingRun",
    "RUN_KEYS",
    "run_setting",
    "load_training_run",
    "running_average",
    "training_figure",
    "training_summary",
    "history_figure",
    "long_bridges",
    "save_figure",
]

_COLORS = dict(zip(ESTIMATORS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
_SEED_STYLES = ["-", "--", ":", "-."]


@dataclass
class TrainingRun:
    """One training run as plotted: its setting, metrics, acceptance history and outcome."""

    estimator: str
    amp: bool
    seed: int
    metrics: pd.DataFrame
    acceptance: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"step": [], "acceptance": []})
    )
    status: str = "completed"
    last_step: int | None = None
    L: int | None = None

    @property
    def label(self) -> str:
        return variant_label(self.estimator, self.amp)


#: what a training summary's ``config`` must say about the run
RUN_KEYS = ("estimator", "amp", "seed", "L")


def run_setting(summary: dict, path: str | os.PathLike) -> dict:
    """Estimator, amp, seed and L of a run, from the ``config`` its summary.json records."""
    config = summary.get("config")
    if not isinstance(config, dict):
        raise UserError(f"training summary {path} lacks key 'config' (the run's settings)")
    missing = [key for key in RUN_KEYS if key not in config]
    if missing:
        raise UserError(f"training summary {path} lacks key(s) config.{', config.'.join(missing)}")
    if config["estimator"] not in ESTIMATORS:
        raise UserError(
            f"training summary {path}: config.estimator {config['estimator']!r} "
            f"is none of {list(ESTIMATORS)}"
        )
    return {
        "estimator": str(config["estimator"]),
        "amp": bool(config["amp"]),
        "seed": int(config["seed"]),
        "L": int(config["L"]),
    }


def load_training_run(
    metrics: str | os.PathLike,
    summary: str | os.PathLike,
    acceptance: str | os.PathLike | None = None,
) -> TrainingRun:
    """Read a run's metrics.csv, summary.json (its outcome and setting) and acceptance CSV."""
    frame = pd.read_csv(require_file(metrics, "training metrics"))
    for column in ("step", "ess"):
        if column not in frame:
            raise UserError(f"training metrics {metrics} lack column {column!r}")
    info = read_json(summary, "training summary")
    acc = pd.DataFrame({"step": [], "acceptance": []})
    if acceptance is not None:
        acc = pd.read_csv(require_file(acceptance, "acceptance history"))
    return TrainingRun(
        **run_setting(info, summary),
        metrics=frame,
        acceptance=acc,
        status=str(info.get("status", "unknown")),
        last_step=info.get("step"),
    )


def running_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over `window` entries (fewer at the start); non-finite values skipped."""
    if window < 1:
        raise UserError(f"running-average window must be at least 1; got {window}")
    series = pd.Series(np.asarray(values, dtype=float))
    series[~np.isfinite(series)] = np.nan
    return series.rolling(window, min_periods=1).mean().to_numpy()


def _style(run: TrainingRun, seeds: list[int]) -> dict:
    color = _COLORS.get(run.estimator, "tab:gray")
    style = _SEED_STYLES[seeds.index(run.seed) % len(_SEED_STYLES)] if run.seed in seeds else "-"
    return {
        "color": color,
        "linestyle": style,
        "alpha": 0.55 if run.amp else 1.0,
        "linewidth": 1.0 if run.amp else 1.4,
    }


def wrap_title(title: str, width: int = 110) -> str:
    """`title` broken into lines of at most `width` characters (a long scale label would run
    off the figure); existing line breaks are kept."""
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def training_figure(runs: Sequence[TrainingRun], window: int, title: str = "") -> Figure:
    """Left: ESS (running average) vs gradient step; right: acceptance vs step."""
    if not runs:
        raise UserError("a training figure needs at least one run")
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_ess, ax_acc = fig.subplots(1, 2)
    seeds = sorted({r.seed for r in runs})
    for run in runs:
        style = _style(run, seeds)
        label = run.label + (f" (seed {run.seed})" if len(seeds) > 1 else "")
        if run.status == "diverged":
            label += f", diverged at {run.last_step}"
        m = run.metrics.sort_values("step")
        ess = running_average(m["ess"].to_numpy(), window)
        ax_ess.plot(m["step"], ess, label=label, **style)
        if run.status == "diverged" and len(m):
            ax_ess.plot(m["step"].iloc[-1], ess[-1], marker="x", color="red", markersize=8)
        if len(run.acceptance):
            a = run.acceptance.sort_values("step")
            ax_acc.plot(a["step"], a["acceptance"], marker="o", markersize=3, **style)
    ax_ess.set_xlabel("gradient step")
    ax_ess.set_ylabel(f"ESS (running mean over {window} steps)")
    ax_ess.set_ylim(bottom=0)
    ax_acc.set_xlabel("gradient step")
    ax_acc.set_ylabel("acceptance rate")
    ax_acc.set_ylim(bottom=0)
    ax_ess.legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(wrap_title(title), fontsize="medium")
    return fig


def training_summary(runs: Sequence[TrainingRun], window: int) -> pd.DataFrame:
    """The numbers behind a training figure: final running ESS and acceptance per run."""
    rows = []
    for run in runs:
        m = run.metrics.sort_values("step")
        ess = running_average(m["ess"].to_numpy(), window) if len(m) else np.array([np.nan])
        finite = ess[np.isfinite(ess)]
        acc = run.acceptance.sort_values("step")
        rows.append(
            {
                "estimator": run.estimator,
                "amp": run.amp,
                "seed": run.seed,
                "label": run.label,
                "status": run.status,
                "last_step": run.last_step,
                "final_ess": float(finite[-1]) if finite.size else None,
                "max_ess": float(finite.max()) if finite.size else None,
                "final_acceptance": float(acc["acceptance"].iloc[-1]) if len(acc) else None,
                "max_acceptance": float(acc["acceptance"].max()) if len(acc) else None,
                "wall_time": float(m["wall_time"].iloc[-1])
                if "wall_time" in m and len(m)
                else None,
            }
        )
    return pd.DataFrame(rows)


def long_bridges(accepted: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive rejections longer than `threshold`."""
    from ..analysis import bridges

    found = bridges(np.asarray(accepted, dtype=bool), threshold=threshold)
    return list(zip(found["long_starts"], found["long_lengths"], strict=True))


def history_figure(
    chain: dict[str, np.ndarray],
    threshold: int = 100,
    title: str = "",
    analysis: dict | None = None,
) -> Figure:
    """Monte Carlo history of σ and of the condensate; rejection runs > threshold in red."""
    for key in ("accepted", "sign", "condensate"):
        if key not in chain:
            raise UserError(f"chain lacks array {key!r}")
    sign = np.real(np.asarray(chain["sign"]))
    cond = np.real(np.asarray(chain["condensate"]))
    t = np.arange(sign.size)
    bridges = long_bridges(chain["accepted"], threshold)
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    ax_sign, ax_cond = fig.subplots(2, 1, sharex=True)
    for ax, series, name in ((ax_sign, sign, r"$\sigma$"), (ax_cond, cond, "condensate")):
        ax.plot(t, series, color="black", linewidth=0.4)
        for start, length in bridges:
            # a rejection run repeats the configuration before it: colour that stretch
            lo, hi = max(start - 1, 0), min(start + length - 1, series.size - 1)
            ax.plot(t[lo : hi + 1], series[lo : hi + 1], color="red", linewidth=1.2)
        ax.set_ylabel(name)
    ax_sign.set_ylim(-1.3, 1.3)
    ax_cond.set_xlabel("Monte Carlo time")
    note = f"{len(bridges)} rejection runs longer than {threshold} (red)"
    if analysis:
        acc = analysis.get("acceptance")
        tau = (analysis.get("condensate") or {}).get("tau_int")
        if acc is not None:
            note += f"; acceptance {100 * float(acc):.1f}%"
        if tau is not None:
            note += rf"; $\tau_{{int}}$(condensate) = {float(tau):.1f}"
        note += reliability.figure_note(analysis)
    fig.suptitle(wrap_title(f"{title}\n{note}" if title else note), fontsize="medium")
    return fig


def load_chain(path: str | os.PathLike) -> dict[str, np.ndarray]:
    return load_npz(path, keys=("accepted", "sign", "condensate"), what="Markov chain")


def save_figure(fig: Figure, pdf: str | os.PathLike, png: str | os.PathLike) -> None:
    """Save as PDF and PNG, each written atomically."""
    for path, kwargs in ((pdf, {"format": "pdf"}), (png, {"format": "png", "dpi": 150})):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **kwargs)
