"""The data-parallel training step: the parts of a step spread over the ranks of a process group.

A step is ``n_batches`` parts; with N ranks, rank r computes parts ``r*k .. r*k + k - 1``
(``k = n_batches / N``). Part p of step s draws its samples from the stream keyed by
(seed, s, p) whichever rank computes it, and each part's loss is divided by the *total*
``n_batches``, so the sum over ranks of the accumulated gradients is the gradient of one
process computing all parts. The step then:

- `agree_divergence`: every rank learns whether any rank saw a non-finite loss (one small
  all-reduce; the failing rank's message is gathered only then), so all take the same branch;
- `sync_gradients`: one explicit all-reduce (sum) of the flattened gradients, after all parts.
  Not DistributedDataParallel: DDP all-reduces inside backward and would need ``no_sync`` for
  all but the last part, it only hooks calls that go through its ``forward`` (the estimators
  call the flow's own methods, the path gradient through a detached copy of the parameters),
  and it renames the state dict. One all-reduce of the finished sum is exact (identical summed
  gradients on every rank, so identical Adam updates, grad-scaler and finiteness decisions) and
  independent of how an estimator uses the flow; what it gives up, overlapping communication
  with the last backward, is measured by benchmarks/bench_ddp.py (``sync_seconds``);
- `reduce_metrics`: the loss is summed and log q / log p are gathered in rank order, which is
  part order, so the metrics are those of the whole step's batch.

Any collective that fails (a rank died, or did not answer within the group's timeout) raises
`gaugeflow.distributed.RankFailure` naming this rank and what it was waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..distributed import Group, RankFailure
from ..errors import UserError
from .step import Divergence, DivergenceKind, TrainStep

__all__ = ["DataParallelStep", "Silent", "check_world", "any_rank", "agree_start"]

_KINDS = list(DivergenceKind)


class Silent:
    """Stands in for the metrics log and the progress bar on ranks other than 0."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def check_world(config: dict[str, Any], world_size: int) -> None:
    """UserError unless the step's parts split evenly over `world_size` ranks."""
    n = config["n_batches"]
    if n % world_size:
        raise UserError(
            f"config key 'n_batches' ({n}) must be a multiple of the number of processes "
            f"({world_size}): each process computes n_batches / {world_size} parts of every "
            f"step; use n_batches = {world_size * max(1, round(n / world_size))} or another "
            "number of processes"
        )


def _collective(group: Group, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except RuntimeError as exc:  # DistBackendError / DistNetworkError / gloo and nccl errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RankFailure(
            f"rank {group.rank} of {group.world_size}: the {what} failed: another rank died "
            f"or did not answer within {group.timeout:g} s ({first})"
        ) from exc


def any_rank(flag: bool, group: Group | None, what: str = "stop decision") -> bool:
    """True on every rank when `flag` is true on any rank (the flag itself in one process)."""
    if group is None or not group.is_distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=group.device)
    _collective(group, what, dist.all_reduce, t)
    return bool(t.item())


def agree_start(group: Group, start_step: int, flow: torch.nn.Module) -> None:
    """Check that every rank resumed from the same step with the same weights.

    Ranks that do not see the same checkpoint folder (a node-local path on a multi-node run)
    would otherwise silently train different models.
    """
    if not group.is_distributed:
        return
    steps = [None] * group.world_size
    _collective(group, "start-up check", dist.all_gather_object, steps, start_step)
    if len(set(steps)) > 1:
        raise UserError(
            "the ranks resumed from different checkpoints (start step per rank: "
            f"{steps}): every rank must see the same checkpoint folder (a shared file system)"
        )
    flat = torch.cat([p.detach().reshape(-1) for p in flow.parameters()])
    ref = flat.clone()
    _collective(group, "start-up check", dist.broadcast, ref, 0)
    differs = any_rank(not torch.equal(flat, ref), group, "start-up check")
    if differs:
        raise UserError(
            f"the ranks start step {start_step} with different weights; every rank must build "
            "the flow from the same config and seed and read the same checkpoint"
        )


class DataParallelStep(TrainStep):
    """`TrainStep` of one rank of a process group (see the module docstring).

    ``sync_seconds`` is the wall time of the last gradient all-reduce.
    """

    def __init__(self, config: dict[str, Any], group: Group, **components: Any) -> None:
        check_world(config, group.world_size)
        super().__init__(config, group.device, **components)
        k = config["n_batches"] // group.world_size
        self.group = group
        self.parts = range(group.rank * k, (group.rank + 1) * k)
        self.sync_seconds = 0.0

    # -- hooks ---------------------------------------------------------------------------------

    def agree_divergence(self, divergence: Divergence | None) -> Divergence | None:
        g = self.group
        codes = torch.zeros(g.world_size, dtype=torch.int64, device=g.device)
        if divergence is not None:
            codes[g.rank] = _KINDS.index(divergence.kind) + 1
        _collective(g, "divergence check", dist.all_reduce, codes)
        if not bool(codes.any()):
            return None
        mine = None if divergence is None else (divergence.kind.value, divergence.step,
                                                divergence.message)  # fmt: skip
        seen: list[Any] = [None] * g.world_size
        _collective(g, "divergence report", dist.all_gather_object, seen, mine)
        first = next(r for r, item in enumerate(seen) if item is not None)
        kind, step, message = seen[first]
        return Divergence(DivergenceKind(kind), step, f"{message} (rank {first} of {g.world_size})")

    def sync_gradients(self) -> None:
        t0 = time.perf_counter()
        params = [p for p in self.flow.parameters() if p.requires_grad]
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, group_params in by_dtype.items():
            # one flat buffer per dtype: the gradients, then one "has a gradient" count per
            # tensor, so that a tensor without a gradient on every rank stays without one
            sizes = [p.numel() for p in group_params]
            flat = torch.zeros(sum(sizes) + len(sizes), dtype=dtype, device=self.device)
            offset = 0
            for i, (p, n) in enumerate(zip(group_params, sizes, strict=True)):
                if p.grad is not None:
                    flat[offset : offset + n].copy_(p.grad.reshape(-1))
                    flat[sum(sizes) + i] = 1
                offset += n
            _collective(self.group, "gradient all-reduce", dist.all_reduce, flat)
            offset = 0
            for i, (p, n) in enumerate(zip(group_params, sizes, strict=True)):
                summed = flat[offset : offset + n].view_as(p)
                if p.grad is not None:
                    p.grad.copy_(summed)
                elif bool(flat[sum(sizes) + i] > 0):
                    p.grad = summed.clone()
                offset += n
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.sync_seconds = time.perf_counter() - t0

    def reduce_metrics(
        self, loss: torch.Tensor, logq: torch.Tensor, logp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.group
        loss = loss.detach().clone()
        _collective(g, "loss all-reduce", dist.all_reduce, loss)
        pair = torch.stack([logq.detach(), logp.detach()])
        gathered = [torch.empty_like(pair) for _ in range(g.world_size)]
        _collective(g, "metrics all-gather", dist.all_gather, gathered, pair.contiguous())
        both = torch.cat(gathered, dim=1)  # rank order is part order
        return loss, both[0], both[1]
