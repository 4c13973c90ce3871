"""Table 3: distinct autograd nodes per variant and L, and the fitted a L^2 + b."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd

from ...choices import ESTIMATOR_LABELS
from ...measure.fits import fit_quadratic
from .. import paper_data as paper
from ..latex import MISSING, Tabular, escape, format_number
from ..records import Measurement, variant_label
from .common import Table, emph, paper_arch, present, records_of, setting_note, unique

__all__ = ["table3", "fit_node_counts"]


def fit_node_counts(Ls: Sequence[int], nodes: Sequence[float]) -> tuple[float, float] | None:
    """a, b of nodes = a L^2 + b by the one fit (`gaugeflow.measure.fits.fit_quadratic`, also
    behind `gaugeflow measure dagfit`); None with fewer than two distinct L."""
    if len(set(Ls)) < 2:
        return None
    fit = fit_quadratic(Ls, nodes)
    return fit["a"], fit["b"]


def _node_cell(m: Measurement | None) -> object:
    """A CSV cell: the node count, or the reason there is none ('–' when not measured)."""
    nodes = m.value("nodes") if m else None
    if nodes is not None:
        return nodes
    return MISSING if m is None else m.status


def table3(records: Sequence[Measurement], scale: str = "") -> Table:
    """Graph nodes per variant (rows) and L (columns), with the fitted a L^2 + b."""
    Ls = sorted({m.L for m in records})
    variants = unique(m.variant for m in records)
    cell = {(m.variant, m.L): m for m in records}
    match = paper_arch(records)
    frame_rows = []
    for v in variants:
        out: dict = {"estimator": v[0], "amp": v[1], "assembly": v[2]}
        fit_L, fit_n = [], []
        for L in Ls:
            m = cell.get((v, L))
            out[f"L{L}"] = _node_cell(m)
            nodes = m.value("nodes") if m else None
            if nodes is not None:
                fit_L.append(L)
                fit_n.append(float(nodes))
        fit = fit_node_counts(fit_L, fit_n)
        out["fit_a"], out["fit_b"] = fit if fit else (None, None)
        frame_rows.append(out)
    if match:
        for est in paper.PAPER_ESTIMATORS:
            published = paper.TABLE3[est]
            out = {"estimator": est, "amp": False, "assembly": "loop", "source": "paper"}
            for L in Ls:
                out[f"L{L}"] = published.get(L)
            out["fit_a"], out["fit_b"] = paper.TABLE3_FIT.get(est, (0.0, float(published[4])))
            frame_rows.append(out)
    notes = [
        "Distinct autograd nodes reachable from the loss of one step; $a$, $b$: least-squares "
        "fit nodes $= aL^2 + b$ over the L measured. Node counts do not depend on the batch."
    ]
    if match:
        notes.append("paper: published counts (loop assembly, the authors' implementation).")
    notes.append(setting_note(records, scale))
    frame = pd.DataFrame(frame_rows)
    if "source" in frame:
        frame["source"] = frame["source"].fillna("ours")
    return Table(frame, partial(_table3_latex, Ls=Ls), notes)


def _count_text(x: object) -> str:
    """LaTeX of a node-count cell: the count, or the status ('ok' without a count: –)."""
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
        return str(int(x))
    return MISSING if x == "ok" else str(x)


def _table3_latex(frame: pd.DataFrame, Ls: list[int]) -> Tabular:
    tab = Tabular("l" + "r" * len(Ls) + "rr")
    tab.header.append(["$L$"] + [str(L) for L in Ls] + ["$a$", "$b$"])
    ours = True
    for row in records_of(frame):
        a, b = present(row["fit_a"]), present(row["fit_b"])
        if row.get("source") == "paper":
            if ours:  # a rule between our rows and the paper's
                tab.add_midrule()
                ours = False
            cells = [emph("paper " + escape(ESTIMATOR_LABELS[row["estimator"]]))]
            for L in Ls:
                n = present(row[f"L{L}"])
                cells.append(emph(str(int(n))) if n is not None else "")
            cells += [emph(format_number(a)), emph(format_number(b, 4))]
        else:
            cells = [escape(variant_label(row["estimator"], row["amp"], row["assembly"]))]
            cells += [_count_text(row[f"L{L}"]) for L in Ls]
            cells += [format_number(a), format_number(b, 4)] if a is not None else [MISSING] * 2
        tab.add_row(cells)
    return tab
