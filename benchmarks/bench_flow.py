"""Size and speed of the paper's flow (48 layers, 8 bins, 64 channels) on the CPU.

For each L: parameter count, then the median wall time of a forward and a reverse pass of a
batch under torch.no_grad(), with autograd recording, and with autograd plus a backward of
the mean log-det. Ratios to the no-grad forward make runs on different machines comparable.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_flow.py [--sizes 8 16] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from gaugeflow.flows import UniformPrior, build_flow, default_config
from gaugeflow.runtime import configure_threads

COLUMNS = ("fwd no_grad", "rev no_grad", "fwd grad", "rev grad", "fwd+bwd", "rev+bwd")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_size(L: int, batch: int, repeats: int, seed: int) -> dict[str, float]:
    """Parameter count and timings [s] of the paper architecture at lattice size L."""
    torch.manual_seed(seed)
    flow = build_flow({**default_config(L), "device": "cpu"})
    z = UniformPrior(L).sample(batch, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        phi, _ = flow(z)

    def no_grad(apply: Callable) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return apply(z if apply is flow else phi)

        return run

    def with_grad(apply: Callable, backward: bool) -> Callable[[], object]:
        def run() -> object:
            flow.zero_grad(set_to_none=True)
            out, log_det = apply(z if apply is flow else phi)
            if backward:
                log_det.mean().backward()
            return out

        return run

    runs = [
        no_grad(flow),
        no_grad(flow.reverse),
        with_grad(flow, False),
        with_grad(flow.reverse, False),
        with_grad(flow, True),
        with_grad(flow.reverse, True),
    ]
    result: dict[str, float] = {"L": L, "parameters": flow.n_parameters()}
    for name, run in zip(COLUMNS, runs, strict=True):
        result[name] = median_seconds(run, repeats)
    return result


def format_table(rows: list[dict[str, float]]) -> str:
    header = f"{'L':>3} {'parameters':>11} " + " ".join(f"{c:>12}" for c in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        times = " ".join(f"{row[c]:>11.3f}s" for c in COLUMNS)
        lines.append(f"{row['L']:>3} {row['parameters']:>11,} {times}")
        ratios = " ".join(f"{row[c] / row[COLUMNS[0]]:>11.2f}x" for c in COLUMNS)
        lines.append(f"{'':>3} {'ratio':>11} {ratios}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    threads = configure_threads()
    rows = [bench_size(L, args.batch, args.repeats, args.seed) for L in args.sizes]
    print(
        f"paper flow (48 layers, 8 bins, 64 channels, float32), batch {args.batch}, CPU, "
        f"{threads} thread(s), median of {args.repeats} after one warm-up; torch {torch.__version__}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
