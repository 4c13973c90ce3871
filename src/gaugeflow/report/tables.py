"""Tables 1-5 of the paper from measurement records: pandas frames for CSV, booktabs LaTeX.

Each builder takes `Measurement`s (see records.py) in the order the workflow lists them and
returns a `Table`: a frame (one row per entry, our numbers and, where the setting matches,
the paper's) and the LaTeX tabular. Entries that ran out of memory or crashed say so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io import write_text
from . import paper_data as paper
from .latex import Tabular, escape
from .records import ESTIMATOR_LABELS, Measurement, variant_label

__all__ = [
    "Table",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "fit_quadratic",
    "format_number",
    "write_table",
    "BUILDERS",
]

BASELINE = ("rt", False, "loop")
GIB = 2.0**30
MISSING = "–"


@dataclass
class Table:
    frame: pd.DataFrame
    latex: str


def format_number(x: float | None, digits: int = 3) -> str:
    """Readable fixed-point with about `digits` significant figures (no exponents)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return MISSING
    x = float(x)
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    decimals = min(max(0, digits - 1 - magnitude), 6)
    return f"{x:.{decimals}f}"


def _status_text(m: Measurement | None) -> str:
    if m is None:
        return MISSING
    return {"oom": "oom", "crashed": "crashed", "diverged": "diverged"}.get(m.status, m.status)


def _cell(m: Measurement | None, value: float | None, digits: int = 3) -> str:
    """Our number, or the reason there is none."""
    if m is None or not m.ok:
        return _status_text(m)
    return format_number(value, digits)


def _variant_key(variant: tuple[str, bool, str]) -> str:
    est, amp, asm = variant
    return f"{est}{'_amp' if amp else ''}_{asm}"


def _unique(items: Iterable) -> list:
    seen: dict = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _published_columns(published: dict | None, parts: Sequence[str]) -> dict:
    """CSV columns ``paper_<estimator>_<part>`` with the paper's numbers (None where absent)."""
    columns = {}
    for est in ("rt", "reinforce"):
        values = published.get(est) if published else None
        for i, part in enumerate(parts):
            columns[f"paper_{est}_{part}"] = values[i] if values else None
    return columns


def _paper_arch(records: Sequence[Measurement]) -> bool:
    return bool(records) and all(
        paper.matches_paper_architecture(m.n_layers, m.hidden) for m in records
    )


def _setting_note(records: Sequence[Measurement], scale: str) -> str:
    devices = ", ".join(sorted({m.device for m in records})) or "unknown"
    archs = sorted({(m.n_layers, m.hidden) for m in records}, key=str)
    arch = "; ".join(f"{n} layers × {h} channels" for n, h in archs)
    text = f"Our runs: {scale}; device {devices}; flow {arch}."
    return escape(text)


def _step_seconds_per_100(m: Measurement) -> float | None:
    step = m.value("step_seconds")
    return None if step is None else 100.0 * float(step)


# --------------------------------------------------------------------------------------
# Table 1: time of 100 gradient steps and speed-ups over r.t.


def table1(records: Sequence[Measurement], scale: str = "") -> Table:
    """Time of 100 gradient steps per (L, batch, n_batches) and variant, with speed-ups."""
    rows = _unique((m.L, m.batch_size, m.n_batches) for m in records)
    variants = _unique(m.variant for m in records)
    cell = {((m.L, m.batch_size, m.n_batches), m.variant): m for m in records}
    times = {key: _step_seconds_per_100(m) if m.ok else None for key, m in cell.items()}

    def best_baseline(L: int) -> float | None:
        candidates = [t for (r, v), t in times.items() if r[0] == L and v == BASELINE and t]
        return min(candidates) if candidates else None

    match = _paper_arch(records)
    frame_rows, tab = [], Tabular("rrr" + "r" * len(variants))
    tab.header.append(["$L$", "bs", "nb"] + [escape(variant_label(*v)) for v in variants])
    for row in rows:
        out: dict = {"L": row[0], "batch_size": row[1], "n_batches": row[2]}
        own = times.get((row, BASELINE))
        ref, basis = (own, "row") if own else (best_baseline(row[0]), "best_rt")
        cells = [str(row[0]), str(row[1]), str(row[2])]
        for v in variants:
            m = cell.get((row, v))
            t = times.get((row, v))
            key = _variant_key(v)
            speedup = ref / t if (ref and t and v != BASELINE) else None
            out[f"{key}_seconds"] = t
            out[f"{key}_status"] = m.status if m else "missing"
            out[f"{key}_speedup"] = speedup
            out[f"{key}_speedup_basis"] = basis if speedup else ""
            text = _cell(m, t)
            if speedup:
                star = "*" if basis == "best_rt" else ""
                text += f" ({format_number(speedup, 3)}{star})"
            cells.append(text)
        published = paper.TABLE1.get(row) if match else None
        for k in ("rt", "reinforce", "reinforce_amp"):
            value = published.get(k) if published else None
            out[f"paper_{k}"] = value if value is not None else ("oom" if published else None)
        frame_rows.append(out)
        tab.add_row(cells)
        if published:
            tab.add_row(_paper_row_table1(published, variants))
    tab.notes.append(
        "Seconds for 100 gradient steps (median step time $\\times$ 100); in parentheses the speed-up"
        " over r.t. (loop assembly) in the same row, * relative to the best r.t. at that L. "
        "oom: did not fit in memory; crashed: the measurement failed."
    )
    if match and any(paper.TABLE1.get(r) for r in rows):
        tab.notes.append(
            f"Rows marked paper: published values ({paper.PAPER_HARDWARE['table1']}), "
            "-- where the paper's r.t. did not fit."
        )
    tab.notes.append(_setting_note(records, scale))
    return Table(pd.DataFrame(frame_rows), tab.render())


def _paper_row_table1(published: dict, variants: list) -> list[str]:
    rt = published.get("rt")
    mapping = {
        ("rt", False, "loop"): "rt",
        ("reinforce", False, "loop"): "reinforce",
        ("reinforce", True, "loop"): "reinforce_amp",
    }
    cells = [r"\emph{paper}", "", ""]
    for v in variants:
        k = mapping.get(v)
        if k is None:
            cells.append("")
            continue
        value = published.get(k)
        text = format_number(value)
        if value and rt and k != "rt":
            text += f" ({format_number(rt / value)})"
        cells.append(r"\emph{" + text + "}")
    return cells


# --------------------------------------------------------------------------------------
# Table 2: one loss call and one backward


def table2(records: Sequence[Measurement], scale: str = "") -> Table:
    """Seconds of one loss evaluation and one backward per (L, batch) and variant."""
    records = [m for m in records if not m.amp]
    rows = _unique((m.L, m.batch_size, m.n_batches) for m in records)
    variants = _unique(m.variant for m in records)
    cell = {((m.L, m.batch_size, m.n_batches), m.variant): m for m in records}
    match = _paper_arch(records)
    tab = Tabular("rr" + "rrr" * len(variants))
    tab.header.append(
        ["", ""] + [f"\\multicolumn{{3}}{{c}}{{{escape(variant_label(*v))}}}" for v in variants]
    )
    tab.header.append(["$L$", "bs"] + ["total", "loss", "back"] * len(variants))
    frame_rows = []
    for row in rows:
        out: dict = {"L": row[0], "batch_size": row[1], "n_batches": row[2]}
        cells = [str(row[0]), str(row[1])]
        for v in variants:
            m = cell.get((row, v))
            loss = m.value("loss_seconds") if m else None
            back = m.value("backward_seconds") if m else None
            total = loss + back if (loss is not None and back is not None) else None
            key = _variant_key(v)
            out.update(
                {
                    f"{key}_total": total,
                    f"{key}_loss": loss,
                    f"{key}_backward": back,
                    f"{key}_status": m.status if m else "missing",
                }
            )
            if m is None or not m.ok:
                cells += [_status_text(m), "", ""]
            else:
                cells += [format_number(total), format_number(loss), format_number(back)]
        published = paper.TABLE2.get((row[0], row[1])) if match else None
        out.update(_published_columns(published, ("total", "loss", "backward")))
        frame_rows.append(out)
        tab.add_row(cells)
        if published:
            paper_cells = [r"\emph{paper}", ""]
            for v in variants:
                values = published.get(v[0]) if v[2] == "loop" else None
                if v[2] != "loop" or v[0] not in published:
                    paper_cells += ["", "", ""]
                elif values is None:
                    paper_cells += [r"\emph{--}", "", ""]
                else:
                    paper_cells += [r"\emph{" + format_number(x) + "}" for x in values]
            tab.add_row(paper_cells)
    tab.notes.append(
        "Seconds of one loss evaluation and of one backward call on a batch of bs "
        "(medians over the timed steps); total = loss + back."
    )
    if match and any(paper.TABLE2.get((r[0], r[1])) for r in rows):
        tab.notes.append(f"paper: published values ({paper.PAPER_HARDWARE['table2']}).")
    tab.notes.append(_setting_note(records, scale))
    return Table(pd.DataFrame(frame_rows), tab.render())


# --------------------------------------------------------------------------------------
# Table 3: autograd graph nodes and the a L^2 + b fit


def fit_quadratic(Ls: Sequence[int], nodes: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares a, b of nodes = a L^2 + b; None with fewer than two distinct L."""
    if len(set(Ls)) < 2:
        return None
    x = np.asarray(Ls, dtype=float) ** 2
    y = np.asarray(nodes, dtype=float)
    a, b = np.polyfit(x, y, 1)
    if abs(a) * x.max() < 1e-9 * max(np.abs(y).max(), 1.0):
        a = 0.0  # constant counts: rounding noise of the fit, not growth
    return float(a), float(b)


def table3(records: Sequence[Measurement], scale: str = "") -> Table:
    """Graph nodes per variant (rows) and L (columns), with the fitted a L^2 + b."""
    Ls = sorted({m.L for m in records})
    variants = _unique(m.variant for m in records)
    cell = {(m.variant, m.L): m for m in records}
    match = _paper_arch(records)
    tab = Tabular("l" + "r" * len(Ls) + "rr")
    tab.header.append(["$L$"] + [str(L) for L in Ls] + ["$a$", "$b$"])
    frame_rows = []
    for v in variants:
        out: dict = {"estimator": v[0], "amp": v[1], "assembly": v[2]}
        cells = [escape(variant_label(*v))]
        fit_L, fit_n = [], []
        for L in Ls:
            m = cell.get((v, L))
            nodes = m.value("nodes") if m else None
            out[f"L{L}"] = nodes if nodes is not None else _status_text(m)
            cells.append(_cell(m, nodes, digits=12) if nodes is None else str(int(nodes)))
            if nodes is not None:
                fit_L.append(L)
                fit_n.append(float(nodes))
        fit = fit_quadratic(fit_L, fit_n)
        out["fit_a"], out["fit_b"] = fit if fit else (None, None)
        cells += [format_number(fit[0]), format_number(fit[1], 4)] if fit else [MISSING] * 2
        frame_rows.append(out)
        tab.add_row(cells)
    if match:
        tab.add_midrule()
        for est in ("rt", "reinforce"):
            published = paper.TABLE3[est]
            out = {"estimator": est, "amp": False, "assembly": "loop", "source": "paper"}
            cells = [r"\emph{paper " + escape(ESTIMATOR_LABELS[est]) + "}"]
            for L in Ls:
                out[f"L{L}"] = published.get(L)
                cells.append(r"\emph{" + str(published[L]) + "}" if L in published else "")
            a, b = paper.TABLE3_FIT.get(est, (0.0, float(published[4])))
            out["fit_a"], out["fit_b"] = a, b
            cells += [r"\emph{" + format_number(a) + "}", r"\emph{" + format_number(b, 4) + "}"]
            frame_rows.append(out)
            tab.add_row(cells)
    tab.notes.append(
        "Distinct autograd nodes reachable from the loss of one step; $a$, $b$: least-squares "
        "fit nodes $= aL^2 + b$ over the L measured. Node counts do not depend on the batch."
    )
    if match:
        tab.notes.append("paper: published counts (loop assembly, the authors' implementation).")
    tab.notes.append(_setting_note(records, scale))
    frame = pd.DataFrame(frame_rows)
    if "source" in frame:
        frame["source"] = frame["source"].fillna("ours")
    return Table(frame, tab.render())


# --------------------------------------------------------------------------------------
# Table 4: top backward ops


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


def table4(records: Sequence[Measurement], scale: str = "", top: int = 10) -> Table:
    """The `top` backward node types by time for each variant, with counts."""
    settings = _unique((m.L, m.batch_size) for m in records)
    match = _paper_arch(records) and all(
        (L, bs) == (paper.TABLE4_SETTING["L"], paper.TABLE4_SETTING["batch_size"])
        for L, bs in settings
    )
    columns = "llrr" + ("rr" if match else "")
    tab = Tabular(columns)
    head = ["", "backward node", "count", "ms"]
    if match:
        head += [r"\emph{paper count}", r"\emph{paper ms}"]
    tab.header.append(head)
    frame_rows = []
    for m in records:
        label = f"{variant_label(*m.variant)}, L={m.L}, bs={m.batch_size}"
        published = paper.TABLE4.get(m.estimator, {}) if (match and m.assembly == "loop") else {}
        if not m.ok:
            tab.add_row([escape(label), _status_text(m), "", ""] + (["", ""] if match else []))
            frame_rows.append(
                {
                    "estimator": m.estimator,
                    "amp": m.amp,
                    "assembly": m.assembly,
                    "L": m.L,
                    "batch_size": m.batch_size,
                    "rank": None,
                    "op": None,
                    "status": m.status,
                }
            )
            tab.add_midrule()
            continue
        for rank, (name, count, seconds) in enumerate(_top_entries(m)[:top], start=1):
            ref = published.get(name)
            frame_rows.append(
                {
                    "estimator": m.estimator,
                    "amp": m.amp,
                    "assembly": m.assembly,
                    "L": m.L,
                    "batch_size": m.batch_size,
                    "rank": rank,
                    "op": name,
                    "count": count,
                    "ms": 1000.0 * seconds,
                    "status": m.status,
                    "paper_count": ref[1] if ref else None,
                    "paper_ms": ref[0] if ref else None,
                }
            )
            cells = [
                escape(label) if rank == 1 else "",
                escape(name),
                str(count),
                format_number(1000.0 * seconds),
            ]
            if match:
                cells += (
                    [r"\emph{" + str(ref[1]) + "}", r"\emph{" + format_number(ref[0]) + "}"]
                    if ref
                    else ["", ""]
                )
            tab.add_row(cells)
        tab.add_midrule()
    tab.notes.append(
        f"Time spent in each type of autograd node during one backward, top {top} by time, "
        "with the number of such nodes."
    )
    if match:
        tab.notes.append(
            f"paper: published values for the same node type ({paper.PAPER_HARDWARE['table4']})."
        )
    tab.notes.append(_setting_note(records, scale))
    return Table(pd.DataFrame(frame_rows), tab.render())


# --------------------------------------------------------------------------------------
# Table 5: memory


def table5(records: Sequence[Measurement], scale: str = "") -> Table:
    """Saved-for-backward bytes (M1), peak memory (M2) and saved tensors (n.t.)."""
    rows = _unique((m.L, m.batch_size) for m in records)
    variants = _unique(m.variant for m in records)
    cell = {((m.L, m.batch_size), m.variant): m for m in records}
    match = _paper_arch(records)
    kinds = sorted({str(m.value("peak_kind")) for m in records if m.ok and m.value("peak_kind")})
    sizes = [m.value(k) or 0 for m in records for k in ("saved_bytes", "peak_bytes")]
    unit, scale_to = ("GiB", GIB) if max(sizes, default=0) >= GIB / 10 else ("MiB", 2.0**20)
    tab = Tabular("rr" + "rrr" * len(variants))
    tab.header.append(
        ["", ""] + [f"\\multicolumn{{3}}{{c}}{{{escape(variant_label(*v))}}}" for v in variants]
    )
    tab.header.append(["$L$", "batch"] + ["M1", "M2", "n.t."] * len(variants))
    frame_rows = []
    for row in rows:
        out: dict = {"L": row[0], "batch_size": row[1]}
        cells = [str(row[0]), str(row[1])]
        for v in variants:
            m = cell.get((row, v))
            key = _variant_key(v)
            saved = m.value("saved_bytes") if m else None
            peak = m.value("peak_bytes") if m else None
            n_t = m.value("saved_tensors") if m else None
            out.update(
                {
                    f"{key}_M1_bytes": saved,
                    f"{key}_M2_bytes": peak,
                    f"{key}_M1_GiB": saved / GIB if saved is not None else None,
                    f"{key}_M2_GiB": peak / GIB if peak is not None else None,
                    f"{key}_nt": n_t,
                    f"{key}_peak_kind": m.value("peak_kind") if m else None,
                    f"{key}_status": m.status if m else "missing",
                }
            )
            if m is None or not m.ok:
                cells += [_status_text(m), "", ""]
            else:
                cells += [
                    format_number(saved / scale_to if saved is not None else None),
                    format_number(peak / scale_to if peak is not None else None),
                    str(int(n_t)) if n_t is not None else MISSING,
                ]
        published = paper.TABLE5.get(row) if match else None
        out.update(_published_columns(published, ("M1_GB", "M2_GB", "nt")))
        frame_rows.append(out)
        tab.add_row(cells)
        if published:
            paper_cells = [r"\emph{paper}", ""]
            for v in variants:
                values = published.get(v[0]) if v[2] == "loop" and not v[1] else None
                paper_cells += (
                    [r"\emph{" + format_number(x) + "}" for x in values[:2]]
                    + [r"\emph{" + str(values[2]) + "}"]
                    if values
                    else ["", "", ""]
                )
            tab.add_row(paper_cells)
    peak = ", ".join(kinds) if kinds else "not recorded"
    tab.notes.append(
        f"One loss call: M1 = memory saved for backward [{unit}], n.t. = distinct saved "
        f"tensors, M2 = peak memory of the step [{unit}] ({escape(peak)})."
    )
    if match and any(paper.TABLE5.get(r) for r in rows):
        tab.notes.append(
            f"paper: published values in GB ({paper.PAPER_HARDWARE['table5']}, "
            "M2 = torch.cuda.max\\_memory\\_allocated)."
        )
    tab.notes.append(_setting_note(records, scale))
    return Table(pd.DataFrame(frame_rows), tab.render())


BUILDERS = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "table5": table5,
}


def write_table(table: Table, tex: str | os.PathLike, csv: str | os.PathLike) -> None:
    """Write the LaTeX tabular and the CSV (atomically)."""
    write_text(tex, table.latex)
    write_text(csv, table.frame.to_csv(index=False))
