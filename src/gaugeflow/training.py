"""Training loop: gradient accumulation, amp, metrics, atomic checkpoints, exact resume.

A run is described by one config dict (see ``DEFAULTS``). ``train(config, out_dir)`` writes
``out_dir/model.pt``, ``out_dir/metrics.csv``, ``out_dir/summary.json`` and keeps its resumable
state (checkpoints plus the metrics written so far) in ``checkpoint_dir``, by default
``out_dir/checkpoints``. Running the same command again resumes from the latest checkpoint;
a run killed at any point and resumed ends with the same weights and metrics (bit for bit on
CPU) as an uninterrupted run, because every random number comes from state saved in the
checkpoint and the metrics file is cut back to the checkpoint's step on resume.
"""

from __future__ import annotations

import copy
import csv
import math
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import UserError
from .estimators import ESTIMATORS, get_estimator
from .io import atomic_path, save_torch, write_json
from .physics.dirac import DEFAULT_METHOD
from .runtime import resolve_device, resolve_dtype

__all__ = [
    "DEFAULTS",
    "amp_settings",
    "build_components",
    "METRIC_COLUMNS",
    "make_config",
    "train",
    "model_payload",
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
    # bookkeeping
    "checkpoint_every": 100,
    "snapshot_every": 0,  # 0: no snapshots
    "log_every": 10,
    "keep_checkpoints": 2,
}

_CHOICES = {
    "estimator": tuple(ESTIMATORS),
    "action_method": ("eo", "full"),
    "assembly": ("scatter", "loop"),
    "lr_schedule": ("constant", "cosine"),
    "amp_dtype": ("auto", "float16", "bfloat16"),
    "dtype": ("float32", "float64"),
}

# Keys that may change between a checkpoint and its resumption without changing the result.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every", "keep_checkpoints", "device"}

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


def _validate(config: dict[str, Any]) -> None:
    if config["action_method"] is None and config["assembly"] in _CHOICES["assembly"]:
        config["action_method"] = DEFAULT_METHOD[config["assembly"]]
    for key, choices in _CHOICES.items():
        if config[key] not in choices:
            raise UserError(
                f"config key {key!r} must be one of {list(choices)}; got {config[key]!r}"
            )
    if config["assembly"] == "loop" and config["action_method"] != "full":
        raise UserError(
            "config key 'action_method' must be 'full' (or unset) with assembly 'loop': the loop "
            "assembly is the paper's implementation, which takes the determinant of the full D; "
            f"got action_method {config['action_method']!r} (eo needs assembly 'scatter')"
        )
    for key in ("L", "steps", "batch_size", "n_batches", "checkpoint_every", "log_every"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"config key {key!r} must be a positive integer; got {value!r}")
    if config["L"] % 4:
        raise UserError(f"config key 'L' must be a multiple of 4 (flow masks); got {config['L']}")
    for key in ("snapshot_every", "seed"):
        if not isinstance(config[key], int) or config[key] < 0:
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


def build_components(config: dict[str, Any], device: torch.device):
    """Flow, prior and action of a (validated, `make_config`) training config on `device`."""
    from .flows.model import build_flow, default_config
    from .flows.prior import UniformPrior
    from .physics.action import SchwingerAction

    dtype = resolve_dtype(config["dtype"])
    flow_config = default_config(config["L"])
    flow_config.update(config["flow"])
    flow_config["dtype"] = config["dtype"]
    flow = build_flow(flow_config).to(device=device, dtype=dtype)
    prior = UniformPrior(config["L"], dtype=dtype, device=device)
    action = SchwingerAction(
        beta=config["beta"],
        kappa=config["kappa"],
        method=config["action_method"],
        assembly=config["assembly"],
    )
    return flow, prior, action


def _action_params(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "beta": config["beta"],
        "kappa": config["kappa"],
        "method": config["action_method"],
        "assembly": config["assembly"],
    }


def model_payload(flow: torch.nn.Module, config: dict[str, Any], step: int) -> dict[str, Any]:
    """What model.pt and snapshots hold: enough to rebuild the flow and its target."""
    return {
        "flow_config": dict(flow.config),
        "state_dict": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
        "action": _action_params(config),
        "config": copy.deepcopy(config),
        "step": step,
        "gaugeflow_version": __version__,
    }


# --------------------------------------------------------------------------------------------
# checkpoints


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoint_paths(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("ckpt_*.pt"))


def _last_checkpoint_step(ckpt_dir: Path) -> int:
    paths = _checkpoint_paths(ckpt_dir)
    return int(paths[-1].stem.split("_")[1]) if paths else 0


def _restore_last_checkpoint(flow: torch.nn.Module, ckpt_dir: Path) -> None:
    """Put the last checkpoint's weights back (or leave the flow if there is none)."""
    paths = _checkpoint_paths(ckpt_dir)
    if paths:
        state = torch.load(paths[-1], map_location="cpu", weights_only=False)
        flow.load_state_dict(state["flow"])


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESUMABLE_CHANGES}


# --------------------------------------------------------------------------------------------
# metrics


class _MetricsLog:
    """Append-only CSV in the state folder, cut back to a checkpoint's step on resume."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None or not path.exists():
            with atomic_path(path) as tmp:
                tmp.write_text(",".join(METRIC_COLUMNS) + "\n")
        else:
            self._truncate(resume_step)
        self._fh = open(path, "a", newline="")
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

    def publish(self, dest: Path) -> None:
        self.flush()
        with atomic_path(dest) as tmp:
            shutil.copyfile(self.path, tmp)


def _ess(logw: torch.Tensor) -> float:
    from .analysis import ess

    return float(ess(logw))


# --------------------------------------------------------------------------------------------
# the loop


def _lr_factor(config: dict[str, Any], step: int) -> float:
    if config["lr_schedule"] == "cosine":
        t = min(step / config["steps"], 1.0)
        lo = config["lr_min"] / config["lr"] if config["lr"] > 0 else 0.0
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


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


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def train(
    config: dict[str, Any],
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    snapshot_dir: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train (or resume) a flow; return the summary written to out_dir/summary.json."""
    config = make_config(config)
    out_dir = Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints"
    snap_dir = Path(snapshot_dir) if snapshot_dir else out_dir / "snapshots"
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    device = resolve_device(config["device"])
    generator = torch.Generator(device="cpu")
    generator.manual_seed(config["seed"])
    torch.manual_seed(config["seed"])
    np.random.seed(config["seed"] % 2**32)
    random.seed(config["seed"])

    flow, prior, action = build_components(config, device)
    estimator = get_estimator(config["estimator"])
    optimizer = torch.optim.Adam(flow.parameters(), lr=config["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(config, s))
    amp_dtype, use_scaler = amp_settings(config, device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    start_step, wall_offset = 0, 0.0
    checkpoints = _checkpoint_paths(ckpt_dir)
    if checkpoints:
        state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
        if _comparable(state["config"]) != _comparable(config):
            diff = sorted(
                k
                for k in set(state["config"]) | set(config)
                if k not in _RESUMABLE_CHANGES and state["config"].get(k) != config.get(k)
            )
            raise UserError(
                f"checkpoint {checkpoints[-1]} was made with a different config (keys {diff}); "
                f"use another output folder or delete {ckpt_dir} to start over"
            )
        flow.load_state_dict(state["flow"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(generator, state["rng"])
        start_step, wall_offset = state["step"], state["wall_time"]
    metrics = _MetricsLog(ckpt_dir / "metrics.csv", start_step if checkpoints else None)

    prior_dtype = resolve_dtype(config["dtype"])

    def log_prob(phi: torch.Tensor) -> torch.Tensor:
        # The action runs in full precision even when the flow runs under autocast.
        with torch.autocast(device.type, enabled=False):
            return action.log_prob(phi.to(prior_dtype))

    def save_checkpoint(step: int, wall: float) -> None:
        state = {
            "step": step,
            "wall_time": wall,
            "config": config,
            "flow": flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(generator),
        }
        metrics.flush()
        save_torch(ckpt_dir / f"ckpt_{step:08d}.pt", state)
        for old in _checkpoint_paths(ckpt_dir)[: -config["keep_checkpoints"]]:
            old.unlink()
        metrics.publish(out_dir / "metrics.csv")

    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(
            total=config["steps"],
            initial=start_step,
            desc=f"train {config['estimator']}",
            unit="step",
        )

    status, step, failure = "completed", start_step, None
    t_start = time.perf_counter()
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else nullcontext
    )
    try:
        for step in range(start_step + 1, config["steps"] + 1):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            losses, logqs, logps = [], [], []
            for _ in range(config["n_batches"]):
                z = prior.sample(config["batch_size"], generator=generator)
                with autocast():
                    out = estimator(flow, prior, log_prob, z.to(device))
                loss = out.loss / config["n_batches"]
                if not torch.isfinite(loss):
                    failure = f"non-finite loss {loss.item()} at step {step}"
                    break
                (scaler.scale(loss) if scaler is not None else loss).backward()
                losses.append(loss.detach())
                logqs.append(out.logq.float())
                logps.append(out.logp.float())
            if failure is None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grads = [p.grad for p in flow.parameters()]
                if scaler is None and not _all_finite(grads):
                    failure = f"non-finite gradient at step {step}"
            if failure is not None:
                status = "diverged"
                break
            if config["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(flow.parameters(), config["grad_clip"])
            lr = optimizer.param_groups[0]["lr"]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            if not _all_finite(flow.parameters()):
                failure = f"non-finite weights after step {step}"
                status = "diverged"
                _restore_last_checkpoint(flow, ckpt_dir)
                break
            logq, logp = torch.cat(logqs), torch.cat(logps)
            elapsed = time.perf_counter() - t0
            row = {
                "step": step,
                "loss": float(torch.stack(losses).sum()),
                "free_energy": float((logq - logp).mean()),
                "ess": _ess(logp - logq),
                "logq_mean": float(logq.mean()),
                "logp_mean": float(logp.mean()),
                "lr": lr,
                "step_seconds": elapsed,
                "wall_time": wall_offset + time.perf_counter() - t_start,
            }
            metrics.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ess=f"{row['ess']:.3f}", F=f"{row['free_energy']:.2f}")
            elif step % config["log_every"] == 0 or step == config["steps"]:
                print(
                    f"step {step}/{config['steps']} loss {row['loss']:.4g} "
                    f"F_q {row['free_energy']:.4f} ess {row['ess']:.4f} ({elapsed:.2f} s/step)",
                    flush=True,
                )
            if config["snapshot_every"] and step % config["snapshot_every"] == 0:
                save_torch(snap_dir / f"step_{step:07d}.pt", model_payload(flow, config, step))
            if step % config["checkpoint_every"] == 0 or step == config["steps"]:
                save_checkpoint(step, row["wall_time"])
    finally:
        if bar is not None:
            bar.close()

    if status == "diverged":
        # No update is applied from a non-finite loss or gradient, so the weights before the
        # failing step are the last good ones; non-finite weights were replaced by the last
        # checkpoint's. Checkpoints already on disk are kept untouched.
        last_good = (
            step - 1 if failure and "weights" not in failure else _last_checkpoint_step(ckpt_dir)
        )
        print(f"training diverged: {failure}; last good step {last_good}", file=sys.stderr)
    else:
        last_good = step
    metrics.publish(out_dir / "metrics.csv")
    metrics.close()
    save_torch(out_dir / "model.pt", model_payload(flow, config, last_good))
    summary = {
        "status": status,
        "step": step if status == "diverged" else last_good,
        "last_good_step": last_good,
        "failure": failure,
        "steps_requested": config["steps"],
        "n_parameters": sum(p.numel() for p in flow.parameters()),
        "device": str(device),
        "torch_version": torch.__version__,
        "gaugeflow_version": __version__,
        "threads": torch.get_num_threads(),
        "config": config,
        "flow_config": dict(flow.config),
        "checkpoint_dir": str(ckpt_dir),
    }
    write_json(out_dir / "summary.json", summary)
    return summary
