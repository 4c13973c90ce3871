"""Which backward for a dense hidden convolution: oneDNN's, or two forward convolutions?

The conditioner's middle convolution (C -> C channels, 3 x 3, dilation 2, circular "same"
padding) is differentiated by `_CircularConv2d` either with oneDNN's
``convolution_backward`` plus a fold of the padded input gradient (``onednn``), or, under the
``swapped_backward`` switch, by `gaugeflow.flows.conv_ops._swapped_conv_backward`
(``swapped``: input gradient by the flipped kernel, weight gradient with batch and channels
swapped). Both get the same inputs the training step gives them: the padded activation in
channels_last, the output gradient in channels_last.

For each shape (channels x lattice x batch) and thread count the two take turns
(``machine.alternating_times``: the order flips every round, so a drifting machine slows both
alike; cold caches between calls, as in a step) and the table gives the median per call and
onednn / swapped, with the rule `conv_ops._swapped_backward` applies at that shape. The
rule's bound ``SWAPPED_BACKWARD_MAX`` (batch x L x L) comes from this table
(benchmarks/RESULTS.md, session 13). Usage::

    python benchmarks/bench_conv_backward.py --threads 1 2
    python benchmarks/bench_conv_backward.py --channels 64 --L 16 --batch 64 --threads 2 --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone

import torch

from gaugeflow.allocator import tune_allocator
from gaugeflow.flows.conv_ops import _fold_, _pad_into, _swapped_backward, _swapped_conv_backward
from gaugeflow.flows.conv_options import SWAPPED_BACKWARD_MAX, ConvOptions
from gaugeflow.io import write_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import alternating_times, cpu_model, git_state, loadavg  # noqa: E402

__all__ = ["main", "time_shape"]

MASK = (True, True, True)


def _onednn(grad, padded, weight, dilation):
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, padded, weight, [weight.shape[0]], [1, 1], [0, 0], [dilation] * 2, False,
        [0, 0], 1, list(MASK),
    )  # fmt: skip
    return _fold_(gx, dilation), gw, gb


def time_shape(
    channels: int, L: int, batch: int, dilation: int, rounds: int, seed: int = 0
) -> dict:
    """Both backward passes of one shape, taking turns: medians, ratio, largest difference."""
    generator = torch.Generator().manual_seed(seed)
    cl = torch.channels_last
    x = torch.randn(batch, channels, L, L, generator=generator)
    padded = _pad_into(x, dilation).contiguous(memory_format=cl)
    weight = torch.randn(channels, channels, 3, 3, generator=generator).contiguous(memory_format=cl)
    grad = torch.randn(batch, channels, L, L, generator=generator).contiguous(memory_format=cl)
    variants = {
        "onednn": lambda: _onednn(grad, padded, weight, dilation),
        "swapped": lambda: _swapped_conv_backward(grad, padded, weight, dilation, dilation, MASK),
    }
    times = alternating_times(variants, rounds=rounds, steps=1, warmup=2)
    median = {name: statistics.median(t) for name, t in times.items()}
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(variants["onednn"](), variants["swapped"](), strict=True)
    )
    return {
        "channels": channels,
        "L": L,
        "batch": batch,
        "dilation": dilation,
        "threads": torch.get_num_threads(),
        "onednn_ms": 1e3 * median["onednn"],
        "swapped_ms": 1e3 * median["swapped"],
        "speedup": median["onednn"] / median["swapped"],
        "rule_takes_swapped": _swapped_backward(ConvOptions(), x, weight, dilation, dilation),
        "max_abs_difference": diff,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--L", type=int, nargs="+", default=[4, 8, 12, 16])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--dilation", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=10, help="timed calls of each per shape")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    for name in ("channels", "L", "batch", "threads"):
        bad = [v for v in getattr(args, name) if v < 1]
        if bad:
            p.error(f"--{name} must be positive; got {bad}")
    if args.dilation < 1 or args.rounds < 1:
        p.error("--dilation and --rounds must be positive")
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "code": git_state(),
        "malloc_tuned": tune_allocator(),
        "swapped_backward_max": SWAPPED_BACKWARD_MAX,
        "command": "python benchmarks/bench_conv_backward.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "load_at_start": loadavg(),
    }
    print(json.dumps(meta), flush=True)
    rows = []
    print("| threads | channels | L | batch | batch x L^2 | oneDNN [ms] | swapped [ms] | "
          "oneDNN / swapped | rule takes swapped |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for channels in args.channels:
            for L in args.L:
                for batch in args.batch:
                    row = time_shape(channels, L, batch, args.dilation, args.rounds)
                    rows.append(row)
                    print(
                        f"| {threads} | {channels} | {L} | {batch} | {batch * L * L} | "
                        f"{row['onednn_ms']:.2f} | {row['swapped_ms']:.2f} | "
                        f"{row['speedup']:.2f} | {'yes' if row['rule_takes_swapped'] else 'no'} |",
                        flush=True,
                    )
    meta["load_at_end"] = loadavg()
    if args.json:
        write_json(args.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
