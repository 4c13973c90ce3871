"""The report library (figures, tables, macros, provenance) on synthetic results files.

Inputs follow the documented formats of `gaugeflow train`, `measure`, `sample`, `analyze`;
no training or measurement runs here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gaugeflow.cli import main as cli_main
from gaugeflow.errors import UserError
from gaugeflow.measure.records import RESULT_KEYS, SCHEMA_VERSION
from gaugeflow.report import figures, latex, macros, paper_data, provenance, tables
from gaugeflow.report.records import load_measurement

REPO = Path(__file__).resolve().parents[1]
PAPER_ARCH = (48, 64)
SMALL_ARCH = (8, 16)


def write_record(
    folder: Path,
    kind: str,
    L: int,
    estimator: str,
    bs: int = 4,
    nb: int = 1,
    amp: bool = False,
    assembly: str = "loop",
    arch: tuple[int, int] = SMALL_ARCH,
    status: str = "ok",
    **values,
) -> Path:
    """A measurement record laid out as `gaugeflow measure` writes it (results not given: None)."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "status": status,
        "inputs": {
            "kind": kind,
            "L": L,
            "batch_size": bs,
            "n_batches": nb,
            "estimator": estimator,
            "assembly": assembly,
            "amp": amp,
            "n_layers": arch[0],
            "hidden": arch[1],
            "device": "cpu",
        },
        "device": "cpu",
        **dict.fromkeys(RESULT_KEYS[kind]),
        **values,
    }
    name = f"{kind}-L{L}-{bs}x{nb}-{estimator}-{amp}-{assembly}-{arch[0]}.json"
    path = folder / name
    path.write_text(json.dumps(record))
    return path


def load(paths):
    return [load_measurement(p) for p in paths]


# ---------------------------------------------------------------------------------------
# formatting and LaTeX


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (784.0, "784"),
        (0.97, "0.970"),
        (2.3456, "2.35"),
        (12345.6, "12346"),
        (3e-16, "0.000000"),
        (None, "–"),
    ],
)
def test_format_number_keeps_about_three_significant_digits(value, text):
    assert latex.format_number(value) == text


def test_escape_protects_latex_specials_and_maps_unicode():
    assert latex.escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
    assert latex.escape("8 × 16") == r"8 $\times$ 16"


def test_macro_file_rejects_names_latex_cannot_define():
    with pytest.raises(ValueError, match="letters only"):
        latex.macro_file({"gfEss2": "1"})
    assert latex.macro_file({"gfX": "1"}) == "\\newcommand{\\gfX}{1}\n"


def test_tabular_refuses_a_row_of_the_wrong_width():
    tab = latex.Tabular("rr")
    with pytest.raises(ValueError, match="3 cells"):
        tab.add_row(["1", "2", "3"])


# ---------------------------------------------------------------------------------------
# measurement records


def test_records_read_settings_nested_under_inputs(tmp_path):
    path = write_record(tmp_path, "dag", 8, "rt", assembly="scatter", nodes=100)
    m = load_measurement(path)
    assert (m.L, m.estimator, m.assembly, m.n_layers, m.hidden) == (8, "rt", "scatter", 8, 16)
    assert m.value("nodes") == 100


def test_records_without_a_lattice_size_are_a_user_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"status": "ok", "inputs": {"estimator": "rt"}}))
    with pytest.raises(UserError, match="lacks"):
        load_measurement(path)


def test_values_of_failed_measurements_are_none(tmp_path):
    m = load_measurement(write_record(tmp_path, "timing", 8, "rt", status="oom", step_seconds=1.0))
    assert m.value("step_seconds") is None and not m.ok


# ---------------------------------------------------------------------------------------
# Table 1 and 2: timing


def timing(tmp_path, L, est, step, bs=4, nb=1, amp=False, assembly="loop", arch=SMALL_ARCH, **kw):
    return write_record(
        tmp_path,
        "timing",
        L,
        est,
        bs=bs,
        nb=nb,
        amp=amp,
        assembly=assembly,
        arch=arch,
        step_seconds=step,
        loss_seconds=kw.get("loss", step / 3),
        backward_seconds=kw.get("back", step / 2),
        steps=3,
        status=kw.get("status", "ok"),
    )


def test_table1_speedup_is_rt_time_over_variant_time_in_the_same_row(tmp_path):
    recs = load(
        [
            timing(tmp_path, 8, "rt", 2.0),
            timing(tmp_path, 8, "reinforce", 0.5),
            timing(tmp_path, 8, "rt", 1.0, assembly="scatter"),
        ]
    )
    t = tables.table1(recs, scale="test")
    row = t.frame.iloc[0]
    assert row["rt_loop_seconds"] == pytest.approx(200.0)
    assert row["reinforce_loop_speedup"] == pytest.approx(4.0)
    assert row["rt_scatter_speedup"] == pytest.approx(2.0)
    assert "50.0 (4.00)" in t.latex
    assert r"\begin{tabular}" in t.latex and r"\bottomrule" in t.latex


def test_table1_says_when_its_rows_were_timed_together(tmp_path):
    def rec(est, step, rows_together):
        path = timing(tmp_path, 8, est, step)
        if rows_together:
            data = json.loads(path.read_text())
            data.update(round_order="rotating", interleaved_with=["x"], row_seconds=9.0)
            path.write_text(json.dumps(data))
        return path

    together = tables.table1(load([rec("rt", 2.0, True), rec("reinforce", 0.5, True)]))
    assert any("timed together" in note for note in together.notes)
    apart = tables.table1(load([rec("rt", 2.0, True), rec("reinforce", 0.5, False)]))
    assert not any("timed together" in note for note in apart.notes)


def test_table1_uses_best_rt_at_that_L_when_rt_ran_out_of_memory(tmp_path):
    recs = load(
        [
            timing(tmp_path, 16, "rt", 3.0, bs=8, nb=2),
            timing(tmp_path, 16, "reinforce", 1.0, bs=8, nb=2),
            timing(tmp_path, 16, "rt", 9.9, bs=16, status="oom"),
            timing(tmp_path, 16, "reinforce", 1.5, bs=16),
        ]
    )
    t = tables.table1(recs)
    second = t.frame.iloc[1]
    assert second["rt_loop_status"] == "oom"
    assert second["reinforce_loop_speedup"] == pytest.approx(2.0)
    assert second["reinforce_loop_speedup_basis"] == "best_rt"
    assert "oom" in t.latex and "(2.00*)" in t.latex


def test_table1_prints_paper_values_only_where_the_setting_matches(tmp_path):
    matching = load([timing(tmp_path, 8, "rt", 1.0, bs=1536, arch=PAPER_ARCH)])
    t = tables.table1(matching)
    assert t.frame.iloc[0]["paper_rt"] == 113.0
    assert r"\emph{paper}" in t.latex and r"\emph{113}" in t.latex

    other_arch = load([timing(tmp_path, 8, "rt", 1.0, bs=1536, arch=SMALL_ARCH)])
    t = tables.table1(other_arch)
    assert pd.isna(t.frame.iloc[0]["paper_rt"])
    assert "paper" not in t.latex


def test_table2_total_is_loss_plus_backward_and_skips_amp(tmp_path):
    recs = load(
        [
            timing(tmp_path, 8, "rt", 1.0, loss=0.25, back=0.5),
            timing(tmp_path, 8, "reinforce", 1.0, amp=True),
        ]
    )
    t = tables.table2(recs)
    assert t.frame.iloc[0]["rt_loop_total"] == pytest.approx(0.75)
    assert "reinforce_amp_loop_total" not in t.frame


# ---------------------------------------------------------------------------------------
# Table 3: graph size


def test_fit_quadratic_recovers_the_papers_rt_law():
    Ls = [4, 8, 12, 16]
    a, b = tables.fit_node_counts(Ls, [36 * L * L + 12036 for L in Ls])
    assert a == pytest.approx(36.0) and b == pytest.approx(12036.0)
    assert tables.fit_node_counts([8], [1.0]) is None


def test_table3_fits_each_variant_and_adds_paper_rows_for_the_papers_flow(tmp_path):
    paths = []
    for L in (4, 8, 12):
        paths.append(write_record(tmp_path, "dag", L, "rt", arch=PAPER_ARCH, nodes=5 * L * L + 7))
        paths.append(write_record(tmp_path, "dag", L, "reinforce", arch=PAPER_ARCH, nodes=99))
    t = tables.table3(load(paths))
    ours = t.frame[t.frame["source"] == "ours"].set_index("estimator")
    assert ours.loc["rt", "fit_a"] == pytest.approx(5.0)
    assert ours.loc["reinforce", "fit_a"] == 0.0
    paper_rows = t.frame[t.frame["source"] == "paper"].set_index("estimator")
    assert paper_rows.loc["rt", "L8"] == 14340
    assert r"\emph{paper r.t.}" in t.latex


def test_table3_reports_an_oom_entry_instead_of_a_number(tmp_path):
    paths = [
        write_record(tmp_path, "dag", 4, "rt", nodes=10),
        write_record(tmp_path, "dag", 8, "rt", status="oom", nodes=None),
    ]
    t = tables.table3(load(paths))
    assert t.frame.iloc[0]["L8"] == "oom"
    assert "oom" in t.latex


# ---------------------------------------------------------------------------------------
# Table 4 and 5


def test_table4_lists_the_top_ops_in_milliseconds(tmp_path):
    top = [{"name": f"Op{i}Backward0", "count": i, "seconds": 0.1 / i} for i in range(1, 13)]
    path = write_record(tmp_path, "ops", 16, "rt", bs=512, arch=PAPER_ARCH, top=top)
    top[0]["name"] = "CopySlices"
    path.write_text(path.read_text().replace("Op1Backward0", "CopySlices"))
    t = tables.table4(load([path]), top=10)
    assert len(t.frame) == 10
    assert t.frame.iloc[0]["ms"] == pytest.approx(100.0)
    assert t.frame.iloc[0]["paper_ms"] == pytest.approx(2743.56)
    assert "Op12Backward0" not in t.latex


def test_table5_converts_bytes_and_says_when_an_entry_crashed(tmp_path):
    ok = write_record(
        tmp_path,
        "memory",
        8,
        "rt",
        saved_bytes=2**30,
        peak_bytes=2**31,
        saved_tensors=12,
        peak_kind="cpu_rss_growth",
    )
    crashed = write_record(tmp_path, "memory", 8, "reinforce", status="crashed")
    t = tables.table5(load([ok, crashed]))
    row = t.frame.iloc[0]
    assert row["rt_loop_M1_GiB"] == pytest.approx(1.0)
    assert row["rt_loop_M2_GiB"] == pytest.approx(2.0)
    assert row["reinforce_loop_status"] == "crashed"
    assert "crashed" in t.latex and "cpu\\_rss\\_growth" in t.latex
    assert "[GiB]" in t.latex


def test_table5_switches_to_mebibytes_for_small_lattices(tmp_path):
    small = write_record(
        tmp_path, "memory", 4, "rt", saved_bytes=3 * 2**20, peak_bytes=2**21, saved_tensors=5
    )
    t = tables.table5(load([small]))
    assert "[MiB]" in t.latex and " 3.00 " in t.latex


def test_paper_table1_speedups_reproduce_the_published_ratios():
    # transcription check: published speed-ups are r.t./RE of the published times
    row = paper_data.TABLE1[(24, 384, 4)]
    assert row["rt"] / row["reinforce"] == pytest.approx(8.26, abs=0.01)
    assert row["rt"] / row["reinforce_amp"] == pytest.approx(9.58, abs=0.01)


# ---------------------------------------------------------------------------------------
# figures


def test_running_average_is_a_trailing_mean_that_skips_non_finite_values():
    avg = figures.running_average([1.0, 3.0, np.nan, 5.0], window=2)
    np.testing.assert_allclose(avg, [1.0, 2.0, 3.0, 5.0])
    with pytest.raises(UserError):
        figures.running_average([1.0], window=0)


def write_training_run(
    folder: Path,
    estimator: str,
    status: str = "completed",
    steps: int = 40,
    amp: bool = False,
    seed: int = 1,
    L: int = 4,
):
    """A training run's files as `gaugeflow train` writes them (summary.json has `config`)."""
    folder.mkdir(parents=True)
    step = np.arange(1, steps + 1)
    pd.DataFrame(
        {"step": step, "loss": 1.0 / step, "ess": step / steps, "wall_time": 0.1 * step}
    ).to_csv(folder / "metrics.csv", index=False)
    config = {"estimator": estimator, "amp": amp, "seed": seed, "L": L, "steps": steps}
    summary = {"status": status, "step": steps, "config": config}
    (folder / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"step": [20, 10, 40], "acceptance": [0.2, 0.1, 0.4]}).to_csv(
        folder / "acceptance.csv", index=False
    )
    return folder


def is_pdf(path: Path) -> bool:
    return path.read_bytes()[:5] == b"%PDF-"


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_figure_cli_writes_pdf_png_and_the_numbers_behind_them(tmp_path):
    a = write_training_run(tmp_path / "a", "rt", status="diverged", steps=20, amp=True)
    b = write_training_run(tmp_path / "b", "reinforce")
    out = tmp_path / "fig"
    argv = ["figure", "training", "--window", "10", "--title", "L = 4; test"]
    argv += ["--metrics", str(a / "metrics.csv"), str(b / "metrics.csv")]
    argv += ["--summaries", str(a / "summary.json"), str(b / "summary.json")]
    argv += ["--acceptance", str(a / "acceptance.csv"), str(b / "acceptance.csv")]
    argv += ["--pdf", f"{out}.pdf", "--png", f"{out}.png", "--data", f"{out}.csv"]
    assert cli_main(argv) == 0
    assert is_pdf(Path(f"{out}.pdf")) and is_png(Path(f"{out}.png"))
    data = pd.read_csv(f"{out}.csv").set_index("estimator")
    assert data.loc["rt", "status"] == "diverged" and bool(data.loc["rt", "amp"])
    # running mean over the last 10 steps of ess = step / 40
    assert data.loc["reinforce", "final_ess"] == pytest.approx(np.mean(np.arange(31, 41)) / 40)
    assert data.loc["reinforce", "final_acceptance"] == pytest.approx(0.4)


def test_training_figure_cli_needs_one_entry_per_run(tmp_path, capsys):
    a = write_training_run(tmp_path / "a", "rt")
    argv = ["figure", "training", "--metrics", str(a / "metrics.csv")]
    argv += [str(a / "metrics.csv"), "--summaries", str(a / "summary.json")]
    argv += ["--pdf", "x.pdf", "--png", "x.png"]
    assert cli_main(argv) == 2
    assert "one entry per run" in capsys.readouterr().err


def chain_with_rejections(n: int, runs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    accepted = np.ones(n, dtype=bool)
    for start, length in runs:
        accepted[start : start + length] = False
    return {
        "accepted": accepted,
        "sign": np.where(rng.random(n) < 0.9, 1.0, -1.0),
        "condensate": rng.normal(size=n),
    }


def test_long_bridges_finds_only_runs_longer_than_the_threshold():
    chain = chain_with_rejections(1000, [(100, 150), (400, 30), (700, 101)])
    assert figures.long_bridges(chain["accepted"], 100) == [(100, 150), (700, 101)]


def test_history_figure_draws_each_long_bridge_in_red_on_both_panels(tmp_path):
    chain = chain_with_rejections(1000, [(100, 150), (400, 30), (700, 101)])
    fig = figures.history_figure(chain, threshold=100, title="t", analysis={"acceptance": 0.5})
    for ax in fig.axes:
        red = [line for line in ax.get_lines() if line.get_color() == "red"]
        assert len(red) == 2
        # the stretch where the chain repeats one configuration: the step before the run
        # of rejections through its last rejected step
        xs = red[0].get_xdata()
        assert (xs[0], xs[-1]) == (99, 249)
    np.savez(tmp_path / "chain.npz", **chain)
    argv = ["figure", "history", "--chain", str(tmp_path / "chain.npz"), "--bridge-min", "100"]
    argv += ["--pdf", str(tmp_path / "h.pdf"), "--png", str(tmp_path / "h.png")]
    assert cli_main(argv) == 0
    assert is_pdf(tmp_path / "h.pdf") and is_png(tmp_path / "h.png")


# ---------------------------------------------------------------------------------------
# macros, provenance, small CLI helpers


def test_macros_define_every_macro_the_paper_uses_even_without_results():
    used = set(re.findall(r"\\(gf[A-Za-z]+)", (REPO / "paper" / "main.tex").read_text()))
    main_tex = (REPO / "paper" / "main.tex").read_text()
    # defined in main.tex itself (its table helpers, and the fallback of an optional \input)
    here = set(
        re.findall(r"\\(?:newcommand|providecommand|newsavebox)\{\\(gf[A-Za-z]+)\}", main_tex)
    )
    assert {"gfscaletable", "gftablebox", "gfcostsentence"} <= here, here
    used -= here
    defined = set(macros.build_macros({"scale": "x"}))
    assert used, "main.tex uses no generated macros?"
    assert used <= defined, f"undefined in macros.tex: {sorted(used - defined)}"


def test_macros_quote_speedups_fits_and_chain_results():
    table1 = pd.DataFrame(
        [
            {"L": 8, "batch_size": 4, "rt_loop_seconds": 100.0, "reinforce_loop_seconds": 50.0},
            {"L": 16, "batch_size": 4, "rt_loop_seconds": 400.0, "reinforce_loop_seconds": 50.0},
        ]
    )
    table3 = pd.DataFrame(
        [{"estimator": "rt", "assembly": "loop", "source": "ours", "fit_a": 36.0, "fit_b": 12036.0}]
    )
    training = pd.DataFrame(
        [
            {"estimator": "rt", "amp": True, "status": "diverged", "last_step": 7, "final_ess": 0},
            {
                "estimator": "reinforce",
                "amp": False,
                "status": "completed",
                "last_step": 9,
                "final_ess": 0.456,
            },
        ]
    )
    analysis = {
        "acceptance": 0.22,
        "condensate": {"mean": 0.1, "error": 0.01, "tau_int": 9.1234, "tau_int_error": 0.52},
        "bridges": {"long_lengths": [120, 130], "longest": 130},
    }
    m = macros.build_macros(
        {"scale": "s"},
        training={"main": training},
        analyses={"main": analysis},
        table1=table1,
        table3=table3,
    )
    assert m["gfSpeedupL"] == "16" and m["gfSpeedupRe"] == "8.00"
    assert m["gfDagRtA"] == "36.0" and m["gfDagRtB"] == "12036"
    assert m["gfEssMainRe"] == "0.46" and m["gfEssMainRtAmp"].startswith("diverged (step 7)")
    assert m["gfAccMain"] == r"22.0\%" and m["gfBridgesMain"] == "2"
    assert m["gfTauCondMain"] == r"\ensuremath{9.12 \pm 0.52}"
    assert m["gfEssMainPg"] == macros.NA
    # RE ran without amp only: no "(n/a with amp)" clause in the text
    assert m["gfEssMainReAmpClause"] == "" and m["gfEssLargeReAmpClause"] == ""
    with_amp = pd.concat([training, training.iloc[[1]].assign(amp=True, final_ess=0.3)])
    m = macros.build_macros({"scale": "s"}, training={"large": with_amp})
    assert m["gfEssLargeReAmpClause"] == " (0.30 with amp)"


def test_chain_text_names_the_symmetry_group_only_when_one_was_used():
    plain = macros.build_macros({"scale": "s"}, analyses={"main": {"acceptance": 0.2}})
    assert plain["gfSymClauseMain"] == "" and plain["gfSymClauseLarge"] == ""
    older = macros.build_macros({"scale": "s"}, analyses={"main": {"symmetry": "none"}})
    assert older["gfSymClauseMain"] == ""
    m = macros.build_macros(
        {"scale": "s"}, analyses={"large": {"symmetry": "T2+C", "symmetry_size": 32}}
    )
    clause = m["gfSymClauseLarge"]
    assert "translations by even vectors and charge conjugation" in clause
    assert "$|G| = 32$" in clause and r"\ref{sec:symmetry}" in clause


def test_value_error_rounds_the_error_to_two_digits():
    assert macros.value_error(1.23456, 0.0123) == r"\ensuremath{1.235 \pm 0.012}"
    assert macros.value_error(None, 1.0) == macros.NA


def test_provenance_records_git_packages_device_and_hashes(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hello")
    stamp = provenance.collect({"scale": "t"}, REPO, "cpu", [f])
    assert stamp["config"] == {"scale": "t"}
    assert stamp["packages"]["torch"] and stamp["device"]["requested"] == "cpu"
    assert stamp["inputs_sha256"][str(f)] == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    assert stamp["git_describe"]
    assert provenance.git_describe(tmp_path) == "unknown (not a git checkout)"


def test_collect_acceptance_orders_snapshots_by_step(tmp_path):
    for step, acc in ((20, 0.3), (10, 0.1)):
        (tmp_path / f"{step}.json").write_text(json.dumps({"acceptance": acc}))
    out = tmp_path / "acc.csv"
    argv = ["collect-acceptance", "--inputs", str(tmp_path / "20.json"), str(tmp_path / "10.json")]
    argv += ["--steps", "20", "10", "--out", str(out)]
    assert cli_main(argv) == 0
    frame = pd.read_csv(out)
    assert frame["step"].tolist() == [10, 20] and frame["acceptance"].tolist() == [0.1, 0.3]
    empty = tmp_path / "empty.csv"
    assert cli_main(["collect-acceptance", "--inputs", "--steps", "--out", str(empty)]) == 0
    assert pd.read_csv(empty).empty


def test_record_failure_produces_an_entry_tables_show_as_crashed(tmp_path):
    log = tmp_path / "m.log"
    log.write_text("Traceback...\nRuntimeError: boom\n")
    settings = {
        "kind": "timing",
        "L": 8,
        "batch_size": 4,
        "n_batches": 1,
        "estimator": "rt",
        "amp": False,
        "assembly": "loop",
        "n_layers": 8,
        "hidden": 16,
        "device": "cpu",
    }
    out = tmp_path / "rec.json"
    argv = ["record-failure", "--settings", json.dumps(settings), "--log", str(log)]
    assert cli_main([*argv, "--out", str(out)]) == 0
    m = load_measurement(out)
    assert m.status == "crashed" and "boom" in m.data["error"]
    assert "crashed" in tables.table1([m]).latex


def test_table_cli_writes_tex_and_csv(tmp_path):
    rec = timing(tmp_path, 8, "rt", 1.0)
    tex, csv = tmp_path / "t.tex", tmp_path / "t.csv"
    argv = ["table", "table1", "--inputs", str(rec), "--scale", "tiny & fast"]
    assert cli_main([*argv, "--tex", str(tex), "--csv", str(csv)]) == 0
    assert r"tiny \& fast" in tex.read_text()
    assert pd.read_csv(csv)["rt_loop_seconds"].tolist() == [100.0]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_generated_tables_and_macros_compile_with_pdflatex(tmp_path, pdflatex):
    paths = [
        timing(tmp_path, 8, "rt", 1.0, bs=1536, arch=PAPER_ARCH),
        timing(tmp_path, 8, "reinforce", 0.5, bs=1536, arch=PAPER_ARCH, status="oom"),
    ]
    body = tables.table1(load(paths), scale="β = 2, 8 × 16 & co").latex
    body += tables.table2(load(paths)).latex
    dag = [write_record(tmp_path, "dag", L, "rt", arch=PAPER_ARCH, nodes=L) for L in (4, 8)]
    body += tables.table3(load(dag)).latex
    analysis = {"condensate": {"tau_int": 3.0, "tau_int_error": 0.2}}
    defined = macros.build_macros({"scale": "a_b"}, analyses={"main": analysis})
    (tmp_path / "macros.tex").write_text(latex.macro_file(defined))
    # numbers with errors and n/a placeholders work in text and in math
    text = r"\gfScale: \gfTauCondMain, $\tau = \gfTauCondMain$, $\gfDagRtA L^2$, \gfEssMainPg."
    doc = (
        "\\documentclass{article}\\usepackage{booktabs,amsmath}"
        "\\input{macros}\\begin{document}" + text + "\n" + body + "\\end{document}\n"
    )
    pdflatex(tmp_path, doc)
    assert is_pdf(tmp_path / "doc.pdf")


# ---------------------------------------------------------------------------------------
# the one renderer, and report verbs reading the runs' own metadata


def test_renderer_writes_latex_and_csv_from_the_same_frame(tmp_path):
    recs = load(
        [
            timing(tmp_path, 8, "rt", 2.0),
            timing(tmp_path, 8, "reinforce", 0.5),
            timing(tmp_path, 16, "rt", 8.0, status="crashed"),
            timing(tmp_path, 16, "reinforce", 1.0),
        ]
    )
    table = tables.table1(recs, scale="rendered")
    tex, csv = tmp_path / "t.tex", tmp_path / "t.csv"
    tables.write_table(table, tex, csv)

    def missing_as_none(frame):  # CSV writes None, NaN and "" alike: an empty field
        frame = frame.astype(object)
        return frame.where(frame.notna() & (frame != ""), None)

    back = missing_as_none(pd.read_csv(csv))
    pd.testing.assert_frame_equal(back, missing_as_none(table.frame))
    assert tex.read_text() == tables.render_latex(table) == table.latex
    # the LaTeX is laid out from the frame: a changed number shows in the tabular
    table.frame.loc[0, "reinforce_loop_seconds"] = 12.5
    assert "12.5 (4.00)" in tables.render_latex(table)
    lines = [line for line in tex.read_text().splitlines() if line.endswith(r"\\")]
    assert lines[1:] == [r"8 & 4 & 1 & 200 & 50.0 (4.00) \\", r"16 & 4 & 1 & crashed & 100 \\"]
    assert "rendered" in tex.read_text()


def test_training_figure_reads_estimator_amp_seed_and_L_from_each_summary(tmp_path):
    a = write_training_run(tmp_path / "a", "path", amp=True, seed=7, L=8)
    run = figures.load_training_run(a / "metrics.csv", a / "summary.json", a / "acceptance.csv")
    assert (run.estimator, run.amp, run.seed, run.L) == ("path", True, 7, 8)
    assert run.label == "PG amp"
    out = tmp_path / "fig"
    argv = ["figure", "training", "--metrics", str(a / "metrics.csv")]
    argv += ["--summaries", str(a / "summary.json"), "--window", "5"]
    argv += ["--pdf", f"{out}.pdf", "--png", f"{out}.png", "--data", f"{out}.csv"]
    assert cli_main(argv) == 0
    data = pd.read_csv(f"{out}.csv")
    assert data[["estimator", "amp", "seed"]].values.tolist() == [["path", True, 7]]


@pytest.mark.parametrize("key", ["estimator", "amp", "seed", "L"])
def test_a_summary_without_a_setting_is_a_user_error_naming_the_file_and_key(tmp_path, key):
    a = write_training_run(tmp_path / "a", "rt")
    summary = json.loads((a / "summary.json").read_text())
    del summary["config"][key]
    (a / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match=rf"summary\.json lacks key\(s\) config\.{key}"):
        figures.load_training_run(a / "metrics.csv", a / "summary.json")
    del summary["config"]
    (a / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match=r"a[/\\]summary\.json lacks key 'config'"):
        figures.load_training_run(a / "metrics.csv", a / "summary.json")


def test_macros_cli_takes_the_settings_explicitly_and_names_an_unknown_key(tmp_path, capsys):
    settings = {"scale": "s", "beta": 2.0, "groups": {"main": {"L": 16, "batch_size": 4}}}
    out = tmp_path / "macros.tex"
    assert cli_main(["macros", "--settings", json.dumps(settings), "--out", str(out)]) == 0
    text = out.read_text()
    assert "\\newcommand{\\gfBeta}{2.0}" in text and "\\newcommand{\\gfLMain}{16}" in text
    assert "\\newcommand{\\gfBatchMain}{1$\\times$4}" in text
    assert "\\newcommand{\\gfLLarge}{\\textrm{n/a}}" in text
    bad = {"groups": {"main": {"length": 3}}}
    assert cli_main(["macros", "--settings", json.dumps(bad), "--out", str(out)]) == 2
    assert "groups.main.length" in capsys.readouterr().err


def test_steps_note_names_the_runs_that_train_another_number_of_steps():
    main = {"steps": 300, "steps_by_estimator": {"reinforce": 2400}, "amp_steps": 300}
    m = macros.build_macros({"scale": "s", "groups": {"main": main, "large": {"steps": 9}}})
    assert m["gfStepsMain"] == "300"
    assert m["gfStepsNoteMain"] == r" (\RE{} without amp: 2400; with amp: 300)"
    assert m["gfStepsNoteLarge"] == ""
    assert macros.steps_note({"steps_by_estimator": {"rt": 40000, "path": 40000}}) == (
        r" (\rt{}: 40000; the path gradient: 40000)"
    )
    with pytest.raises(UserError, match="'reinfroce'"):
        macros.steps_note({"steps_by_estimator": {"reinfroce": 3}})


def test_holonomy_clause_follows_the_architecture():
    assert macros.build_macros({"scale": "s"})["gfHolonomyClause"] == ""
    with_layers = macros.build_macros({"scale": "s", "holonomy": True})["gfHolonomyClause"]
    assert with_layers == macros.HOLONOMY_CLAUSE and "holonomy layers" in with_layers


def test_charge_clause_follows_the_architecture_and_compiles(tmp_path, pdflatex):
    assert macros.build_macros({"scale": "s"})["gfChargeClause"] == ""
    defined = macros.build_macros({"scale": "s", "charge_symmetric": True})
    assert defined["gfChargeClause"] == macros.CHARGE_CLAUSE
    assert "charge conjugation" in defined["gfChargeClause"]
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed")
    (tmp_path / "macros.tex").write_text(latex.macro_file(defined))
    doc = (
        "\\documentclass{article}\\input{macros}\\begin{document}"
        "A flow\\gfChargeClause.\\end{document}\n"
    )
    pdflatex(tmp_path, doc)
    assert is_pdf(tmp_path / "doc.pdf")


def test_a_long_scale_label_is_wrapped_in_figure_titles_not_cut():
    label = "CPU demo scale (2 cores): " + " ".join(f"word{i}" for i in range(40))
    chain = chain_with_rejections(200, [(50, 120)])
    fig = figures.history_figure(chain, threshold=100, title=label, analysis={"acceptance": 0.5})
    text = fig._suptitle.get_text()
    lines = text.split("\n")
    assert len(lines) >= 3 and all(len(line) <= 110 for line in lines)
    assert " ".join(lines[:-1]) == label  # every word kept, in order
    assert lines[-1].startswith("1 rejection runs longer than 100")
    assert figures.wrap_title("a\n\nb") == "a\n\nb"
