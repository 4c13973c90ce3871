"""Atomic writes and checked reads for every file the library produces or consumes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

__all__ = [
    "atomic_path",
    "write_json",
    "write_text",
    "save_npz",
    "save_torch",
    "read_json",
    "load_npz",
    "require_file",
    "to_jsonable",
]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give it the permissions of a plain open()
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars and arrays to plain Python for JSON."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach"):  # torch tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else obj
    return obj


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    # np.savez appends ".npz" to a path whose name lacks it: hand it an open file instead
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def require_file(path: str | os.PathLike, what: str = "input file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    path = require_file(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from exc


def load_npz(
    path: str | os.PathLike, keys: tuple[str, ...] = (), what: str = "npz file"
) -> dict[str, np.ndarray]:
    """Load an npz file, checking that it holds every key in `keys`."""
    path = require_file(path, what)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile / pickle / format errors
        raise UserError(f"{what} {path} could not be read as .npz: {exc}") from exc
    missing = [k for k in keys if k not in out]
    if missing:
        raise UserError(f"{what} {path} lacks array(s) {missing}; it has {sorted(out)}")
    return out


def call_with_user_errors(fn: Callable[[], Any]) -> Any:
    """Run fn, converting OSError on user paths into UserError."""
    try:
        return fn()
    except OSError as exc:
        raise UserError(str(exc)) from exc
