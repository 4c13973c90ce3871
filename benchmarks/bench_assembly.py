"""The paper's implementation (``--assembly loop``) against ours (``scatter``), issue 16.

For each lattice size L, with the paper's flow (48 layers x 64 channels), the r.t. estimator
(the one that differentiates the Dirac matrix), batch 64, float32:

- ``nodes``: autograd-graph nodes of one loss call, and of them ``CopySlices`` (the per-site
  block assignments of the loop assembly; their backward each copies the whole gradient of D);
- ``step``: median wall time of a gradient step (zero_grad, loss call, backward, Adam step)
  over ``--steps`` steps after ``--warmup`` untimed ones (gaugeflow.measure.measure_timing),
  the two assemblies interleaved, one step of each per round;
- ``loop / scatter``: the ratio of the two medians, measured in one run.

The loop path is the paper's as a whole: per-site block assignment into a dense D and the
determinant of the full D; scatter takes the even-odd Schur complement. Usage::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_assembly.py --threads 2
    python benchmarks/bench_assembly.py --L 8 12 --steps 3 --out assembly.json

`step_seconds(L, assembly)` is importable for side-by-side runs with other code in one
process (benchmarks/RESULTS.md, "Issue 16"). The load average is recorded with each row:
on a shared machine compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

from gaugeflow.io import write_json
from gaugeflow.measure import build_setup, gradient_step, measure_dag, measure_timing

__all__ = ["ASSEMBLIES", "make_setup", "graph", "step_seconds", "main"]

ASSEMBLIES = ("loop", "scatter")


def make_setup(
    L: int, assembly: str, batch_size: int = 64, n_layers: int = 48, hidden: int = 64
) -> Any:
    """A measurement setup: r.t., the given assembly (and its own action method), float32."""
    return build_setup(
        {
            "L": L,
            "estimator": "rt",
            "assembly": assembly,
            "batch_size": batch_size,
            "device": "cpu",
            "seed": 0,
            "flow": {"n_layers": n_layers, "hidden_channels": hidden},
        }
    )


def graph(setup: Any) -> dict[str, int]:
    """Nodes and CopySlices of one loss call's autograd graph."""
    dag = measure_dag(setup)
    return {"nodes": dag["nodes"], "copy_slices": dag["node_types"].get("CopySlices", 0)}


def step_seconds(setup: Any) -> float:
    """Wall time of one gradient step (after the setup's warm-up)."""
    return measure_timing(setup, steps=1, warmup=0)["step_seconds"]


def bench_L(L: int, steps: int, warmup: int, batch_size: int, n_layers: int, hidden: int):
    setups = {a: make_setup(L, a, batch_size, n_layers, hidden) for a in ASSEMBLIES}
    row: dict[str, Any] = {"L": L, "batch_size": batch_size, "load_before": os.getloadavg()[0]}
    for a, setup in setups.items():
        row[f"{a}_method"] = setup.config["action_method"]
        row.update({f"{a}_{k}": v for k, v in graph(setup).items()})
        for _ in range(warmup):
            gradient_step(setup)
    times: dict[str, list[float]] = {a: [] for a in ASSEMBLIES}
    for _ in range(steps):  # interleaved: one step of each per round
        for a, setup in setups.items():
            times[a].append(step_seconds(setup))
    for a in ASSEMBLIES:
        row[f"{a}_step_s"] = statistics.median(times[a])
        row[f"{a}_steps_s"] = times[a]
    row["loop_over_scatter"] = row["loop_step_s"] / row["scatter_step_s"]
    row["load_after"] = os.getloadavg()[0]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per assembly and L")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--n-layers", type=int, default=48)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="JSON with every row")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(
        f"r.t., flow {args.n_layers}x{args.hidden}, batch {args.batch_size}, "
        f"{args.threads} threads; loop = the paper's (per-site assignment, full D), "
        "scatter = ours (even-odd)"
    )
    print("   L   nodes loop (CopySlices)   nodes scatter   step loop   step scatter   ratio  load")
    t0 = time.perf_counter()
    for L in args.L:
        row = bench_L(L, args.steps, args.warmup, args.batch_size, args.n_layers, args.hidden)
        rows.append(row)
        print(
            f"{L:4d} {row['loop_nodes']:10d} ({row['loop_copy_slices']:5d})"
            f" {row['scatter_nodes']:15d} {row['loop_step_s']:10.2f} s"
            f" {row['scatter_step_s']:12.2f} s {row['loop_over_scatter']:7.2f}"
            f"  {row['load_before']:.1f}-{row['load_after']:.1f}",
            flush=True,
        )
    if len(rows) >= 2:
        (a, b) = rows[0], rows[1]
        per_site = (b["loop_nodes"] - a["loop_nodes"]) / (b["L"] ** 2 - a["L"] ** 2)
        print(f"loop graph: {per_site:g} nodes per site (the paper's implementation: 36)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        write_json(args.out, {"threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
