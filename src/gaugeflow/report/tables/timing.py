"""Tables 1 and 2: time of 100 gradient steps (with speed-ups over r.t.), and the time of
one loss call and one backward."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pandas as pd

from .. import paper_data as paper
from ..latex import Tabular, escape, format_number
from ..records import Measurement, variant_label
from .common import (
    Table,
    emph,
    entry_cell,
    paper_arch,
    paper_row_present,
    present,
    published_columns,
    records_of,
    setting_note,
    status_cell,
    status_of,
    unique,
    variant_key,
)

__all__ = ["table1", "table2"]

BASELINE = ("rt", False, "loop")
# Table 1's published columns and the variant each belongs to
_TABLE1_PAPER = {
    "rt": ("rt", False, "loop"),
    "reinforce": ("reinforce", False, "loop"),
    "reinforce_amp": ("reinforce", True, "loop"),
}

Row = tuple[int, int, int]


def _seconds_per_100(m: Measurement) -> float | None:
    step = m.value("step_seconds")
    return None if step is None else 100.0 * float(step)


def _table1_row(row: Row, variants: list, cell: dict, times: dict, best_rt) -> dict:
    out: dict = {"L": row[0], "batch_size": row[1], "n_batches": row[2]}
    own = times.get((row, BASELINE))
    ref, basis = (own, "row") if own else (best_rt(row[0]), "best_rt")
    for v in variants:
        t = times.get((row, v))
        key = variant_key(v)
        speedup = ref / t if (ref and t and v != BASELINE) else None
        out[f"{key}_seconds"] = t
        out[f"{key}_status"] = status_of(cell.get((row, v)))
        out[f"{key}_speedup"] = speedup
        out[f"{key}_speedup_basis"] = basis if speedup else ""
    return out


def table1(records: Sequence[Measurement], scale: str = "") -> Table:
    """Time of 100 gradient steps per (L, batch, n_batches) and variant, with speed-ups."""
    rows = unique((m.L, m.batch_size, m.n_batches) for m in records)
    variants = unique(m.variant for m in records)
    cell = {((m.L, m.batch_size, m.n_batches), m.variant): m for m in records}
    times = {key: _seconds_per_100(m) if m.ok else None for key, m in cell.items()}

    def best_rt(L: int) -> float | None:
        candidates = [t for (r, v), t in times.items() if r[0] == L and v == BASELINE and t]
        return min(candidates) if candidates else None

    match = paper_arch(records)
    frame_rows = []
    for row in rows:
        out = _table1_row(row, variants, cell, times, best_rt)
        published = paper.TABLE1.get(row) if match else None
        for k in _TABLE1_PAPER:
            value = published.get(k) if published else None
            out[f"paper_{k}"] = value if value is not None else ("oom" if published else None)
        frame_rows.append(out)
    notes = [
        "Seconds for 100 gradient steps (median step time $\\times$ 100); in parentheses the speed-up"
        " over r.t. (loop assembly) in the same row, * relative to the best r.t. at that L. "
        "oom: did not fit in memory; crashed: the measurement failed."
    ]
    measured = [m for m in records if m.ok]
    if measured and all(m.value("round_order") == "rotating" for m in measured):
        notes.append(
            "The columns of each row were timed together, one gradient step of each in turn "
            "(rotating order), so a row's speed-ups come from the same minutes of the machine."
        )
    if match and any(paper.TABLE1.get(r) for r in rows):
        notes.append(
            f"Rows marked paper: published values ({paper.PAPER_HARDWARE['table1']}), "
            "-- where the paper's r.t. did not fit."
        )
    notes.append(setting_note(records, scale))
    return Table(pd.DataFrame(frame_rows), partial(_table1_latex, variants=variants), notes)


def _table1_latex(frame: pd.DataFrame, variants: list) -> Tabular:
    tab = Tabular("rrr" + "r" * len(variants))
    tab.header.append(["$L$", "bs", "nb"] + [escape(variant_label(*v)) for v in variants])
    for row in records_of(frame):
        cells = [str(row["L"]), str(row["batch_size"]), str(row["n_batches"])]
        for v in variants:
            key = variant_key(v)
            text = entry_cell(row[f"{key}_status"], row[f"{key}_seconds"])
            speedup = present(row[f"{key}_speedup"])
            if speedup:
                star = "*" if row[f"{key}_speedup_basis"] == "best_rt" else ""
                text += f" ({format_number(speedup, 3)}{star})"
            cells.append(text)
        tab.add_row(cells)
        if paper_row_present(row):
            tab.add_row(_table1_paper_cells(row, variants))
    return tab


def _table1_paper_cells(row: dict, variants: list) -> list[str]:
    """The published row: 'oom' (the paper's r.t. did not fit) shows as --."""
    published = {
        k: None if row[f"paper_{k}"] == "oom" else present(row[f"paper_{k}"]) for k in _TABLE1_PAPER
    }
    by_variant = {v: k for k, v in _TABLE1_PAPER.items()}
    rt = published["rt"]
    cells = [r"\emph{paper}", "", ""]
    for v in variants:
        k = by_variant.get(v)
        if k is None:
            cells.append("")
            continue
        value = published[k]
        text = format_number(value)
        if value and rt and k != "rt":
            text += f" ({format_number(rt / value)})"
        cells.append(emph(text))
    return cells


# --------------------------------------------------------------------------------------
# Table 2: one loss call and one backward


def table2(records: Sequence[Measurement], scale: str = "") -> Table:
    """Seconds of one loss evaluation and one backward per (L, batch) and variant."""
    records = [m for m in records if not m.amp]
    rows = unique((m.L, m.batch_size, m.n_batches) for m in records)
    variants = unique(m.variant for m in records)
    cell = {((m.L, m.batch_size, m.n_batches), m.variant): m for m in records}
    match = paper_arch(records)
    frame_rows = []
    for row in rows:
        out: dict = {"L": row[0], "batch_size": row[1], "n_batches": row[2]}
        for v in variants:
            m = cell.get((row, v))
            loss = m.value("loss_seconds") if m else None
            back = m.value("backward_seconds") if m else None
            total = loss + back if (loss is not None and back is not None) else None
            key = variant_key(v)
            out[f"{key}_total"] = total
            out[f"{key}_loss"] = loss
            out[f"{key}_backward"] = back
            out[f"{key}_status"] = status_of(m)
        published = paper.TABLE2.get((row[0], row[1])) if match else None
        out.update(published_columns(published, ("total", "loss", "backward")))
        frame_rows.append(out)
    notes = [
        "Seconds of one loss evaluation and of one backward call on a batch of bs "
        "(medians over the timed steps); total = loss + back."
    ]
    if match and any(paper.TABLE2.get((r[0], r[1])) for r in rows):
        notes.append(f"paper: published values ({paper.PAPER_HARDWARE['table2']}).")
    notes.append(setting_note(records, scale))
    return Table(pd.DataFrame(frame_rows), partial(_table2_latex, variants=variants), notes)


def _table2_latex(frame: pd.DataFrame, variants: list) -> Tabular:
    tab = Tabular("rr" + "rrr" * len(variants))
    tab.header.append(
        ["", ""] + [f"\\multicolumn{{3}}{{c}}{{{escape(variant_label(*v))}}}" for v in variants]
    )
    tab.header.append(["$L$", "bs"] + ["total", "loss", "back"] * len(variants))
    parts = ("total", "loss", "backward")
    for row in records_of(frame):
        cells = [str(row["L"]), str(row["batch_size"])]
        for v in variants:
            key = variant_key(v)
            status = row[f"{key}_status"]
            if status != "ok":
                cells += [status_cell(status), "", ""]
            else:
                cells += [format_number(present(row[f"{key}_{p}"])) for p in parts]
        tab.add_row(cells)
        if paper_row_present(row):
            paper_cells = [r"\emph{paper}", ""]
            for v in variants:
                if v[2] != "loop" or v[0] not in paper.PAPER_ESTIMATORS:
                    paper_cells += ["", "", ""]
                    continue
                values = [present(row[f"paper_{v[0]}_{p}"]) for p in parts]
                if all(x is None for x in values):  # the paper's entry did not fit
                    paper_cells += [r"\emph{--}", "", ""]
                else:
                    paper_cells += [emph(format_number(x)) for x in values]
            tab.add_row(paper_cells)
    return tab
