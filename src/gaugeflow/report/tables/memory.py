"""Table 5: memory saved for backward (M1), peak memory (M2) and saved tensors (n.t.)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pandas as pd

from .. import paper_data as paper
from ..latex import MISSING, Tabular, escape, format_number
from ..records import Measurement, variant_label
from .common import (
    GIB,
    Table,
    emph,
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

__all__ = ["table5"]

_PAPER_PARTS = ("M1_GB", "M2_GB", "nt")


def _entry_columns(key: str, m: Measurement | None) -> dict:
    saved = m.value("saved_bytes") if m else None
    peak = m.value("peak_bytes") if m else None
    return {
        f"{key}_M1_bytes": saved,
        f"{key}_M2_bytes": peak,
        f"{key}_M1_GiB": saved / GIB if saved is not None else None,
        f"{key}_M2_GiB": peak / GIB if peak is not None else None,
        f"{key}_nt": m.value("saved_tensors") if m else None,
        f"{key}_peak_kind": m.value("peak_kind") if m else None,
        f"{key}_status": status_of(m),
    }


def table5(records: Sequence[Measurement], scale: str = "") -> Table:
    """Saved-for-backward bytes (M1), peak memory (M2) and saved tensors (n.t.)."""
    rows = unique((m.L, m.batch_size) for m in records)
    variants = unique(m.variant for m in records)
    cell = {((m.L, m.batch_size), m.variant): m for m in records}
    match = paper_arch(records)
    kinds = sorted({str(m.value("peak_kind")) for m in records if m.ok and m.value("peak_kind")})
    sizes = [m.value(k) or 0 for m in records for k in ("saved_bytes", "peak_bytes")]
    unit, scale_to = ("GiB", GIB) if max(sizes, default=0) >= GIB / 10 else ("MiB", 2.0**20)
    frame_rows = []
    for row in rows:
        out: dict = {"L": row[0], "batch_size": row[1]}
        for v in variants:
            out.update(_entry_columns(variant_key(v), cell.get((row, v))))
        published = paper.TABLE5.get(row) if match else None
        out.update(published_columns(published, _PAPER_PARTS))
        frame_rows.append(out)
    peak = ", ".join(kinds) if kinds else "not recorded"
    notes = [
        f"One loss call: M1 = memory saved for backward [{unit}], n.t. = distinct saved "
        f"tensors, M2 = peak memory of the step [{unit}] ({escape(peak)})."
    ]
    if match and any(paper.TABLE5.get(r) for r in rows):
        notes.append(
            f"paper: published values in GB ({paper.PAPER_HARDWARE['table5']}, "
            "M2 = torch.cuda.max\\_memory\\_allocated)."
        )
    notes.append(setting_note(records, scale))
    layout = partial(_table5_latex, variants=variants, scale_to=scale_to)
    return Table(pd.DataFrame(frame_rows), layout, notes)


def _scaled(x: object, scale_to: float) -> str:
    value = present(x)
    return format_number(value / scale_to if value is not None else None)


def _table5_latex(frame: pd.DataFrame, variants: list, scale_to: float) -> Tabular:
    tab = Tabular("rr" + "rrr" * len(variants))
    tab.header.append(
        ["", ""] + [f"\\multicolumn{{3}}{{c}}{{{escape(variant_label(*v))}}}" for v in variants]
    )
    tab.header.append(["$L$", "batch"] + ["M1", "M2", "n.t."] * len(variants))
    for row in records_of(frame):
        cells = [str(row["L"]), str(row["batch_size"])]
        for v in variants:
            key = variant_key(v)
            status = row[f"{key}_status"]
            if status != "ok":
                cells += [status_cell(status), "", ""]
                continue
            n_t = present(row[f"{key}_nt"])
            cells += [
                _scaled(row[f"{key}_M1_bytes"], scale_to),
                _scaled(row[f"{key}_M2_bytes"], scale_to),
                str(int(n_t)) if n_t is not None else MISSING,
            ]
        tab.add_row(cells)
        if paper_row_present(row):
            tab.add_row(_table5_paper_cells(row, variants))
    return tab


def _table5_paper_cells(row: dict, variants: list) -> list[str]:
    cells = [r"\emph{paper}", ""]
    for v in variants:
        est, amp, asm = v
        values = None
        if asm == "loop" and not amp and est in paper.PAPER_ESTIMATORS:
            values = [present(row[f"paper_{est}_{p}"]) for p in _PAPER_PARTS]
        if values and all(x is not None for x in values):
            cells += [emph(format_number(x)) for x in values[:2]] + [emph(str(int(values[2])))]
        else:
            cells += ["", "", ""]
    return cells
