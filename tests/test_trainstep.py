"""TrainStep (keyed streams, accumulation, typed divergence), warm starts, time limits, ModelFile."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from gaugeflow.cli import build_parser
from gaugeflow.commands.train import config_from_args
from gaugeflow.errors import UserError
from gaugeflow.modelfile import FORMAT_VERSION, ModelFile
from gaugeflow.runtime import seed_everything
from gaugeflow.training import (
    TIMING_COLUMNS,
    DivergenceKind,
    TrainStep,
    make_config,
    train,
    warm_start,
)

TINY = {
    "L": 4,
    "beta": 1.0,
    "kappa": 0.0,
    "batch_size": 8,
    "lr": 5e-3,
    "flow": {"n_layers": 8, "hidden_channels": 4, "dilations": [1]},
    "device": "cpu",
    "dtype": "float64",
    "seed": 3,
}
CPU = torch.device("cpu")


def _step(**overrides) -> TrainStep:
    config = make_config({**TINY, **overrides})
    seed_everything(config["seed"])
    return TrainStep(config, CPU)


def _weights(flow) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ in {k}"


def _grads(flow) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in flow.parameters()]


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _untimed(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


# --- keyed streams and accumulation ----------------------------------------------------------


def test_part_streams_are_keyed_by_seed_step_and_part():
    a, b = _step(), _step()
    assert torch.equal(a.sample_part(5, 1), b.sample_part(5, 1))
    a.sample_part(1, 0)  # drawing other parts in between changes nothing
    assert torch.equal(a.sample_part(5, 1), b.sample_part(5, 1))
    z = a.sample_part(5, 1)
    assert not torch.equal(z, a.sample_part(5, 0))
    assert not torch.equal(z, a.sample_part(6, 1))
    assert not torch.equal(z, _step(seed=4).sample_part(5, 1))
    assert z.shape == (8, 2, 4, 4) and float(z.min()) >= 0 and float(z.max()) < 2 * torch.pi


@pytest.mark.parametrize("estimator", ["rt", "reinforce", "path"])
def test_step_equals_manual_accumulation_and_split_parts(estimator):
    """run(1) with n_batches = 2 equals two loss_part/backward calls and apply, bit for bit;
    and the parts computed by two separate steps (one part each) sum to the same gradient."""
    full = _step(estimator=estimator, n_batches=2)
    manual = _step(estimator=estimator, n_batches=2)
    _assert_same_weights(_weights(full.flow), _weights(manual.flow))

    result = full.run(1)
    assert result.divergence is None and result.step == 1

    manual.optimizer.zero_grad(set_to_none=True)
    parts = [manual.loss_part(1, p) for p in (0, 1)]
    for part in parts:
        manual.backward(part.loss)
    accumulated = _grads(manual.flow)
    assert manual.apply(1) is None
    _assert_same_weights(_weights(full.flow), _weights(manual.flow))
    assert result.loss == float(parts[0].loss.detach() + parts[1].loss.detach())
    logq = torch.cat([p.output.logq for p in parts])
    assert result.logq_mean == pytest.approx(float(logq.mean()), rel=1e-12)

    split = []
    for p in (0, 1):  # as two data-parallel ranks would: each its own part
        rank = _step(estimator=estimator, n_batches=2)
        rank.parts = [p]
        rank.optimizer.zero_grad(set_to_none=True)
        rank.backward(rank.loss_part(1, p).loss)
        split.append(_grads(rank.flow))
    for g, g0, g1 in zip(accumulated, *split, strict=True):
        torch.testing.assert_close(g0 + g1, g, rtol=1e-12, atol=1e-14)


def test_phase_timer_wraps_each_phase():
    from contextlib import contextmanager

    seen = []

    @contextmanager
    def timer(name):
        seen.append(name)
        yield

    _step(n_batches=2).run(1, phase_timer=timer)
    assert seen == ["loss", "backward", "loss", "backward", "update"]


# --- divergence ------------------------------------------------------------------------------


def test_non_finite_loss_is_typed_and_leaves_weights():
    step = _step()
    before = _weights(step.flow)
    original = step.estimator

    def poisoned(*args):
        out = original(*args)
        out.loss = out.loss * float("nan")
        return out

    step.estimator = poisoned
    result = step.run(1)
    assert result.divergence.kind is DivergenceKind.NON_FINITE_LOSS
    assert result.divergence.step == 1 and not result.divergence.weights_damaged
    _assert_same_weights(before, _weights(step.flow))


def test_non_finite_gradient_is_typed_and_leaves_weights():
    step = _step()
    before = _weights(step.flow)
    next(step.flow.parameters()).register_hook(lambda g: g * float("inf"))
    assert step.run(1).divergence.kind is DivergenceKind.NON_FINITE_GRADIENT
    _assert_same_weights(before, _weights(step.flow))


def test_infinite_learning_rate_gives_non_finite_weights():
    divergence = _step(lr=float("inf")).run(1).divergence
    assert divergence.kind is DivergenceKind.NON_FINITE_WEIGHTS and divergence.weights_damaged


def test_non_finite_weights_restore_the_last_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = torch.optim.Adam.step

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    summary = train({**TINY, "steps": 10, "checkpoint_every": 2}, tmp_path)
    assert summary["status"] == "diverged" and summary["divergence"] == "non_finite_weights"
    assert summary["step"] == 5 and summary["last_good_step"] == 4
    ckpt = torch.load(tmp_path / "checkpoints" / "ckpt_00000004.pt", weights_only=False)
    model = ModelFile.load(tmp_path / "model.pt")
    assert model.step == 4
    _assert_same_weights(ckpt["train_step"]["flow"], model.state_dict)


# --- warm start ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parent")
    train({**TINY, "steps": 3, "checkpoint_every": 3}, out)
    return out / "model.pt"


def test_warm_start_at_the_same_lattice_size_gives_the_parents_log_q(parent):
    step = _step(seed=99)  # other initial weights
    warm_start(step.flow, parent)
    reference = ModelFile.load(parent).build_flow("cpu")
    z = step.sample_part(1, 0)
    with torch.no_grad():
        phi_a, ld_a = step.flow(z)
        phi_b, ld_b = reference(z)
    torch.testing.assert_close(ld_a, ld_b, rtol=0, atol=0)
    torch.testing.assert_close(phi_a, phi_b, rtol=0, atol=0)


def test_warm_start_at_another_lattice_size_and_kappa(parent, tmp_path):
    step = _step(L=8, kappa=0.276)
    warm_start(step.flow, parent)
    _assert_same_weights(ModelFile.load(parent).state_dict, _weights(step.flow))

    cfg = {**TINY, "L": 8, "kappa": 0.276, "beta": 2.0, "steps": 2, "init_from": str(parent)}
    summary = train(cfg, tmp_path)
    record = {"path": str(parent), "sha256": hashlib.sha256(parent.read_bytes()).hexdigest()}
    assert summary["status"] == "completed" and summary["parent"] == record
    assert json.loads((tmp_path / "summary.json").read_text())["parent"] == record
    child = ModelFile.load(tmp_path / "model.pt")
    assert child.parent == record and child.L == 8 and child.step == 2


def test_warm_start_refuses_another_architecture(parent):
    step = _step(flow={"n_layers": 8, "hidden_channels": 6, "dilations": [1]})
    with pytest.raises(UserError, match="'hidden_channels'") as info:
        warm_start(step.flow, parent)
    assert "n_layers" not in str(info.value)


def test_init_from_is_ignored_on_resume(parent, tmp_path, capsys):
    cfg = {**TINY, "steps": 4, "checkpoint_every": 2, "init_from": str(parent)}
    train(cfg, tmp_path / "ref")
    train({**cfg, "steps": 2}, tmp_path / "run")
    # resumed: the (now missing) init_from file is not read again, the parent stays recorded
    capsys.readouterr()
    summary = train({**cfg, "init_from": str(tmp_path / "gone.pt")}, tmp_path / "run")
    assert summary["status"] == "completed" and summary["parent"]["path"] == str(parent)
    assert "gone.pt is ignored" in capsys.readouterr().err
    a = ModelFile.load(tmp_path / "ref" / "model.pt").state_dict
    b = ModelFile.load(tmp_path / "run" / "model.pt").state_dict
    _assert_same_weights(a, b)
    assert _untimed(_metrics(tmp_path / "ref" / "metrics.csv")) == _untimed(
        _metrics(tmp_path / "run" / "metrics.csv")
    )


def test_missing_init_from_file_is_named(tmp_path):
    with pytest.raises(UserError, match="nope.pt"):
        train({**TINY, "steps": 1, "init_from": str(tmp_path / "nope.pt")}, tmp_path / "o")


# --- time limit ------------------------------------------------------------------------------


def test_time_limited_runs_resumed_equal_an_uninterrupted_run(tmp_path):
    cfg = {**TINY, "n_batches": 2, "steps": 5, "checkpoint_every": 100, "lr_schedule": "cosine"}
    train(cfg, tmp_path / "ref")
    statuses = []
    for _ in range(10):
        summary = train({**cfg, "time_limit": 1e-9}, tmp_path / "run")
        statuses.append((summary["status"], summary["step"]))
        if summary["status"] == "completed":
            break
    # a limit that is always crossed: each process does one step and stops resumably
    assert statuses == [("time_limit", k) for k in range(1, 5)] + [("completed", 5)]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == "completed"
    a = ModelFile.load(tmp_path / "ref" / "model.pt").state_dict
    b = ModelFile.load(tmp_path / "run" / "model.pt").state_dict
    _assert_same_weights(a, b)
    ma, mb = _metrics(tmp_path / "ref" / "metrics.csv"), _metrics(tmp_path / "run" / "metrics.csv")
    assert len(ma) == len(mb) == 5 and _untimed(ma) == _untimed(mb)


def test_time_limit_status_and_model_are_written(tmp_path):
    summary = train({**TINY, "steps": 3, "time_limit": 1e-9}, tmp_path)
    assert summary["status"] == "time_limit" and summary["step"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "time_limit"
    assert ModelFile.load(tmp_path / "model.pt").step == 1
    assert [p.name for p in (tmp_path / "checkpoints").glob("ckpt_*.pt")] == ["ckpt_00000001.pt"]


@pytest.mark.parametrize("limit", [0, -5, float("nan"), "10", True])
def test_bad_time_limit_is_refused(limit):
    with pytest.raises(UserError, match="time_limit"):
        make_config({"time_limit": limit})


def test_cli_flags_set_init_from_and_time_limit(tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        ["train", "--out", str(tmp_path), "--init-from", "p/model.pt", "--time-limit", "90"]
    )
    config = config_from_args(args)
    assert config["init_from"] == "p/model.pt" and config["time_limit"] == 90.0
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", str(tmp_path), "--time-limit", "0"])


def test_cli_flags_set_the_lr_schedule(tmp_path):
    parser = build_parser()
    base = ["train", "--out", str(tmp_path), "--lr", "0.004"]
    config = config_from_args(
        parser.parse_args([*base, "--lr-schedule", "cosine", "--lr-min", "1e-4"])
    )
    assert (config["lr_schedule"], config["lr_min"]) == ("cosine", 1e-4)
    assert make_config(config_from_args(parser.parse_args(base)))["lr_schedule"] == "constant"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--lr-schedule", "linear"])


def test_changed_config_on_resume_names_the_key(tmp_path):
    train({**TINY, "steps": 2, "checkpoint_every": 1}, tmp_path)
    with pytest.raises(UserError, match=r"\['lr'\]"):
        train({**TINY, "steps": 3, "lr": 1e-2}, tmp_path)


# --- model files -----------------------------------------------------------------------------


def test_model_file_round_trip_and_legacy_files(parent, tmp_path):
    model = ModelFile.load(parent)
    assert model.format_version == FORMAT_VERSION and model.step == 3 and model.parent is None
    model.save(tmp_path / "copy.pt")
    again = ModelFile.load(tmp_path / "copy.pt")
    assert again.config == model.config and again.action == model.action
    _assert_same_weights(again.state_dict, model.state_dict)
    legacy = model.to_dict()
    for key in ("format_version", "step", "gaugeflow_version", "parent"):
        del legacy[key]  # what gaugeflow wrote before the ModelFile (or less)
    torch.save(legacy, tmp_path / "legacy.pt")
    old = ModelFile.load(tmp_path / "legacy.pt")
    assert old.format_version == 0 and old.step is None
    _assert_same_weights(old.state_dict, model.state_dict)


@pytest.mark.parametrize("missing", ["flow_config", "state_dict", "action", "config"])
def test_model_file_names_file_and_missing_key(parent, tmp_path, missing):
    blob = ModelFile.load(parent).to_dict()
    del blob[missing]
    torch.save(blob, tmp_path / "broken.pt")
    with pytest.raises(UserError, match=rf"broken\.pt lacks key '{missing}'"):
        ModelFile.load(tmp_path / "broken.pt")


def test_model_file_errors_on_missing_file_and_newer_format(parent, tmp_path):
    with pytest.raises(UserError, match="not found: .*absent.pt"):
        ModelFile.load(tmp_path / "absent.pt")
    blob = ModelFile.load(parent).to_dict()
    blob["format_version"] = FORMAT_VERSION + 1
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(UserError, match="future.pt has format_version"):
        ModelFile.load(tmp_path / "future.pt")


def test_cli_time_limit_exits_75_and_rerun_completes(tmp_path, capsys):
    from gaugeflow.cli import main

    argv = ["train", "--out", str(tmp_path), "--L", "4", "--kappa", "0", "--steps", "2",
            "--batch-size", "4", "--n-layers", "8", "--hidden", "4", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--time-limit", "1e-9"]) == 75
    assert "run the same command again" in capsys.readouterr().err
    assert main([*argv, "--time-limit", "1e-9"]) == 0  # step 2 is the last: completed
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_train_step_uses_given_components():
    from gaugeflow.training import build_components

    config = make_config(TINY)
    flow, prior, action = build_components(config, CPU)
    step = TrainStep(config, CPU, flow=flow, prior=prior, action=action)
    assert step.flow is flow and step.prior is prior and step.action is action
    assert step.optimizer.param_groups[0]["params"][0] is next(flow.parameters())
    with pytest.raises(ValueError, match="together"):
        TrainStep(config, CPU, flow=flow)


def test_checkpointer_prunes_restores_rng_and_refuses_old_checkpoints(tmp_path):
    from gaugeflow.training import Checkpointer, restore_rng

    ckpt = Checkpointer(tmp_path / "c", keep=2)
    assert ckpt.latest() is None and ckpt.load() is None and ckpt.latest_step() == 0
    step = _step()
    for n in (1, 2, 3):
        ckpt.save(n, {"wall_time": 0.0, "config": step.config, "train_step": step.state_dict()})
    assert [p.name for p in ckpt.paths()] == ["ckpt_00000002.pt", "ckpt_00000003.pt"]
    assert ckpt.latest_step() == 3
    state = ckpt.load()
    expected = torch.rand(3)  # the global stream continues from where it was saved
    restore_rng(state["rng"])
    assert torch.equal(torch.rand(3), expected)
    old = {k: v for k, v in state.items() if k != "streams"}
    torch.save(old, tmp_path / "c" / "ckpt_00000004.pt")
    with pytest.raises(UserError, match="older gaugeflow"):
        ckpt.load()
