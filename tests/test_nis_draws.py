"""benchmarks/bench_nis_draws.py: pulls of disjoint draws against given reference values."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_nis_draws  # noqa: E402


def _save_draws(folder: Path, n_sets: int, size: int, shift: float = 0.0) -> None:
    """Exact toy draws: q = P (log weights 0), observables N(shift, 1): every estimate is a
    plain mean with error 1/sqrt(N) and the chain accepts every step."""
    rng = np.random.default_rng(0)
    for i in range(n_sets):
        np.savez(
            folder / f"draw_{i}.npz",
            logq=np.zeros(size),
            logp=np.zeros(size),
            plaquette=rng.normal(shift, 1.0, size),
            condensate=rng.normal(0.0, 1.0, size),
            sign=np.ones(size),
            topological_charge=np.zeros(size),
            seed=i,
            model="toy.pt",
            symmetry="none",
        )


def test_pulls_of_exact_draws(tmp_path):
    _save_draws(tmp_path, 8, 512)
    out = tmp_path / "pulls.json"
    argv = ["pulls", "--dir", str(tmp_path), "--sizes", "512", "2048", "--out", str(out)]
    argv += ["--reference", "plaquette=0:0", "--reference", "condensate=0.5:0"]
    assert bench_nis_draws.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["pool"] == 4096 and result["pool_ess"] == 1.0
    small = result["sizes"]["512"]
    assert small["draws"] == 8
    data = np.concatenate([np.load(tmp_path / f"draw_{i}.npz")["plaquette"] for i in range(8)])
    for i, row in enumerate(small["rows"]):
        part = data[i * 512 : (i + 1) * 512]
        nis = row["plaquette"]["nis"]
        # equal weights: the plain mean, its error std / sqrt(N), pull mean / error
        assert abs(nis["mean"] - part.mean()) < 1e-12
        assert abs(nis["error"] - part.std() / np.sqrt(512)) < 1e-12
        assert abs(nis["pull"] - part.mean() / nis["error"]) < 1e-9
        # every proposal accepted: the chain is the draw itself
        assert abs(row["plaquette"]["chain"]["mean"] - part.mean()) < 1e-12
    # a true value of 0: pulls of order 1; a wrong reference (0.5): pulls of order 0.5 * sqrt(N)
    assert max(abs(p) for p in small["plaquette_nis"]["pulls"]) < 4
    assert min(abs(p) for p in small["condensate_nis"]["pulls"]) > 5
    assert small["condensate_nis"]["beyond_3"] == 8
    assert result["sizes"]["2048"]["draws"] == 2


def test_pulls_refuses_bad_input(tmp_path, capsys):
    assert (
        bench_nis_draws.main(
            ["pulls", "--dir", str(tmp_path), "--sizes", "8", "--reference", "plaquette=0:0"]
        )
        == 2
    )
    assert "no draw_*.npz" in capsys.readouterr().err
    _save_draws(tmp_path, 2, 100)
    assert (
        bench_nis_draws.main(
            ["pulls", "--dir", str(tmp_path), "--sizes", "150", "--reference", "plaquette=0:0"]
        )
        == 2
    )
    assert "--sizes 150" in capsys.readouterr().err
    assert (
        bench_nis_draws.main(
            ["pulls", "--dir", str(tmp_path), "--sizes", "100", "--reference", "plaket=0:0"]
        )
        == 2
    )
    assert "plaket" in capsys.readouterr().err
