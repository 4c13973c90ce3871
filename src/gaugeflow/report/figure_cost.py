"""The cost figure (issue 14): ESS on fresh samples against training wall clock per estimator.

The paper plots ESS against gradient steps, which hides that the estimators' steps cost
different amounts. Here each training run's snapshots are placed at the wall-clock time the
run had spent when it wrote them (``wall_time`` of ``metrics.csv`` at the snapshot's step)
and scored by the ESS of the fresh proposals of the snapshot's acceptance chain (the
``ess`` column of ``acceptance.csv``; never the running ESS of a training batch).

`cost_sentence` turns the same numbers into the sentence the paper quotes, as the LaTeX
macro ``\\gfcostsentence`` (written next to the figure, ``figcost.tex``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..choices import ESTIMATOR_LABELS
from ..errors import UserError
from ..io import require_file
from .figures import wrap_title

__all__ = ["CostRun", "load_cost_run", "cost_table", "cost_figure", "cost_sentence", "tex_escape"]

_COLORS = {"rt": "tab:blue", "reinforce": "tab:orange", "path": "tab:green"}


@dataclass
class CostRun:
    """One run: (wall seconds, fresh ESS, acceptance) at each snapshot."""

    estimator: str
    amp: bool
    points: pd.DataFrame  # columns step, seconds, ess, acceptance

    @property
    def label(self) -> str:
        return ESTIMATOR_LABELS[self.estimator] + (" amp" if self.amp else "")


def load_cost_run(
    metrics: str | os.PathLike, acceptance: str | os.PathLike, estimator: str, amp: bool
) -> CostRun:
    """A run's snapshots at their training wall clock; names the file and column it lacks."""
    if estimator not in ESTIMATOR_LABELS:
        raise UserError(f"unknown estimator {estimator!r}; known: {list(ESTIMATOR_LABELS)}")
    m = pd.read_csv(require_file(metrics, "metrics file"))
    a = pd.read_csv(require_file(acceptance, "acceptance history"))
    for frame, path, cols in (
        (m, metrics, ("step", "wall_time")),
        (a, acceptance, ("step", "ess")),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise UserError(f"{path} lacks column(s) {missing}; it has {list(frame.columns)}")
    merged = a.merge(m[["step", "wall_time"]], on="step", how="inner")
    if len(merged) < len(a):
        lost = sorted(set(a["step"]) - set(merged["step"]))
        raise UserError(f"{acceptance}: snapshot steps {lost} have no row in {metrics}")
    points = pd.DataFrame(
        {
            "step": merged["step"].astype(int),
            "seconds": merged["wall_time"].astype(float),
            "ess": merged["ess"].astype(float),
            "acceptance": merged.get("acceptance", pd.Series(np.nan, index=merged.index)),
        }
    ).sort_values("seconds")
    return CostRun(estimator, bool(amp), points.reset_index(drop=True))


def cost_table(runs: Sequence[CostRun]) -> pd.DataFrame:
    """Every snapshot of every run, one row each (the numbers behind the figure)."""
    rows = [
        {"estimator": r.estimator, "amp": r.amp, **rec}
        for r in runs
        for rec in r.points.to_dict("records")
    ]
    return pd.DataFrame(rows, columns=["estimator", "amp", "step", "seconds", "ess", "acceptance"])


def cost_figure(runs: Sequence[CostRun], title: str = "") -> Figure:
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    for run in runs:
        ax.plot(
            run.points["seconds"],
            run.points["ess"],
            "--" if run.amp else "-",
            marker="o",
            markersize=3,
            color=_COLORS.get(run.estimator),
            label=run.label,
        )
    ax.set_xlabel("training wall clock [s]")
    ax.set_ylabel("ESS (fresh samples)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(wrap_title(title, 90), fontsize=8)
    fig.tight_layout()
    return fig


def cost_sentence(runs: Sequence[CostRun], margin: float = 2.0) -> str:
    """One sentence from the figure: each fp32 run's seconds per step, and its ESS at the wall
    clock the shortest of them reached (its last snapshot by then; "n/a" if none).

    One estimator is called the fastest only when its ESS is at least ``margin`` times every
    other's: the ESS of a few thousand fresh samples jumps by tens of percent between
    snapshots, so a smaller lead is not read as a ranking.
    """
    fp32 = [r for r in runs if not r.amp and len(r.points)] or [r for r in runs if len(r.points)]
    if not fp32:
        raise UserError("cost figure: no run has a snapshot")
    horizon = min(float(r.points["seconds"].max()) for r in fp32)
    scored = []
    for run in fp32:
        last = run.points.iloc[-1]
        per_step = float(last["seconds"]) / max(int(last["step"]), 1)
        taken = run.points[run.points["seconds"] <= horizon + 1e-9]
        ess = float(taken["ess"].iloc[-1]) if len(taken) else float("nan")
        steps = int(taken["step"].iloc[-1]) if len(taken) else None
        scored.append((ess, steps, per_step, run))
    scored.sort(key=lambda x: -x[0] if np.isfinite(x[0]) else np.inf)
    costs = ", ".join(f"{r.label} {c:.2f}~s" for _, _, c, r in scored)
    parts = []
    for ess, steps, _, run in scored:
        if steps is None:
            parts.append(f"{run.label} n/a (no snapshot yet)")
        else:
            parts.append(f"{run.label} {ess:.2f} after {steps} steps")
    text = (
        f"A training step took {costs}; after {horizon:.0f}~s of training the ESS on fresh "
        f"samples is {', '.join(parts)}"
    )
    finite = [x for x in scored if np.isfinite(x[0])]
    if len(finite) > 1 and finite[0][0] >= margin * finite[1][0]:
        return text + f", so per second of wall clock {finite[0][3].label} trains fastest here."
    if len(finite) > 1:
        return text + ", within the snapshot-to-snapshot scatter of one another."
    return text + "."


def tex_escape(text: str) -> str:
    """Escape the characters LaTeX would take as commands in a plain sentence."""
    return text.replace("%", r"\%").replace("#", r"\#").replace("&", r"\&")
