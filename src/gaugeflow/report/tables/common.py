"""What the tables share: the `Table` (a frame and how LaTeX shows it), the one renderer
that writes LaTeX and CSV from it, and small helpers of the builders and layouts."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from ...io import write_text
from .. import paper_data as paper
from ..latex import MISSING, Tabular, escape, format_number
from ..records import Measurement

__all__ = ["Table", "render_latex", "render_csv", "write_table"]

GIB = 2.0**30


@dataclass
class Table:
    """A built table.

    `frame` holds the numbers, one row per row of the table (ours, and where the setting
    matches the paper's numbers in ``paper_*`` columns): it is the CSV. `layout` turns the
    frame into the LaTeX tabular (cells only); `notes` is the paragraph printed below it.
    """

    frame: pd.DataFrame
    layout: Callable[[pd.DataFrame], Tabular]
    notes: list[str] = field(default_factory=list)

    @property
    def latex(self) -> str:
        return render_latex(self)


def render_latex(table: Table) -> str:
    """The booktabs tabular of a table, laid out from its frame, with its notes below."""
    tab = table.layout(table.frame)
    tab.notes = list(table.notes)
    return tab.render()


def render_csv(table: Table) -> str:
    return table.frame.to_csv(index=False)


def write_table(table: Table, tex: str | os.PathLike, csv: str | os.PathLike) -> None:
    """Write the LaTeX tabular and the CSV of one table (each atomically)."""
    write_text(tex, render_latex(table))
    write_text(csv, render_csv(table))


# --------------------------------------------------------------------------------------
# helpers of the builders


def unique(items: Iterable) -> list:
    """The distinct items in first-seen order."""
    seen: dict = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def variant_key(variant: tuple[str, bool, str]) -> str:
    """Column prefix of a variant: 'rt_loop', 'reinforce_amp_loop'."""
    est, amp, asm = variant
    return f"{est}{'_amp' if amp else ''}_{asm}"


def status_of(m: Measurement | None) -> str:
    return m.status if m else "missing"


def paper_arch(records: Sequence[Measurement]) -> bool:
    """True when every record used the paper's flow (so published numbers may be compared)."""
    return bool(records) and all(
        paper.matches_paper_architecture(m.n_layers, m.hidden) for m in records
    )


def setting_note(records: Sequence[Measurement], scale: str) -> str:
    devices = ", ".join(sorted({m.device for m in records})) or "unknown"
    archs = sorted({(m.n_layers, m.hidden) for m in records}, key=str)
    arch = "; ".join(f"{n} layers × {h} channels" for n, h in archs)
    return escape(f"Our runs: {scale}; device {devices}; flow {arch}.")


def published_columns(published: dict | None, parts: Sequence[str]) -> dict:
    """CSV columns ``paper_<estimator>_<part>`` with the paper's numbers (None where absent)."""
    columns = {}
    for est in paper.PAPER_ESTIMATORS:
        values = published.get(est) if published else None
        for i, part in enumerate(parts):
            columns[f"paper_{est}_{part}"] = values[i] if values else None
    return columns


# --------------------------------------------------------------------------------------
# helpers of the layouts (frame -> LaTeX cells)


def present(x: object) -> object | None:
    """A frame value, or None where the frame holds None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return x


def status_cell(status: str) -> str:
    """What a cell says when there is no number: the entry's status, or – when missing."""
    return MISSING if status == "missing" else str(status)


def entry_cell(status: str, value: object, digits: int = 3) -> str:
    """Our number, or the reason there is none."""
    return format_number(present(value), digits) if status == "ok" else status_cell(status)


def emph(text: str) -> str:
    return r"\emph{" + text + "}"


def records_of(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts of Python values (integers stay integers)."""
    return frame.to_dict("records")


def paper_row_present(row: dict) -> bool:
    """True when a frame row carries published numbers (some ``paper_*`` column is set)."""
    return any(present(v) is not None for k, v in row.items() if k.startswith("paper_"))
