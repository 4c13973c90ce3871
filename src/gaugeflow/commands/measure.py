"""`gaugeflow measure {timing,dag,ops,memory,dagfit}`: the measurements behind Tables 1-5.

``gaugeflow measure KIND --L L --batch-size B [--n-batches K] --estimator rt|reinforce|path
[--assembly loop|scatter] [--amp] [--steps N] [--n-layers N] [--hidden C] [--device D]
--out x.json`` writes one measurement record (gaugeflow.measure.MeasurementRecord; each kind's
module in gaugeflow.measure says what it records) and prints a one-line summary. A
configuration that runs out of memory is written with status "oom".

``gaugeflow measure timing-row --L L --batch-size B [--n-batches K] --variant
ESTIMATOR:PREC:ASSEMBLY --out a.json [--variant ... --out b.json ...]`` times the columns of
one Table 1 row in one process, one step of each in turn (rotating order), and writes one
timing record per column (with ``interleaved_with`` and ``round_order``).

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

__all__ = ["register", "overrides_from_args", "parse_variant"]


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


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be a positive integer; got {args.threads}")
        torch.set_num_threads(args.threads)
    else:
        configure_threads()


def parse_variant(text: str) -> dict:
    """``ESTIMATOR:PREC:ASSEMBLY`` -> {estimator, amp, assembly} (UserError naming the flag)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise UserError(f"--variant {text!r}: expected ESTIMATOR:PREC:ASSEMBLY, e.g. rt:fp32:loop")
    estimator, prec, assembly = parts
    for value, allowed, what in (
        (estimator, ESTIMATORS, "estimator"),
        (prec, ("fp32", "amp"), "precision"),
        (assembly, ASSEMBLIES, "assembly"),
    ):
        if value not in allowed:
            raise UserError(
                f"--variant {text!r}: unknown {what} {value!r}; valid: {', '.join(allowed)}"
            )
    return {"estimator": estimator, "amp": prec == "amp", "assembly": assembly}


def _run_row(args: argparse.Namespace) -> int:
    from ..measure import run_timing_row, summary_line

    if len(args.variant) != len(args.out):
        raise UserError(
            f"timing-row needs one --out per --variant; got {len(args.variant)} --variant "
            f"and {len(args.out)} --out"
        )
    if len(set(args.out)) != len(args.out):
        raise UserError(f"timing-row: two --variant write the same --out: {args.out}")
    variants = [parse_variant(text) for text in args.variant]
    _set_threads(args)
    shared = vars(args) | {"estimator": None, "assembly": None, "amp": False}
    shared["action_method"] = None
    base = overrides_from_args(argparse.Namespace(**shared))
    records = run_timing_row(
        [base | variant for variant in variants], steps=args.steps, warmup=args.warmup
    )
    for record, out in zip(records, args.out, strict=True):
        write_json(out, record.to_json())
        print(f"{summary_line(record)} -> {out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..measure import run_record, summary_line

    _set_threads(args)
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


def _common_parser(row: bool = False) -> argparse.ArgumentParser:
    """The flags of one measured configuration; `row`: of timing-row's shared settings (the
    per-column --estimator, --assembly, --amp and --action-method become --variant)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--L", type=int, required=True, help="lattice size (multiple of 4)")
    p.add_argument("--batch-size", type=int, required=True, help="configurations per part")
    p.add_argument("--n-batches", type=int, default=1, help="parts per gradient step (default 1)")
    if row:
        p.add_argument(
            "--variant",
            action="append",
            required=True,
            metavar="ESTIMATOR:PREC:ASSEMBLY",
            help="one column of the row, e.g. rt:fp32:loop or reinforce:amp:scatter "
            "(PREC fp32 or amp); repeat for each, each with its own --out",
        )
        p.add_argument(
            "--out",
            action="append",
            required=True,
            help="output JSON of the --variant in the same position (one per --variant)",
        )
        _shared_flags(p, row=True)
        return p
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
    _shared_flags(p, row=False)
    p.add_argument("--out", required=True, help="output JSON")
    return p


def _shared_flags(p: argparse.ArgumentParser, row: bool) -> None:
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
    if not row:
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
    row_help = (
        "time several configurations of one Table 1 row together, one step of each in "
        "turn (rotating order), so that their ratios come from the same minutes"
    )
    row = kinds.add_parser(
        "timing-row", parents=[_common_parser(row=True)], help=row_help, description=row_help
    )
    row.set_defaults(func=_run_row)
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
