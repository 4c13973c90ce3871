"""`gaugeflow sample | acceptance | nis | analyze`: NMCMC chains, NIS and their analysis."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UserError
from ..io import load_npz, write_json
from ..runtime import configure_threads
from ._args import positive_int as _positive_int

__all__ = ["register"]

#: Arrays every chain file holds (the CLI contract of `gaugeflow sample`).
CHAIN_ARRAYS = (
    "accepted",
    "logq",
    "logp",
    "plaquette",
    "condensate",
    "sign",
    "topological_charge",
)


def _add_model_args(p: argparse.ArgumentParser, n_default: int | None, nis: bool = False) -> None:
    if nis:
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--model", help="model file written by `gaugeflow train`")
        source.add_argument(
            "--chain",
            help="chain file written by `gaugeflow sample`: estimate from the proposals it "
            "was offered (independent draws; no new sampling; --n, --seed, --symmetrize etc. "
            "are the chain's)",
        )
        p.add_argument(
            "--n", type=_positive_int, default=None, help="number of proposals (with --model)"
        )
    elif n_default is None:
        p.add_argument("--model", required=True, help="model file written by `gaugeflow train`")
        p.add_argument("--n", type=_positive_int, required=True, help="number of proposals")
    else:
        p.add_argument("--model", required=True, help="model file written by `gaugeflow train`")
        p.add_argument(
            "--n", type=_positive_int, default=n_default, help=f"chain length (default {n_default})"
        )
    p.add_argument("--seed", type=int, default=0, help="seed of proposals and draws (default 0)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument(
        "--batch-size", type=_positive_int, default=256, help="proposals per batch (default 256)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--beta", type=float, default=None, help="override the model's target beta")
    p.add_argument("--kappa", type=float, default=None, help="override the model's target kappa")
    p.add_argument(
        "--symmetrize",
        default="none",
        metavar="GROUP",
        help="average the proposal density over symmetries of the target: 'none' (default) or "
        "'+'-joined parts among T (all L^2 translations), T2, T4 (translations by multiples "
        "of 2, 4), P (reflections) and C (charge conjugation), e.g. P+C; costs |G| - 1 extra "
        "reverse passes of the flow per proposal (README, 'Symmetrised proposals')",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar (shown only on a terminal)",
    )


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n": args.n,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": args.device,
        "beta": args.beta,
        "kappa": args.kappa,
        "progress": args.progress,
        "symmetry": args.symmetrize,
    }


def _fmt(value: float, error: float) -> str:
    return f"{value:.6g} +- {error:.2g}"


def _symmetry_note(meta: dict[str, Any]) -> str:
    """'' for the plain flow, else ' (proposals symmetrised over <spec>, |G| = n)'."""
    if meta.get("symmetry", "none") == "none":
        return ""
    return f" (proposals symmetrised over {meta['symmetry']}, |G| = {meta['symmetry_size']})"


def _verdict(entry: Any) -> str:
    """'' for a reliable estimate, else '; unreliable: <reason>' (the summary lines' warning)."""
    if not isinstance(entry, dict) or entry.get("reliable", True):
        return ""
    return f"; unreliable: {entry.get('reason') or 'no reason given'}"


def _run_sample(args: argparse.Namespace) -> int:
    from ..analysis import acceptance_rate
    from ..sampling import chain_metadata, sample_model, save_chain

    configure_threads()
    chain, meta = sample_model(args.model, **_model_kwargs(args))
    save_chain(
        args.out,
        chain,
        chain_metadata(
            seed=meta["seed"],
            model=meta["model"],
            beta=meta["beta"],
            kappa=meta["kappa"],
            L=meta["L"],
            config=meta["config"],
            batch_size=args.batch_size,
            symmetry=meta["symmetry"],
            symmetry_size=meta["symmetry_size"],
        ),
    )
    print(
        f"chain of {args.n} steps, acceptance {acceptance_rate(chain['accepted']):.4f}"
        f"{_symmetry_note(meta)} -> {args.out}"
    )
    return 0


def _run_acceptance(args: argparse.Namespace) -> int:
    from ..sampling import model_acceptance

    configure_threads()
    result = model_acceptance(args.model, **_model_kwargs(args))
    write_json(args.out, result)
    print(
        f"acceptance {result['acceptance']:.4f} over {args.n} steps{_symmetry_note(result)}"
        f" -> {args.out}"
    )
    return 0


#: Options of `nis` that only apply when it draws proposals (--model).
_DRAW_OPTIONS = ("n", "seed", "batch_size", "device", "beta", "kappa", "symmetrize")


def _run_nis(args: argparse.Namespace) -> int:
    from ..sampling import model_nis, nis_from_chain

    if args.chain is not None:
        given = [
            "--" + k.replace("_", "-")
            for k, default in args.draw_defaults.items()
            if getattr(args, k) != default
        ]
        if given:
            raise UserError(
                f"nis --chain {args.chain} reuses the chain's proposals; {', '.join(given)} only "
                "apply when drawing new ones with --model"
            )
        result = nis_from_chain(args.chain)
    else:
        if args.n is None:
            raise UserError("nis --model needs --n (the number of proposals to draw)")
        configure_threads()
        result = model_nis(args.model, **_model_kwargs(args))
    write_json(args.out, result)
    print(
        f"F = {_fmt(result['free_energy'], result['free_energy_error'])}, "
        f"ESS {result['ess']:.4f} ({result['ess_count']:.1f} samples), "
        f"k̂ {result['pareto_k']:.2f}{_verdict(result)}{_symmetry_note(result)} -> {args.out}"
    )
    return 0


def _run_analyze(args: argparse.Namespace) -> int:
    from ..analysis import analyze_chain
    from ..sampling import chain_scalars

    data = load_npz(args.chain, keys=CHAIN_ARRAYS, what="chain file")
    lengths = {k: data[k].shape for k in CHAIN_ARRAYS}
    if len(set(lengths.values())) != 1 or len(data["accepted"].shape) != 1:
        raise UserError(f"chain file {args.chain}: arrays must be 1-d of one length; got {lengths}")
    result = analyze_chain(data, S=args.S, bridge_threshold=args.bridge_threshold)
    result["chain"] = str(args.chain)
    result["S"] = args.S
    result.update({k: v for k, v in chain_scalars(data).items() if k not in result})
    write_json(args.out, result)
    cond = result["condensate"]
    print(
        f"acceptance {result['acceptance']:.4f}, condensate {_fmt(cond['mean'], cond['error'])}"
        f" (tau_int {cond['tau_int']:.3g}), bridges longer than {args.bridge_threshold}: "
        f"{len(result['bridges']['long_lengths'])}, {result['n_distinct']} distinct "
        f"configurations{_verdict(result)} -> {args.out}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the verbs sample, acceptance, nis and analyze."""
    p = subparsers.add_parser(
        "sample",
        help="independence Metropolis chain with a trained flow as proposal",
        description="Write an NMCMC chain (.npz): per step accepted, logq, logp, plaquette, "
        "condensate, sign, topological_charge; plus seed, model, beta, kappa, L and config.",
    )
    _add_model_args(p, n_default=None)
    p.set_defaults(func=_run_sample)

    p = subparsers.add_parser(
        "acceptance",
        help="acceptance rate of a model's Metropolis chain (paper fig. 2 right)",
        description="Run a chain of --n steps (default 2^16) and write {acceptance, ...} JSON.",
    )
    _add_model_args(p, n_default=2**16)
    p.set_defaults(func=_run_acceptance)

    p = subparsers.add_parser(
        "nis",
        help="neural importance sampling: free energy, ESS, reweighted observables",
        description="Draw --n independent proposals (--model), or take those a chain file "
        "keeps (--chain: the same numbers as --model with the chain's seed, batch size and "
        "symmetrisation, without sampling again); write free_energy (F = -log Z, Lebesgue "
        "measure), free_energy_error, ess (fraction), ess_count, reweighted plaquette, "
        "condensate, sign, topological_charge as {mean, error}, and the PSIS verdict: "
        "pareto_k, pareto_k_threshold = min(1 - 1/log10 N, 0.7), psis_log_z(_error), "
        "reliable (k-hat <= threshold) and reason.",
    )
    _add_model_args(p, n_default=None, nis=True)
    # the parser's own defaults tell which drawing options were given with --chain
    p.set_defaults(func=_run_nis, draw_defaults={k: p.get_default(k) for k in _DRAW_OPTIONS})

    p = subparsers.add_parser(
        "analyze",
        help="Gamma-method errors, tau_int and bridges of a chain",
        description="Write acceptance, {mean, error, tau_int, tau_int_error, window, reliable, "
        "reason} per observable (pyerrors Gamma method, tau_int = 0.5 for uncorrelated data; "
        "reliable when N >= 100 (tau_int + its error), the window was found inside the data "
        "and >= 100 distinct configurations were visited), bridges, n_distinct, "
        "longest_rejection_run, and the chain's reliable and reason.",
    )
    p.add_argument("--chain", required=True, help="chain file written by `gaugeflow sample`")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--S", type=float, default=2.0, help="Gamma-method window parameter S")
    p.add_argument(
        "--bridge-threshold",
        type=int,
        default=100,
        help="report positions of rejection runs longer than this (default 100)",
    )
    p.set_defaults(func=_run_analyze)
