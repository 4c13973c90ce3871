"""Tables 1-5 of the paper from measurement records.

Each builder takes `Measurement`s (see records.py) in the order the workflow lists them and
returns a `Table`: a pandas frame (one row per row of the table: our numbers and, where the
setting matches, the paper's) and the layout that shows that frame as a booktabs tabular.
`write_table` is the one renderer: LaTeX and CSV both come from the frame. Entries that ran
out of memory or crashed say so.
"""

from __future__ import annotations

from .common import Table, render_csv, render_latex, write_table
from .graph import fit_node_counts, table3
from .memory import table5
from .ops import table4
from .timing import table1, table2

__all__ = [
    "Table",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "fit_node_counts",
    "render_csv",
    "render_latex",
    "write_table",
    "BUILDERS",
]

BUILDERS = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "table5": table5,
}
