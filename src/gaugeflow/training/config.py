"""The training config: defaults, validation, and the components and settings it implies."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from .. import choices
from ..errors import UserError
from ..physics.dirac import DEFAULT_METHOD
from ..runtime import resolve_dtype

__all__ = [
    "DEFAULTS",
    "METRIC_COLUMNS",
    "RESUMABLE_CHANGES",
    "TIMING_COLUMNS",
    "make_config",
    "build_components",
    "amp_settings",
    "action_params",
    "lr_factor",
]

DEFAULTS: dict[str, Any] = {
    # target (paper: beta = 2, kappa = 0.276; kappa = 0 is pure gauge)
    "L": 8,
    "beta": 2.0,
    "kappa": 0.276,
    # eo | full: determinant of the even-odd Schur complement or of D; None: the assembly's
    # own (scatter: eo; loop, the paper's implementation: full; loop with eo is an error)
    "action_method": None,
    "assembly": "scatter",  # scatter | loop: how D is built (loop is the paper's implementation)
    # estimator and optimisation
    "estimator": "reinforce",
    "steps": 1000,
    "batch_size": 1536,  # configurations per part
    "n_batches": 1,  # parts accumulated into one gradient step (paper listing 3)
    "lr": 1e-3,
    "lr_schedule": "constant",  # constant | cosine
    "lr_min": 0.0,
    "grad_clip": None,  # max global grad norm, or None
    "amp": False,
    "amp_dtype": "auto",  # auto (cuda: float16, cpu: bfloat16) | float16 | bfloat16
    "seed": 0,
    "device": "auto",
    "dtype": "float32",
    # architecture: overrides of gaugeflow.flows.model.default_config(L)
    "flow": {},
    # warm start: a model.pt whose weights initialise the flow at step 0 (ignored on resume)
    "init_from": None,
    # wall-clock limit in seconds: stop (resumably) after the step that crosses it
    "time_limit": None,
    # bookkeeping
    "checkpoint_every": 100,
    "snapshot_every": 0,  # 0: no snapshots
    "log_every": 10,
    "keep_checkpoints": 2,
}

_CHOICES = {
    "estimator": choices.ESTIMATORS,
    "action_method": choices.ACTION_METHODS,
    "assembly": choices.ASSEMBLIES,
    "lr_schedule": choices.LR_SCHEDULES,
    "amp_dtype": choices.AMP_DTYPES,
    "dtype": choices.DTYPES,
}

#: Keys that may change between a checkpoint and its resumption without changing the result.
#: ``init_from`` only acts at step 0, so on resume it is ignored (the parent recorded in the
#: checkpoint is the one reported); ``time_limit`` only decides where a process stops.
RESUMABLE_CHANGES = frozenset(
    {"steps", "checkpoint_every", "log_every", "keep_checkpoints", "device", "init_from",
     "time_limit"}
)  # fmt: skip

METRIC_COLUMNS = [
    "step",
    "loss",
    "free_energy",  # F_q estimate: mean(log q - log P) over the step's samples
    "ess",
    "logq_mean",
    "logp_mean",
    "lr",
    "step_seconds",
    "wall_time",
]
#: metric columns that measure time, not the run's numbers
TIMING_COLUMNS = ("step_seconds", "wall_time")


def make_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS updated by `overrides`, validated; unknown keys are an error naming the key."""
    config = copy.deepcopy(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULTS:
            raise UserError(
                f"unknown training config key {key!r}; valid keys: {', '.join(sorted(DEFAULTS))}"
            )
        if key == "flow":
            if not isinstance(value, dict):
                raise UserError(f"config key 'flow' must be a mapping; got {value!r}")
            config["flow"].update(value)
        else:
            config[key] = value
    _validate(config)
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(config: dict[str, Any]) -> None:
    if config["action_method"] is None and config["assembly"] in _CHOICES["assembly"]:
        config["action_method"] = DEFAULT_METHOD[config["assembly"]]
    for key, allowed in _CHOICES.items():
        if config[key] not in allowed:
            raise UserError(
                f"config key {key!r} must be one of {list(allowed)}; got {config[key]!r}"
            )
    if config["assembly"] == "loop" and config["action_method"] != "full":
        raise UserError(
            "config key 'action_method' must be 'full' (or unset) with assembly 'loop': the loop "
            "assembly is the paper's implementation, which takes the determinant of the full D; "
            f"got action_method {config['action_method']!r} (eo needs assembly 'scatter')"
        )
    for key in ("L", "steps", "batch_size", "n_batches", "checkpoint_every", "log_every"):
        value = config[key]
        if not _is_int(value) or value < 1:
            raise UserError(f"config key {key!r} must be a positive integer; got {value!r}")
    if config["L"] % 4:
        raise UserError(f"config key 'L' must be a multiple of 4 (flow masks); got {config['L']}")
    for key in ("snapshot_every", "seed"):
        if not _is_int(config[key]) or config[key] < 0:
            raise UserError(
                f"config key {key!r} must be a non-negative integer; got {config[key]!r}"
            )
    for key in ("beta", "kappa", "lr", "lr_min"):
        if not isinstance(config[key], (int, float)) or config[key] < 0:
            raise UserError(
                f"config key {key!r} must be a non-negative number; got {config[key]!r}"
            )
    if config["grad_clip"] is not None and not config["grad_clip"] > 0:
        raise UserError(
            f"config key 'grad_clip' must be positive or null; got {config['grad_clip']!r}"
        )
    limit = config["time_limit"]
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, (int, float))
        or not math.isfinite(limit)
        or limit <= 0
    ):
        raise UserError(f"config key 'time_limit' must be a positive number of seconds or null; "
                        f"got {limit!r}")  # fmt: skip
    init = config["init_from"]
    if init is not None:
        if not isinstance(init, (str, bytes)) and not hasattr(init, "__fspath__"):
            raise UserError(f"config key 'init_from' must be a path to a model.pt; got {init!r}")
        config["init_from"] = str(init)


def build_components(config: dict[str, Any], device: torch.device):
    """Flow, prior and action of a (validated, `make_config`) training config on `device`."""
    from ..flows.model import build_flow, default_config
    from ..flows.prior import UniformPrior
    from ..physics.action import SchwingerAction

    dtype = resolve_dtype(config["dtype"])
    flow_config = default_config(config["L"])
    flow_config.update(config["flow"])
    flow_config["dtype"] = config["dtype"]
    flow_config["device"] = str(device)
    flow = build_flow(flow_config).to(device=device, dtype=dtype)
    prior = UniformPrior(config["L"], dtype=dtype, device=device)
    action = SchwingerAction(
        beta=config["beta"],
        kappa=config["kappa"],
        method=config["action_method"],
        assembly=config["assembly"],
    )
    return flow, prior, action


def action_params(config: dict[str, Any]) -> dict[str, Any]:
    """The target of a training config, as model files record it."""
    return {
        "beta": config["beta"],
        "kappa": config["kappa"],
        "method": config["action_method"],
        "assembly": config["assembly"],
    }


def lr_factor(config: dict[str, Any], step: int) -> float:
    """The learning-rate schedule: factor of config['lr'] after `step` scheduler steps."""
    if config["lr_schedule"] == "cosine":
        t = min(step / config["steps"], 1.0)
        lo = config["lr_min"] / config["lr"] if config["lr"] > 0 else 0.0
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def cpu_has_native_bfloat16() -> bool | None:
    """Whether this CPU computes bfloat16 in hardware (oneDNN's test: AVX-512 BF16 / AMX or
    AVX-512 BW); None where torch cannot say. Without it, CPU autocast emulates bfloat16 and
    an amp step is several times slower than float32 (3.6x for the L = 8 demo run on an
    AVX2-only AMD EPYC, benchmarks/RESULTS.md, session 5)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is None:
        return None
    try:
        return bool(probe())
    except (RuntimeError, AttributeError):
        return None


def amp_warning(config: dict[str, Any], device: torch.device) -> str | None:
    """A line for the user when amp will run emulated bfloat16 on this CPU, else None."""
    dtype, _ = amp_settings(config, device)
    if device.type != "cpu" or dtype != torch.bfloat16 or cpu_has_native_bfloat16() is not False:
        return None
    return (
        "amp on this CPU runs bfloat16 without hardware support (no AVX-512 BF16/AMX), so a "
        "step is several times slower than without amp; amp pays off on GPUs (the paper's)"
    )


def amp_settings(config: dict[str, Any], device: torch.device):
    """(autocast dtype or None, whether to use a GradScaler) for a training config.

    ``amp_dtype: auto`` is float16 with a GradScaler on CUDA, bfloat16 (no scaler) elsewhere.
    """
    if not config["amp"]:
        return None, False
    name = config["amp_dtype"]
    if name == "auto":
        name = "float16" if device.type == "cuda" else "bfloat16"
    dtype = getattr(torch, name)
    use_scaler = device.type == "cuda" and dtype == torch.float16
    return dtype, use_scaler
