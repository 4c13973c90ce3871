"""Training: one gradient step (`TrainStep`), resumable state (`Checkpointer`), the loop.

- `config`: ``DEFAULTS``, `make_config`, `build_components`, `amp_settings`;
- `step`: `TrainStep`, `StepResult`, `PartResult`, `Divergence`, `DivergenceKind`;
- `checkpoint`: `Checkpointer`, `MetricsLog`;
- `loop`: `train`, `model_payload`, `warm_start`.
"""

from __future__ import annotations

from .checkpoint import Checkpointer, MetricsLog, capture_rng, restore_rng
from .config import (
    DEFAULTS,
    METRIC_COLUMNS,
    RESUMABLE_CHANGES,
    TIMING_COLUMNS,
    action_params,
    amp_settings,
    build_components,
    make_config,
)
from .loop import model_payload, train, warm_start
from .step import Divergence, DivergenceKind, PartResult, StepResult, TrainStep, part_seed

__all__ = [
    "DEFAULTS",
    "METRIC_COLUMNS",
    "RESUMABLE_CHANGES",
    "TIMING_COLUMNS",
    "make_config",
    "build_components",
    "amp_settings",
    "action_params",
    "train",
    "model_payload",
    "warm_start",
    "TrainStep",
    "StepResult",
    "PartResult",
    "Divergence",
    "DivergenceKind",
    "part_seed",
    "Checkpointer",
    "MetricsLog",
    "capture_rng",
    "restore_rng",
]
