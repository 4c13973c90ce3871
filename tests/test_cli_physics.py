"""`gaugeflow observables` and `gaugeflow exact`: round trips and user errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import special

from gaugeflow.cli import main
from gaugeflow.physics.dirac import dirac_matrix

PER_CONFIG = (
    "gauge_action",
    "fermion_action",
    "action",
    "condensate",
    "sign",
    "topological_charge",
    "plaquette",
)


def _free_log_abs_det(L: int, kappa: float) -> float:
    p0 = 2 * np.pi * (np.arange(L) + 0.5) / L
    p1 = 2 * np.pi * np.arange(L) / L
    P0, P1 = np.meshgrid(p0, p1, indexing="ij")
    mass = 1 - 2 * kappa * (np.cos(P0) + np.cos(P1))
    return float(np.log(mass**2 + 4 * kappa**2 * (np.sin(P0) ** 2 + np.sin(P1) ** 2)).sum())


@pytest.fixture
def configs(tmp_path, rng) -> tuple[str, np.ndarray]:
    theta = rng.uniform(0, 2 * np.pi, size=(4, 2, 4, 4))
    theta[0] = 0.0  # the free field, known in closed form
    path = tmp_path / "cfgs.npz"
    np.savez(path, theta=theta)
    return str(path), theta


def test_observables_round_trip(tmp_path, configs, capsys):
    path, theta = configs
    out = tmp_path / "obs.json"
    beta, kappa = 1.7, 0.276
    assert (
        main(
            ["observables", "--input", path, "--beta", "1.7", "--kappa", "0.276", "--out", str(out)]
        )
        == 0
    )
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and str(out) in summary[0]
    data = json.loads(out.read_text())
    assert data["beta"] == beta and data["kappa"] == kappa and data["L"] == 4
    assert data["dtype"] == "float64" and data["assembly"] == "scatter"
    for key in PER_CONFIG:
        assert len(data[key]) == 4, key

    plaq = (
        theta[:, 0]
        + np.roll(theta[:, 1], -1, axis=1)
        - np.roll(theta[:, 0], -1, axis=2)
        - theta[:, 1]
    )
    np.testing.assert_allclose(data["plaquette"], np.cos(plaq).mean(axis=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(
        data["gauge_action"], -beta * np.cos(plaq).sum(axis=(1, 2)), atol=1e-10
    )
    charge = (np.mod(plaq + np.pi, 2 * np.pi) - np.pi).sum(axis=(1, 2)) / (2 * np.pi)
    np.testing.assert_allclose(data["topological_charge"], charge, atol=1e-10)
    assert data["fermion_action"][0] == pytest.approx(-2 * _free_log_abs_det(4, kappa), abs=1e-10)
    matrices = dirac_matrix(torch.from_numpy(theta), kappa).numpy()
    for b, D in enumerate(matrices):
        sign, logabsdet = np.linalg.slogdet(D)
        assert data["fermion_action"][b] == pytest.approx(-2 * logabsdet, abs=1e-10)
        assert data["sign"][b] == np.sign(sign.real)
        assert data["condensate"][b] == pytest.approx(
            np.trace(np.linalg.inv(D)).real / 16, abs=1e-10
        )
    np.testing.assert_allclose(
        data["action"], np.add(data["gauge_action"], data["fermion_action"]), atol=1e-12
    )


def test_observables_options_agree(tmp_path, configs):
    path, _ = configs
    runs = {
        "default": [],
        "loop-full-float32": ["--assembly", "loop", "--method", "full", "--dtype", "float32"],
        "batched": ["--batch-size", "3"],
    }
    results = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.json"
        argv = ["observables", "--input", path, "--beta", "2", "--kappa", "0.2", "--out", str(out)]
        assert main(argv + extra) == 0
        results[name] = json.loads(out.read_text())
    for key in PER_CONFIG:
        np.testing.assert_allclose(results["batched"][key], results["default"][key], atol=1e-12)
        np.testing.assert_allclose(
            results["loop-full-float32"][key], results["default"][key], atol=2e-4, err_msg=key
        )


def test_exact_round_trip(tmp_path, capsys):
    out = tmp_path / "exact.json"
    assert main(["exact", "--beta", "2.0", "--L", "16", "--out", str(out)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    data = json.loads(out.read_text())
    assert data["beta"] == 2.0 and data["L"] == 16
    # at V = 256 only the n = 0 character survives
    volume = 256
    assert data["plaquette"] == pytest.approx(special.i1(2.0) / special.i0(2.0), abs=1e-12)
    expected = 2 * volume * math.log(2 * math.pi) + volume * math.log(special.i0(2.0))
    assert data["log_z"] == pytest.approx(expected, rel=1e-12)
    assert data["free_energy"] == -data["log_z"]
    assert data["q2"] > 0


def _bad_npz(tmp_path, kind: str):
    path = tmp_path / f"{kind}.npz"
    if kind == "missing":
        return path
    if kind == "not-npz":
        path.write_text("this is not an npz file")
    elif kind == "no-theta":
        np.savez(path, phi=np.zeros((2, 2, 4, 4)))
    elif kind == "bad-shape":
        np.savez(path, theta=np.zeros((2, 3, 4, 4)))
    elif kind == "nan":
        np.savez(path, theta=np.full((2, 2, 4, 4), np.nan))
    elif kind == "odd-L":
        np.savez(path, theta=np.zeros((2, 2, 3, 3)))
    return path


@pytest.mark.parametrize("kind", ["missing", "not-npz", "no-theta", "bad-shape", "nan", "odd-L"])
def test_bad_input_file_gives_a_clear_error_and_no_output(tmp_path, capsys, kind):
    path = _bad_npz(tmp_path, kind)
    out = tmp_path / "out.json"
    argv = ["observables", "--input", str(path), "--beta", "2", "--kappa", "0.2", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "error" in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["observables", "--beta", "2", "--kappa", "-0.1"],
        ["observables", "--beta", "-2", "--kappa", "0.1"],
        ["observables", "--beta", "2", "--kappa", "0.1", "--dtype", "float16"],
        ["exact", "--beta", "0", "--L", "4"],
        ["exact", "--beta", "1", "--L", "1"],
    ],
)
def test_bad_parameters_give_a_clear_error_and_no_output(tmp_path, configs, capsys, argv):
    out = tmp_path / "out.json"
    if argv[0] == "observables":
        argv = argv + ["--input", configs[0]]
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and any(word in err for word in ("beta", "kappa", "dtype", "L must"))
    assert not out.exists()
