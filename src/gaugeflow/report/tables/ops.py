"""Table 4: the backward node types that take the most time, with their counts."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pandas as pd

from .. import paper_data as paper
from ..latex import Tabular, escape, format_number
from ..records import Measurement, variant_label
from .common import Table, emph, paper_arch, present, records_of, setting_note, unique

__all__ = ["table4"]


def _top_entries(m: Measurement) -> list[tuple[str, int, float]]:
    """(name, count, seconds) from a record's `top`, whatever its row shape."""
    out = []
    for item in m.value("top") or []:
        if isinstance(item, dict):
            name = item.get("name") or item.get("op")
            out.append((str(name), int(item.get("count", 0)), float(item.get("seconds", 0.0))))
        else:
            name, count, seconds = item[:3]
            out.append((str(name), int(count), float(seconds)))
    return out


def _rows_of(m: Measurement, published: dict, top: int) -> list[dict]:
    """Frame rows of one record: its top entries, or one row saying why there are none."""
    setting = {
        "estimator": m.estimator,
        "amp": m.amp,
        "assembly": m.assembly,
        "L": m.L,
        "batch_size": m.batch_size,
    }
    if not m.ok:
        return [{**setting, "rank": None, "op": None, "status": m.status}]
    rows = []
    for rank, (name, count, seconds) in enumerate(_top_entries(m)[:top], start=1):
        ref = published.get(name)
        rows.append(
            {
                **setting,
                "rank": rank,
                "op": name,
                "count": count,
                "ms": 1000.0 * seconds,
                "status": m.status,
                "paper_count": ref[1] if ref else None,
                "paper_ms": ref[0] if ref else None,
            }
        )
    return rows


def table4(records: Sequence[Measurement], scale: str = "", top: int = 10) -> Table:
    """The `top` backward node types by time for each variant, with counts."""
    settings = unique((m.L, m.batch_size) for m in records)
    match = paper_arch(records) and all(
        (L, bs) == (paper.TABLE4_SETTING["L"], paper.TABLE4_SETTING["batch_size"])
        for L, bs in settings
    )
    frame_rows = []
    for m in records:
        published = paper.TABLE4.get(m.estimator, {}) if (match and m.assembly == "loop") else {}
        frame_rows += _rows_of(m, published, top)
    notes = [
        f"Time spent in each type of autograd node during one backward, top {top} by time, "
        "with the number of such nodes."
    ]
    if match:
        notes.append(
            f"paper: published values for the same node type ({paper.PAPER_HARDWARE['table4']})."
        )
    notes.append(setting_note(records, scale))
    return Table(pd.DataFrame(frame_rows), partial(_table4_latex, with_paper=match), notes)


def _table4_latex(frame: pd.DataFrame, with_paper: bool) -> Tabular:
    tab = Tabular("llrr" + ("rr" if with_paper else ""))
    head = ["", "backward node", "count", "ms"]
    if with_paper:
        head += [r"\emph{paper count}", r"\emph{paper ms}"]
    tab.header.append(head)
    extra = ["", ""] if with_paper else []
    for row in records_of(frame):
        rank = present(row["rank"])
        if rank is None or rank == 1:  # a new record: a rule between records
            tab.add_midrule()
        v = variant_label(row["estimator"], row["amp"], row["assembly"])
        label = escape(f"{v}, L={int(row['L'])}, bs={int(row['batch_size'])}")
        if rank is None:
            tab.add_row([label, str(row["status"]), "", ""] + extra)
            continue
        cells = [label if rank == 1 else "", escape(row["op"]), str(int(row["count"]))]
        cells.append(format_number(row["ms"]))
        if with_paper:
            ref_count = present(row["paper_count"])
            cells += (
                [emph(str(int(ref_count))), emph(format_number(row["paper_ms"]))]
                if ref_count is not None
                else extra
            )
        tab.add_row(cells)
    return tab
