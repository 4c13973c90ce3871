"""The named choices of gaugeflow, in one place.

Every list of estimators, Dirac assemblies, action methods, schedules and dtypes that the
library, the CLI, the report and the workflow schema offer comes from here; a test checks
``workflow/schemas/config.schema.yaml``'s enums against these tuples.
"""

from __future__ import annotations

__all__ = [
    "ESTIMATORS",
    "ESTIMATOR_LABELS",
    "ASSEMBLIES",
    "ACTION_METHODS",
    "LR_SCHEDULES",
    "AMP_DTYPES",
    "DTYPES",
    "DEVICES",
]

#: gradient estimators: reparameterisation trick, REINFORCE (the paper's), path gradient
ESTIMATORS: tuple[str, ...] = ("rt", "reinforce", "path")
#: how tables, figures and the paper name them
ESTIMATOR_LABELS: dict[str, str] = {"rt": "r.t.", "reinforce": "RE", "path": "PG"}
#: how the Wilson-Dirac matrix is built: vectorised scatter, or the paper's per-site loop
ASSEMBLIES: tuple[str, ...] = ("scatter", "loop")
#: log det D^dagger D from the even-odd Schur complement or from the full D
ACTION_METHODS: tuple[str, ...] = ("eo", "full")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
AMP_DTYPES: tuple[str, ...] = ("auto", "float16", "bfloat16")
DTYPES: tuple[str, ...] = ("float32", "float64")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
