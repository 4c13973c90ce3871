"""Training: learning on pure U(1), exact resume after SIGKILL, divergence handling, config errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gaugeflow.errors import UserError
from gaugeflow.sampling import load_model
from gaugeflow.training import make_config, train

SMALL = {
    "L": 4,
    "beta": 1.0,
    "kappa": 0.0,
    "batch_size": 64,
    "lr": 5e-3,
    "lr_schedule": "cosine",
    "lr_min": 1e-4,
    "flow": {"n_layers": 8, "hidden_channels": 8},
    "device": "cpu",
    "checkpoint_every": 50,
}


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["rt", "reinforce", "path"])
def test_each_estimator_learns_pure_u1(tmp_path, estimator):
    """Pure U(1) at L = 4, beta = 1: ESS above 0.5 (mean of the last 20 steps) in a CPU minute.

    The uniform prior starts at ESS ~ (I0(1)^2 / I0(2))^16 ~ 0.004.
    """
    summary = train({**SMALL, "estimator": estimator, "steps": 200, "seed": 11}, tmp_path)
    assert summary["status"] == "completed"
    rows = _metrics(tmp_path / "metrics.csv")
    assert len(rows) == 200
    assert float(rows[0]["ess"]) < 0.25  # the untrained flow (step 1) is far from the target
    first = float(rows[0]["ess"])
    last = sum(float(r["ess"]) for r in rows[-20:]) / 20
    assert last > 0.5, f"{estimator}: ESS {first:.3f} -> {last:.3f}"


def test_unknown_config_key_is_named():
    with pytest.raises(UserError, match="'batchsize'"):
        make_config({"batchsize": 3})


def test_lattice_size_must_be_multiple_of_four():
    with pytest.raises(UserError, match="multiple of 4"):
        make_config({"L": 6})


def _train_cmd(out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "gaugeflow", "train", "--out", str(out), "--L", "4",
        "--kappa", "0.276", "--estimator", "reinforce", "--steps", str(steps),
        "--batch-size", "16", "--n-batches", "2", "--n-layers", "8", "--hidden", "8",
        "--seed", "5", "--checkpoint-every", "3", "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    steps = 40
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref, steps), check=True, env=env, capture_output=True)

    run = tmp_path / "run"
    kills = 0
    for wait_for in (4, 11):  # kill twice, each time once a later checkpoint exists
        proc = subprocess.Popen(_train_cmd(run, steps), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            ckpts = sorted((run / "checkpoints").glob("ckpt_*.pt"))
            if ckpts and int(ckpts[-1].stem.split("_")[1]) >= wait_for:
                time.sleep(0.05 * (1 + kills))  # land somewhere mid-step
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.wait()
    assert kills == 2, "the run finished before it could be killed; make it longer"
    done = subprocess.run(_train_cmd(run, steps), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    a = torch.load(ref / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ in {k}"
    ma, mb = _metrics(ref / "metrics.csv"), _metrics(run / "metrics.csv")
    assert len(ma) == len(mb) == steps
    timing = {"step_seconds", "wall_time"}
    for ra, rb in zip(ma, mb, strict=True):
        assert {k: v for k, v in ra.items() if k not in timing} == {
            k: v for k, v in rb.items() if k not in timing
        }
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_non_finite_loss_stops_cleanly_with_last_good_checkpoint(tmp_path, monkeypatch):
    from gaugeflow.physics.action import SchwingerAction

    calls = {"n": 0}
    original = SchwingerAction.log_prob

    def poisoned(self, theta):
        calls["n"] += 1
        out = original(self, theta)
        return out * float("nan") if calls["n"] > 7 else out  # step 8 fails (one call per step)

    monkeypatch.setattr(SchwingerAction, "log_prob", poisoned)
    cfg = {**SMALL, "estimator": "reinforce", "steps": 20, "checkpoint_every": 5, "seed": 1}
    summary = train(cfg, tmp_path)
    assert summary["status"] == "diverged"
    assert summary["step"] == 8 and summary["last_good_step"] == 7
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "diverged" and saved["step"] == 8
    ckpts = sorted((tmp_path / "checkpoints").glob("ckpt_*.pt"))
    assert [p.name for p in ckpts] == ["ckpt_00000005.pt"]
    flow, _, _, _ = load_model(tmp_path / "model.pt")
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 7
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    assert len(_metrics(tmp_path / "metrics.csv")) == 7


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state_dict"]


def test_a_checkpoint_past_the_steps_asked_for_is_refused_and_nothing_is_overwritten(tmp_path):
    cfg = {**SMALL, "estimator": "reinforce", "steps": 4, "checkpoint_every": 2, "seed": 3}
    train(cfg, tmp_path)
    before = (tmp_path / "summary.json").read_text(), (tmp_path / "model.pt").read_bytes()
    with pytest.raises(UserError, match=r"at step 4, past the 2 steps asked for") as err:
        train({**cfg, "steps": 2}, tmp_path)
    assert str(tmp_path / "checkpoints") in str(err.value)
    # the longer run is not handed back as the shorter one
    assert ((tmp_path / "summary.json").read_text(), (tmp_path / "model.pt").read_bytes()) == before


def test_steps_change_on_resume_extends_a_constant_run_and_refuses_a_cosine_one(tmp_path):
    base = {**SMALL, "estimator": "rt", "checkpoint_every": 2, "seed": 4}
    constant = {**base, "lr_schedule": "constant"}
    train({**constant, "steps": 4}, tmp_path / "extended")
    train({**constant, "steps": 6}, tmp_path / "extended")
    train({**constant, "steps": 6}, tmp_path / "fresh")
    a, b = _weights(tmp_path / "extended/model.pt"), _weights(tmp_path / "fresh/model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(_metrics(tmp_path / "extended/metrics.csv")) == 6

    # a cosine schedule's learning rates depend on the total: the new run would follow neither
    train({**base, "steps": 4}, tmp_path / "cosine")
    with pytest.raises(UserError, match=r"steps = 4 with lr_schedule 'cosine'.*steps = 6"):
        train({**base, "steps": 6}, tmp_path / "cosine")
    assert json.loads((tmp_path / "cosine/summary.json").read_text())["step"] == 4


def test_amp_on_a_cpu_without_native_bfloat16_says_it_is_slow(monkeypatch, capsys):
    from gaugeflow.training import config as cfg

    amp = make_config({"amp": True, "device": "cpu"})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(cfg, "cpu_has_native_bfloat16", lambda: False)
    assert "without hardware support" in cfg.amp_warning(amp, cpu)
    assert cfg.amp_warning(make_config({"device": "cpu"}), cpu) is None  # no amp
    assert cfg.amp_warning(amp, cuda) is None  # float16 on CUDA
    monkeypatch.setattr(cfg, "cpu_has_native_bfloat16", lambda: True)
    assert cfg.amp_warning(amp, cpu) is None
    monkeypatch.setattr(cfg, "cpu_has_native_bfloat16", lambda: None)  # torch cannot say
    assert cfg.amp_warning(amp, cpu) is None
    assert cfg.cpu_has_native_bfloat16() in (True, False, None)  # the real probe runs
