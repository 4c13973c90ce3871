"""`gaugeflow observables | exact`: observables of given configurations, exact pure gauge."""

from __future__ import annotations

import argparse

import numpy as np

from ..choices import ACTION_METHODS, ASSEMBLIES
from ..errors import UserError
from ..io import load_npz, write_json
from ..runtime import configure_threads, resolve_device, resolve_dtype
from ._args import positive_int as _positive_int

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "observables",
        help="per-configuration actions, condensate, sign, Q, plaquette of theta in an .npz",
        description="Measure every configuration of an .npz file holding theta[batch, 2, L, L].",
    )
    p.add_argument("--input", required=True, help=".npz file with an array 'theta'")
    p.add_argument("--beta", type=float, required=True, help="gauge coupling beta >= 0")
    p.add_argument("--kappa", type=float, required=True, help="hopping parameter kappa >= 0")
    p.add_argument("--dtype", default="float64", help="float32 | float64 (default float64)")
    p.add_argument("--assembly", choices=ASSEMBLIES, default="scatter")
    p.add_argument(
        "--method",
        choices=ACTION_METHODS,
        help="determinant (default: eo for scatter, full for loop, the paper's implementation)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, help="configurations per call (64)"
    )
    p.add_argument("--out", required=True, help="output JSON file")
    p.set_defaults(func=run_observables)

    p = subparsers.add_parser(
        "exact",
        help="exact pure-gauge log Z, free energy, <cos P>, <Q^2> on the L x L torus",
        description="Exact pure U(1) gauge results on the finite L x L torus.",
    )
    p.add_argument("--beta", type=float, required=True, help="gauge coupling beta > 0")
    p.add_argument("--L", type=int, required=True, help="lattice size L >= 2")
    p.add_argument("--out", required=True, help="output JSON file")
    p.set_defaults(func=run_exact)


def _load_theta(path: str) -> np.ndarray:
    theta = load_npz(path, keys=("theta",), what="configuration file")["theta"]
    shape = theta.shape
    if theta.ndim != 4 or shape[1] != 2 or shape[2] != shape[3] or shape[0] < 1:
        raise UserError(
            f"configuration file {path}: 'theta' must have shape [batch, 2, L, L]; got {shape}"
        )
    if not np.issubdtype(theta.dtype, np.floating) and not np.issubdtype(theta.dtype, np.integer):
        raise UserError(f"configuration file {path}: 'theta' must be real; got {theta.dtype}")
    if not np.all(np.isfinite(theta)):
        raise UserError(f"configuration file {path}: 'theta' holds non-finite values")
    return theta


def run_observables(args: argparse.Namespace) -> int:
    import torch

    from ..physics.action import check_beta
    from ..physics.dirac import check_kappa, resolve_method
    from ..physics.observables import OBSERVABLES, measure

    try:
        check_beta(args.beta)
        check_kappa(args.kappa)
        args.method = resolve_method(args.method, args.assembly)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    configure_threads()
    dtype = resolve_dtype(args.dtype)
    device = resolve_device(args.device)
    theta = _load_theta(args.input)
    L = theta.shape[-1]
    if L < 2 or (args.method == "eo" and L % 2) or (args.assembly == "loop" and L < 3):
        need = "an even L >= 2" if args.method == "eo" else "L >= 2"
        need = "L >= 3" if args.assembly == "loop" else need
        raise UserError(
            f"configuration file {args.input}: method {args.method} with assembly "
            f"{args.assembly} needs {need}; L = {L}"
        )
    results: dict[str, list[np.ndarray]] = {key: [] for key in OBSERVABLES}
    for start in range(0, theta.shape[0], args.batch_size):
        chunk = torch.as_tensor(theta[start : start + args.batch_size], dtype=dtype)
        obs = measure(
            chunk.to(device), args.beta, args.kappa, method=args.method, assembly=args.assembly
        )
        for key in OBSERVABLES:
            results[key].append(obs[key].cpu().double().numpy())
    values = {key: np.concatenate(parts) for key, parts in results.items()}
    write_json(
        args.out,
        {
            "input": args.input,
            "beta": args.beta,
            "kappa": args.kappa,
            "L": L,
            "n_configs": int(theta.shape[0]),
            "dtype": args.dtype,
            "assembly": args.assembly,
            "method": args.method,
            **values,
        },
    )
    print(
        f"observables: {theta.shape[0]} configurations, L={L}, beta={args.beta}, "
        f"kappa={args.kappa}: <plaquette> {values['plaquette'].mean():.6g}, "
        f"<condensate> {values['condensate'].mean():.6g}, <sign> {values['sign'].mean():.4g} "
        f"-> {args.out}"
    )
    return 0


def run_exact(args: argparse.Namespace) -> int:
    from ..physics.exact import exact_pure_gauge

    try:
        result = exact_pure_gauge(args.beta, args.L)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    write_json(args.out, {"beta": args.beta, "L": args.L, "volume": args.L**2, **result})
    print(
        f"exact: beta={args.beta}, L={args.L}: log Z {result['log_z']:.10g}, "
        f"<cos P> {result['plaquette']:.10g}, <Q^2> {result['q2']:.10g} -> {args.out}"
    )
    return 0
