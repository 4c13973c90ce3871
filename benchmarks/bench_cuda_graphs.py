"""Experiment (CUDA only): the REINFORCE step with each conditioner captured as a CUDA graph.

On an H200 the paper flow's step (L = 16) takes about the same time at batch 64 and 768: the
GPU waits for Python to launch thousands of small kernels. This benchmark measures how much of
that a CUDA graph of each coupling layer's conditioner (``torch.cuda.make_graphed_callables``:
one captured forward graph and one backward graph per layer) takes away, everything else
(features, splines, action, Adam) left eager. The conditioners run once per step with grad
(conditioner replay, gaugeflow.flows.replay), so the captured backward is what the step's
backward replays.

It checks that one step's gradients with the graphs equal the eager step's (float32, same
weights and samples) before it times anything, then times the two variants in alternation::

    python benchmarks/bench_cuda_graphs.py --L 16 --batch-size 64 --out graphs.json

Not wired into the library: a measurement of what graphs would buy.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import sys
import time
from pathlib import Path

import torch
from machine import alternating_times, speedup_summary  # benchmarks/machine.py
from torch import nn

from gaugeflow import estimators
from gaugeflow.io import write_json
from gaugeflow.physics.u1 import plaquette
from gaugeflow.training.config import make_config
from gaugeflow.training.step import TrainStep


class _Conditioner(nn.Module):
    """A coupling layer's features -> spline parameters, as a module make_graphed_callables
    can capture (its parameters are the layer's net)."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.layer, self.dtype = layer, dtype

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer._params_of(features, self.dtype)


def graph_conditioners(step: TrainStep) -> None:
    """Replace each coupling layer's conditioner by its captured CUDA graphs (in place)."""
    flow, dtype = step.flow, step.dtype
    z = step.sample_part(0, 0)
    with torch.no_grad():  # the features each layer sees, for the capture's sample inputs
        samples = []
        theta = z
        for layer in flow.layers:
            samples.append(layer.conditioner_features(theta, plaquette(theta)))
            theta, _ = layer(theta)
    modules = [_Conditioner(layer, dtype) for layer in flow.layers]
    args = tuple((s.detach().clone().requires_grad_(True),) for s in samples)
    # one call per layer, so each layer's graphs get their own memory pool: a tuple of
    # callables shares one pool and assumes their backward passes run in the reverse order of
    # their forward calls, but REINFORCE's backward meets the layers in the order 1..N of the
    # sampling pass (it differentiates the reverse pass N..1), so a shared pool lets one
    # layer's backward overwrite another's saved activations (session 11's first try: the
    # gradients were off by 100 %)
    graphed = [torch.cuda.make_graphed_callables(m, a) for m, a in zip(modules, args, strict=True)]
    for layer, fn in zip(flow.layers, graphed, strict=True):
        layer._params_of = lambda f, dt, fn=fn: fn(f)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_cuda_graphs: needs CUDA (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    flow_cfg = {"n_layers": args.layers, "hidden_channels": args.hidden}
    config = make_config(
        {"L": args.L, "batch_size": args.batch_size, "device": "cuda", "flow": flow_cfg}
    )
    eager = TrainStep(config, device)
    graphs = TrainStep(config, device, flow=copy.deepcopy(eager.flow), prior=eager.prior,
                       action=eager.action)  # fmt: skip
    t0 = time.perf_counter()
    graph_conditioners(graphs)
    capture_s = time.perf_counter() - t0

    # same weights, same samples: one loss + backward each, gradients compared, with the
    # conditioner replay (the library's REINFORCE) and without it (graphs run in both passes)
    checks = {}
    for replay in (True, False):
        grads, logqs = [], []
        for st in (eager, graphs):
            st.estimator = functools.partial(estimators.reinforce, replay=replay)
            st.optimizer.zero_grad(set_to_none=True)
            part = st.loss_part(1, 0)
            part.loss.backward()
            torch.cuda.synchronize()
            grads.append(torch.cat([p.grad.flatten() for p in st.flow.parameters()]).clone())
            logqs.append(part.output.logq.clone())
        rel = float((grads[0] - grads[1]).norm() / grads[0].norm())
        rel_logq = float((logqs[0] - logqs[1]).abs().max() / logqs[0].abs().max())
        checks["replay" if replay else "plain"] = {"gradient": rel, "logq": rel_logq}
        print(f"replay={replay}: relative difference graphs vs eager: gradient {rel:.2e}, "
              f"log q {rel_logq:.2e}", flush=True)  # fmt: skip
    for st in (eager, graphs):
        st.estimator = estimators.reinforce
    rel = checks["replay"]["gradient"]

    counter = itertools.count(2)
    times = alternating_times(
        {
            name: (lambda st=st: st.run(next(counter)))
            for name, st in (("eager", eager), ("graphs", graphs))
        },
        args.rounds,
        args.steps,
        sync=torch.cuda.synchronize,
    )
    summary = speedup_summary(times, baseline="eager", candidate="graphs")
    med = summary["median_seconds"]
    result = {
        "L": args.L,
        "batch_size": args.batch_size,
        "layers": args.layers,
        "hidden": args.hidden,
        "device_name": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "capture_seconds": capture_s,
        "gradient_relative_difference": rel,
        "checks": checks,
        **summary,
    }
    print(
        f"L={args.L} batch {args.batch_size}: eager {med['eager']:.4f} s, conditioners as "
        f"CUDA graphs {med['graphs']:.4f} s per step -> {result['speedup']:.2f}x "
        f"(capture {capture_s:.1f} s)"
    )
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
