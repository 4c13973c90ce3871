"""Issue 14: how often does one chain / NIS draw of a model miss a reference value?

One draw's error bar is only as good as its sample of the importance weights' tail. With
heavy-tailed weights (PSIS k-hat around 0.3-0.6) most draws of a few thousand proposals miss
the rare configurations with the largest weights, lean to one side and quote an error that
is too small; the draw that catches one jumps the other way. This benchmark measures that on
a trained model instead of arguing about it:

``draw``: K independent sets of proposals of one model (seeds SEED0, SEED0 + 1, ...), each
saved as DIR/draw_<seed>.npz with the per-proposal log q, log P and observables
(`gaugeflow.sampling.draw_proposals`, the proposals `gaugeflow sample` / `nis` draw).

``pulls``: for each draw size N (a multiple of the saved sets' size), the disjoint draws of
size N the pool holds, and for each observable with a reference value:

- the NIS estimate (`gaugeflow.analysis.stats.reweight`) and the independence Metropolis
  chain on the same proposals (`gaugeflow.sampling.metropolis_step_indices`, analysed with
  the Gamma method, `gaugeflow.analysis.stats.gamma_analysis`), as the workflow's
  Fig. 3 / Fig. 5 do;
- their pulls (estimate - reference) / sqrt(error^2 + reference error^2), the fraction of
  draws beyond 3 (and 2), and each draw's ESS and k-hat;
- the pooled estimate of all proposals against the reference (is there a bias at all?).

Reference values come from the command line (e.g. an independent Monte Carlo kept outside
the project), never from this code. Usage:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_nis_draws.py draw \
        --model results/runs/train/large/L8-reinforce-fp32-s1/model.pt --symmetrize P \
        --draws 16 --n 8192 --seed0 201 --dir results/nis_draws
    python benchmarks/bench_nis_draws.py pulls --dir results/nis_draws \
        --sizes 8192 16384 32768 --reference plaquette=0.75586:0.00067 \
        --reference condensate=1.4994:0.0047 --out results/nis_draws/pulls.json

Draws run one after another in one process; run several ``draw`` commands with different
``--seed0`` (one per core) to fill a pool faster.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from gaugeflow.analysis import nis_verdict
from gaugeflow.analysis.stats import ess, gamma_analysis, reweight
from gaugeflow.errors import UserError
from gaugeflow.io import write_json
from gaugeflow.sampling import (
    OBSERVABLE_KEYS,
    draw_proposals,
    metropolis_step_indices,
    open_model,
)


def _reference(text: str) -> tuple[str, float, float]:
    """'name=value:error' -> (name, value, error)."""
    try:
        name, rest = text.split("=", 1)
        value, error = rest.split(":", 1)
        return name, float(value), float(error)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--reference must look like plaquette=0.75586:0.00067; got {text!r}"
        ) from None


def _draw(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seed0, args.seed0 + args.draws):
        path = out / f"draw_{seed}.npz"
        if path.exists():
            print(f"seed {seed}: {path} exists, kept", flush=True)
            continue
        start = time.perf_counter()
        source, meta = open_model(args.model, seed, "cpu", symmetry=args.symmetrize)
        props = draw_proposals(source, args.n, args.batch_size)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            logq=props.logq,
            logp=props.logp,
            seed=seed,
            model=str(args.model),
            symmetry=meta["symmetry"],
            **props.observables,
        )
        tmp.replace(path)
        lw = props.logp - props.logq
        print(
            f"seed {seed}: {args.n} proposals, ESS {ess(lw):.4f}, "
            f"k-hat {nis_verdict(lw)['pareto_k']:.2f}, {time.perf_counter() - start:.0f} s -> {path}",
            flush=True,
        )
    return 0


def _load_pool(folder: Path) -> tuple[dict[str, np.ndarray], int, set[str]]:
    files = sorted(folder.glob("draw_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise UserError(f"no draw_*.npz in {folder}: run the `draw` command first")
    parts = [dict(np.load(f)) for f in files]
    sizes = {len(p["logq"]) for p in parts}
    if len(sizes) != 1:
        raise UserError(f"the draws in {folder} differ in size ({sorted(sizes)}); use one --n")
    models = {str(p["model"]) for p in parts}
    keys = ("logq", "logp", *OBSERVABLE_KEYS)
    pool = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    return pool, sizes.pop(), models


def _pulls(args: argparse.Namespace) -> int:
    pool, unit, models = _load_pool(Path(args.dir))
    if len(models) != 1:
        raise UserError(f"the draws in {args.dir} come from several models: {sorted(models)}")
    refs = {name: (value, error) for name, value, error in args.reference}
    unknown = sorted(set(refs) - set(OBSERVABLE_KEYS))
    if unknown:
        raise UserError(
            f"--reference names unknown observable(s) {unknown}; known: {OBSERVABLE_KEYS}"
        )
    lw = pool["logp"] - pool["logq"]
    total = len(lw)
    result: dict[str, object] = {
        "model": models.pop(),
        "pool": total,
        "pool_ess": ess(lw),
        "pool_pareto_k": nis_verdict(lw)["pareto_k"],
        "reference": {k: {"value": v, "error": e} for k, (v, e) in refs.items()},
        "pooled": {},
        "sizes": {},
    }
    for name, (value, error) in refs.items():
        mean, err = reweight(pool[name], lw)
        result["pooled"][name] = {  # type: ignore[index]
            "mean": mean,
            "error": err,
            "pull": (mean - value) / float(np.hypot(err, error)),
        }
    print(
        f"pool of {total} proposals: ESS {result['pool_ess']:.4f}, k-hat {result['pool_pareto_k']:.2f}"
    )
    for name, entry in result["pooled"].items():  # type: ignore[union-attr]
        print(
            f"  pooled {name}: {entry['mean']:.5f}({entry['error']:.5f}), pull {entry['pull']:+.2f}"
        )
    for size in args.sizes:
        if size % unit or size > total:
            raise UserError(
                f"--sizes {size}: must be a multiple of the draws' size {unit} and <= {total}"
            )
        n_draws = total // size
        rng = np.random.default_rng(args.chain_seed)
        rows: list[dict[str, object]] = []
        for i in range(n_draws):
            sl = slice(i * size, (i + 1) * size)
            w = lw[sl]
            _, index = metropolis_step_indices(w, np.log(rng.random(size)), -np.inf, first=True)
            row: dict[str, object] = {"ess": ess(w), "pareto_k": nis_verdict(w)["pareto_k"]}
            for name, (value, error) in refs.items():
                o = pool[name][sl]
                mean, err = reweight(o, w)
                chain = gamma_analysis(o[index])
                row[name] = {
                    "nis": {
                        "mean": mean,
                        "error": err,
                        "pull": (mean - value) / float(np.hypot(err, error)),
                    },
                    "chain": {
                        "mean": chain["mean"],
                        "error": chain["error"],
                        "tau_int": chain["tau_int"],
                        "pull": (chain["mean"] - value) / float(np.hypot(chain["error"], error)),
                    },
                }
            rows.append(row)
        summary: dict[str, object] = {"draws": n_draws, "rows": rows}
        ess_values = np.array([r["ess"] for r in rows])
        print(f"N = {size}: {n_draws} disjoint draws, ESS {np.round(ess_values, 3).tolist()}")
        for name in refs:
            for kind in ("nis", "chain"):
                pulls = np.array([r[name][kind]["pull"] for r in rows])  # type: ignore[index]
                summary[f"{name}_{kind}"] = {
                    "pulls": pulls.tolist(),
                    "beyond_3": int((abs(pulls) > 3).sum()),
                    "beyond_2": int((abs(pulls) > 2).sum()),
                    "pull_sd": float(pulls.std(ddof=1)) if n_draws > 1 else None,
                }
                print(
                    f"  {name:10s} {kind:5s} pulls {np.round(pulls, 1).tolist()}: "
                    f"{int((abs(pulls) > 3).sum())} beyond 3, {int((abs(pulls) > 2).sum())} beyond 2"
                )
        result["sizes"][str(size)] = summary  # type: ignore[index]
    if args.out:
        write_json(args.out, result)
        print(f"-> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("draw", help="draw and save independent proposal sets")
    p.add_argument("--model", required=True)
    p.add_argument("--draws", type=int, required=True, help="number of proposal sets")
    p.add_argument("--n", type=int, required=True, help="proposals per set")
    p.add_argument("--seed0", type=int, default=1000, help="seed of the first set")
    p.add_argument("--symmetrize", default="none")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", required=True)
    p.set_defaults(func=_draw)
    p = sub.add_parser("pulls", help="pulls of disjoint draws against reference values")
    p.add_argument("--dir", required=True)
    p.add_argument("--sizes", type=int, nargs="+", required=True)
    p.add_argument("--reference", type=_reference, action="append", required=True)
    p.add_argument("--chain-seed", type=int, default=0, help="seed of the chains' accept draws")
    p.add_argument("--out", default=None)
    p.set_defaults(func=_pulls)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
