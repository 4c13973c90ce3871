"""`gaugeflow train`: train (or resume) a flow; flags override the config file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from .. import choices
from ..distributed import DEFAULT_TIMEOUT
from ..errors import UserError
from ..io import require_file
from ..runtime import configure_threads
from ._args import positive_int

# time_limit counts from here: this module is imported when the CLI starts
_CLI_START = time.monotonic()
#: exit status of a run stopped by its time limit (EX_TEMPFAIL: "run it again"), so that a
#: scheduler (Snakemake's retries, a SLURM requeue) does not take the run for finished
EXIT_TIME_LIMIT = 75

# flag dest -> training config key (None: handled specially)
_FLAG_KEYS = {
    "L": "L",
    "beta": "beta",
    "kappa": "kappa",
    "estimator": "estimator",
    "steps": "steps",
    "batch_size": "batch_size",
    "n_batches": "n_batches",
    "lr": "lr",
    "lr_schedule": "lr_schedule",
    "lr_min": "lr_min",
    "seed": "seed",
    "device": "device",
    "dtype": "dtype",
    "assembly": "assembly",
    "action_method": "action_method",
    "checkpoint_every": "checkpoint_every",
    "snapshot_every": "snapshot_every",
    "log_every": "log_every",
    "init_from": "init_from",
    "time_limit": "time_limit",
}
_FLOW_FLAGS = {
    "n_layers": "n_layers",
    "hidden": "hidden_channels",
    "holonomy": "holonomy",
    "charge_symmetric": "charge_symmetric",
}


def load_config_file(path: str | Path) -> dict:
    """Read a YAML (or JSON) training config: a flat mapping of training keys."""
    path = require_file(path, "config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping of keys; got {type(data).__name__}"
        )
    return data


def config_from_args(args: argparse.Namespace) -> dict:
    config = load_config_file(args.config) if args.config else {}
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            config[key] = value
    if args.amp is not None:
        config["amp"] = args.amp
    flow = dict(config.get("flow") or {})
    for dest, key in _FLOW_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            flow[key] = value
    if flow:
        config["flow"] = flow
    return config


def _run(args: argparse.Namespace) -> int:
    from ..distributed import LaunchFailed, RankFailure, detect

    try:
        if args.nproc > 1 and detect() is None:
            return _launch(args)
        return _train(args)
    except (LaunchFailed, RankFailure) as exc:
        print(
            f"gaugeflow train: error: {exc}; run the same command again to resume from the "
            "last checkpoint",
            file=sys.stderr,
        )
        return 1


def _launch(args: argparse.Namespace) -> int:
    """--nproc N outside torchrun/srun: start N local ranks (torch's elastic launcher)."""
    from ..distributed import launch_local
    from ..training import make_config
    from ..training.distributed import check_world

    check_world(make_config(config_from_args(args)), args.nproc)  # one clear error, not N
    threads = args.threads or max(1, configure_threads() // args.nproc)
    args.clock_start = _CLI_START  # the time limit counts from this command's start
    codes = launch_local(args.nproc, _rank_main, (args,), threads=threads)
    return max(codes.values(), default=0)


def _rank_main(args: argparse.Namespace) -> int:
    """One rank started by `_launch` (a fresh process): returns 0 or EXIT_TIME_LIMIT to the
    launcher; errors end the process with an exit code (the launcher then stops the others)."""
    from ..distributed import RankFailure

    try:
        code = _train(args)
    except UserError as exc:
        print(f"gaugeflow train: error: {exc}", file=sys.stderr)
        code = 2
    except RankFailure as exc:
        print(f"gaugeflow train: error: {exc}", file=sys.stderr)
        code = 1
    if code not in (0, EXIT_TIME_LIMIT):
        sys.exit(code)
    return code


def _train(args: argparse.Namespace) -> int:
    from ..allocator import tune_allocator
    from ..distributed import process_group
    from ..training import make_config, train

    tune_allocator()  # a rank started by --nproc is a fresh process
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        threads = args.threads
    else:
        threads = configure_threads()
    config = config_from_args(args)
    device = make_config(config)["device"]
    with process_group(device, timeout=args.dist_timeout) as group:
        if group.is_distributed and args.nproc > 1 and args.nproc != group.world_size:
            raise UserError(
                f"--nproc {args.nproc} but the launcher ({group.source}) started "
                f"{group.world_size} processes; drop --nproc under torchrun/srun"
            )
        summary = train(
            config,
            args.out,
            checkpoint_dir=args.checkpoint_dir,
            snapshot_dir=args.snapshot_dir,
            progress=args.progress,
            clock_start=getattr(args, "clock_start", _CLI_START),
            group=group,
        )
    code = EXIT_TIME_LIMIT if summary["status"] == "time_limit" else 0
    if not group.is_main:
        return code
    cfg = summary["config"]
    ranks = f", {group.world_size} ranks" if group.is_distributed else ""
    parent = f", from {summary['parent']['path']}" if summary.get("parent") else ""
    print(
        f"train: {summary['status']} at step {summary['step']}/{cfg['steps']} "
        f"({cfg['estimator']}, L={cfg['L']}, beta={cfg['beta']}, kappa={cfg['kappa']}, "
        f"amp={cfg['amp']}, {summary['n_parameters']} parameters, {summary['device']}, "
        f"{threads} threads{ranks}{parent}) -> {args.out}"
    )
    if code == EXIT_TIME_LIMIT:
        print(
            f"train: stopped by the time limit ({cfg['time_limit']} s); run the same command "
            f"again to continue to step {cfg['steps']}",
            file=sys.stderr,
        )
    return code


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from exc
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a flow with r.t., REINFORCE or path gradients (resumes from checkpoints)",
        description="Train a flow for the Schwinger model. Defaults are the paper's; a config "
        "file (YAML) sets any training key and flags override it. Re-running the same command "
        "resumes from the latest checkpoint.",
    )
    p.add_argument(
        "--out", required=True, help="output folder (model.pt, metrics.csv, summary.json)"
    )
    p.add_argument("--config", help="YAML file of training keys (see gaugeflow.training.DEFAULTS)")
    p.add_argument("--L", type=int, help="lattice size (multiple of 4)")
    p.add_argument("--beta", type=float)
    p.add_argument("--kappa", type=float, help="hopping parameter; 0 means pure gauge")
    p.add_argument("--estimator", choices=list(choices.ESTIMATORS))
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (fp16 + grad scaler on CUDA, bf16 on CPU)",
    )
    p.add_argument("--steps", type=int, help="gradient steps")
    p.add_argument("--batch-size", type=int, help="configurations per part")
    p.add_argument("--n-batches", type=int, help="parts accumulated into one gradient step")
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--lr-schedule",
        choices=list(choices.LR_SCHEDULES),
        help="constant, or cosine decay from --lr to --lr-min over --steps",
    )
    p.add_argument("--lr-min", type=float, help="final learning rate of the cosine schedule")
    p.add_argument("--seed", type=int)
    p.add_argument("--n-layers", type=int, help="coupling layers (multiple of 8)")
    p.add_argument("--hidden", type=int, help="conditioner hidden channels")
    p.add_argument(
        "--holonomy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append two holonomy layers that shape the Polyakov-loop angles (flow key "
        "holonomy; not in the paper, off by default)",
    )
    p.add_argument(
        "--charge-symmetric",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="make every layer equivariant under charge conjugation theta -> -theta (flow key "
        "charge_symmetric; not in the paper, off by default; the conditioners run on twice "
        "the batch)",
    )
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--dtype", choices=list(choices.DTYPES))
    p.add_argument("--assembly", choices=list(choices.ASSEMBLIES), help="Dirac-matrix assembly")
    p.add_argument(
        "--action-method",
        choices=list(choices.ACTION_METHODS),
        help="determinant: even-odd or full",
    )
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--snapshot-every", type=int, help="write a model snapshot every K steps")
    p.add_argument("--log-every", type=int)
    p.add_argument(
        "--init-from",
        metavar="MODEL.pt",
        help="warm start: initialise the flow from this model file's weights (same "
        "architecture, any L; only at step 0, a run with checkpoints resumes from them)",
    )
    p.add_argument(
        "--time-limit",
        type=_positive_seconds,
        metavar="SECONDS",
        help="stop after the step that crosses this wall-clock limit (from the start of this "
        "command), with a checkpoint, model.pt and status time_limit, and exit with status "
        f"{EXIT_TIME_LIMIT}; rerun to continue",
    )
    _add_data_parallel_arguments(p)
    p.add_argument("--checkpoint-dir", help="resumable state (default OUT/checkpoints)")
    p.add_argument("--snapshot-dir", help="snapshot folder (default OUT/snapshots)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_run)


def _add_data_parallel_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of data-parallel training (issue 15), in their own help group."""
    dp = p.add_argument_group(
        "data parallel",
        "Under torchrun or srun every process is one rank (read from RANK/WORLD_SIZE/... or "
        "SLURM_PROCID/SLURM_STEP_NUM_TASKS/...); each rank computes n_batches / ranks parts of "
        "every step. Only rank 0 writes.",
    )
    dp.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        metavar="N",
        help="start N local ranks (torch's elastic launcher, as torchrun --standalone); "
        "ignored under torchrun/srun",
    )
    dp.add_argument(
        "--threads",
        type=positive_int,
        metavar="T",
        help="CPU threads per rank (default OMP_NUM_THREADS, divided by N under --nproc)",
    )
    dp.add_argument(
        "--dist-timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="a rank waiting this long for another (dead or hung) one fails the run "
        f"(default {DEFAULT_TIMEOUT:g})",
    )
