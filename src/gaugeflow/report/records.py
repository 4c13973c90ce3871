"""Reading measurement records (gaugeflow.measure.MeasurementRecord) into the tables' shape.

Every file is parsed by :meth:`MeasurementRecord.from_json`: a file of another schema version,
or one that lacks a key, is a UserError naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..choices import ESTIMATOR_LABELS
from ..measure.records import MeasurementRecord, load_record

__all__ = ["Measurement", "load_measurement", "variant_label", "ESTIMATOR_LABELS"]


@dataclass(frozen=True)
class Measurement:
    """One `gaugeflow measure` result: its setting, status and values."""

    L: int
    batch_size: int
    n_batches: int
    estimator: str
    amp: bool
    assembly: str
    n_layers: int | None
    hidden: int | None
    device: str
    status: str
    data: dict = field(repr=False, hash=False, compare=False)
    path: str = ""
    record: MeasurementRecord | None = field(default=None, repr=False, hash=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def variant(self) -> tuple[str, bool, str]:
        return (self.estimator, self.amp, self.assembly)

    def value(self, key: str) -> Any:
        """A measured value (a result key of the record); None when the record lacks it or
        the run did not succeed."""
        if not self.ok:
            return None
        return self.data.get(key) if self.record is None else self.record.results.get(key)


def load_measurement(path: str | os.PathLike) -> Measurement:
    """Read one measurement record file (see MeasurementRecord for what it must hold)."""
    record = load_record(path)
    inputs = record.inputs
    return Measurement(
        L=inputs.L,
        batch_size=inputs.batch_size,
        n_batches=inputs.n_batches,
        estimator=inputs.estimator,
        amp=inputs.amp,
        assembly=inputs.assembly,
        n_layers=inputs.n_layers,
        hidden=inputs.hidden,
        device=record.device or inputs.device,
        status=record.status,
        data=record.to_json(),
        path=str(path),
        record=record,
    )


def variant_label(estimator: str, amp: bool = False, assembly: str = "loop") -> str:
    """Short column label: 'r.t.', 'RE amp', 'r.t. scatter' (the paper's loop is unmarked)."""
    label = ESTIMATOR_LABELS.get(estimator, estimator)
    if amp:
        label += " amp"
    if assembly != "loop":
        label += f" {assembly}"
    return label
