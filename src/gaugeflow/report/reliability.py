"""How tables, macros, figures and captions show an estimate that cannot be trusted (issue 17).

The verdicts themselves come from `gaugeflow.analysis` (`nis_verdict`, `chain_verdict`): an
entry of analysis.json or nis.json is *unreliable* when it carries ``reliable: false``; its
``reason`` says why in one line. An entry without the key (older results) counts as reliable,
so nothing here invents a verdict. This module only decides how to say it:

- tables: `mark` appends a dagger to the cell, `footnote` explains it (once per table);
- paper macros: `macro` replaces a value by "unreliable", `qualified` keeps the value and
  adds "(unreliable)" (for the autocorrelation time, which is the evidence itself), and
  `chain_sentence` / `nis_sentence` give a sentence for the paper's text ("" when reliable;
  else ending in a space, so that the paper writes ``\\gfChainVerdictMain Next sentence``);
- figures and captions: `figure_note` gives the line for a figure's title.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .latex import escape

__all__ = [
    "DAGGER",
    "UNRELIABLE",
    "is_unreliable",
    "reason",
    "mark",
    "footnote",
    "macro",
    "qualified",
    "chain_sentence",
    "nis_sentence",
    "figure_note",
    "chain_macros",
]

DAGGER = r"\ensuremath{^\dagger}"
#: What a macro says instead of a number (valid in text and in math, like macros.NA).
UNRELIABLE = r"\textrm{unreliable}"


# after `escape`: the symbols the analysis' reasons use, as LaTeX math
_REASON_TEX = (
    ("δ$\\tau$\\_int", r"$\delta\tau_{\rm int}$"),
    ("$\\tau$\\_int", r"$\tau_{\rm int}$"),
    ("k\u0302", r"$\hat k$"),
    ("δ", r"$\delta$"),
    ("<", "$<$"),  # pdflatex's default text font has no < or >
    (">", "$>$"),
)


def _tex(text: str) -> str:
    out = escape(text)
    for plain, tex in _REASON_TEX:
        out = out.replace(plain, tex)
    return out


def is_unreliable(entry: Any) -> bool:
    """True only for a mapping that says ``reliable: false``."""
    return isinstance(entry, Mapping) and entry.get("reliable") is False


def reason(entry: Any) -> str:
    """The entry's one-line reason ('' for a reliable entry)."""
    if not is_unreliable(entry):
        return ""
    return str(entry.get("reason") or "no reason recorded")


def mark(value_text: str, entry: Any) -> str:
    """A table cell: the value, with a dagger when the entry is unreliable."""
    return f"{value_text}{DAGGER}" if is_unreliable(entry) else value_text


def footnote() -> str:
    """The table note explaining the dagger."""
    return (
        f"{DAGGER} unreliable: importance weights with Pareto "
        r"\ensuremath{\hat k > \min(1 - 1/\log_{10} N, 0.7)}, or a Markov chain shorter "
        r"than \ensuremath{100\,(\tau_{\rm int} + \delta\tau_{\rm int})} or with fewer than "
        "100 distinct configurations; the error bar cannot be trusted."
    )


def macro(value_text: str, entry: Any) -> str:
    """A paper macro: the value, or "unreliable" instead of it."""
    return UNRELIABLE if is_unreliable(entry) else value_text


def qualified(value_text: str, entry: Any) -> str:
    """A paper macro that keeps its value and adds "(unreliable)" when it is."""
    return f"{value_text}\\textrm{{ (unreliable)}}" if is_unreliable(entry) else value_text


def chain_sentence(analysis: Mapping | None) -> str:
    """A sentence for the paper when a chain's estimates are unreliable, else ''."""
    if not is_unreliable(analysis):
        return ""
    return (
        "These chain estimates are unreliable and quoted without error bars: "
        f"{_tex(reason(analysis))}. "
    )


def nis_sentence(nis: Mapping | None) -> str:
    """A sentence for the paper when an importance-sampling estimate is unreliable, else ''."""
    if not is_unreliable(nis):
        return ""
    return f"The importance-sampling estimate is unreliable: {_tex(reason(nis))}. "


def figure_note(analysis: Mapping | None) -> str:
    """A second title line 'UNRELIABLE: <reason>' (matplotlib text), '' when reliable."""
    if not is_unreliable(analysis):
        return ""
    return f"\nUNRELIABLE: {reason(analysis)}".replace("$", r"\$")


#: chain macros (without their group suffix) -> the analysis.json entry whose verdict they carry
_CHAIN_VALUE_MACROS = {"gfCond": "condensate", "gfSigma": "sign", "gfPlaq": "plaquette"}


def chain_macros(
    group: str, values: Mapping[str, str], analysis: Mapping | None, nis: Mapping | None
) -> dict[str, str]:
    """The paper macros of one chain group (suffix ``group``, e.g. 'Main') with the verdicts.

    ``values`` are the macros as computed from the numbers; the result replaces condensate,
    sign, plaquette and free energy by "unreliable" where their entry says so, qualifies the
    condensate's tau_int, and adds gfChainVerdict<group> and gfNisVerdict<group> (sentences,
    '' when reliable).
    """
    a, n = analysis or {}, nis or {}
    out = {}
    for stem, key in _CHAIN_VALUE_MACROS.items():
        if f"{stem}{group}" in values:
            out[f"{stem}{group}"] = macro(values[f"{stem}{group}"], a.get(key))
    if f"gfTauCond{group}" in values:
        out[f"gfTauCond{group}"] = qualified(values[f"gfTauCond{group}"], a.get("condensate"))
    if f"gfFreeEnergy{group}" in values:
        out[f"gfFreeEnergy{group}"] = macro(values[f"gfFreeEnergy{group}"], n)
    out[f"gfChainVerdict{group}"] = chain_sentence(a)
    out[f"gfNisVerdict{group}"] = nis_sentence(n)
    return out
