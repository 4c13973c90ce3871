"""How unreliable estimates are shown (issue 17): table marks, paper macros, figure titles."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gaugeflow.analysis import analyze_chain, nis_estimates
from gaugeflow.report import figures, latex, macros, reliability


def _ar1(rho: float, n: int, seed: int) -> np.ndarray:
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n) * np.sqrt(1 - rho**2)
    eps[0] = rng.standard_normal()
    return lfilter([1.0], [1.0, -rho], eps)


def _chain(tau: float, n: int, seed: int) -> dict[str, np.ndarray]:
    """A chain whose condensate has integrated autocorrelation time tau, the rest white."""
    rng = np.random.default_rng(seed)
    return {
        "accepted": np.ones(n, dtype=bool),
        "plaquette": rng.random(n),
        "condensate": _ar1((2 * tau - 1) / (2 * tau + 1), n, seed),
        "sign": np.sign(rng.standard_normal(n)),
        "topological_charge": rng.integers(-2, 3, n).astype(float),
    }


@pytest.fixture(scope="module")
def bad_analysis() -> dict:
    return analyze_chain(_chain(500.0, 8192, 1))  # N / tau ~ 16: flagged


@pytest.fixture(scope="module")
def good_analysis() -> dict:
    return analyze_chain(_chain(2.0, 8192, 2))


@pytest.fixture(scope="module")
def bad_nis() -> dict:
    lw = 3.0 * np.random.default_rng(3).standard_normal(8192)  # log-normal weights: k-hat > 0.7
    return nis_estimates(np.zeros(8192), lw, {})


def test_entries_without_a_verdict_count_as_reliable():
    assert not reliability.is_unreliable({"mean": 1.0})
    assert not reliability.is_unreliable(None)
    assert not reliability.is_unreliable({"reliable": True})
    assert reliability.is_unreliable({"reliable": False, "reason": "x"})
    assert reliability.reason({"reliable": False}) == "no reason recorded"
    assert reliability.reason({"reliable": True, "reason": "ignored"}) == ""


def test_table_cells_get_a_dagger_and_the_note_explains_it():
    assert reliability.mark("1.23", {"reliable": True}) == "1.23"
    marked = reliability.mark("1.23", {"reliable": False, "reason": "k̂ = 1.3 > 0.70"})
    assert marked == "1.23" + reliability.DAGGER
    note = reliability.footnote()
    assert note.startswith(reliability.DAGGER) and "unreliable" in note


def test_macros_say_unreliable_instead_of_a_number(bad_analysis, bad_nis, good_analysis):
    assert bad_analysis["condensate"]["reliable"] is False  # the premise
    m = macros.build_macros(
        {"scale": "s"},
        analyses={"main": bad_analysis, "large": good_analysis},
        nis={"main": bad_nis},
    )
    assert m["gfCondMain"] == reliability.UNRELIABLE
    assert m["gfFreeEnergyMain"] == reliability.UNRELIABLE
    # tau_int is the evidence: its value stays, qualified
    assert m["gfTauCondMain"].endswith(r"\textrm{ (unreliable)}")
    assert m["gfTauCondMain"].startswith(r"\ensuremath{")
    # the white-noise plaquette of the same chain is fine and keeps its number
    assert m["gfPlaqMain"].startswith(r"\ensuremath{")
    assert (
        "unreliable" in m["gfChainVerdictMain"] and r"$\tau_{\rm int}$" in m["gfChainVerdictMain"]
    )
    assert r"$\hat k$ = " in m["gfNisVerdictMain"]
    # the good chain: numbers, and no verdict sentence
    assert m["gfCondLarge"].startswith(r"\ensuremath{") and m["gfChainVerdictLarge"] == ""
    assert m["gfNisVerdictLarge"] == ""


def test_history_figure_title_says_unreliable(bad_analysis, good_analysis):
    chain = _chain(500.0, 512, 4)
    bad = figures.history_figure(chain, 100, "t", bad_analysis)
    assert "UNRELIABLE: condensate: " in bad.get_suptitle()
    good = figures.history_figure(chain, 100, "t", good_analysis)
    assert "UNRELIABLE" not in good.get_suptitle()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_unreliable_macros_compile_with_pdflatex(tmp_path, bad_analysis, bad_nis, pdflatex):
    defined = macros.build_macros(
        {"scale": "s"}, analyses={"main": bad_analysis}, nis={"main": bad_nis}
    )
    (tmp_path / "macros.tex").write_text(latex.macro_file(defined))
    text = (
        r"$\tau_{\rm int} = \gfTauCondMain$; condensate \gfCondMain{} and plaquette "
        r"\gfPlaqMain. \gfChainVerdictMain Next, $F = \gfFreeEnergyMain$. \gfNisVerdictMain"
        "\n\nA cell 1.2" + reliability.DAGGER + ". " + reliability.footnote()
    )
    doc = (
        "\\documentclass{article}\\usepackage[utf8]{inputenc}\\usepackage{amsmath}"
        "\\input{macros}\\begin{document}" + text + "\n\\end{document}\n"
    )
    pdflatex(tmp_path, doc)
