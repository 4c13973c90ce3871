"""Figures, tables, LaTeX macros and provenance for the paper rebuilt by the workflow.

The library knows file formats, not file names: the workflow's rules pass every path.
"""

from .figures import history_figure, training_figure
from .macros import build_macros
from .tables import BUILDERS, write_table

__all__ = ["BUILDERS", "build_macros", "history_figure", "training_figure", "write_table"]
