"""Measurements behind the paper's Tables 1-5, one module per measurement:

- :mod:`.setup`: the measured step, built from a training config (the one place it is built);
- :mod:`.timing` (kind ``timing``, Tables 1, 2), :mod:`.graph` (``dag``, Table 3),
  :mod:`.ops` (``ops``, Table 4), :mod:`.memory` (``memory``, Table 5);
- :mod:`.fits`: the one fit nodes = a L^2 + b (``measure dagfit``, Table 3);
- :mod:`.records`: :class:`MeasurementRecord`, the JSON every measurement (and
  ``record-failure``) writes and the report reads (docs/INTERFACES.md);
- :mod:`.runner`: the dispatch table keyed by kind, out-of-memory handling, the record.

Each module's docstring defines what its kind measures. The benchmark-only replay of the
conditioner nets and the action lives in benchmarks/floor.py.
"""

from __future__ import annotations

from .fits import fit_dag_results, fit_quadratic
from .graph import count_graph_nodes, graph_nodes, measure_dag, node_name, node_type_counts
from .memory import SavedTensorRecorder, measure_memory
from .ops import BackwardOpTimer, measure_ops
from .records import (
    KINDS,
    RESULT_KEYS,
    SCHEMA_VERSION,
    STATUSES,
    MeasurementInputs,
    MeasurementRecord,
    load_record,
)
from .runner import (
    MEASUREMENTS,
    is_oom_error,
    row_label,
    run_measurement,
    run_record,
    run_timing_row,
    summary_line,
)
from .setup import MeasureSetup, backward, build_setup, gradient_step, loss_call
from .timing import measure_timing, measure_timing_interleaved

__all__ = [
    "KINDS",
    "RESULT_KEYS",
    "SCHEMA_VERSION",
    "STATUSES",
    "MEASUREMENTS",
    "MeasurementInputs",
    "MeasurementRecord",
    "load_record",
    "MeasureSetup",
    "build_setup",
    "loss_call",
    "backward",
    "gradient_step",
    "graph_nodes",
    "count_graph_nodes",
    "node_type_counts",
    "node_name",
    "BackwardOpTimer",
    "SavedTensorRecorder",
    "measure_timing",
    "measure_dag",
    "measure_ops",
    "measure_memory",
    "fit_quadratic",
    "fit_dag_results",
    "is_oom_error",
    "run_record",
    "run_measurement",
    "run_timing_row",
    "row_label",
    "measure_timing_interleaved",
    "summary_line",
]
