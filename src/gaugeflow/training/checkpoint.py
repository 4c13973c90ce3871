"""Resumable state: the checkpoint folder (`Checkpointer`) and the metrics log (`MetricsLog`).

A checkpoint ``ckpt_<step>.pt`` holds the step, the wall time so far, the config, the
`TrainStep` state (flow, optimizer, scheduler, scaler), the global RNG states (python, numpy,
torch, CUDA) and the warm-start parent. The prior samples need no generator state: they come
from streams keyed by (seed, step, part). Files are written atomically and pruned to the
newest ``keep`` ones.
"""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_path, save_torch
from .config import METRIC_COLUMNS, RESUMABLE_CHANGES

__all__ = ["Checkpointer", "MetricsLog", "capture_rng", "restore_rng", "STREAMS"]

#: how the prior samples are drawn; a checkpoint of another scheme cannot be resumed exactly
STREAMS = "keyed(seed,step,part)"


def capture_rng() -> dict[str, Any]:
    """The global random states (torch, numpy, python and, if present, CUDA)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """The checkpoint folder of one run: find, load, check, save and prune checkpoints."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.dir = Path(directory)
        self.keep = keep
        self.dir.mkdir(parents=True, exist_ok=True)

    def paths(self) -> list[Path]:
        return sorted(self.dir.glob("ckpt_*.pt"))

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def latest_step(self) -> int:
        """Step of the newest checkpoint (0 when there is none)."""
        path = self.latest()
        return int(path.stem.split("_")[1]) if path else 0

    def load(self, path: str | Path | None = None) -> dict[str, Any] | None:
        """A checkpoint's contents (the newest by default; None when there is none)."""
        path = Path(path) if path is not None else self.latest()
        if path is None:
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"checkpoint {path} could not be read: {exc}") from exc
        missing = [k for k in ("step", "config", "train_step", "rng") if k not in state]
        if missing or state.get("streams") != STREAMS:
            raise UserError(
                f"checkpoint {path} was written by an older gaugeflow (lacks {missing or 'the'} "
                f"keyed random streams); delete {self.dir} to start over"
            )
        return state

    def check_config(self, saved: dict[str, Any], config: dict[str, Any]) -> None:
        """UserError naming the keys that differ, other than the resumable ones."""
        diff = sorted(
            k
            for k in set(saved) | set(config)
            if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k)
        )
        if diff:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in diff)
            raise UserError(
                f"checkpoint {self.latest()} was made with a different config (keys {diff}: "
                f"{details}); use another output folder or delete {self.dir} to start over"
            )

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ckpt_<step>.pt atomically (with the RNG states), then prune old ones."""
        path = self.dir / f"ckpt_{step:08d}.pt"
        save_torch(path, {**state, "step": step, "rng": capture_rng(), "streams": STREAMS})
        for old in self.paths()[: -self.keep]:
            old.unlink()
        return path

    def restore_weights(self, flow: torch.nn.Module) -> int:
        """Put the newest checkpoint's weights back into `flow`; return its step (0: none)."""
        state = self.load()
        if state is None:
            return 0
        flow.load_state_dict(state["train_step"]["flow"])
        return int(state["step"])


class MetricsLog:
    """Append-only CSV in the state folder, cut back to a checkpoint's step on resume."""

    def __init__(self, path: str | Path, resume_step: int | None) -> None:
        self.path = Path(path)
        if resume_step is None or not self.path.exists():
            with atomic_path(self.path) as tmp:
                tmp.write_text(",".join(METRIC_COLUMNS) + "\n")
        else:
            self._truncate(resume_step)
        self._fh = open(self.path, "a", newline="")
        self._writer = csv.writer(self._fh)

    def _truncate(self, step: int) -> None:
        with open(self.path, newline="") as fh:
            rows = list(csv.reader(fh))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        if len(kept) - 1 != step:
            raise UserError(
                f"metrics log {self.path} has {len(kept) - 1} rows up to step {step}; "
                "the state folder is inconsistent (delete it to start over)"
            )
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows(kept)

    def append(self, row: dict[str, Any]) -> None:
        self._writer.writerow(
            [repr(row[c]) if isinstance(row[c], float) else row[c] for c in METRIC_COLUMNS]
        )

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def publish(self, dest: str | Path) -> None:
        """Copy the log so far to `dest` (atomically)."""
        self.flush()
        with atomic_path(dest) as tmp:
            shutil.copyfile(self.path, tmp)
