"""Devices, dtypes, seeds: small helpers shared by every verb."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import UserError

__all__ = ["resolve_device", "resolve_dtype", "seed_everything", "configure_threads"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' means CUDA when present, else CPU; asking for CUDA without one is a UserError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device must be one of auto, cpu, cuda[:N]; got {name!r}")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise UserError(f"dtype must be one of {sorted(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def configure_threads() -> int:
    """Follow OMP_NUM_THREADS (set by Snakemake from a rule's `threads`) when present."""
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()
