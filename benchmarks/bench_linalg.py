"""Which CPU route for the log-determinant is faster: matrix by matrix, or batched on one thread?

torch 2.13's batched CPU LU is wrong (or hangs) with more than one thread for matrices larger
than ~150 (see gaugeflow.physics.linalg). Two safe routes exist:

- ``per_matrix``: unbatched LAPACK calls in a Python loop; MKL may thread inside each one;
- ``single_thread``: one batched call with torch (and MKL) set to one thread meanwhile.

For each L, a batch of Wilson-Dirac matrices (2 L^2 x 2 L^2, or with ``--method eo`` their
L^2 x L^2 Schur complements; complex64, random gauge fields, kappa = 0.276) goes through
``linalg.slogdet`` forward, forward + backward, and ``linalg.inv``: the median of
``--repeats`` runs after one warm-up, the routes taking turns. The ``plain`` batched call is
timed for reference only where it was found right (one thread, or matrices up to 128 on two
threads; at 4 threads it is already wrong at 150). Usage::

    python benchmarks/bench_linalg.py --threads 2
    python benchmarks/bench_linalg.py --L 8 --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from gaugeflow.physics import linalg
from gaugeflow.physics.dirac import fermion_matrix

__all__ = ["ROUTES", "time_routes", "main"]

ROUTES = ("per_matrix", "single_thread", "plain")
OPS = ("slogdet", "slogdet+grad", "inv")


def _op(name: str, M: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        if name == "slogdet":
            with torch.no_grad():
                linalg.slogdet(M)
        elif name == "slogdet+grad":
            A = M.detach().requires_grad_(True)
            linalg.slogdet(A)[1].sum().backward()
        else:
            with torch.no_grad():
                linalg.inv(M)

    return run


def time_routes(routes: list[str], op: str, M: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one call of `op` on M through each route.

    The routes take turns within each repeat, so that a load change on a shared machine
    biases none of them.
    """
    times: dict[str, list[float]] = {route: [] for route in routes}
    fn = _op(op, M)
    for rep in range(repeats + 1):  # the first round warms up
        for route in routes:
            os.environ["GAUGEFLOW_CPU_LINALG"] = route
            t0 = time.perf_counter()
            fn()
            if rep:
                times[route].append(time.perf_counter() - t0)
    return {route: statistics.median(t) for route, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--method",
        choices=("full", "eo"),
        default="full",
        help="full: D (2 L^2 square); eo: its even-odd Schur complement (L^2 square)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"complex64 {args.method} Dirac matrices (kappa 0.276), median of {args.repeats} (seconds)"
    )
    header = f"{'L':>3} {'n':>4} {'op':<13}" + "".join(f"{r:>15}" for r in ROUTES)
    print(header + f"{'single/per':>12}")
    previous = os.environ.get("GAUGEFLOW_CPU_LINALG")
    try:
        for L in args.L:
            theta = 2 * math.pi * torch.rand(args.batch, 2, L, L, generator=generator)
            M = fermion_matrix(theta, 0.276, method=args.method).detach()
            n = M.shape[-1]
            # the plain batched call is wrong or hangs here: see the module docstring
            unsafe = args.threads > 2 or (args.threads == 2 and n > 128)
            routes = [r for r in ROUTES if not (r == "plain" and unsafe)]
            for op in OPS:
                row: dict[str, float | None] = dict.fromkeys(ROUTES)
                row.update(time_routes(routes, op, M, args.repeats))
                cells = "".join(
                    f"{'unsafe':>15}" if t is None else f"{t:>15.4f}" for t in row.values()
                )
                ratio = row["single_thread"] / row["per_matrix"]
                print(f"{L:>3} {n:>4} {op:<13}{cells}{ratio:>12.2f}", flush=True)
    finally:
        if previous is None:
            os.environ.pop("GAUGEFLOW_CPU_LINALG", None)
        else:
            os.environ["GAUGEFLOW_CPU_LINALG"] = previous
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
