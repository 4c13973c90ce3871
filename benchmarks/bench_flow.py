"""Size and speed of the paper's flow (48 layers, 8 bins, 64 channels) on the CPU.

For each L: parameter count, then the median wall time of a forward and a reverse pass of a
batch under torch.no_grad(), with autograd recording, and with autograd plus a backward of
the mean log-det. Ratios to the no-grad forward make runs on different machines comparable.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_flow.py [--sizes 8 16] [--batch 64]

With ``--compare REV`` (e.g. ``--compare HEAD``) the flow package of git revision REV is
loaded next to the working tree's, both flows get the same weights, their outputs are checked
to agree, and the two are timed interleaved (old, new, old, new, ...) so that machine load
hits both alike: median and minimum per column, the new/old ratio, and the saved-tensor bytes
of one REINFORCE loss (unique storages packed by autograd; deterministic, load-free).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gaugeflow.estimators import reinforce
from gaugeflow.flows import UniformPrior, build_flow, default_config
from gaugeflow.physics.u1 import gauge_action
from gaugeflow.runtime import configure_threads

COLUMNS = ("fwd no_grad", "rev no_grad", "fwd grad", "rev grad", "fwd+bwd", "rev+bwd")
COMPARE_COLUMNS = ("fwd no_grad", "fwd+bwd", "reinforce")
BETA = 1.0


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


# --------------------------------------------------------------------------------------------
# before/after comparison against the flow package of a git revision


def load_flows_at(revision: str) -> object:
    """The gaugeflow.flows package as of git `revision`, importable as gaugeflow._flows_<rev>."""
    repo = Path(__file__).resolve().parent.parent
    package = "src/gaugeflow/flows"
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{revision}:{package}"],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    where = Path(tempfile.mkdtemp(prefix="gaugeflow_flows_"))
    for name in names:
        if name.endswith(".py"):
            source = subprocess.run(
                ["git", "show", f"{revision}:{package}/{name}"],
                cwd=repo,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (where / name).write_text(source)
    module_name = "gaugeflow._flows_" + "".join(c if c.isalnum() else "_" for c in revision)
    spec = importlib.util.spec_from_file_location(
        module_name, where / "__init__.py", submodule_search_locations=[str(where)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def saved_tensor_bytes(loss_fn: Callable[[], torch.Tensor], parameters) -> tuple[int, int]:
    """Bytes of the unique storages autograd saves in loss_fn(): all, and without parameters."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss
    params = {p.untyped_storage().data_ptr() for p in parameters}
    total = sum(storages.values())
    return total, total - sum(n for ptr, n in storages.items() if ptr in params)


def compare_size(L: int, batch: int, repeats: int, seed: int, old_flows) -> dict[str, object]:
    """Interleaved timings and saved bytes of the old and the new flow at lattice size L."""
    torch.manual_seed(seed)
    new = build_flow({**default_config(L), "device": "cpu"})
    old = old_flows.build_flow({**default_config(L), "device": "cpu"})
    old.load_state_dict(new.state_dict())
    prior = UniformPrior(L)
    z = prior.sample(batch, torch.Generator().manual_seed(seed))

    def log_prob(phi: torch.Tensor) -> torch.Tensor:
        return -gauge_action(phi, BETA)

    with torch.no_grad():
        phi_new, ld_new = new(z)
        phi_old, ld_old = old(z)
    agreement = max((phi_new - phi_old).abs().max().item(), (ld_new - ld_old).abs().max().item())

    def runs(flow) -> dict[str, Callable[[], object]]:
        def fwd_no_grad() -> object:
            with torch.no_grad():
                return flow(z)

        def fwd_bwd() -> object:
            flow.zero_grad(set_to_none=True)
            _, log_det = flow(z)
            log_det.mean().backward()

        def reinforce_step() -> object:
            flow.zero_grad(set_to_none=True)
            reinforce(flow, prior, log_prob, z).loss.backward()

        return dict(zip(COMPARE_COLUMNS, (fwd_no_grad, fwd_bwd, reinforce_step), strict=True))

    result: dict[str, object] = {"L": L, "agreement": agreement}
    for name in COMPARE_COLUMNS:
        fns = {"old": runs(old)[name], "new": runs(new)[name]}
        times: dict[str, list[float]] = {"old": [], "new": []}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):
            for which, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[which].append(time.perf_counter() - start)
        result[name] = times
    for which, flow in (("old", old), ("new", new)):
        result[f"saved {which}"] = saved_tensor_bytes(
            lambda flow=flow: reinforce(flow, prior, log_prob, z).loss, flow.parameters()
        )
    return result


def format_comparison(rows: list[dict[str, object]], revision: str) -> str:
    lines = [
        f"{'L':>3} {'column':>12} {'old median':>11} {'new median':>11} {'ratio':>6}"
        f" {'old min':>9} {'new min':>9} {'ratio':>6}"
    ]
    lines.append("-" * len(lines[0]))
    for row in rows:
        for name in COMPARE_COLUMNS:
            t = row[name]
            om, nm = statistics.median(t["old"]), statistics.median(t["new"])
            o0, n0 = min(t["old"]), min(t["new"])
            lines.append(
                f"{row['L']:>3} {name:>12} {om:>10.3f}s {nm:>10.3f}s {nm / om:>6.2f}"
                f" {o0:>8.3f}s {n0:>8.3f}s {n0 / o0:>6.2f}"
            )
    lines.append("")
    lines.append(
        f"{'L':>3} {'saved MiB old':>14} {'new':>8} {'ratio':>6}   "
        f"{'w/o params old':>15} {'new':>8} {'ratio':>6}   {'max |new - old|':>15}"
    )
    for row in rows:
        (ot, op), (nt, np_) = row["saved old"], row["saved new"]
        mib = 2.0**20
        lines.append(
            f"{row['L']:>3} {ot / mib:>14.1f} {nt / mib:>8.1f} {nt / ot:>6.2f}   "
            f"{op / mib:>15.1f} {np_ / mib:>8.1f} {np_ / op:>6.2f}   {row['agreement']:>15.2e}"
        )
    lines.insert(0, f"old = flows at {revision}, new = working tree; same weights and inputs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare",
        metavar="REV",
        default=None,
        help="time the working tree's flow against the flow package of git revision REV",
    )
    args = parser.parse_args(argv)
    threads = configure_threads()
    if args.compare:
        old_flows = load_flows_at(args.compare)
        rows = [compare_size(L, args.batch, args.repeats, args.seed, old_flows) for L in args.sizes]
        print(
            f"paper flow (48 layers, 8 bins, 64 channels, float32), batch {args.batch}, CPU, "
            f"{threads} thread(s), interleaved, {args.repeats} timed calls each after one "
            f"warm-up; reinforce = no-grad forward + grad reverse + backward (beta={BETA} "
            f"gauge action); torch {torch.__version__}"
        )
        print(format_comparison(rows, args.compare))
        return 0
    rows = [bench_size(L, args.batch, args.repeats, args.seed) for L in args.sizes]
    print(
        f"paper flow (48 layers, 8 bins, 64 channels, float32), batch {args.batch}, CPU, "
        f"{threads} thread(s), median of {args.repeats} after one warm-up; torch {torch.__version__}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
