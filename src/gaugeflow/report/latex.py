"""Small LaTeX writers: number formatting, escaping, booktabs tabulars, macro files."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MISSING", "format_number", "escape", "Tabular", "macro_file", "MIDRULE"]

MISSING = "–"  # an entry with no number (rendered as the TeX ligature --)


def format_number(x: float | None, digits: int = 3) -> str:
    """Readable fixed-point with about `digits` significant figures (no exponents)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return MISSING
    x = float(x)
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    decimals = min(max(0, digits - 1 - magnitude), 6)
    return f"{x:.{decimals}f}"


_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # characters our labels use that pdflatex's default input encoding may not know
    "×": r"$\times$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "±": r"$\pm$",
    "·": r"$\cdot$",
    "…": r"\dots{}",
    "–": "--",
    "—": "---",
    "β": r"$\beta$",
    "κ": r"$\kappa$",
    "σ": r"$\sigma$",
    "τ": r"$\tau$",
    "²": r"$^2$",
}
_SPECIAL_RE = re.compile("|".join(re.escape(k) for k in _SPECIAL))

MIDRULE = object()  # marker for a \midrule between body rows


def escape(text: object) -> str:
    """Escape plain text for LaTeX (also maps a few Unicode symbols to math)."""
    return _SPECIAL_RE.sub(lambda m: _SPECIAL[m.group(0)], str(text))


@dataclass
class Tabular:
    """A booktabs tabular: header rows, body rows (cells already LaTeX), notes below."""

    align: str
    header: list[list[str]] = field(default_factory=list)
    body: list[Sequence[str] | object] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_columns(self) -> int:
        return len(self.align.replace("@{}", "").replace("|", ""))

    def add_row(self, cells: Sequence[str]) -> None:
        if len(cells) != self.n_columns:
            raise ValueError(f"row has {len(cells)} cells, table has {self.n_columns} columns")
        self.body.append(list(cells))

    def add_midrule(self) -> None:
        if self.body and self.body[-1] is not MIDRULE:
            self.body.append(MIDRULE)

    def render(self) -> str:
        """The tabular wrapped in \\gfscaletable (identity unless the document redefines it,
        e.g. to shrink wide tables), then the notes as a small paragraph below it."""
        lines = [
            r"\providecommand{\gfscaletable}[1]{#1}%",
            r"\gfscaletable{%",
            f"\\begin{{tabular}}{{{self.align}}}",
            r"\toprule",
        ]
        for row in self.header:
            lines.append(" & ".join(row) + r" \\")
        lines.append(r"\midrule")
        body = list(self.body)
        while body and body[-1] is MIDRULE:
            body.pop()
        for row in body:
            if row is MIDRULE:
                lines.append(r"\midrule")
            else:  # en dash of a missing entry as TeX ligature: any input encoding
                lines.append(" & ".join(cell.replace("–", "--") for cell in row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}}"]
        if self.notes:
            lines.append(r"\par\smallskip")
            lines.append(r"{\footnotesize\raggedright " + "\n".join(self.notes) + r"\par}")
        return "\n".join(lines) + "\n"


_MACRO_NAME = re.compile(r"^[A-Za-z]+$")


def macro_file(macros: dict[str, str], header: str = "") -> str:
    """`\\newcommand` lines for a dict name -> LaTeX text; names must be letters only."""
    lines = [f"% {line}" for line in header.splitlines()] if header else []
    for name, value in macros.items():
        if not _MACRO_NAME.match(name):
            raise ValueError(f"LaTeX macro names may contain letters only; got {name!r}")
        lines.append(f"\\newcommand{{\\{name}}}{{{value}}}")
    return "\n".join(lines) + "\n"
