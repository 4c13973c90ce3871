"""Process groups for data-parallel training: rendezvous, backend, device, timeout, teardown.

One training run may be spread over several processes ("ranks"), each computing a share of the
parts of every step (`gaugeflow.training.distributed`). This module only sets the processes up;
it holds no training logic.

Where the ranks come from (`detect`):

- **torchrun** (or `--nproc`, which drives the same launcher): ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` are set by the launcher;
- **srun** (SLURM): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (the tasks of *this* job step:
  the batch script of an ``--ntasks=2`` job is one process and is not a rank), ``SLURM_LOCALID``
  and the step's node list, whose first host (``scontrol show hostnames``) is the master; the
  port is ``MASTER_PORT`` when set, else derived from the job and step ids;
- neither: one process, no process group.

Backend ``nccl`` on CUDA (one GPU per rank: ``cuda:<local rank>``), ``gloo`` on CPU. Every
collective (and the rendezvous itself) gives up after ``timeout`` seconds, so a rank that died
or hangs makes the others fail with an error instead of waiting forever.

`launch_local` starts N local ranks of a Python function through torch's elastic launcher (the
machinery of ``torchrun --standalone``), so ``gaugeflow train --nproc N`` and
``torchrun --nproc-per-node N -m gaugeflow train`` run the same code path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from .errors import UserError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistEnv",
    "Group",
    "detect",
    "first_host",
    "process_group",
    "launch_local",
    "LaunchFailed",
    "RankFailure",
]

#: seconds a collective (or the rendezvous) waits for the other ranks before failing
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a multi-process run, as read from its environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" | "slurm"


@dataclass(frozen=True)
class Group:
    """An initialised process group (or the single process: world_size 1, no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    source: str = "single"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError as exc:
        raise UserError(f"environment variable {key}={env[key]!r} is not an integer") from exc


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("node[03-05],gpu7" -> "node03")."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise UserError("the SLURM node list is empty; set MASTER_ADDR")
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise UserError(
            f"cannot expand the SLURM node list {nodelist!r} without `scontrol`; "
            "set MASTER_ADDR to the first node's address"
        )
    out = subprocess.run(
        [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=False
    )
    hosts = out.stdout.split()
    if out.returncode != 0 or not hosts:
        raise UserError(
            f"`scontrol show hostnames {nodelist}` failed ({out.stderr.strip()}); set MASTER_ADDR"
        )
    return hosts[0]


def detect(env: Mapping[str, str] | None = None) -> DistEnv | None:
    """The multi-process environment of this process (None: a single process)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        world = _int(env, "WORLD_SIZE")
        if world <= 1:
            return None
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise UserError(
                f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not: "
                "launch with torchrun (or set all of them)"
            )
        return DistEnv(
            rank=_int(env, "RANK"),
            world_size=world,
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env["MASTER_ADDR"],
            master_port=_int(env, "MASTER_PORT"),
            source="torchrun",
        )
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        if world <= 1:
            return None
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        else:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
            addr = first_host(nodes)
        if "MASTER_PORT" in env:
            port = _int(env, "MASTER_PORT")
        else:
            # one port per (job, step): two steps of one job on one node do not collide
            job = int(env.get("SLURM_JOB_ID", "0") or 0)
            step = int(env.get("SLURM_STEP_ID", "0") or 0)
            port = 20000 + (job * 16 + step) % 20000
        return DistEnv(
            rank=_int(env, "SLURM_PROCID"),
            world_size=world,
            local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=addr,
            master_port=port,
            source="slurm",
        )
    return None


def _device_for(device: str, local_rank: int, distributed: bool) -> torch.device:
    from .runtime import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and distributed:
        if dev.index is not None:
            raise UserError(
                f"device {device!r} names one GPU, but with several ranks each rank takes the "
                "GPU of its local rank: use --device cuda"
            )
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UserError(
                f"local rank {local_rank} has no GPU of its own: this node has {count}; "
                "start at most one rank per GPU"
            )
        dev = torch.device("cuda", local_rank)
    return dev


@contextmanager
def process_group(device: str = "auto", timeout: float = DEFAULT_TIMEOUT, env=None):
    """Join the run's process group (if any) for the duration of the block; yield a `Group`.

    In a single process this only resolves the device. The group is destroyed on exit, also
    when the block raises.
    """
    if not timeout > 0:
        raise UserError(f"the collective timeout must be positive; got {timeout!r} s")
    info = detect(env)
    if info is None:
        yield Group(device=_device_for(device, 0, False), timeout=timeout)
        return
    if not 0 <= info.rank < info.world_size:
        raise UserError(f"rank {info.rank} is outside the world of {info.world_size} processes")
    import torch.distributed as dist

    dev = _device_for(device, info.local_rank, True)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    os.environ["MASTER_ADDR"] = info.master_addr
    os.environ["MASTER_PORT"] = str(info.master_port)
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        kwargs["device_id"] = dev
    try:
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=info.rank,
            world_size=info.world_size,
            timeout=timedelta(seconds=timeout),
            **kwargs,
        )
    except RuntimeError as exc:  # DistStoreError / DistNetworkError: no rendezvous in time
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RankFailure(
            f"rank {info.rank} of {info.world_size} ({info.source}): the rendezvous at "
            f"{info.master_addr}:{info.master_port} failed within {timeout:g} s ({first})"
        ) from exc
    group = Group(
        rank=info.rank,
        world_size=info.world_size,
        local_rank=info.local_rank,
        device=dev,
        backend=backend,
        timeout=timeout,
        source=info.source,
    )
    try:
        yield group
    finally:
        dist.destroy_process_group()


class RankFailure(RuntimeError):
    """A collective failed on this rank: another rank died or did not answer in time."""


# --------------------------------------------------------------------------------------------
# local launcher


class LaunchFailed(Exception):
    """A rank started by `launch_local` failed; the message names the rank and exit code."""


def launch_local(
    nproc: int,
    fn: Callable[..., Any],
    args: tuple = (),
    *,
    threads: int = 1,
    run_id: str | None = None,
) -> dict[int, Any]:
    """Run ``fn(*args)`` in `nproc` local ranks through torch's elastic launcher; return
    ``{rank: fn's return value}``.

    This is what ``torchrun --standalone --nproc-per-node N`` does (a c10d rendezvous on a free
    local port, RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set for each rank, no restarts): when a rank
    fails the launcher stops the others and this raises `LaunchFailed` naming the first failure.
    Each rank gets ``OMP_NUM_THREADS=threads``.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UserError(f"--nproc must be a positive integer; got {nproc}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=run_id or f"gaugeflow-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    try:
        returned = elastic_launch(config, fn)(*args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items(), key=lambda item: item[1].timestamp)
        rank, failure = failures[0]
        if failure.exitcode is not None and failure.exitcode < 0:
            how = f"was killed by signal {-failure.exitcode}"
        else:
            how = f"exited with code {failure.exitcode}"
        others = ", ".join(str(r) for r, _ in failures[1:])
        tail = f" (then rank(s) {others})" if others else ""
        raise LaunchFailed(f"rank {rank} of {nproc} {how}{tail}") from None
    sys.stdout.flush()
    return dict(returned or {})
