"""Running one measurement: the table of kinds, out-of-memory handling, the record.

:data:`MEASUREMENTS` maps each kind to the function measuring it, the run parameters it takes
(of ``steps``, ``warmup``, ``repeats``), its default warmup, its result keys and its one-line
summary. :func:`run_record` fills the inputs once, builds the step (:mod:`.setup`), dispatches
through the table and returns a :class:`~gaugeflow.measure.records.MeasurementRecord`;
:func:`run_timing_row` does the same for the columns of one Table 1 row, timed together.

Out of memory (``torch.cuda.OutOfMemoryError``, a RuntimeError saying "out of memory" or
"can't allocate memory", or MemoryError) ends the measurement with status "oom" and the
kind's keys set to None, so a table can show the entry as missing; any other error is raised.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import __version__
from ..errors import UserError
from ..runtime import resolve_device
from ..training import make_config
from .graph import measure_dag, summarize_dag
from .memory import measure_memory, peak_kind, summarize_memory
from .ops import measure_ops, summarize_ops
from .records import KINDS, RESULT_KEYS, MeasurementInputs, MeasurementRecord
from .setup import build_setup
from .timing import error_line, measure_timing, measure_timing_interleaved, summarize_timing

__all__ = [
    "MeasureKind",
    "MEASUREMENTS",
    "is_oom_error",
    "run_record",
    "run_measurement",
    "run_timing_row",
    "row_label",
    "summary_line",
]


@dataclass
class MeasureKind:
    """One row of the dispatch table."""

    run: Callable[..., dict[str, Any]]  # run(setup, **{param: value for param in params})
    params: tuple[str, ...]  # which of steps, warmup, repeats it takes
    default_warmup: int
    result_keys: tuple[str, ...]
    summarize: Callable[[dict[str, Any]], str]
    #: result values known even when the measurement failed: on_failure(device, params)
    on_failure: Callable[[torch.device, dict[str, int]], dict[str, Any]] | None = None


MEASUREMENTS: dict[str, MeasureKind] = {
    "timing": MeasureKind(
        measure_timing,
        ("steps", "warmup"),
        2,
        RESULT_KEYS["timing"],
        summarize_timing,
        on_failure=lambda device, params: {"steps": params["steps"]},
    ),
    "dag": MeasureKind(measure_dag, ("warmup",), 0, RESULT_KEYS["dag"], summarize_dag),
    "ops": MeasureKind(measure_ops, ("repeats", "warmup"), 1, RESULT_KEYS["ops"], summarize_ops),
    "memory": MeasureKind(
        measure_memory,
        ("warmup",),
        1,
        RESULT_KEYS["memory"],
        summarize_memory,
        on_failure=lambda device, params: {"peak_kind": peak_kind(device)},
    ),
}
assert tuple(MEASUREMENTS) == KINDS


def is_oom_error(exc: BaseException) -> bool:
    """Out of memory on CUDA or CPU (the errors torch and Python raise for it)."""
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg
    return False


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _inputs(config: dict[str, Any], flow_config: dict[str, Any], params: dict) -> dict:
    flow = flow_config or config["flow"]
    keys = ("L", "batch_size", "n_batches", "estimator", "assembly", "action_method", "amp")
    keys += ("dtype", "beta", "kappa", "seed", "device")
    return {
        **{k: config[k] for k in keys},
        "n_layers": flow.get("n_layers"),
        "hidden": flow.get("hidden_channels"),
        **params,
    }


def _environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "gaugeflow_version": __version__,
        "threads": torch.get_num_threads(),
    }


def _make_record(
    kind: str,
    config: dict[str, Any],
    device: torch.device,
    given: dict[str, int],
    params: dict[str, int],
    flow_config: dict[str, Any],
    n_parameters: int | None,
    results: dict[str, Any],
    error: str | None,
) -> MeasurementRecord:
    """The record of one configuration: measured (error None) or out of memory."""
    spec = MEASUREMENTS[kind]
    inputs = MeasurementInputs(**_inputs(config, flow_config, {p: None for p in given} | params))
    common = {
        **_environment(device),
        "config": config,
        "flow_config": flow_config or None,
        "n_parameters": n_parameters,
    }
    if error is None:
        return MeasurementRecord(kind, "ok", inputs, results, **common)
    known = spec.on_failure(device, params) if spec.on_failure else {}
    return MeasurementRecord.failure(kind, inputs, "oom", error, results=known, **common)


def _run_params(kind: str, steps: int, warmup: int | None, repeats: int) -> tuple[dict, dict]:
    spec = MEASUREMENTS[kind]
    warmup = spec.default_warmup if warmup is None else warmup
    if warmup < 0 or repeats < 1 or steps < 1:
        raise UserError("warmup must be >= 0, repeats and steps >= 1")
    given = {"steps": steps, "warmup": warmup, "repeats": repeats}
    return given, {p: given[p] for p in spec.params}


def run_record(
    kind: str,
    overrides: dict[str, Any],
    *,
    steps: int = 100,
    warmup: int | None = None,
    repeats: int = 3,
) -> MeasurementRecord:
    """Build the step from training-config `overrides`, measure `kind`, return its record."""
    if kind not in MEASUREMENTS:
        raise UserError(f"unknown measurement {kind!r}; valid kinds are {', '.join(KINDS)}")
    spec = MEASUREMENTS[kind]
    config = make_config(overrides)
    device = resolve_device(config["device"])
    given, params = _run_params(kind, steps, warmup, repeats)
    flow_config: dict[str, Any] = {}
    n_parameters = None
    results: dict[str, Any] = {}
    error: str | None = None
    try:
        setup = build_setup(config)
        flow_config = dict(getattr(setup.flow, "config", {}))
        n_parameters = sum(p.numel() for p in setup.flow.parameters())
        results = spec.run(setup, **params)
        del setup
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        error = error_line(exc)
    if error is not None:
        _free_memory()  # outside the except block: its traceback no longer holds the tensors
    return _make_record(
        kind, config, device, given, params, flow_config, n_parameters, results, error
    )


def row_label(config: dict[str, Any]) -> str:
    """``ESTIMATOR-PREC-ASSEMBLY`` of one (validated) training config, as the workflow's file
    names spell a Table 1 column."""
    return f"{config['estimator']}-{'amp' if config['amp'] else 'fp32'}-{config['assembly']}"


def run_timing_row(
    variants: Sequence[dict[str, Any]],
    *,
    steps: int = 100,
    warmup: int | None = None,
) -> list[MeasurementRecord]:
    """Timing records of several configurations measured together, step by step in turn.

    Each of `variants` (training-config overrides; one table row's columns) is built exactly
    as :func:`run_record` builds it (same seeding, so the same weights and samples as when
    measured alone), then :func:`~gaugeflow.measure.timing.measure_timing_interleaved` times
    them. A configuration that runs out of memory, while being built or in a step, gets an
    "oom" record and the others are measured without it. Records come in the order of
    `variants`; two configurations with the same label are refused.
    """
    if not variants:
        raise UserError("a timing row needs at least one configuration")
    given, params = _run_params("timing", steps, warmup, 3)
    built: list[dict[str, Any]] = []
    for overrides in variants:
        config = make_config(overrides)
        built.append(
            {
                "label": row_label(config),
                "config": config,
                "device": resolve_device(config["device"]),
                "flow_config": {},
                "n_parameters": None,
                "error": None,
            }
        )
    labels = [b["label"] for b in built]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"a timing row measures each configuration once; repeated: {repeated}")
    setups: dict[str, Any] = {}
    for entry in built:
        try:
            setup = build_setup(entry["config"])
            entry["flow_config"] = dict(getattr(setup.flow, "config", {}))
            entry["n_parameters"] = sum(p.numel() for p in setup.flow.parameters())
            setups[entry["label"]] = setup
            del setup
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            entry["error"] = error_line(exc)
        if entry["error"] is not None:
            _free_memory()
    outcome = measure_timing_interleaved(
        setups, steps=params["steps"], warmup=params["warmup"], is_failure=is_oom_error
    )
    del setups
    records = []
    for entry in built:
        result = outcome.get(entry["label"])
        if isinstance(result, str):
            entry["error"] = result
        if entry["error"] is not None:
            _free_memory()
        records.append(
            _make_record(
                "timing",
                entry["config"],
                entry["device"],
                given,
                params,
                entry["flow_config"],
                entry["n_parameters"],
                result if isinstance(result, dict) else {},
                entry["error"],
            )
        )
    return records


def run_measurement(kind: str, overrides: dict[str, Any], **run: Any) -> dict[str, Any]:
    """:func:`run_record` as the JSON object `gaugeflow measure` writes."""
    return run_record(kind, overrides, **run).to_json()


def summary_line(record: dict[str, Any] | MeasurementRecord) -> str:
    """One line for people: what was measured, on what, and the headline numbers."""
    if isinstance(record, dict):
        record = MeasurementRecord.from_json(record)
    inp = record.inputs
    what = (
        f"{inp.estimator} {inp.assembly} L={inp.L} bs={inp.batch_size}"
        f" nb={inp.n_batches}{' amp' if inp.amp else ''}"
    )
    where = f"{record.device}, {record.threads} threads"
    if not record.ok:
        return f"measure {record.kind}: {what}: {record.status.upper()} ({record.error}) [{where}]"
    body = MEASUREMENTS[record.kind].summarize(record.results)
    return f"measure {record.kind}: {what}: {body} [{where}]"
