"""The cost figure (issue 14): snapshots placed at their training wall clock, fresh-sample ESS."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from gaugeflow.cli import main as cli_main
from gaugeflow.errors import UserError
from gaugeflow.report.figure_cost import cost_sentence, load_cost_run


def _run_files(tmp_path, name, seconds_per_step, ess_by_step):
    steps = range(1, 101)
    metrics = tmp_path / f"{name}-metrics.csv"
    pd.DataFrame(
        {"step": list(steps), "wall_time": [s * seconds_per_step for s in steps], "ess": 0.99}
    ).to_csv(metrics, index=False)
    acceptance = tmp_path / f"{name}-acceptance.csv"
    pd.DataFrame(
        {"step": list(ess_by_step), "acceptance": 0.1, "ess": list(ess_by_step.values())}
    ).to_csv(acceptance, index=False)
    return metrics, acceptance


def test_snapshots_sit_at_their_wall_clock_and_the_sentence_compares_equal_time(tmp_path):
    # r.t.: 2 s a step, better per step; RE: 1 s a step
    rt = load_cost_run(*_run_files(tmp_path, "rt", 2.0, {50: 0.5, 100: 0.8}), "rt", False)
    re = load_cost_run(*_run_files(tmp_path, "re", 1.0, {50: 0.3, 100: 0.6}), "reinforce", False)
    assert rt.points["seconds"].tolist() == [100.0, 200.0]
    assert re.points["seconds"].tolist() == [50.0, 100.0]
    # the shortest run ends at 100 s: r.t. has ESS 0.5 by then (step 50), RE 0.6 (step 100)
    sentence = cost_sentence([rt, re])
    assert sentence.startswith("A training step took RE 1.00~s, r.t. 2.00~s; after 100~s")
    assert "is RE 0.60 after 100 steps, r.t. 0.50 after 50 steps" in sentence
    # 0.60 vs 0.50 is no ranking; a lead of 2x or more is
    assert "within the snapshot-to-snapshot scatter" in sentence and "fastest" not in sentence
    assert "RE trains fastest" in cost_sentence([rt, re], margin=1.1)


def test_a_run_without_a_snapshot_by_then_is_not_available(tmp_path):
    # one snapshot each (as in the tiny config): RE's comes at 12 s, r.t.'s only at 24 s
    rt = load_cost_run(*_run_files(tmp_path, "rt", 2.0, {12: 0.5}), "rt", False)
    re = load_cost_run(*_run_files(tmp_path, "re", 1.0, {12: 0.3}), "reinforce", False)
    sentence = cost_sentence([rt, re])
    assert "after 12~s of training the ESS on fresh samples is RE 0.30 after 12 steps" in sentence
    assert "r.t. n/a (no snapshot yet)" in sentence and "fastest" not in sentence


def test_missing_ess_column_and_unknown_snapshot_step_are_named(tmp_path):
    metrics, acceptance = _run_files(tmp_path, "a", 1.0, {50: 0.3})
    pd.read_csv(acceptance).drop(columns="ess").to_csv(acceptance, index=False)
    with pytest.raises(UserError, match=r"lacks column\(s\) \['ess'\]"):
        load_cost_run(metrics, acceptance, "rt", False)
    metrics, acceptance = _run_files(tmp_path, "b", 1.0, {500: 0.3})
    with pytest.raises(UserError, match=r"snapshot steps \[500\] have no row"):
        load_cost_run(metrics, acceptance, "rt", False)


def test_cli_writes_figure_data_and_macro(tmp_path):
    m1, a1 = _run_files(tmp_path, "rt", 2.0, {50: 0.5, 100: 0.8})
    m2, a2 = _run_files(tmp_path, "re", 1.0, {50: 0.3, 100: 0.6})
    out = {k: tmp_path / f"figcost.{k}" for k in ("pdf", "png", "csv", "tex")}
    argv = ["figure-cost", "--metrics", str(m1), str(m2), "--acceptance", str(a1), str(a2)]
    summaries = []
    for name, est in (("rt", "rt"), ("re", "reinforce")):
        s = tmp_path / f"{name}-summary.json"
        s.write_text(json.dumps({"config": {"estimator": est, "amp": False, "seed": 0, "L": 4}}))
        summaries.append(str(s))
    argv += ["--summaries", *summaries]
    argv += ["--pdf", str(out["pdf"]), "--png", str(out["png"])]
    argv += ["--data", str(out["csv"]), "--tex", str(out["tex"])]
    assert cli_main(argv) == 0
    assert out["pdf"].read_bytes()[:5] == b"%PDF-" and out["png"].stat().st_size > 1000
    assert len(pd.read_csv(out["csv"])) == 4
    tex = out["tex"].read_text()
    assert tex.startswith(r"\newcommand{\gfcostsentence}{A training step took") and "RE 0.60" in tex
    assert cli_main(argv[:3] + argv[4:]) == 2  # one --metrics for two --acceptance: refused
