"""REINFORCE step with and without conditioner replay (gaugeflow.flows.replay), one process.

The two variants train the same TrainStep in alternation (blocks of --steps steps, the order
flipped every round), so a drifting machine affects both alike; the ratio comes from one run.

    python benchmarks/bench_replay.py --L 16 --threads 2                    # paper flow, CPU
    python benchmarks/bench_replay.py --L 8 --layers 16 --hidden 16 --holonomy --threads 1
    python benchmarks/bench_replay.py --L 16 --device cuda --batch-size 768

Prints the median step time of each variant and their ratio; --out writes them as JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Callable
from pathlib import Path

import torch
from machine import alternating_times, speedup_summary  # benchmarks/machine.py

from gaugeflow import estimators
from gaugeflow.allocator import tune_allocator
from gaugeflow.io import write_json
from gaugeflow.training.config import make_config
from gaugeflow.training.step import TrainStep


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--holonomy", action="store_true")
    ap.add_argument("--charge-symmetric", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tune_allocator()  # as the command line does: big buffers stay mapped between steps
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    flow = {
        "n_layers": args.layers,
        "hidden_channels": args.hidden,
        "holonomy": args.holonomy,
        "charge_symmetric": args.charge_symmetric,
    }
    config = make_config(
        {"L": args.L, "batch_size": args.batch_size, "device": str(device), "flow": flow}
    )
    step = TrainStep(config, device)
    variants = {
        "replay": functools.partial(estimators.reinforce, replay=True),
        "plain": functools.partial(estimators.reinforce, replay=False),
    }
    counter = itertools.count(1)

    def run_with(estimator) -> Callable[[], None]:
        def run() -> None:
            step.estimator = estimator
            step.run(next(counter))

        return run

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    times = alternating_times(
        {name: run_with(est) for name, est in variants.items()}, args.rounds, args.steps, sync=sync
    )
    summary = speedup_summary(times, baseline="plain", candidate="replay")
    medians = summary["median_seconds"]
    result = {
        "L": args.L,
        "batch_size": args.batch_size,
        "layers": args.layers,
        "hidden": args.hidden,
        "holonomy": args.holonomy,
        "charge_symmetric": args.charge_symmetric,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **summary,
    }
    print(
        f"L={args.L} batch {args.batch_size} {args.layers}x{args.hidden} on {result['device_name']}: "
        f"replay {medians['replay']:.4f} s, plain {medians['plain']:.4f} s per step "
        f"-> {result['speedup']:.2f}x"
    )
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
