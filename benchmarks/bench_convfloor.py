"""A training step against the machine's convolution speed (issue 18).

For each lattice size L and estimator (REINFORCE, r.t., path; one Dirac assembly), with the
paper's flow (48 layers, 64 channels) at batch 64, float32, in one run:

- **floor**: the convolutions one gradient step must do, each timed alone at this machine's
  speed. The step's convolution calls (``aten.convolution`` and ``aten.convolution_backward``
  with their exact shapes, strides (channels_last), dilations and output masks) are recorded
  once with a ``TorchDispatchMode`` while a step runs with every `ConvOptions` switch off
  (the dense conditioner of issue 9: each convolution on the whole lattice). So the count
  follows the flow's actual modules and what the estimator differentiates: e.g. the first
  convolution of the first reverse layer of REINFORCE needs no input gradient (its frozen
  features come from the detached sample). Each distinct call is then timed alone on random
  tensors of the same layout, ``--conv-repeats`` times per round (median), and the floor is
  the sum over the step's calls. FLOPs of each call come from ``torch.utils.flop_counter``.
- **step**: a gradient step (zero_grad, sample, estimator, backward, Adam) built from the
  library's public pieces (``gaugeflow.training.build_components``,
  ``gaugeflow.estimators.get_estimator``, ``torch.optim.Adam``), split into its parts:
  no-grad flow passes, flow passes with grad, backward, rest (action, Adam, sampling).
- **ratio** step / floor per round (median over rounds), and per part the dense convolution
  FLOPs of that part divided by its time (achieved GFLOP/s) next to the floor's GFLOP/s.

Variants (``--variants``) run the step with `ConvOptions` switches changed, interleaved with
the others in every round (A/B under the same load): ``new`` (all on, the default), ``ref``
(all off), ``no-<switch>`` (all on but one), ``only-<switch>`` (one on). Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_convfloor.py      # idle machine: threads spin
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_convfloor.py  # shared
    python benchmarks/bench_convfloor.py --L 16 --estimators reinforce --variants new ref \
        no-active_last no-padded_buffer no-gemm_first --repeats 5
    python benchmarks/bench_convfloor.py --L 8 --n-layers 8 --repeats 1 --profile
    # the default run's flow (config.yaml) at its batch, one thread per job as in make paper
    python benchmarks/bench_convfloor.py --L 4 8 --n-layers 16 --hidden 16 --holonomy \
        --charge-symmetric --batch-size 128 --threads 1 --variants new no-swapped_backward

On a machine of its own, leave OMP_WAIT_POLICY unset (libgomp's threads spin a while
before they sleep): with PASSIVE every parallel region of a step wakes sleeping threads, which
made the paper flow's REINFORCE step at L = 8 about 1.4x slower on an idle 2-core machine
(benchmarks/RESULTS.md, session 7). On a shared machine use PASSIVE: spinning threads beside
one other busy process made the same step 2.5x slower. The policy is in the JSON's meta.

``--profile`` ends with a torch.profiler table (self CPU time) of one step per estimator at
the last L, for the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from gaugeflow.allocator import tune_allocator
from gaugeflow.estimators import get_estimator
from gaugeflow.flows.nets import ConvOptions, conv_options
from gaugeflow.io import write_json
from gaugeflow.training import build_components, make_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model, git_state, loadavg  # noqa: E402  (benchmarks/machine.py, beside this)

__all__ = ["ConvRecorder", "Setup", "bench_L", "main", "variant_options"]

aten = torch.ops.aten
CONV_OPS = (aten.convolution.default, aten.convolution_backward.default)
PARTS = ("nograd", "grad", "backward")
SWITCHES = tuple(f.name for f in fields(ConvOptions))


def variant_options(name: str) -> dict[str, bool]:
    """`conv_options` keywords of a variant name (new, ref, no-<switch>, only-<switch>)."""
    if name == "new":
        return {"all": True}
    if name == "ref":
        return {"all": False}
    kind, _, switch = name.partition("-")
    if switch in SWITCHES and kind in ("no", "only"):
        return {"all": kind == "no", switch: kind == "only"}
    raise SystemExit(
        f"unknown variant {name!r}: use new, ref, no-<switch> or only-<switch> with a switch "
        f"in {', '.join(SWITCHES)}"
    )


# --------------------------------------------------------------------------------------------
# recording and timing the convolution calls


def _meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), tuple(value.stride()), str(value.dtype))
    if isinstance(value, (list, tuple)):
        return tuple(_meta(v) for v in value)
    return value


def _rebuild(meta: Any, generator: torch.Generator) -> Any:
    if isinstance(meta, tuple) and meta and meta[0] == "T":
        _, shape, stride, dtype = meta
        t = torch.empty_strided(shape, stride, dtype=getattr(torch, dtype.removeprefix("torch.")))
        return t.normal_(generator=generator)
    if isinstance(meta, tuple):
        return [_rebuild(m, generator) for m in meta]
    return meta


class ConvRecorder(TorchDispatchMode):
    """Counts convolution calls by (part, op, argument shapes/strides/values)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, Any, Any]] = Counter()
        self.part = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func in CONV_OPS:
            self.calls[(self.part, func, _meta(args))] += 1
        return func(*args, **kwargs)


@dataclass
class CallTimer:
    """Times distinct convolution calls alone (random tensors of the recorded layout)."""

    seed: int = 0
    flops: dict[tuple[Any, Any], int] = field(default_factory=dict)
    _inputs: dict[tuple[Any, Any], list[Any]] = field(default_factory=dict)

    def _args(self, func: Any, meta: Any) -> list[Any]:
        key = (func, meta)
        if key not in self._inputs:
            self._inputs[key] = _rebuild(meta, torch.Generator().manual_seed(self.seed))
            counter = FlopCounterMode(display=False)
            with counter:
                func(*self._inputs[key])
            self.flops[key] = counter.get_total_flops()
        return self._inputs[key]

    def seconds(self, func: Any, meta: Any, repeats: int) -> tuple[float, float]:
        """Median wall and median process-CPU seconds of one call."""
        args = self._args(func, meta)
        times, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            func(*args)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return statistics.median(times), statistics.median(cpu)


# --------------------------------------------------------------------------------------------
# the step


@dataclass
class Setup:
    """Flow, prior, action, estimator and Adam of one (L, estimator), and its part clock."""

    L: int
    estimator_name: str
    args: argparse.Namespace
    flow: Any = None
    prior: Any = None
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None
    estimator: Any = None
    optimizer: Any = None
    generator: torch.Generator | None = None
    parts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    recorder: ConvRecorder | None = None

    def __post_init__(self) -> None:
        args = self.args
        config = make_config(
            {
                "L": self.L,
                "estimator": self.estimator_name,
                "assembly": args.assembly,
                "batch_size": args.batch_size,
                "device": "cpu",
                "dtype": "float32",
                "seed": args.seed,
                "flow": {
                    "n_layers": args.n_layers,
                    "hidden_channels": args.hidden,
                    "holonomy": args.holonomy,
                    "charge_symmetric": args.charge_symmetric,
                },
            }
        )
        torch.manual_seed(config["seed"])
        self.batch_size = config["batch_size"]
        self.flow, self.prior, action = build_components(config, torch.device("cpu"))
        self.log_prob = action.log_prob
        self.estimator = get_estimator(config["estimator"])
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=config["lr"])
        self.generator = torch.Generator().manual_seed(config["seed"])
        # time the flow's passes: instance attributes shadow the methods the estimators call
        for name in ("forward", "reverse"):
            setattr(self.flow, name, self._clocked(getattr(self.flow, name)))

    def _clocked(self, method: Callable) -> Callable:
        def run(*a, **k):
            part = "grad" if torch.is_grad_enabled() else "nograd"
            if self.recorder is not None:
                self.recorder.part = part
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                self.parts[part] += time.perf_counter() - start
                if self.recorder is not None:
                    self.recorder.part = "other"

        return run

    def step(self) -> dict[str, float]:
        """One gradient step; seconds of the whole step and of its parts."""
        self.parts = defaultdict(float)
        start, start_cpu = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad(set_to_none=True)
        z = self.prior.sample(self.batch_size, generator=self.generator)
        out = self.estimator(self.flow, self.prior, self.log_prob, z)
        before_backward = time.perf_counter()
        if self.recorder is not None:
            self.recorder.part = "backward"
        out.loss.backward()
        if self.recorder is not None:
            self.recorder.part = "other"
        self.parts["backward"] = time.perf_counter() - before_backward
        self.optimizer.step()
        total = time.perf_counter() - start
        result = {"step": total, "step_cpu": time.process_time() - start_cpu}
        result.update({p: self.parts[p] for p in PARTS})
        result["other"] = total - sum(self.parts[p] for p in PARTS)
        return result

    def record(self) -> Counter:
        """The convolution calls of one step (the step is run, parameters are updated)."""
        self.recorder = ConvRecorder()
        try:
            with self.recorder:
                self.step()
        finally:
            calls, self.recorder = self.recorder.calls, None
        return calls


# --------------------------------------------------------------------------------------------
# one lattice size


def _flops(calls: Counter, timer: CallTimer) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (part, func, meta), n in calls.items():
        timer._args(func, meta)
        out[part] += n * timer.flops[(func, meta)]
    out["step"] = sum(v for k, v in out.items() if k != "step")
    return dict(out)


def _floor(calls: Counter, timer: CallTimer, repeats: int) -> dict[str, float]:
    """Seconds of the recorded calls, each timed alone: per part and for the step."""
    out: dict[str, float] = defaultdict(float)
    cache: dict[tuple[Any, Any], tuple[float, float]] = {}
    for (part, func, meta), n in calls.items():
        if (func, meta) not in cache:
            cache[(func, meta)] = timer.seconds(func, meta, repeats)
        out[part] += n * cache[(func, meta)][0]
        out["step_cpu"] += n * cache[(func, meta)][1]
        rate = timer.flops[(func, meta)] / cache[(func, meta)][0]
        out["peak_gflops"] = max(out["peak_gflops"], rate / 1e9)
    out["step"] = sum(v for k, v in out.items() if k in PARTS or k == "other")
    return dict(out)


def bench_L(L: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows (one per estimator and variant) at lattice size L; see the module docstring."""
    load0 = loadavg()
    t0 = time.perf_counter()
    timer = CallTimer(seed=args.seed)
    setups: dict[tuple[str, str], Setup] = {}
    dense_calls: dict[str, Counter] = {}
    actual_flops: dict[tuple[str, str], dict[str, float]] = {}
    for est in args.estimators:
        for variant in args.variants:
            setups[est, variant] = Setup(L, est, args)
        first = setups[est, args.variants[0]]
        with conv_options(all=False):
            dense_calls[est] = first.record()
        for variant in args.variants:
            with conv_options(**variant_options(variant)):
                actual_flops[est, variant] = _flops(setups[est, variant].record(), timer)
                for _ in range(args.warmup):
                    setups[est, variant].step()
        _floor(dense_calls[est], timer, 1)  # warm the standalone calls
    dense_flops = {est: _flops(c, timer) for est, c in dense_calls.items()}
    samples: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    floors: dict[str, list[dict[str, float]]] = defaultdict(list)
    for r in range(args.repeats):
        for est in args.estimators:
            floor = _floor(dense_calls[est], timer, args.conv_repeats)
            floors[est].append(floor)
            order = args.variants if r % 2 == 0 else args.variants[::-1]
            for variant in order:
                with conv_options(**variant_options(variant)):
                    got = setups[est, variant].step()
                got["ratio"] = got["step"] / floor["step"]
                got["ratio_cpu"] = got["step_cpu"] / floor["step_cpu"]
                samples[est, variant].append(got)
        print(f"  L={L} round {r + 1}/{args.repeats} done [load {loadavg()}]", flush=True)
    rows = []
    for est in args.estimators:
        floor = {k: statistics.median(f[k] for f in floors[est]) for k in floors[est][0]}
        flops = dense_flops[est]
        for variant in args.variants:
            got = samples[est, variant]

            def med(key: str, got=got) -> float:
                return statistics.median(g[key] for g in got)

            row: dict[str, Any] = {
                "L": L,
                "estimator": est,
                "variant": variant,
                "repeats": len(got),
                "step_seconds": med("step"),
                "step_min": min(g["step"] for g in got),
                "step_max": max(g["step"] for g in got),
                "floor_seconds": floor["step"],
                "ratio": med("ratio"),
                "ratio_min": min(g["step"] for g in got) / min(f["step"] for f in floors[est]),
                "step_cpu_seconds": med("step_cpu"),
                "floor_cpu_seconds": floor["step_cpu"],
                "ratio_cpu": med("ratio_cpu"),
                "dense_gflop": flops["step"] / 1e9,
                "actual_conv_gflop": actual_flops[est, variant]["step"] / 1e9,
                "floor_gflops": flops["step"] / floor["step"] / 1e9,
                # the yardstick: every FLOP at the fastest call's rate
                "peak_gflops": floor["peak_gflops"],
                "peak_floor_seconds": flops["step"] / floor["peak_gflops"] / 1e9,
                "ratio_peak": med("step") * floor["peak_gflops"] * 1e9 / flops["step"],
                "other_seconds": med("other"),
            }
            for part in PARTS:
                if flops.get(part):
                    row[f"{part}_seconds"] = med(part)
                    row[f"{part}_floor_seconds"] = floor.get(part, 0.0)
                    row[f"{part}_gflop"] = flops[part] / 1e9
                    row[f"{part}_gflops"] = flops[part] / med(part) / 1e9
                    row[f"{part}_floor_gflops"] = flops[part] / floor[part] / 1e9
            rows.append(row)
    for row in rows:
        row.update(load_before=load0, load_after=loadavg(), bench_seconds=time.perf_counter() - t0)
    if args.profile and L == args.L[-1]:
        for est in args.estimators:
            profile_step(setups[est, args.variants[0]], args.variants[0])
    return rows


def profile_step(setup: Setup, variant: str, rows: int = 18) -> None:
    """torch.profiler table (self CPU) of one step."""
    from torch.profiler import profile

    with conv_options(**variant_options(variant)), profile() as prof:
        setup.step()
    print(f"\nprofile: L={setup.L} {setup.estimator_name} variant {variant}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# --------------------------------------------------------------------------------------------
# report


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| L | estimator | variant | step [s] | min–max [s] | floor [s] | step/floor "
        "| min/min | CPU-time step/floor "
        "| dense GFLOP | step conv GFLOP | floor GFLOP/s | no-grad fwd GFLOP/s (floor) "
        "| fwd w/ grad GFLOP/s (floor) | backward GFLOP/s (floor) | rest [s] |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]

    def part(r: dict[str, Any], p: str) -> str:
        if f"{p}_gflops" not in r:
            return "-"
        return f"{r[f'{p}_gflops']:.0f} ({r[f'{p}_floor_gflops']:.0f})"

    for r in rows:
        lines.append(
            f"| {r['L']} | {r['estimator']} | {r['variant']} | {r['step_seconds']:.3f} "
            f"| {r['step_min']:.3f}–{r['step_max']:.3f} | {r['floor_seconds']:.3f} "
            f"| {r['ratio']:.2f} | {r['ratio_min']:.2f} | {r['ratio_cpu']:.2f} | {r['dense_gflop']:.1f} | {r['actual_conv_gflop']:.1f} "
            f"| {r['floor_gflops']:.0f} | {part(r, 'nograd')} | {part(r, 'grad')} "
            f"| {part(r, 'backward')} | {r['other_seconds']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument(
        "--estimators",
        nargs="+",
        choices=["reinforce", "rt", "path"],
        default=["reinforce", "rt", "path"],
    )
    p.add_argument("--variants", nargs="+", default=["new"], help="new, ref, no-X, only-X")
    p.add_argument("--assembly", default="scatter")
    p.add_argument("--repeats", type=int, default=3, help="rounds (timed steps per row)")
    p.add_argument(
        "--warmup", type=int, default=0, help="untimed steps per row after the recorded one"
    )
    p.add_argument("--conv-repeats", type=int, default=3, help="timings per call per round")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=48)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument(
        "--holonomy", action="store_true", help="add the holonomy layers (the default run's flow)"
    )
    p.add_argument(
        "--charge-symmetric",
        action="store_true",
        help="charge-conjugation equivariant layers (the default run's flow)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="profile one step per estimator")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    for v in args.variants:
        variant_options(v)

    torch.set_num_threads(args.threads)
    malloc_tuned = tune_allocator()  # as the gaugeflow command line does
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": "python benchmarks/bench_convfloor.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "malloc_tuned": malloc_tuned,
        "code": git_state(),
        "load_at_start": loadavg(),
    }
    print(json.dumps(meta), flush=True)
    rows: list[dict[str, Any]] = []
    for L in args.L:
        for row in bench_L(L, args):
            rows.append(row)
            print(
                f"L={L:>2} {row['estimator']:<9} {row['variant']:<18} step {row['step_seconds']:7.3f} s "
                f"floor {row['floor_seconds']:6.3f} s ratio {row['ratio']:.2f} "
                f"(min/min {row['ratio_min']:.2f}, CPU time {row['ratio_cpu']:.2f}; "
                f"vs the fastest call's {row['peak_gflops']:.0f} GFLOP/s: {row['ratio_peak']:.2f}) "
                f"[load {row['load_before']} -> {row['load_after']}]",
                flush=True,
            )
        if args.json:
            write_json(args.json, {"meta": meta, "rows": rows})
    print()
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
