"""Issue 14: time to a useful flow. ESS and acceptance on fresh samples against wall clock.

One *run* trains a flow for a wall-clock budget and scores it every ``--score-every``
seconds of training on ``--n-score`` FRESH samples (never the training batch):

- ``ess``: normalised importance-sampling ESS (``gaugeflow.analysis.ess``) of the fresh
  samples' log weights log P - log q;
- ``acceptance``: acceptance of an independence Metropolis chain run on those same fresh
  proposals (``gaugeflow.sampling.run_chain``, ``gaugeflow.analysis.acceptance_rate``);
- ``free_energy``: mean(log q - log P) of the fresh samples (F_q, an upper bound of F);
- ``pareto_k`` / ``reliable``: `gaugeflow.analysis.nis_verdict` of the same log weights
  (PSIS k-hat against its threshold): an ESS whose verdict is unreliable is an upper guess.

The training clock stops while a score is taken: ``train_seconds`` counts only training
steps. Scores use their own generator (seed ``--score-seed``), so they never perturb the
training's random numbers; every score of a run uses new samples.

Each gradient step is the library's ``gaugeflow.training.TrainStep`` (what ``gaugeflow
train`` runs: Adam, the estimator, samples keyed by seed and step). Learning-rate schedules are functions of the elapsed fraction of the budget
(``constant``; ``warmup``: linear from 0 over ``--warmup`` seconds, then constant;
``cosine``: warm-up then cosine decay to 0 at the budget); for a run of constant step time
this is the library's step-based schedule.

A warm start (``--init-from MODEL.pt``) loads a parent model's weights into the new flow
before the first step (``gaugeflow.training.warm_start``, as ``gaugeflow train --init-from``) (the conditioners do not depend on L, so an L = 4 model starts an
L = 8 run); a parent's own training time is not counted in the child's budget and is
reported by the summary (``parent_seconds``).

Usage (one run, then the summary of every run in a folder):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_time_to_quality.py run \
        --name rt-L8 --L 8 --estimator rt --budget 240 --score-every 30 --out results/ttq
    python benchmarks/bench_time_to_quality.py summary --dir results/ttq

Each run writes DIR/NAME.csv (one row per score), DIR/NAME.json (settings, load averages,
steps) and, with ``--save-model``, DIR/NAME.pt (a model file `gaugeflow sample` reads).
``summary`` writes DIR/summary.csv, DIR/summary.md and DIR/time_to_quality.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gaugeflow.allocator import tune_allocator
from gaugeflow.analysis import acceptance_rate, ess, nis_verdict
from gaugeflow.io import save_torch, write_json
from gaugeflow.physics.action import SchwingerAction
from gaugeflow.runtime import resolve_device
from gaugeflow.sampling import Proposals, flow_logq, run_chain
from gaugeflow.symmetry import parse_symmetry, symmetric_logq
from gaugeflow.training import TrainStep, make_config, model_payload, warm_start

SCORE_COLUMNS = [
    "train_seconds",
    "step",
    "ess",
    "acceptance",
    "free_energy",
    "pareto_k",
    "reliable",
    "lr",
    "score_seconds",
    "load1",
]


def _load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def lr_factor(schedule: str, t: float, budget: float, warmup: float) -> float:
    """Learning-rate factor at training time t of a budget (see the module docstring)."""
    if schedule == "constant":
        return 1.0
    if warmup > 0 and t < warmup:
        return max(t / warmup, 0.02)
    if schedule == "warmup":
        return 1.0
    if schedule == "cosine":
        frac = min((t - warmup) / max(budget - warmup, 1e-9), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {schedule!r}")


def score(
    flow, prior, action_params, n: int, seed: int, batch: int = 256, symmetry: str = "none"
) -> dict[str, float]:
    """ESS, chain acceptance and F_q of n fresh samples of the flow (flow left in train mode).

    With a `symmetry` group (gaugeflow.symmetry) the proposal is the symmetrised flow q_G; its
    weights p / q_G are G-invariant, so scoring the flow's own samples with log q_G gives the
    symmetrised sampler's numbers without mapping them.
    """
    group = parse_symmetry(symmetry, prior.L)
    flow.eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    target = SchwingerAction(**action_params)

    # torch.no_grad, not the inference_mode of sampling.FlowProposer: the Dirac operator's
    # cached index tensors would be created as inference tensors and then break the
    # autograd of the training steps that follow in this same process
    def source(m: int) -> Proposals:
        with torch.no_grad():
            z = prior.sample(m, generator=generator)
            phi, log_det = flow(z)
            logq = prior.log_prob(z) - log_det
            if not group.trivial:
                logq = symmetric_logq(partial(flow_logq, flow, prior), phi, logq, group)
            logp = target.log_prob(phi.to(torch.float64))
        return Proposals(logq.double().cpu().numpy(), logp.double().cpu().numpy())

    chain, offered = run_chain(source, n, np.random.default_rng(seed), batch_size=batch)
    flow.train()
    logw = offered.logp - offered.logq
    verdict = nis_verdict(logw)
    return {
        "ess": ess(logw),
        "pareto_k": float(verdict["pareto_k"]),
        "reliable": bool(verdict["reliable"]),
        "acceptance": acceptance_rate(chain["accepted"]),
        "free_energy": float(np.mean(-logw)),
    }


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock difference covers the step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(
        {
            "L": args.L,
            "beta": args.beta,
            "kappa": args.kappa,
            "estimator": args.estimator,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "device": str(device),
            "assembly": args.assembly,
            "flow": {
                "n_layers": args.n_layers,
                "hidden_channels": args.hidden,
                "holonomy": args.holonomy,
                "charge_symmetric": args.charge_symmetric,
            },
        }
    )
    torch.manual_seed(config["seed"])
    step_fn = TrainStep(config, device)
    flow, prior = step_fn.flow, step_fn.prior
    parent = None
    if args.init_from:
        parent = warm_start(flow, args.init_from)
        parent_json = Path(args.init_from).with_suffix(".json")
        if parent_json.exists():
            info = json.loads(parent_json.read_text())
            parent["seconds"] = info.get("train_seconds", float("nan"))
            parent["parent_seconds"] = info.get("parent_seconds", 0.0)
    action_params = {
        "beta": config["beta"],
        "kappa": config["kappa"],
        "method": config["action_method"],
        "assembly": config["assembly"],
    }
    score_kappa = args.score_kappa if args.score_kappa is not None else config["kappa"]
    score_params = {**action_params, "kappa": score_kappa}

    rows: list[dict[str, float]] = []
    csv_path = out_dir / f"{args.name}.csv"

    def take_score(t: float, step: int, lr: float) -> None:
        s0 = time.perf_counter()
        result = score(
            flow,
            prior,
            score_params,
            args.n_score,
            args.score_seed + len(rows),
            symmetry=args.symmetrize,
        )
        row = {
            "train_seconds": t,
            "step": step,
            **result,
            "lr": lr,
            "score_seconds": time.perf_counter() - s0,
            "load1": _load1(),
        }
        rows.append(row)
        with open(csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, SCORE_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(
            f"[{args.name}] t={t:7.1f}s step {step:5d} ess {row['ess']:.4f} "
            f"acc {row['acceptance']:.3f} F_q {row['free_energy']:.3f} lr {lr:.2g} "
            f"(score {row['score_seconds']:.1f}s, load {row['load1']:.1f})",
            flush=True,
        )

    load_start = _load1()
    t_train, step, next_score = 0.0, 0, 0.0
    lr = config["lr"] * lr_factor(args.schedule, 0.0, args.budget, args.warmup)
    take_score(0.0, 0, lr)
    next_score = args.score_every
    step_seconds: list[float] = []
    while t_train < args.budget:
        lr = config["lr"] * lr_factor(args.schedule, t_train, args.budget, args.warmup)
        # the schedule is a function of training time: set the rate the step uses (and the
        # base rate the library's constant LambdaLR resets it to after the step)
        for group in step_fn.optimizer.param_groups:
            group["lr"] = lr
        step_fn.scheduler.base_lrs = [lr]
        _synchronize(device)
        t0 = time.perf_counter()
        result = step_fn.run(step + 1)
        if result.divergence is not None:
            print(f"[{args.name}] {result.divergence.message}; stopping", flush=True)
            break
        _synchronize(device)
        dt = time.perf_counter() - t0
        step_seconds.append(dt)
        t_train += dt
        step += 1
        if t_train >= next_score or t_train >= args.budget:
            take_score(t_train, step, lr)
            next_score += args.score_every
    info = {
        "name": args.name,
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "config": config,
        "train_seconds": t_train,
        "steps": step,
        "median_step_seconds": float(np.median(step_seconds)) if step_seconds else None,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "load1_start": load_start,
        "load1_end": _load1(),
        "parent": parent,
        "parent_seconds": (
            (parent.get("seconds", 0.0) + parent.get("parent_seconds", 0.0)) if parent else 0.0
        ),
        "final": rows[-1],
        "best_ess": max(r["ess"] for r in rows),
    }
    write_json(out_dir / f"{args.name}.json", info)
    if args.save_model:
        save_torch(out_dir / f"{args.name}.pt", model_payload(flow, config, step))


# --------------------------------------------------------------------------------------------
# summary


def _number(text: str) -> float:
    if text in ("True", "False"):
        return 1.0 if text == "True" else 0.0
    return float(text) if text else float("nan")


def summary(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(args.dir)
    infos = sorted(folder.glob("*.json"), key=lambda p: p.stem)
    infos = [json.loads(p.read_text()) for p in infos if (folder / f"{p.stem}.csv").exists()]
    infos = [i for i in infos if "train_seconds" in i and "settings" in i]
    if not infos:
        sys.exit(f"no runs in {folder}")
    table = []
    for info in infos:
        s = info["settings"]
        with open(folder / f"{info['name']}.csv", newline="") as fh:
            rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        table.append(
            {
                "name": info["name"],
                "L": s["L"],
                "kappa": s["kappa"],
                "estimator": s["estimator"],
                "lr": s["lr"],
                "schedule": s["schedule"],
                "batch": s["batch_size"],
                "flow": f"{s['n_layers']}x{s['hidden']}" + ("+hol" if s.get("holonomy") else ""),
                "threads": info["threads"],
                "init_from": Path(s["init_from"]).stem if s.get("init_from") else "",
                "parent_s": round(info.get("parent_seconds", 0.0), 1),
                "train_s": round(info["train_seconds"], 1),
                "steps": info["steps"],
                "s_per_step": round(info["median_step_seconds"] or float("nan"), 3),
                "ess_final": round(rows[-1]["ess"], 4),
                "acc_final": round(rows[-1]["acceptance"], 3),
                "F_q_final": round(rows[-1]["free_energy"], 3),
                "ess_best": round(max(r["ess"] for r in rows), 4),
                # PSIS verdict of the final score (runs scored before it was added: nan)
                "k_final": round(rows[-1].get("pareto_k", float("nan")), 2),
                "reliable": {1.0: "yes", 0.0: "no"}.get(rows[-1].get("reliable"), "?"),
                "load1": round(float(np.mean([r["load1"] for r in rows])), 1),
                "rows": rows,
            }
        )
    keys = [k for k in table[0] if k != "rows"]
    with open(folder / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, keys)
        writer.writeheader()
        writer.writerows([{k: r[k] for k in keys} for r in table])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in table]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    groups = sorted({(r["L"], r["kappa"]) for r in table})
    fig, axes = plt.subplots(
        3, len(groups), figsize=(4.2 * len(groups), 8.8), squeeze=False, sharex="col"
    )
    for col, (L, kappa) in enumerate(groups):
        for r in (r for r in table if (r["L"], r["kappa"]) == (L, kappa)):
            offset = r["parent_s"] if args.include_parent else 0.0
            t = [offset + x["train_seconds"] for x in r["rows"]]
            style = "--" if r["init_from"] else "-"
            axes[0, col].plot(t, [x["ess"] for x in r["rows"]], style, label=r["name"])
            axes[1, col].plot(t, [x["acceptance"] for x in r["rows"]], style, label=r["name"])
            axes[2, col].plot(t, [x["free_energy"] for x in r["rows"]], style, label=r["name"])
        axes[0, col].set_title(f"L = {L}, kappa = {kappa}")
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("ESS (fresh samples)")
        axes[1, col].set_ylabel("acceptance (fresh chain)")
        # while the ESS sits near its floor 1/N, F_q (lower is better) still tells runs apart
        axes[2, col].set_ylabel("F_q (fresh samples)")
        lows = [
            x["free_energy"] for r in table if (r["L"], r["kappa"]) == (L, kappa) for x in r["rows"]
        ]
        axes[2, col].set_ylim(min(lows) - 1, np.percentile(lows, 80) + 1)
        axes[2, col].set_xlabel(
            "training wall clock [s]" + (" incl. parents" if args.include_parent else "")
        )
        axes[0, col].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "time_to_quality.png", dpi=120)
    print(f"wrote {folder / 'summary.csv'}, summary.md, time_to_quality.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("run", help="train one recipe for a budget, scoring on fresh samples")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, help="folder for NAME.csv / NAME.json / NAME.pt")
    p.add_argument("--L", type=int, default=8)
    p.add_argument("--beta", type=float, default=2.0)
    p.add_argument("--kappa", type=float, default=0.276)
    p.add_argument("--score-kappa", type=float, help="score at this kappa (default: trained)")
    p.add_argument("--estimator", default="rt")
    p.add_argument("--assembly", default="scatter")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", choices=["constant", "warmup", "cosine"], default="constant")
    p.add_argument("--warmup", type=float, default=0.0, help="warm-up seconds")
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument(
        "--holonomy", action="store_true", help="flow.holonomy: two holonomy layers at the end"
    )
    p.add_argument(
        "--charge-symmetric",
        action="store_true",
        help="flow.charge_symmetric: every layer equivariant under theta -> -theta",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--budget", type=float, default=240.0, help="training seconds")
    p.add_argument("--score-every", type=float, default=30.0, help="training seconds")
    p.add_argument("--n-score", type=int, default=2048)
    p.add_argument(
        "--symmetrize",
        default="none",
        help="score the symmetrised proposal q_G (gaugeflow.symmetry spec, e.g. P+C; default none)",
    )
    p.add_argument("--score-seed", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto (default cpu)")
    p.add_argument("--init-from", help="parent model file (NAME.pt of an earlier run)")
    p.add_argument("--save-model", action="store_true")
    p.set_defaults(func=run)
    s = sub.add_parser("summary", help="table and plot of every run in a folder")
    s.add_argument("--dir", required=True)
    s.add_argument("--include-parent", action="store_true", help="shift warm starts")
    s.set_defaults(func=summary)
    args = parser.parse_args(argv)
    tune_allocator()  # as the gaugeflow command line does
    args.func(args)


if __name__ == "__main__":
    main()
