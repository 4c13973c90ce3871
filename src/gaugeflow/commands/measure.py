"""`gaugeflow measure {timing,dag,ops,memory,dagfit}`: the measurements behind Tables 1-5.

``gaugeflow measure KIND --L L --batch-size B [--n-batches K] --estimator rt|reinforce|path
[--assembly loop|scatter] [--amp] [--steps N] [--n-layers N] [--hidden C] [--device D]
--out x.json`` writes one measurement record (gaugeflow.measure.MeasurementRecord; each kind's
module in gaugeflow.measure says what it records) and prints a one-line summary. A
configuration that runs out of memory is written with status "oom".

``gaugeflow measure dagfit A.json B.json ... --out fit.json`` fits nodes = a L^2 + b to dag
results at several L (grouped by estimator, assembly, action method, amp, dtype and
architecture).
"""

from __future__ import annotations

import argparse

import torch

from ..choices import ACTION_METHODS, ASSEMBLIES, DTYPES, ESTIMATORS
from ..errors import UserError
from ..io import write_json
from ..runtime import configure_threads

__all__ = ["register", "overrides_from_args"]


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Training-config overrides from the measure flags."""
    overrides = {
        "L": args.L,
        "batch_size": args.batch_size,
        "n_batches": args.n_batches,
        "estimator": args.estimator,
        "assembly": args.assembly,
        "action_method": args.action_method,
        "amp": args.amp,
        "beta": args.beta,
        "kappa": args.kappa,
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
    }
    flow = {}
    if args.n_layers is not None:
        flow["n_layers"] = args.n_layers
    if args.hidden is not None:
        flow["hidden_channels"] = args.hidden
    if flow:
        overrides["flow"] = flow
    return overrides


def _run(args: argparse.Namespace) -> int:
    from ..measure import run_record, summary_line

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be a positive integer; got {args.threads}")
        torch.set_num_threads(args.threads)
    else:
        configure_threads()
    record = run_record(
        args.kind,
        overrides_from_args(args),
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    write_json(args.out, record.to_json())
    print(f"{summary_line(record)} -> {args.out}")
    return 0


def _run_dagfit(args: argparse.Namespace) -> int:
    from ..measure import fit_dag_results, load_record

    fits = fit_dag_results(load_record(path) for path in args.inputs)
    write_json(args.out, {"kind": "dagfit", "inputs": list(args.inputs), "groups": fits})
    for group in fits:
        label = f"{group['estimator']} {group['assembly']}"
        if "fit" in group:
            fit = group["fit"]
            exact = "exact" if fit["exact"] else f"max residual {fit['max_residual']:.3g}"
            print(
                f"measure dagfit: {label}: nodes = {fit['formula']} over L={group['L']} ({exact})"
            )
        else:
            print(f"measure dagfit: {label}: one L only ({group['L']}), no fit")
    print(f"measure dagfit: {len(fits)} group(s) -> {args.out}")
    return 0


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--L", type=int, required=True, help="lattice size (multiple of 4)")
    p.add_argument("--batch-size", type=int, required=True, help="configurations per part")
    p.add_argument("--n-batches", type=int, default=1, help="parts per gradient step (default 1)")
    p.add_argument("--estimator", choices=list(ESTIMATORS), required=True)
    p.add_argument(
        "--assembly",
        choices=list(ASSEMBLIES),
        default="scatter",
        help="Dirac-matrix assembly: loop (the paper's implementation: per-site block "
        "assignment, determinant of the full D) or scatter (default)",
    )
    p.add_argument(
        "--action-method",
        choices=list(ACTION_METHODS),
        default=None,
        help="determinant of the even-odd Schur complement or of D (default: eo for "
        "scatter, full for loop, the paper's implementation; loop with eo is an error)",
    )
    p.add_argument("--amp", action="store_true", help="mixed precision as in training")
    p.add_argument(
        "--steps",
        type=int,
        default=100,
        help="timing: timed gradient steps (default 100, as in the paper)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed gradient steps first (default: timing 2, dag 0, ops 1, memory 1)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="ops: backward passes whose per-type times are medianed (default 3)",
    )
    p.add_argument("--n-layers", type=int, help="coupling layers (default: the paper's 48)")
    p.add_argument("--hidden", type=int, help="conditioner channels (default: the paper's 64)")
    p.add_argument("--beta", type=float, default=2.0)
    p.add_argument("--kappa", type=float, default=0.276, help="0 means pure gauge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument(
        "--threads", type=int, help="torch threads (default: OMP_NUM_THREADS or torch's)"
    )
    p.add_argument("--out", required=True, help="output JSON")
    return p


_HELP = {
    "timing": "time of gradient steps, split into loss call and backward (Tables 1, 2)",
    "dag": "number of autograd-graph nodes of one loss call (Table 3)",
    "ops": "backward time per autograd node type, top ten (Table 4)",
    "memory": "saved-tensor bytes and count, peak memory of one loss call (Table 5)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure",
        help="timing, graph size, backward time per op, memory of a training step",
        description="Measure one configuration (one JSON per call) or fit graph sizes over L.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    common = _common_parser()
    for kind, help_text in _HELP.items():
        k = kinds.add_parser(kind, parents=[common], help=help_text, description=help_text)
        k.set_defaults(func=_run)
    fit = kinds.add_parser(
        "dagfit",
        help="fit nodes = a L^2 + b to dag results at several L",
        description="Fit nodes = a L^2 + b to `measure dag` results, one fit per estimator, "
        "assembly, action method, amp, dtype and architecture.",
    )
    fit.add_argument("inputs", nargs="+", help="dag result JSON files")
    fit.add_argument("--out", required=True, help="output JSON")
    fit.set_defaults(func=_run_dagfit)

    def _no_kind(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_no_kind)
