"""`train()`: set up, resume or initialise, run steps, record, finish.

A run is described by one config dict (see ``DEFAULTS``). ``train(config, out_dir)`` writes
``out_dir/model.pt`` (a `ModelFile`), ``out_dir/metrics.csv``, ``out_dir/summary.json`` and
keeps its resumable state (checkpoints plus the metrics written so far) in
``checkpoint_dir``, by default ``out_dir/checkpoints``. Running the same command again resumes
from the latest checkpoint; a run killed at any point (or stopped by ``time_limit``) and
resumed ends with the same weights and metrics (bit for bit on CPU) as an uninterrupted run:
the prior samples come from streams keyed by (seed, step, part), every other state is in the
checkpoint, and the metrics file is cut back to the checkpoint's step on resume. Only the keys
in ``RESUMABLE_CHANGES`` may differ from the checkpoint's config, and ``steps`` only to extend a
constant-learning-rate run (`_check_resumable_steps`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..distributed import Group
from ..errors import UserError
from ..io import write_json
from ..modelfile import ModelFile, file_sha256
from ..runtime import resolve_device, seed_everything
from .checkpoint import Checkpointer, MetricsLog, restore_rng
from .config import action_params, amp_warning, make_config
from .distributed import DataParallelStep, Silent, agree_start, any_rank
from .step import Divergence, StepResult, TrainStep

__all__ = ["train", "model_payload", "warm_start"]


def model_payload(
    flow: torch.nn.Module,
    config: dict[str, Any],
    step: int,
    parent: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What model.pt and snapshots hold (`ModelFile.to_dict`): the flow and its target."""
    return ModelFile.from_flow(flow, action_params(config), config, step, parent).to_dict()


def warm_start(flow: torch.nn.Module, path: str | Path) -> dict[str, str]:
    """Load a model file's weights into `flow` (any L, same architecture); return its record."""
    parent = ModelFile.load(path)
    diff = parent.architecture_differences(flow.config)
    if diff:
        theirs, mine = parent.flow_config, flow.config
        details = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in diff)
        raise UserError(
            f"init_from {path}: its flow architecture differs from this run's in keys {diff} "
            f"({details}); only L (and dtype, device) may differ"
        )
    parent.load_weights_into(flow)
    return parent.parent_record()


@dataclass
class _Start:
    step: int
    wall_offset: float
    parent: dict[str, str] | None
    resumed: bool


def _resume_or_init(step: TrainStep, ckpt: Checkpointer, config: dict[str, Any]) -> _Start:
    state = ckpt.load()
    if state is None:
        parent = warm_start(step.flow, config["init_from"]) if config["init_from"] else None
        return _Start(0, 0.0, parent, resumed=False)
    ckpt.check_config(state["config"], config)
    _check_resumable_steps(int(state["step"]), state["config"], config, ckpt)
    step.load_state_dict(state["train_step"])
    restore_rng(state["rng"])
    parent = state.get("parent")
    _warn_if_parent_changed(config["init_from"], parent, ckpt)
    return _Start(int(state["step"]), float(state["wall_time"]), parent, resumed=True)


def _check_resumable_steps(
    at: int, saved: dict[str, Any], config: dict[str, Any], ckpt: Checkpointer
) -> None:
    """UserError unless resuming at step `at` can end in the run `config` asks for.

    ``steps`` may change on resume only to extend a run whose learning rate does not depend
    on it (constant schedule): the result then equals a fresh run of the new length. A
    checkpoint past the new ``steps`` would hand back a longer run than asked for, and a
    cosine schedule over another total would follow neither run's learning rates.
    """
    old, new = int(saved["steps"]), int(config["steps"])
    fix = f"use another output folder or delete {ckpt.dir} to start over"
    if at > new:
        raise UserError(
            f"checkpoint {ckpt.latest()} is at step {at}, past the {new} steps asked for: a "
            f"run cannot be shortened on resume; ask for steps >= {at}, or {fix}"
        )
    if old != new and config["lr_schedule"] != "constant":
        raise UserError(
            f"checkpoint {ckpt.latest()} was made for steps = {old} with lr_schedule "
            f"{config['lr_schedule']!r}, whose learning rates depend on the total: resumed "
            f"with steps = {new} it would follow neither run's schedule; keep steps = {old}, "
            f"or {fix}"
        )


def _warn_if_parent_changed(init_from: str | None, parent: dict | None, ckpt) -> None:
    """init_from is ignored on resume; say so when it no longer names the recorded parent."""
    if not init_from:
        return
    same = (
        parent is not None
        and parent["path"] == init_from
        and (not Path(init_from).is_file() or file_sha256(init_from) == parent["sha256"])
    )
    if not same:
        began = f"{parent['path']} (sha256 {parent['sha256'][:12]})" if parent else "scratch"
        print(
            f"train: resuming from {ckpt.latest()}; init_from {init_from} is ignored (this run "
            f"began from {began}); delete {ckpt.dir} to start over from the new parent",
            file=sys.stderr,
        )


class _Progress:
    """A tqdm bar on a terminal, else a line every log_every steps."""

    def __init__(self, config: dict[str, Any], start: int, enabled: bool | None) -> None:
        self.config, self.bar = config, None
        if sys.stderr.isatty() if enabled is None else enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=config["steps"], initial=start,
                            desc=f"train {config['estimator']}", unit="step")  # fmt: skip

    def update(self, r: StepResult) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ess=f"{r.ess:.3f}", F=f"{r.free_energy:.2f}")
        elif r.step % self.config["log_every"] == 0 or r.step == self.config["steps"]:
            print(
                f"step {r.step}/{self.config['steps']} loss {r.loss:.4g} F_q "
                f"{r.free_energy:.4f} ess {r.ess:.4f} ({r.step_seconds:.2f} s/step)",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _time_up(config: dict[str, Any], clock_start: float) -> bool:
    limit = config["time_limit"]
    return limit is not None and time.monotonic() - clock_start >= limit


@dataclass
class _Outcome:
    status: str  # completed | diverged | time_limit
    step: int  # the last step run (the failing one if diverged)
    last_good: int  # the step of the weights kept
    divergence: Divergence | None = None


def train(
    config: dict[str, Any],
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    snapshot_dir: str | Path | None = None,
    progress: bool | None = None,
    clock_start: float | None = None,
    group: Group | None = None,
) -> dict[str, Any]:
    """Train (or resume) a flow; return the summary written to out_dir/summary.json.

    ``time_limit`` counts from `clock_start` (a ``time.monotonic()`` value; the CLI passes
    its own start), by default from this call. With a distributed `group` (one of several
    ranks, `gaugeflow.distributed.process_group`) the step is a `DataParallelStep` and only
    rank 0 writes files or progress.
    """
    clock_start = time.monotonic() if clock_start is None else clock_start
    config = make_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snap_dir = Path(snapshot_dir) if snapshot_dir else out_dir / "snapshots"
    seed_everything(config["seed"])
    if group is not None and group.is_distributed:
        step = DataParallelStep(config, group)
    else:
        step = TrainStep(config, group.device if group else resolve_device(config["device"]))
    main = group is None or group.is_main  # the one process that writes
    slow_amp = amp_warning(config, step.device)
    if main and slow_amp:
        print(f"train: {slow_amp}", file=sys.stderr)
    ckpt = Checkpointer(checkpoint_dir or out_dir / "checkpoints", config["keep_checkpoints"])
    start = _resume_or_init(step, ckpt, config)
    if group is not None:
        agree_start(group, start.step, step.flow)
    if main:
        metrics = MetricsLog(ckpt.dir / "metrics.csv", start.step if start.resumed else None)
    else:
        metrics = Silent()

    def save_checkpoint(n: int, wall: float) -> None:
        if not main:
            return
        metrics.flush()
        state = {"wall_time": wall, "config": config, "parent": start.parent}
        ckpt.save(n, {**state, "train_step": step.state_dict()})
        metrics.publish(out_dir / "metrics.csv")

    outcome = _Outcome("completed", start.step, start.step)
    bar = _Progress(config, start.step, progress) if main else Silent()
    t_start = time.perf_counter()
    try:
        for n in range(start.step + 1, config["steps"] + 1):
            result = step.run(n)
            outcome.step = n
            if result.divergence is not None:
                outcome.status, outcome.divergence = "diverged", result.divergence
                break
            outcome.last_good = n
            wall = start.wall_offset + time.perf_counter() - t_start
            metrics.append({**result.metrics(), "wall_time": wall})
            bar.update(result)
            if main and config["snapshot_every"] and n % config["snapshot_every"] == 0:
                _model_file(step, n, start.parent).save(snap_dir / f"step_{n:07d}.pt")
            stop = n < config["steps"] and _time_up(config, clock_start)
            if group is not None and config["time_limit"] is not None:
                stop = any_rank(stop, group)  # every rank stops at the same step
            if stop or n % config["checkpoint_every"] == 0 or n == config["steps"]:
                save_checkpoint(n, wall)
            if stop:
                outcome.status = "time_limit"
                break
    finally:
        bar.close()
    if outcome.divergence is not None:
        outcome.last_good = _after_divergence(outcome.divergence, step, ckpt)
    metrics.publish(out_dir / "metrics.csv")
    metrics.close()
    summary = _summary(step, ckpt, outcome, start.parent)
    if main:
        _model_file(step, outcome.last_good, start.parent).save(out_dir / "model.pt")
        write_json(out_dir / "summary.json", summary)
    return summary


def _model_file(step: TrainStep, n: int, parent: dict[str, str] | None) -> ModelFile:
    return ModelFile.from_flow(step.flow, action_params(step.config), step.config, n, parent)


def _after_divergence(divergence: Divergence, step: TrainStep, ckpt: Checkpointer) -> int:
    """The last good step. No update is applied from a non-finite loss or gradient, so the
    weights before the failing step are good; non-finite weights are replaced by the newest
    checkpoint's. Checkpoints already on disk are kept untouched."""
    if divergence.weights_damaged:
        last_good = ckpt.restore_weights(step.flow)
    else:
        last_good = divergence.step - 1
    print(f"training diverged: {divergence.message}; last good step {last_good}", file=sys.stderr)
    return last_good


def _summary(step: TrainStep, ckpt: Checkpointer, outcome: _Outcome, parent) -> dict[str, Any]:
    divergence = outcome.divergence
    return {
        "status": outcome.status,
        "step": outcome.step if divergence else outcome.last_good,
        "last_good_step": outcome.last_good,
        "failure": divergence.message if divergence else None,
        "divergence": divergence.kind.value if divergence else None,
        "steps_requested": step.config["steps"],
        "n_parameters": sum(p.numel() for p in step.flow.parameters()),
        "device": str(step.device),
        "torch_version": torch.__version__,
        "gaugeflow_version": __version__,
        "threads": torch.get_num_threads(),
        "config": step.config,
        "flow_config": dict(step.flow.config),
        "checkpoint_dir": str(ckpt.dir),
        "parent": parent,
    }
