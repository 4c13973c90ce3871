"""The one fit of graph sizes: nodes = a L^2 + b (``gaugeflow measure dagfit``, Table 3).

:func:`fit_quadratic` is an ordinary least-squares fit (``numpy.linalg.lstsq`` on the design
matrix [L^2, 1]). Rounding: when *both* coefficients lie within 1e-6 of integers they are
returned as Python ints (20, not 19.999999999998 or 1e-14), otherwise as the unrounded
floats; ``integer_coefficients`` says which. ``exact`` is true when every point lies on the
fitted line to within 1e-6.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import UserError
from .records import MeasurementRecord

__all__ = ["fit_quadratic", "fit_dag_results", "FIT_GROUP_KEYS"]

#: dag results are fitted separately for each value of these inputs (and each architecture)
FIT_GROUP_KEYS = ("estimator", "assembly", "action_method", "amp", "dtype")


def fit_quadratic(sizes: Sequence[int], counts: Sequence[float]) -> dict[str, Any]:
    """Least-squares fit counts = a L^2 + b; `exact` when every point lies on it (to 1e-6)."""
    if len(sizes) != len(counts):
        raise ValueError("sizes and counts differ in length")
    if len(set(sizes)) < 2:
        raise UserError("a fit of a L^2 + b needs results at two or more different L")
    L = np.asarray(sizes, dtype=float)
    y = np.asarray(counts, dtype=float)
    design = np.stack([L**2, np.ones_like(L)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ np.array([a, b])
    max_res = float(np.abs(residuals).max())
    integer = bool(abs(a - round(a)) < 1e-6 and abs(b - round(b)) < 1e-6)
    if integer:  # report 20, not 19.999999999998 or 1e-14
        a, b = round(a), round(b)
    return {
        "a": a if integer else float(a),
        "b": b if integer else float(b),
        "L": [int(v) for v in sizes],
        "nodes": [int(v) if float(v).is_integer() else float(v) for v in counts],
        "max_residual": max_res,
        "exact": bool(max_res < 1e-6),
        "integer_coefficients": integer,
        "formula": f"{a:.6g} L^2 + {b:.6g}",
    }


def fit_dag_results(
    records: Iterable[MeasurementRecord | dict[str, Any]],
) -> list[dict[str, Any]]:
    """Group dag records by estimator, assembly, action method, amp, dtype and architecture,
    and fit nodes = a L^2 + b in each group with two or more L (records not ok are skipped).

    Records may be given as MeasurementRecord or as its JSON (checked on the way in).
    """
    groups: dict[tuple[Any, ...], dict[int, int]] = defaultdict(dict)
    meta: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        if isinstance(rec, dict):
            rec = MeasurementRecord.from_json(rec)
        if rec.kind != "dag":
            raise UserError(f"not a dag result (kind {rec.kind!r})")
        if not rec.ok:
            continue
        inputs = rec.inputs.to_json()
        arch = {k: v for k, v in (rec.flow_config or {}).items() if k not in ("L", "device")}
        if arch:  # flow configs recorded before the key existed lack it; it was false then
            arch.setdefault("holonomy", False)
        key = tuple(inputs[k] for k in FIT_GROUP_KEYS) + (repr(sorted(arch.items())),)
        groups[key][rec.inputs.L] = int(rec.results["nodes"])
        meta[key] = {**{k: inputs[k] for k in FIT_GROUP_KEYS}, "architecture": arch}
    fits = []
    for key, by_L in groups.items():
        sizes = sorted(by_L)
        entry: dict[str, Any] = {**meta[key], "L": sizes, "nodes": [by_L[s] for s in sizes]}
        if len(sizes) >= 2:
            entry["fit"] = fit_quadratic(sizes, entry["nodes"])
        fits.append(entry)
    return fits
