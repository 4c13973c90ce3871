"""Data-parallel training on CPU: configurations per second of 1 process x 2 threads, 2 processes
x 1 thread and 1 process x 1 thread, and where the rest of the step goes (the all-reduce).

Every configuration trains the same step: the paper's flow (48 layers x 64 channels) unless
``--layers/--hidden`` say otherwise, float32, REINFORCE, ``n_batches = 2`` parts of
``--batch-size`` (64) configurations. One process computes both parts; two processes compute
one each and all-reduce the gradient (`gaugeflow.training.distributed.DataParallelStep`). Each
configuration runs in fresh processes started by torch's elastic launcher
(`gaugeflow.distributed.launch_local`, as ``gaugeflow train --nproc``), ``--warmup`` untimed
steps then ``--steps`` timed ones; reported per configuration:

- ``step_s``: median wall time of a step (for 2 processes, rank 0's: the collectives keep the
  ranks in step), and ``configs_per_s = batch_size * n_batches / step_s``;
- ``sync_s``: median time of the gradient all-reduce inside the step, including the wait for
  the slower rank, and its share of the step; ``allreduce_s``: the same all-reduce alone,
  after the steps, both ranks ready (the communication itself);
- the ratios ``2x1 / 1x1`` (target >= 1.7) and ``1x2 / 1x1``, and the load average.

Usage (numbers only mean something on an otherwise idle machine; ratios from one run)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_ddp.py --L 8 16
    python benchmarks/bench_ddp.py --L 4 --layers 8 --hidden 4 --steps 2   # smoke run

``--world-of-one DEVICE`` is the check for a machine with one GPU (for benchmarks/
device_check.sh): the data-parallel step in a process group of one rank (nccl on CUDA, gloo on
CPU) against the plain step, same weights after the steps (to 1e-6 relative on CUDA, exactly
on CPU) and the all-reduce's time share::

    python benchmarks/bench_ddp.py --world-of-one cuda --L 16 --out ddp_nccl.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from gaugeflow.distributed import launch_local, process_group
from gaugeflow.io import write_json

#: (processes, threads per process)
LAYOUTS = [(1, 1), (1, 2), (2, 1)]


def _worker(setting: dict[str, Any], result_path: str) -> None:
    """One rank: time the steps, write rank 0's numbers to `result_path`."""
    import torch.distributed as dist

    from gaugeflow.runtime import seed_everything
    from gaugeflow.training import TrainStep, make_config
    from gaugeflow.training.distributed import DataParallelStep

    torch.set_num_threads(setting["threads"])
    with process_group("cpu", timeout=1800) as group:
        config = make_config(
            {
                "L": setting["L"],
                "estimator": "reinforce",
                "batch_size": setting["batch_size"],
                "n_batches": 2,
                "steps": setting["warmup"] + setting["steps"],
                "device": "cpu",
                "dtype": "float32",
                "flow": {"n_layers": setting["layers"], "hidden_channels": setting["hidden"]},
                "seed": 1,
            }
        )
        seed_everything(config["seed"])
        if group.is_distributed:
            step = DataParallelStep(config, group)
        else:
            step = TrainStep(config, torch.device("cpu"))
        step_s, sync_s = [], []
        for n in range(1, config["steps"] + 1):
            t0 = time.perf_counter()
            step.run(n)
            if n > setting["warmup"]:
                step_s.append(time.perf_counter() - t0)
                sync_s.append(getattr(step, "sync_seconds", 0.0))
        allreduce_s = None
        if group.is_distributed:
            n_params = sum(p.numel() for p in step.flow.parameters())
            flat = torch.zeros(n_params + len(list(step.flow.parameters())))
            times = []
            for _ in range(5):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(flat)
                times.append(time.perf_counter() - t0)
            allreduce_s = statistics.median(times)
        if group.is_main:
            write_json(
                result_path,
                {
                    "step_s": statistics.median(step_s),
                    "sync_s": statistics.median(sync_s),
                    "allreduce_s": allreduce_s,
                    "step_s_all": step_s,
                    "n_parameters": sum(p.numel() for p in step.flow.parameters()),
                },
            )


def world_of_one(setting: dict[str, Any], device: str) -> dict[str, Any]:
    """DataParallelStep in a 1-rank group (nccl on CUDA) vs TrainStep: weights and times."""
    import torch.distributed as dist

    from gaugeflow.runtime import seed_everything
    from gaugeflow.training import TrainStep, make_config
    from gaugeflow.training.distributed import DataParallelStep

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # init_process_group's device_id needs one
        dev = torch.device("cuda", torch.cuda.current_device())
    backend = "nccl" if dev.type == "cuda" else "gloo"
    config = make_config(
        {"L": setting["L"], "estimator": "reinforce", "batch_size": setting["batch_size"],
         "n_batches": 2, "steps": setting["warmup"] + setting["steps"], "device": device,
         "dtype": "float32", "seed": 1,
         "flow": {"n_layers": setting["layers"], "hidden_channels": setting["hidden"]}}
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, store=store, rank=0, world_size=1, **kwargs)
        try:
            from gaugeflow.distributed import Group

            steps: dict[str, Any] = {}
            seed_everything(1)
            steps["plain"] = TrainStep(config, dev)
            seed_everything(1)
            steps["data_parallel"] = DataParallelStep(
                config, Group(device=dev, backend=backend, world_size=1)
            )
            times: dict[str, list[float]] = {name: [] for name in steps}
            sync = []
            for n in range(1, config["steps"] + 1):
                for name, step in steps.items():
                    t0 = time.perf_counter()
                    step.run(n)  # run() synchronises CUDA before it returns
                    if n > setting["warmup"]:
                        times[name].append(time.perf_counter() - t0)
                        if name == "data_parallel":
                            sync.append(step.sync_seconds)
            worst = 0.0
            for p, q in zip(steps["plain"].flow.parameters(),
                            steps["data_parallel"].flow.parameters(), strict=True):  # fmt: skip
                scale = float(p.detach().abs().max()) or 1.0
                worst = max(worst, float((p - q).detach().abs().max()) / scale)
        finally:
            dist.destroy_process_group()
    limit = 0.0 if dev.type == "cpu" else 1e-6
    result = {
        "device": str(dev),
        "backend": backend,
        "step_s_plain": statistics.median(times["plain"]),
        "step_s_data_parallel": statistics.median(times["data_parallel"]),
        "sync_s": statistics.median(sync),
        "max_relative_weight_difference": worst,
        "weights_agree": worst <= limit,
    }
    result["sync_share"] = result["sync_s"] / result["step_s_data_parallel"]
    return result


def bench(setting: dict[str, Any], processes: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        launch_local(processes, _worker, ({**setting, "threads": threads}, path), threads=threads)
        result = json.loads(Path(path).read_text())
    configs = setting["batch_size"] * 2
    result.update(
        processes=processes,
        threads=threads,
        configs_per_s=configs / result["step_s"],
        sync_share=result["sync_s"] / result["step_s"],
        load=os.getloadavg(),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--L", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch-size", type=int, default=64, help="configurations per part")
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--world-of-one",
        metavar="DEVICE",
        help="instead: the 1-rank data-parallel step on DEVICE against the plain step",
    )
    args = parser.parse_args(argv)

    if args.world_of_one:
        setting = {"L": args.L[0], "batch_size": args.batch_size, "layers": args.layers,
                   "hidden": args.hidden, "warmup": args.warmup, "steps": args.steps}  # fmt: skip
        result = world_of_one(setting, args.world_of_one)
        print(json.dumps(result, indent=2))
        if args.out:
            write_json(args.out, {"settings": vars(args), **result})
        return 0 if result["weights_agree"] else 1

    rows = []
    print(
        f"{'L':>3} {'layout':>8} {'step s':>8} {'conf/s':>8} {'sync s':>8} {'share':>6} "
        f"{'allred s':>9} {'load':>5}"
    )
    for L in args.L:
        setting = {"L": L, "batch_size": args.batch_size, "layers": args.layers,
                   "hidden": args.hidden, "warmup": args.warmup, "steps": args.steps}  # fmt: skip
        by_layout = {}
        for processes, threads in LAYOUTS:
            r = bench(setting, processes, threads)
            by_layout[(processes, threads)] = r
            rows.append({"L": L, **r})
            allreduce = f"{r['allreduce_s']:.4f}" if r["allreduce_s"] is not None else "-"
            print(
                f"{L:>3} {processes}p x {threads}t {r['step_s']:>8.3f} {r['configs_per_s']:>8.1f} "
                f"{r['sync_s']:>8.4f} {r['sync_share']:>6.1%} {allreduce:>9} "
                f"{r['load'][0]:>5.1f}",
                flush=True,
            )
        base = by_layout[(1, 1)]["configs_per_s"]
        ratios = {
            "2p_x_1t_over_1p_x_1t": by_layout[(2, 1)]["configs_per_s"] / base,
            "1p_x_2t_over_1p_x_1t": by_layout[(1, 2)]["configs_per_s"] / base,
        }
        rows.append({"L": L, "ratios": ratios})
        print(f"L={L}: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()), flush=True)
    if args.out:
        write_json(
            args.out,
            {
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "settings": vars(args),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
