"""Numbers published in arXiv:2308.13294 (Białas, Korcyl, Stebel), printed beside ours.

They apply only where our setting matches the paper's: the paper's architecture
(48 coupling layers, 64 hidden channels) and the same lattice size, batch size and split.
None marks an entry the paper reports as not fitting in memory.
"""

from __future__ import annotations

__all__ = [
    "PAPER_ARCHITECTURE",
    "PAPER_ESTIMATORS",
    "PAPER_HARDWARE",
    "TABLE1",
    "TABLE2",
    "TABLE3",
    "TABLE3_FIT",
    "TABLE4",
    "TABLE4_SETTING",
    "TABLE5",
    "FIGURES",
    "matches_paper_architecture",
]

PAPER_ARCHITECTURE = {"n_layers": 48, "hidden": 64}
#: the estimators the paper compares (its tables have numbers for these only)
PAPER_ESTIMATORS = ("rt", "reinforce")
PAPER_HARDWARE = {
    "table1": "A100-40GB",
    "table2": "A100-40GB",
    "table4": "RTX 3090",
    "table5": "A100-40GB",
}

# Table 1: seconds for 100 gradient steps; key (L, batch_size, n_batches).
# Values: r.t., RE, RE with amp (None: did not fit in memory).
TABLE1: dict[tuple[int, int, int], dict[str, float | None]] = {
    (8, 1536, 1): {"rt": 113.0, "reinforce": 137.0, "reinforce_amp": 120.0},
    (12, 1536, 1): {"rt": 242.0, "reinforce": 189.0, "reinforce_amp": 159.0},
    (16, 768, 2): {"rt": 784.0, "reinforce": 331.0, "reinforce_amp": 285.0},
    (16, 1536, 1): {"rt": None, "reinforce": 268.0, "reinforce_amp": 215.0},
    (20, 512, 3): {"rt": 2411.0, "reinforce": 527.0, "reinforce_amp": 460.0},
    (20, 768, 2): {"rt": None, "reinforce": 450.0, "reinforce_amp": 372.0},
    (24, 384, 4): {"rt": 6496.0, "reinforce": 786.0, "reinforce_amp": 678.0},
    (24, 512, 3): {"rt": None, "reinforce": 690.0, "reinforce_amp": 598.0},
}
TABLE1_STEPS = 100

# Table 2: seconds of one loss call and one backward; key (L, batch_size).
# Values per estimator: (total, loss, backward), None where it did not fit.
TABLE2: dict[tuple[int, int], dict[str, tuple[float, float, float] | None]] = {
    (8, 1536): {"rt": (0.97, 0.34, 0.63), "reinforce": (1.20, 0.61, 0.59)},
    (12, 1536): {"rt": (2.25, 0.48, 1.76), "reinforce": (1.70, 0.81, 0.89)},
    (16, 768): {"rt": (3.85, 0.53, 3.32), "reinforce": (1.57, 0.82, 0.75)},
    (16, 1536): {"rt": None, "reinforce": (2.48, 1.14, 1.35)},
    (20, 512): {"rt": (7.98, 0.67, 7.03), "reinforce": (1.69, 0.93, 0.75)},
    (20, 768): {"rt": None, "reinforce": (2.14, 1.10, 1.05)},
    (24, 384): {"rt": (16.27, 0.84, 15.43), "reinforce": (1.85, 1.08, 0.77)},
    (24, 512): {"rt": None, "reinforce": (2.23, 1.24, 0.99)},
}

# Table 3: nodes of the autograd graph (loop assembly) by L.
TABLE3: dict[str, dict[int, int]] = {
    "rt": {4: 12612, 8: 14340, 12: 17220, 16: 21252, 20: 26436, 24: 32772, 28: 40260, 32: 48900},
    "reinforce": {L: 12989 for L in (4, 8, 12, 16, 20, 24, 28, 32)},
}
TABLE3_FIT = {"rt": (36.0, 12036.0)}  # nodes = a L^2 + b

# Table 4: top ten backward ops at L = 16, batch 512: name -> (milliseconds, count).
TABLE4_SETTING = {"L": 16, "batch_size": 512}
TABLE4: dict[str, dict[str, tuple[float, int]]] = {
    "rt": {
        "CopySlices": (2743.56, 2027),
        "IndexBackward0": (189.55, 960),
        "ConvolutionBackward0": (146.63, 144),
        "SliceBackward0": (110.57, 3406),
        "LinalgSlogdetBackward0": (82.90, 1),
        "MulBackward0": (48.68, 3677),
        "SelectBackward0": (25.67, 3925),
        "LeakyReluBackward0": (11.72, 96),
        "SubBackward0": (10.47, 1002),
        "DivBackward0": (7.97, 192),
    },
    "reinforce": {
        "IndexBackward0": (270.27, 1342),
        "ConvolutionBackward0": (47.78, 144),
        "CopySlices": (129.15, 1003),
        "SliceBackward0": (105.70, 2378),
        "MulBackward0": (42.19, 1813),
        "SubBackward0": (18.39, 1475),
        "LeakyReluBackward0": (11.70, 96),
        "SelectBackward0": (8.55, 848),
        "DivBackward0": (6.60, 144),
        "WhereBackward0": (5.60, 283),
    },
}

# Table 5: memory of one loss call; key (L, batch): estimator -> (M1 GB, M2 GB, n.t.).
TABLE5: dict[tuple[int, int], dict[str, tuple[float, float, int]]] = {
    (16, 128): {"rt": (3.09, 3.48, 5296), "reinforce": (2.6, 2.76, 3401)},
    (16, 256): {"rt": (6.16, 6.87, 5292), "reinforce": (5.19, 5.45, 3401)},
    (24, 128): {"rt": (7.88, 9.41, 7847), "reinforce": (5.37, 5.65, 3401)},
    (24, 256): {"rt": (15.72, 18.72, 7827), "reinforce": (10.74, 11.25, 3401)},
}

# Figures 3 and 5: published chain properties (acceptance as a fraction).
FIGURES = {
    "fig3": {"L": 16, "acceptance": 0.22, "tau_condensate": 9.0},
    "fig5": {"L": 24, "acceptance": 0.08, "tau_condensate": 68.0},
}


def matches_paper_architecture(n_layers: int | None, hidden: int | None) -> bool:
    """True when a measurement used the paper's flow (48 layers, 64 channels)."""
    return n_layers == PAPER_ARCHITECTURE["n_layers"] and hidden == PAPER_ARCHITECTURE["hidden"]
