"""Reading the JSON records written by `gaugeflow measure` into one flat shape."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..io import read_json

__all__ = ["Measurement", "load_measurement", "variant_label", "ESTIMATOR_LABELS"]

ESTIMATOR_LABELS = {"rt": "r.t.", "reinforce": "RE", "path": "PG"}

# where a setting may sit in a record, and the names it may go by
_NESTED = ("inputs", "settings", "config", "args", "flow")
_ALIASES = {
    "L": ("L", "lattice_size"),
    "batch_size": ("batch_size", "bs"),
    "n_batches": ("n_batches", "nb"),
    "estimator": ("estimator",),
    "amp": ("amp",),
    "assembly": ("assembly",),
    "n_layers": ("n_layers",),
    "hidden": ("hidden", "hidden_channels"),
    "device": ("device",),
    "steps": ("steps",),
}


def _find(record: dict, key: str) -> Any:
    names = _ALIASES.get(key, (key,))
    for name in names:
        if name in record and not isinstance(record[name], dict):
            return record[name]
    for nest in _NESTED:
        sub = record.get(nest)
        if isinstance(sub, dict):
            found = _find(sub, key)
            if found is not None:
                return found
    return None


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

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def variant(self) -> tuple[str, bool, str]:
        return (self.estimator, self.amp, self.assembly)

    def value(self, key: str) -> Any:
        """A measured value; None when the record lacks it or the run did not succeed."""
        if not self.ok:
            return None
        return _find(self.data, key) if key not in self.data else self.data[key]


def load_measurement(path: str | os.PathLike) -> Measurement:
    """Read one measurement JSON, checking the settings every table needs."""
    record = read_json(path, "measurement record")
    missing = [k for k in ("L", "batch_size", "estimator") if _find(record, k) is None]
    if missing:
        raise UserError(f"measurement record {path} lacks {missing}")
    amp = _find(record, "amp")
    return Measurement(
        L=int(_find(record, "L")),
        batch_size=int(_find(record, "batch_size")),
        n_batches=int(_find(record, "n_batches") or 1),
        estimator=str(_find(record, "estimator")),
        amp=bool(amp) if amp is not None else False,
        assembly=str(_find(record, "assembly") or "loop"),
        n_layers=_as_int(_find(record, "n_layers")),
        hidden=_as_int(_find(record, "hidden")),
        device=str(_find(record, "device") or "unknown"),
        status=str(record.get("status", "ok")),
        data=record,
        path=str(path),
    )


def _as_int(value: Any) -> int | None:
    return None if value is None else int(value)


def variant_label(estimator: str, amp: bool = False, assembly: str = "loop") -> str:
    """Short column label: 'r.t.', 'RE amp', 'r.t. scatter'."""
    label = ESTIMATOR_LABELS.get(estimator, estimator)
    if amp:
        label += " amp"
    if assembly != "loop":
        label += f" {assembly}"
    return label
