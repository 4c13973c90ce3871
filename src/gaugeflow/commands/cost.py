"""`gaugeflow figure-cost`: ESS on fresh samples against training wall clock (issue 14).

The figure, the CSV of its points and the LaTeX macro ``\\gfcostsentence`` the paper quotes;
see `gaugeflow.report.figure_cost`.
"""

from __future__ import annotations

import argparse

from ..errors import UserError


def _run(args: argparse.Namespace) -> int:
    n = len(args.metrics)
    if not (len(args.acceptance) == len(args.summaries) == n):
        raise UserError(
            "figure-cost: --metrics, --acceptance and --summaries need one entry per run; "
            f"got {n}, {len(args.acceptance)}, {len(args.summaries)}"
        )
    from ..io import atomic_path, read_json, write_text
    from ..report.figure_cost import (
        cost_figure,
        cost_sentence,
        cost_table,
        load_cost_run,
        tex_escape,
    )
    from ..report.figures import run_setting

    settings = [run_setting(read_json(s), s) for s in args.summaries]
    runs = [
        load_cost_run(m, a, s["estimator"], s["amp"])
        for m, a, s in zip(args.metrics, args.acceptance, settings, strict=True)
    ]
    fig = cost_figure(runs, args.title or "")
    for path, fmt in ((args.pdf, "pdf"), (args.png, "png")):
        with atomic_path(path, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
    write_text(args.data, cost_table(runs).to_csv(index=False))
    sentence = tex_escape(cost_sentence(runs))
    write_text(args.tex, f"\\newcommand{{\\gfcostsentence}}{{{sentence}}}\n")
    print(f"figure-cost: {len(runs)} runs -> {args.pdf}; {sentence}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """`gaugeflow figure-cost`: the cost figure, its data (CSV) and its sentence (LaTeX)."""
    p = sub.add_parser(
        "figure-cost",
        help="ESS on fresh samples against training wall clock per estimator (issue 14)",
    )
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.csv per run")
    p.add_argument("--acceptance", nargs="+", required=True, help="acceptance.csv per run")
    p.add_argument(
        "--summaries",
        nargs="+",
        required=True,
        help="summary.json per run (estimator and amp are read from its config)",
    )
    p.add_argument("--title")
    p.add_argument("--pdf", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--data", required=True, help="CSV of the points")
    p.add_argument("--tex", required=True, help="LaTeX file defining \\gfcostsentence")
    p.set_defaults(func=_run)
