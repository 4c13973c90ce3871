"""The measurement record: what `gaugeflow measure` and `gaugeflow record-failure` write and
the report reads (format: docs/INTERFACES.md, "Measurement record (MeasurementRecord)").

One JSON object per measured configuration. Its envelope (``schema_version``, ``kind``,
``status``, ``inputs``, ``error``, ``log`` and the environment) is fixed; every other top-level
key is one of the kind's results, so a record reads as ``record["nodes"]``. The kind's
promised result keys (:data:`RESULT_KEYS`) are always present, None when the measurement did
not succeed. :meth:`MeasurementRecord.from_json` checks all of this and raises a UserError
naming the file and the key it lacks; a record of another schema version is refused.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import UserError
from ..io import read_json
from ..training import DEFAULTS

__all__ = [
    "SCHEMA_VERSION",
    "KINDS",
    "RESULT_KEYS",
    "STATUSES",
    "MeasurementInputs",
    "MeasurementRecord",
    "load_record",
]

#: bumped whenever a key is added, removed or changes meaning
SCHEMA_VERSION = 1

#: the keys each kind promises (None when the configuration did not run to the end)
RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "timing": ("step_seconds", "loss_seconds", "backward_seconds", "steps"),
    "dag": ("nodes",),
    "ops": ("top",),
    "memory": ("saved_bytes", "saved_tensors", "peak_bytes", "peak_kind"),
}
KINDS: tuple[str, ...] = tuple(RESULT_KEYS)

#: ok: measured; oom: ran out of memory (caught by measure); crashed: the command failed
#: (written by record-failure from the workflow)
STATUSES: tuple[str, ...] = ("ok", "oom", "crashed")

_REQUIRED_INPUTS = (
    "L", "batch_size", "n_batches", "estimator", "amp", "n_layers", "hidden", "device"
)  # fmt: skip
#: required inputs that may not be null (n_layers and hidden may)
_NON_NULL_INPUTS = ("L", "batch_size", "n_batches", "estimator", "amp", "device")
#: top-level keys that are not results
_ENVELOPE = (
    "schema_version", "kind", "status", "inputs", "error", "log", "device", "device_name",
    "torch_version", "gaugeflow_version", "threads", "config", "flow_config", "n_parameters",
)  # fmt: skip


def _convert(value: Any, kind: type, key: str, where: str) -> Any:
    """`value` as `kind` (int, float, str, bool) without silent coercion; None stays None."""
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where}: key {key!r} must be {kind.__name__}; got {value!r}")


@dataclass(frozen=True)
class MeasurementInputs:
    """The measured configuration (``inputs`` in the JSON).

    ``device`` is the device asked for (``auto`` allowed); the record's environment says which
    one ran. ``assembly`` defaults to the training default (what `measure` uses when not told).
    The keys from ``action_method`` on are None when the writer did not know them
    (record-failure) or the kind does not use them (``steps`` outside timing, ``repeats``
    outside ops).
    """

    L: int
    batch_size: int
    n_batches: int
    estimator: str
    amp: bool
    n_layers: int | None
    hidden: int | None
    device: str
    assembly: str = DEFAULTS["assembly"]
    action_method: str | None = None
    dtype: str | None = None
    beta: float | None = None
    kappa: float | None = None
    seed: int | None = None
    steps: int | None = None
    warmup: int | None = None
    repeats: int | None = None

    @classmethod
    def from_json(cls, data: Any, where: str, kind: str | None = None) -> MeasurementInputs:
        """Parse the ``inputs`` mapping; `where` names the file (or flag) in errors.

        A ``kind`` key inside it (written for older readers) must agree with `kind`.
        """
        if not isinstance(data, dict):
            raise UserError(f"{where}: 'inputs' must be a mapping; got {data!r}")
        data = dict(data)
        inner_kind = data.pop("kind", kind)
        if kind is not None and inner_kind != kind:
            raise UserError(f"{where}: inputs say kind {inner_kind!r}, the record {kind!r}")
        for key in _REQUIRED_INPUTS:
            if key not in data:
                raise UserError(f"{where} lacks key 'inputs.{key}'")
        for key in _NON_NULL_INPUTS:
            if data[key] is None:
                raise UserError(f"{where}: key 'inputs.{key}' is null")
        unknown = sorted(set(data) - set(_INPUT_TYPES))
        if unknown:
            raise UserError(f"{where}: unknown key(s) in inputs: {unknown}")
        values = {k: _convert(v, _INPUT_TYPES[k], f"inputs.{k}", where) for k, v in data.items()}
        if values.get("assembly") is None:
            values.pop("assembly", None)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_INPUT_TYPES: dict[str, type] = {
    "L": int, "batch_size": int, "n_batches": int, "estimator": str, "amp": bool,
    "n_layers": int, "hidden": int, "device": str, "assembly": str, "action_method": str,
    "dtype": str, "beta": float, "kappa": float, "seed": int, "steps": int, "warmup": int,
    "repeats": int,
}  # fmt: skip
assert set(_INPUT_TYPES) == {f.name for f in fields(MeasurementInputs)}


@dataclass
class MeasurementRecord:
    """One measured (or failed) configuration: inputs, status, results, environment."""

    kind: str
    status: str
    inputs: MeasurementInputs
    results: dict[str, Any]
    error: str | None = None
    log: str | None = None
    device: str | None = None  # the device that ran (cpu, cuda:0); None when nothing ran
    device_name: str | None = None
    torch_version: str | None = None
    gaugeflow_version: str | None = None
    threads: int | None = None
    config: dict[str, Any] | None = None  # the full training config the step was built from
    flow_config: dict[str, Any] | None = None
    n_parameters: int | None = None
    schema_version: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        if self.kind not in RESULT_KEYS:
            raise UserError(f"unknown measurement kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.status not in STATUSES:
            raise UserError(f"unknown status {self.status!r}; valid: {', '.join(STATUSES)}")
        for key in RESULT_KEYS[self.kind]:
            self.results.setdefault(key, None)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failure(
        cls,
        kind: str,
        inputs: MeasurementInputs,
        status: str,
        error: str,
        results: dict[str, Any] | None = None,
        **environment: Any,
    ) -> MeasurementRecord:
        """A record of a configuration that did not run to the end (results None)."""
        if status == "ok":
            raise ValueError("a failure record needs a status other than 'ok'")
        return cls(kind, status, inputs, dict(results or {}), error=error, **environment)

    def to_json(self) -> dict[str, Any]:
        """The JSON object (results at the top level, next to the envelope)."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        out["kind"] = self.kind
        out["status"] = self.status
        out["inputs"] = {"kind": self.kind, **self.inputs.to_json()}
        for f in fields(self):
            if f.name not in ("schema_version", "kind", "status", "inputs", "results"):
                out[f.name] = getattr(self, f.name)
        clash = sorted(set(self.results) & set(_ENVELOPE))
        if clash:
            raise ValueError(f"result keys {clash} would overwrite the record's envelope")
        out.update(self.results)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "measurement record") -> MeasurementRecord:
        """Parse a record written by :meth:`to_json`; `where` (the file) is named in errors."""
        if not isinstance(data, dict):
            raise UserError(f"{where} is not a JSON object")
        for key in ("schema_version", "kind", "status", "inputs"):
            if key not in data:
                raise UserError(f"{where} lacks key {key!r}")
        if data["schema_version"] != SCHEMA_VERSION:
            raise UserError(
                f"{where} has schema_version {data['schema_version']!r}; this gaugeflow reads "
                f"version {SCHEMA_VERSION}: measure it again"
            )
        kind, status = data["kind"], data["status"]
        if kind not in RESULT_KEYS:
            raise UserError(f"{where}: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
        if status not in STATUSES:
            raise UserError(f"{where}: unknown status {status!r}; valid: {', '.join(STATUSES)}")
        for key in RESULT_KEYS[kind]:
            if key not in data:
                raise UserError(f"{where} lacks key {key!r} (a {status} {kind} record has it)")
        inputs = MeasurementInputs.from_json(data["inputs"], where, kind)
        envelope = {f.name for f in fields(cls)} - {"kind", "status", "inputs", "results"}
        extra = {k: data.get(k) for k in envelope if k in data}
        results = {k: v for k, v in data.items() if k not in _ENVELOPE}
        return cls(kind=kind, status=status, inputs=inputs, results=results, **extra)


def load_record(path: str | os.PathLike) -> MeasurementRecord:
    """Read and check one measurement record file (UserError naming the file and key)."""
    return MeasurementRecord.from_json(read_json(path, "measurement record"), str(path))
