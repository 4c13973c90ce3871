"""`ModelFile`: what a model.pt (or a training snapshot) holds, and how it is read back.

Format (a dict written by ``torch.save``, readable with ``weights_only=True``):

- ``format_version`` (int, `FORMAT_VERSION`): absent in files of gaugeflow <= 0.x before the
  ModelFile, which still load when the required keys are there;
- ``flow_config``: the flow's config (``build_flow(flow_config)`` rebuilds the architecture);
- ``state_dict``: the flow's weights (CPU tensors);
- ``action``: the target it was trained for: ``beta``, ``kappa`` (required), ``method``,
  ``assembly``;
- ``config``: the full training config;
- ``step``: gradient steps behind these weights (None if unknown);
- ``gaugeflow_version``: the version that wrote it (None if unknown);
- ``parent``: ``{"path", "sha256"}`` of the model.pt it was warm-started from, or None.
"""

from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import UserError
from .io import save_torch

__all__ = ["FORMAT_VERSION", "REQUIRED_KEYS", "ARCHITECTURE_EXEMPT", "ModelFile", "file_sha256"]

FORMAT_VERSION = 1
#: keys every model file must hold (files from before FORMAT_VERSION 1 hold these too)
REQUIRED_KEYS = ("flow_config", "state_dict", "action", "config")
#: flow-config keys a warm start may change: the conditioners are convolutional, so the
#: weights fit any L; dtype and device are where the weights live, not what they are
ARCHITECTURE_EXEMPT = frozenset({"L", "dtype", "device"})


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelFile:
    flow_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    action: dict[str, Any]
    config: dict[str, Any]
    step: int | None = None
    gaugeflow_version: str | None = __version__
    parent: dict[str, str] | None = None
    format_version: int = FORMAT_VERSION
    #: where it was read from and the SHA-256 of the bytes read (None when built in memory)
    path: Path | None = field(default=None, compare=False, repr=False)
    sha256: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_flow(
        cls,
        flow: torch.nn.Module,
        action: dict[str, Any],
        config: dict[str, Any],
        step: int,
        parent: dict[str, str] | None = None,
    ) -> ModelFile:
        return cls(
            flow_config=dict(flow.config),
            state_dict={k: v.detach().cpu().clone() for k, v in flow.state_dict().items()},
            action=dict(action),
            config=copy.deepcopy(config),
            step=int(step),
            parent=dict(parent) if parent else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "flow_config": self.flow_config,
            "state_dict": self.state_dict,
            "action": self.action,
            "config": self.config,
            "step": self.step,
            "gaugeflow_version": self.gaugeflow_version,
            "parent": self.parent,
        }

    def save(self, path: str | Path) -> None:
        """Write atomically (a reader never sees half a file)."""
        save_torch(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, map_location: Any = "cpu") -> ModelFile:
        """Read a model file; a missing file, unreadable file or missing key is a UserError."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        try:
            data = path.read_bytes()  # hashed as read: the record names exactly these bytes
            blob = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as exc:
            raise UserError(f"model file {path} could not be read by torch.load: {exc}") from exc
        if not isinstance(blob, dict):
            raise UserError(f"model file {path} holds a {type(blob).__name__}, not a dict")
        version = blob.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(
                f"model file {path} has format_version {version!r}; this gaugeflow "
                f"({__version__}) reads versions up to {FORMAT_VERSION}"
            )
        for key in REQUIRED_KEYS:
            if key not in blob:
                older = " (written by an older gaugeflow?)" if version == 0 else ""
                raise UserError(
                    f"model file {path} lacks key {key!r}{older}; it has {sorted(blob)}"
                )
        for key in ("beta", "kappa"):
            if key not in blob["action"]:
                raise UserError(f"model file {path}: 'action' lacks key {key!r}")
        return cls(
            flow_config=dict(blob["flow_config"]),
            state_dict=blob["state_dict"],
            action=dict(blob["action"]),
            config=dict(blob["config"]),
            step=blob.get("step"),
            gaugeflow_version=blob.get("gaugeflow_version"),
            parent=blob.get("parent"),
            format_version=version,
            path=path,
            sha256=hashlib.sha256(data).hexdigest(),
        )

    @property
    def L(self) -> int:
        for where in (self.flow_config, self.config):
            if "L" in where:
                return int(where["L"])
        raise UserError(f"model file {self.path}: neither flow_config nor config records L")

    def _where(self) -> str:
        return f"model file {self.path}" if self.path else "model"

    def build_flow(
        self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> torch.nn.Module:
        """The flow with these weights, on `device` (in `dtype` if given), in eval mode."""
        from .flows.model import build_flow
        from .runtime import resolve_device

        device = resolve_device(device)
        flow_config = dict(self.flow_config)
        if "device" in flow_config:  # the device it was trained on need not exist here
            flow_config["device"] = str(device)
        flow = build_flow(flow_config)
        self.load_weights_into(flow)
        flow = flow.to(device)
        if dtype is not None:
            flow = flow.to(dtype)
        return flow.eval()

    def load_weights_into(self, flow: torch.nn.Module) -> None:
        try:
            flow.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise UserError(f"{self._where()}: weights do not fit its flow_config: {exc}") from exc

    def architecture_differences(self, flow_config: dict[str, Any]) -> list[str]:
        """Flow-config keys (other than L, dtype, device) on which `flow_config` differs."""
        from .flows.model import validate_config

        def normalised(cfg: dict[str, Any]) -> dict[str, Any]:
            # a device that does not exist here must not make validation fail
            return validate_config({**cfg, "device": "cpu"})

        mine, theirs = normalised(self.flow_config), normalised(flow_config)
        return sorted(
            k
            for k in set(mine) | set(theirs)
            if k not in ARCHITECTURE_EXEMPT and mine.get(k) != theirs.get(k)
        )

    def parent_record(self) -> dict[str, str]:
        """{path, sha256} of the file this model was read from (for a warm start's record)."""
        if self.path is None or self.sha256 is None:
            raise ValueError("parent_record needs a ModelFile read from a file")
        return {"path": str(self.path), "sha256": self.sha256}
