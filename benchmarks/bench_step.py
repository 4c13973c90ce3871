"""Time per gradient step on the CPU, REINFORCE/r.t. speed-up, and the step's efficiency.

For each lattice size L and each configuration (estimator + Dirac assembly), with the paper's
architecture (48 layers, 64 channels), batch 64, float32:

- ``step``: median wall time of a gradient step (zero_grad, loss call, backward, Adam step)
  over ``--repeats`` steps after ``--warmup`` untimed ones (gaugeflow.measure.measure_timing);
  at each L the configurations' steps are interleaved, one of each per round;
- ``conv``: the conditioner nets alone, replayed on the inputs they saw in one loss call,
  forward and, where the step differentiates them, backward;
- ``det``: the action alone with the vectorised ``scatter`` assembly on the configurations
  the step gave it, forward and, where the estimator differentiates it (r.t., path),
  backward: the determinant the estimator cannot avoid. ``action`` is the same with the
  configuration's own assembly (for ``loop`` this includes the per-site assembly);
- ``eff = (conv + det) / step``: how close the step is to its unavoidable work.

Then the speed-up t(r.t.) / t(REINFORCE) per assembly. Usage (the full run took 41 min on
2 cores shared with other jobs, most of it r.t.-loop at L >= 12, whose steps take minutes)::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_step.py --threads 2
    python benchmarks/bench_step.py --L 4 8 --configs rt-scatter reinforce-scatter --repeats 1

On a machine shared with other jobs, OpenMP threads that spin while they wait make a
2-thread step several times slower than it is (4x measured here at load 10);
``OMP_WAIT_POLICY=PASSIVE`` avoids that. The load average is recorded with each row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Any

import torch

from gaugeflow.allocator import tune_allocator
from gaugeflow.io import write_json
from gaugeflow.measure import MeasureSetup, build_setup, gradient_step, measure_timing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from floor import FloorReplay, floor_action  # noqa: E402  (benchmarks/floor.py, beside this)
from machine import cpu_model, git_state, loadavg  # noqa: E402

__all__ = ["CONFIGS", "bench_L", "cpu_model", "main"]

#: configuration name -> (estimator, assembly)
CONFIGS: dict[str, tuple[str, str]] = {
    "rt-loop": ("rt", "loop"),
    "rt-scatter": ("rt", "scatter"),
    "reinforce-loop": ("reinforce", "loop"),
    "reinforce-scatter": ("reinforce", "scatter"),
    "path-loop": ("path", "loop"),
    "path-scatter": ("path", "scatter"),
}
DEFAULT_CONFIGS = ["rt-loop", "rt-scatter", "reinforce-loop", "reinforce-scatter", "path-scatter"]


def _setup(L: int, name: str, args: argparse.Namespace) -> MeasureSetup:
    estimator, assembly = CONFIGS[name]
    return build_setup(
        {
            "L": L,
            "estimator": estimator,
            "assembly": assembly,
            "batch_size": args.batch_size,
            "device": "cpu",
            "dtype": "float32",
            "seed": args.seed,
            "flow": {"n_layers": args.n_layers, "hidden_channels": args.hidden},
        }
    )


def _is_slow(L: int, name: str) -> bool:
    """Loop assembly with a differentiated action at L >= 12: ~10-40 s per step."""
    estimator, assembly = CONFIGS[name]
    return assembly == "loop" and estimator != "reinforce" and L >= 12


def bench_L(L: int, names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Timing and floor of each configuration at one L.

    Rounds: in each, every configuration runs one timed gradient step and then, with
    ``--floor`` on, its conditioner nets and its action alone on the inputs recorded from one
    loss call (benchmarks/floor.py: FloorReplay). Interleaving keeps the ratios (speed-ups,
    fractions of a step) meaningful when the machine's load changes during the run; each
    fraction is the median over rounds of the per-round ratio.
    """
    load0 = loadavg()
    t0 = time.perf_counter()
    setups = {name: _setup(L, name, args) for name in names}
    repeats = {
        n: min(args.repeats, args.slow_repeats) if _is_slow(L, n) else args.repeats for n in names
    }
    replays: dict[str, FloorReplay] = {}
    cheap: dict[str, Any] = {}
    for name in names:
        for _ in range(args.warmup):
            gradient_step(setups[name])
        if args.floor:
            replays[name] = FloorReplay(setups[name])
            cheap[name] = floor_action(setups[name], "scatter")
            replays[name].conditioners()  # warm-up replays (the slow loop action is warm)
            replays[name].action(cheap[name])
    keys = ("step", "loss", "backward", "conv", "det", "action", "conv_f", "det_f", "action_f")
    samples: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in names}
    for r in range(max(repeats.values())):
        for name in names:
            if r >= repeats[name]:
                continue
            got = samples[name]
            timing = measure_timing(setups[name], steps=1, warmup=0)
            step = timing["step_seconds"]
            got["step"].append(step)
            got["loss"].append(timing["loss_seconds"])
            got["backward"].append(timing["backward_seconds"])
            if args.floor:
                replay = replays[name]
                conv = replay.conditioners()
                det = replay.action(cheap[name])
                action = det if cheap[name] is setups[name].action else replay.action()
                for key, value in (("conv", conv), ("det", det), ("action", action)):
                    got[key].append(value)
                    got[key + "_f"].append(value / step)
    rows = []
    for name in names:
        estimator, assembly = CONFIGS[name]
        got = samples[name]
        row: dict[str, Any] = {
            "L": L,
            "config": name,
            "estimator": estimator,
            "assembly": assembly,
            "repeats": repeats[name],
            "step_seconds": statistics.median(got["step"]),
            "step_min": min(got["step"]),
            "step_max": max(got["step"]),
            "loss_seconds": statistics.median(got["loss"]),
            "backward_seconds": statistics.median(got["backward"]),
        }
        if args.floor:
            eff = [c + d for c, d in zip(got["conv_f"], got["det_f"], strict=True)]
            row.update(
                conditioner_seconds=statistics.median(got["conv"]),
                determinant_seconds=statistics.median(got["det"]),
                action_seconds=statistics.median(got["action"]),
                action_differentiated=replays[name].action_differentiated,
                conv_fraction=statistics.median(got["conv_f"]),
                det_fraction=statistics.median(got["det_f"]),
                action_fraction=statistics.median(got["action_f"]),
                efficiency=statistics.median(eff),
            )
        rows.append(row)
    for row in rows:
        row.update(load_before=load0, load_after=loadavg(), bench_seconds=time.perf_counter() - t0)
    return rows


def _pct(row: dict[str, Any], key: str) -> str:
    return f"{100 * row[key]:.0f}%" if key in row else "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| L | estimator | assembly | step [s] | min–max [s] | loss [s] | backward [s] "
        "| conv | det | action | eff |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['L']} | {r['estimator']} | {r['assembly']} | {r['step_seconds']:.3f} "
            f"| {r['step_min']:.3f}–{r['step_max']:.3f} | {r['loss_seconds']:.3f} "
            f"| {r['backward_seconds']:.3f} | {_pct(r, 'conv_fraction')} | {_pct(r, 'det_fraction')} "
            f"| {_pct(r, 'action_fraction')} | {_pct(r, 'efficiency')} |"
        )
    return "\n".join(lines)


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """t(r.t.) / t(REINFORCE) at each L for each assembly measured with both estimators."""
    times = {(r["L"], r["estimator"], r["assembly"]): r["step_seconds"] for r in rows}
    out = []
    for L in sorted({r["L"] for r in rows}):
        for assembly in ("loop", "scatter"):
            rt, re = times.get((L, "rt", assembly)), times.get((L, "reinforce", assembly))
            if rt is not None and re is not None:
                out.append(
                    {"L": L, "assembly": assembly, "rt": rt, "reinforce": re, "speedup": rt / re}
                )
    return out


def markdown_speedups(table: list[dict[str, Any]]) -> str:
    lines = ["| L | assembly | r.t. [s] | RE [s] | speed-up RE vs r.t. |", "|---|---|---|---|---|"]
    for s in table:
        lines.append(
            f"| {s['L']} | {s['assembly']} | {s['rt']:.3f} | {s['reinforce']:.3f} | {s['speedup']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, nargs="+", default=[4, 8, 12, 16])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=DEFAULT_CONFIGS)
    p.add_argument("--repeats", type=int, default=3, help="rounds: timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time conditioner nets and action alone in each round (default: on)",
    )
    p.add_argument(
        "--slow-repeats",
        type=int,
        default=1,
        help="rounds for the loop assembly with a differentiated action (r.t., path) at "
        "L >= 12, whose steps take ~10-40 s each (default 1)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=48)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    malloc_tuned = tune_allocator()  # as the gaugeflow command line does
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python benchmarks/bench_step.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "batch_size": args.batch_size,
        "n_layers": args.n_layers,
        "hidden": args.hidden,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "malloc_tuned": malloc_tuned,
        "code": git_state(),
        "load_at_start": loadavg(),
    }
    print(json.dumps(meta), flush=True)
    rows = []
    for L in args.L:
        for row in bench_L(L, args.configs, args):
            rows.append(row)
            print(
                f"L={L:>2} {row['config']:<17} step {row['step_seconds']:8.3f} s "
                f"(loss {row['loss_seconds']:.3f}, backward {row['backward_seconds']:.3f}; "
                f"{row['repeats']} steps) conv {_pct(row, 'conv_fraction')} "
                f"det {_pct(row, 'det_fraction')} action {_pct(row, 'action_fraction')} "
                f"eff {_pct(row, 'efficiency')} [load {row['load_before']} -> {row['load_after']}, "
                f"{row['bench_seconds']:.0f} s for this L]",
                flush=True,
            )
        if args.json:  # keep what is done if a later L is interrupted
            write_json(args.json, {"meta": meta, "rows": rows, "speedups": speedups(rows)})
    table = speedups(rows)
    print()
    print(markdown_table(rows))
    print()
    print(markdown_speedups(table))
    if args.json:
        write_json(args.json, {"meta": meta, "rows": rows, "speedups": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
