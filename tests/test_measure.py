"""Measurements (issue 6): graph size, per-op backward time, saved-tensor memory, timing, OOM."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from gaugeflow import measure as M
from gaugeflow.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from floor import measure_floor  # noqa: E402  (benchmarks/floor.py: benchmark-only replay)

SMALL = {
    "batch_size": 2,
    "flow": {"n_layers": 8, "hidden_channels": 8},
    "device": "cpu",
    "seed": 3,
}


def _cfg(L: int, estimator: str, assembly: str, **extra) -> dict:
    return {**SMALL, "L": L, "estimator": estimator, "assembly": assembly, **extra}


def _nodes(L: int, estimator: str, assembly: str) -> int:
    return M.measure_dag(M.build_setup(_cfg(L, estimator, assembly)))["nodes"]


# ------------------------------------------------------------------------------------------
# graph walking on small hand-made graphs


def test_graph_nodes_counts_shared_nodes_once_and_includes_leaves():
    w = torch.randn(5, requires_grad=True)
    y = w * 2
    loss = (y.sin() + y.cos()).sum()
    names = sorted(M.node_name(n) for n in M.graph_nodes(loss))
    assert names == sorted(
        [
            "SumBackward0",
            "AddBackward0",
            "SinBackward0",
            "CosBackward0",
            "MulBackward0",
            "AccumulateGrad",
        ]
    )
    assert M.count_graph_nodes(loss) == 6
    with pytest.raises(ValueError, match="no grad_fn"):
        M.count_graph_nodes(torch.ones(2))


def test_graph_walk_survives_graphs_deeper_than_the_recursion_limit():
    import sys

    depth = sys.getrecursionlimit() * 3
    w = torch.zeros(1, requires_grad=True)
    x = w
    for _ in range(depth):
        x = x + 1.0
    assert M.count_graph_nodes(x.sum()) == depth + 2  # adds + sum + AccumulateGrad


class _Slow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        time.sleep(0.05)
        return grad


def test_backward_op_timer_attributes_time_to_the_slow_node():
    w = torch.randn(4, requires_grad=True)
    loss = (_Slow.apply(w * 3) * 2).sum()
    with M.BackwardOpTimer(loss) as timer:
        loss.backward()
    assert timer.counts["_SlowBackward"] == 1
    assert timer.counts["MulBackward0"] == 2
    assert timer.seconds["_SlowBackward"] >= 0.05
    others = sum(s for n, s in timer.seconds.items() if n != "_SlowBackward")
    assert others < timer.seconds["_SlowBackward"]
    assert w.grad is not None and torch.allclose(w.grad, torch.full((4,), 6.0))


class _SaveViews(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x, x[:10], x)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_saved_tensor_recorder_counts_a_storage_once_and_skips_dropped_graphs():
    x = torch.randn(1000, requires_grad=True)  # float32: 4000 bytes
    rec = M.SavedTensorRecorder()
    with rec:
        kept = _SaveViews.apply(x)
        dropped = torch.randn(50_000, requires_grad=True).exp()  # saves its 200 kB result
        del dropped
    summary = rec.summary()
    assert summary["saved_storages"] == 1
    assert summary["saved_bytes"] == 4000
    assert summary["saved_tensors"] == 2  # x and the view x[:10]
    assert summary["saved_view_bytes"] == 4000 + 40
    assert rec.summary(parameters=[x])["saved_parameter_bytes"] == 4000
    kept.sum().backward()


def test_fit_quadratic_recovers_exact_coefficients_and_flags_misfits():
    fit = M.fit_quadratic([4, 8, 12], [36 * L * L + 12036 for L in (4, 8, 12)])
    assert fit["exact"] and fit["integer_coefficients"]
    assert fit["a"] == pytest.approx(36) and fit["b"] == pytest.approx(12036)
    bad = M.fit_quadratic([4, 8, 12], [100, 200, 350])
    assert not bad["exact"]


def test_oom_detection_covers_cuda_cpu_and_python_errors():
    assert M.is_oom_error(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    )
    assert M.is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert M.is_oom_error(MemoryError())
    assert not M.is_oom_error(RuntimeError("shape mismatch"))


# ------------------------------------------------------------------------------------------
# the flow + action graph (Table 3)


def test_reinforce_graph_size_does_not_depend_on_L():
    assert _nodes(4, "reinforce", "loop") == _nodes(8, "reinforce", "loop")


def test_scatter_assembly_graph_size_does_not_depend_on_L():
    assert _nodes(4, "rt", "scatter") == _nodes(8, "rt", "scatter")


def _action_nodes(L: int, assembly: str) -> int:
    from gaugeflow.physics.action import SchwingerAction

    theta = torch.rand(1, 2, L, L, requires_grad=True)
    return M.count_graph_nodes(SchwingerAction(2.0, 0.276, assembly=assembly)(theta).sum())


def test_rt_loop_graph_grows_by_an_integer_number_of_nodes_per_site():
    """With the loop assembly each site adds the same c nodes: nodes = c L^2 + b exactly.

    c is predicted from the Dirac assembly alone (the action's graph at L = 4 and 8) and must
    match the growth of the whole r.t. graph; L = 12 then has to land exactly on c L^2 + b.
    """
    n4, n8 = _nodes(4, "rt", "loop"), _nodes(8, "rt", "loop")
    growth = n8 - n4
    assert growth > 0 and growth % (8**2 - 4**2) == 0, f"growth {growth} not a multiple of 48"
    c = growth // (8**2 - 4**2)
    c_action = (_action_nodes(8, "loop") - _action_nodes(4, "loop")) // (8**2 - 4**2)
    assert c == c_action
    b = n4 - c * 4**2
    assert _nodes(12, "rt", "loop") == c * 12**2 + b
    fit = M.fit_quadratic([4, 8], [n4, n8])
    assert fit["a"] == pytest.approx(c) and fit["b"] == pytest.approx(b)


# ------------------------------------------------------------------------------------------
# memory (Table 5), ops (Table 4), timing (Tables 1-2)


def test_reinforce_saved_memory_does_not_depend_on_the_assembly():
    loop = M.measure_memory(M.build_setup(_cfg(4, "reinforce", "loop")))
    scatter = M.measure_memory(M.build_setup(_cfg(4, "reinforce", "scatter")))
    assert loop["saved_bytes"] == scatter["saved_bytes"]
    assert loop["saved_tensors"] == scatter["saved_tensors"]
    for key in ("saved_bytes", "saved_tensors", "saved_storages"):
        assert isinstance(loop[key], int) and loop[key] > 0
    assert loop["peak_kind"] == "cpu_rss_growth" and isinstance(loop["peak_bytes"], int)
    # r.t. differentiates the action, so it saves more than REINFORCE
    rt = M.measure_memory(M.build_setup(_cfg(4, "rt", "scatter")))
    assert rt["saved_bytes"] > scatter["saved_bytes"]


def test_ops_counts_match_the_graph_and_times_fit_in_the_backward():
    setup = M.build_setup(_cfg(4, "rt", "loop"))
    ops = M.measure_ops(setup, repeats=1, warmup=0)
    assert 1 <= len(ops["top"]) <= 10
    assert all(r["count"] > 0 and r["seconds"] >= 0 for r in ops["all"])
    assert ops["hooked_seconds"] <= ops["backward_seconds"]
    counts = {r["name"]: r["count"] for r in ops["all"]}
    types = M.measure_dag(setup)["node_types"]
    assert counts["CopySlices"] == types["CopySlices"]
    assert counts["AccumulateGrad"] == types["AccumulateGrad"]


def test_loss_plus_backward_is_the_step_within_its_spread():
    setup = M.build_setup(_cfg(4, "rt", "scatter"))
    t = M.measure_timing(setup, steps=12, warmup=2)
    st = t["stats"]
    assert t["steps"] == 12 and st["step_seconds"]["n"] == 12 and st["loss_seconds"]["n"] == 12
    assert t["loss_seconds"] > 0 and t["backward_seconds"] > 0
    assert st["other_seconds"]["min"] >= 0  # each step contains its loss call and backward
    spread = sum(st[k]["iqr"] for k in ("step_seconds", "loss_seconds", "backward_seconds"))
    gap = t["step_seconds"] - t["loss_seconds"] - t["backward_seconds"]
    assert abs(gap) <= spread + t["other_seconds"], (gap, spread, t["other_seconds"])
    assert t["total_seconds"] >= sum(t["samples"]["step_seconds"])


# ------------------------------------------------------------------------------------------
# CLI: contract keys, dagfit, OOM recorded instead of a crash


def _cli(kind: str, L: int, out, *extra: str) -> dict:
    argv = ["measure", kind, "--L", str(L), "--batch-size", "2", "--estimator", "rt",
            "--assembly", "loop", "--n-layers", "8", "--hidden", "8", "--device", "cpu",
            "--out", str(out), *extra]  # fmt: skip
    assert cli_main(argv) == 0
    return json.loads(out.read_text())


def test_cli_writes_contract_keys_and_dagfit(tmp_path, capsys):
    rec = _cli("timing", 4, tmp_path / "t.json", "--steps", "2", "--warmup", "1")
    for key in ("step_seconds", "loss_seconds", "backward_seconds", "steps", "status",
                "device", "torch_version", "threads", "inputs"):  # fmt: skip
        assert key in rec, key
    assert rec["status"] == "ok" and rec["inputs"]["assembly"] == "loop"
    assert "measure timing" in capsys.readouterr().out
    mem = _cli("memory", 4, tmp_path / "m.json")
    assert {"saved_bytes", "saved_tensors", "peak_bytes", "peak_kind"} <= set(mem)
    ops = _cli("ops", 4, tmp_path / "o.json", "--repeats", "1")
    assert {"name", "count", "seconds"} == set(ops["top"][0])
    dags = [_cli("dag", L, tmp_path / f"d{L}.json")["nodes"] for L in (4, 8)]
    fit_path = tmp_path / "fit.json"
    assert cli_main(["measure", "dagfit", str(tmp_path / "d4.json"), str(tmp_path / "d8.json"),
                     "--out", str(fit_path)]) == 0  # fmt: skip
    (group,) = json.loads(fit_path.read_text())["groups"]
    assert group["nodes"] == dags and group["fit"]["exact"]
    assert group["fit"]["a"] == pytest.approx((dags[1] - dags[0]) / 48)


def test_out_of_memory_is_recorded_not_raised(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(M.MEASUREMENTS["memory"], "run", boom)
    rec = _cli("memory", 4, tmp_path / "oom.json")
    assert rec["status"] == "oom" and "out of memory" in rec["error"]
    assert rec["saved_bytes"] is None and rec["peak_kind"] == "cpu_rss_growth"
    monkeypatch.setattr(M.MEASUREMENTS["memory"], "run", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        M.run_measurement("memory", _cfg(4, "rt", "loop"))


def _refuses_huge_allocations() -> bool:
    try:  # heuristic (0) or strict (2) overcommit refuses a 128 TB request at once
        with open("/proc/sys/vm/overcommit_memory") as fh:
            return fh.read().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _refuses_huge_allocations(), reason="the OS may overcommit 128 TB")
def test_a_real_cpu_allocation_failure_is_recorded_as_oom():
    rec = M.run_measurement("dag", {**_cfg(4, "rt", "scatter"), "batch_size": 10**12})
    assert rec["status"] == "oom" and rec["nodes"] is None
    assert "allocate" in rec["error"]


@pytest.mark.parametrize(
    ("estimator", "passes", "differentiated"), [("rt", 1, True), ("reinforce", 1, False)]
)
def test_floor_replay_records_each_conditioner_and_action_call(estimator, passes, differentiated):
    """REINFORCE runs the nets once (with grad in the sampling pass; the reverse pass replays
    them, gaugeflow.flows.replay) and never differentiates the action; r.t. runs them once
    and differentiates the action."""
    setup = M.build_setup(_cfg(4, estimator, "loop"))
    floor = measure_floor(setup, repeats=1, warmup=0)
    assert floor["conditioner_calls"] == passes * 8
    assert floor["action_calls"] == 1 and floor["action_differentiated"] is differentiated
    assert floor["conditioner_seconds"] > 0 and floor["action_seconds"] > 0
    assert floor["determinant_assembly"] == "scatter" and floor["determinant_seconds"] > 0
    assert all(p.grad is None for p in setup.flow.parameters())  # replays leave no gradients


# ------------------------------------------------------------------------------------------
# the dispatch table, the record format, the fit (issue 13)


def test_dispatch_table_covers_every_kind_with_its_result_keys():
    import inspect

    assert tuple(M.MEASUREMENTS) == M.KINDS == tuple(M.RESULT_KEYS)
    for kind, spec in M.MEASUREMENTS.items():
        assert spec.result_keys == M.RESULT_KEYS[kind]
        assert set(spec.params) <= {"steps", "warmup", "repeats"} and "warmup" in spec.params
        inspect.signature(spec.run).bind(object(), **dict.fromkeys(spec.params, 1))
    from gaugeflow.errors import UserError

    with pytest.raises(UserError, match="unknown measurement 'flops'"):
        M.run_measurement("flops", _cfg(4, "rt", "loop"))


def test_measurement_record_round_trips_through_json():
    rec = M.run_record("dag", _cfg(4, "rt", "scatter"))
    assert rec.ok and rec.schema_version == M.SCHEMA_VERSION and rec.results["nodes"] > 0
    text = json.dumps(rec.to_json())
    back = M.MeasurementRecord.from_json(json.loads(text), "x.json")
    assert back == rec and back.to_json() == rec.to_json()
    inputs = back.inputs
    assert (inputs.L, inputs.batch_size, inputs.n_layers, inputs.hidden) == (4, 2, 8, 8)
    assert inputs.steps is None and inputs.repeats is None and inputs.warmup == 0
    failed = M.MeasurementRecord.failure("memory", inputs, "crashed", "boom", log="m.log")
    again = M.MeasurementRecord.from_json(json.loads(json.dumps(failed.to_json())))
    assert again == failed and again.results == dict.fromkeys(M.RESULT_KEYS["memory"])


def _smk_settings(kind: str, **wildcards) -> dict:
    """The --settings workflow/rules/common.smk (measure_settings) passes to record-failure."""
    return {"kind": kind, "L": 4, "batch_size": 2, "n_batches": 1, "estimator": "rt",
            "amp": False, "assembly": "loop", "n_layers": 8, "hidden": 8, "device": "cpu",
            **wildcards}  # fmt: skip


def test_records_of_measure_and_of_record_failure_are_read_by_the_report(tmp_path):
    from gaugeflow.report.records import load_measurement

    measured = tmp_path / "d.json"
    _cli("dag", 4, measured)
    log = tmp_path / "m.log"
    log.write_text("Traceback...\nRuntimeError: boom\n")
    crashed = tmp_path / "c.json"
    argv = ["record-failure", "--settings", json.dumps(_smk_settings("dag")), "--log", str(log)]
    assert cli_main([*argv, "--out", str(crashed)]) == 0
    ok, bad = load_measurement(measured), load_measurement(crashed)
    same = ("L", "batch_size", "n_batches", "estimator", "amp", "assembly", "n_layers", "hidden")
    assert [getattr(ok, k) for k in same] == [getattr(bad, k) for k in same]
    assert ok.ok and ok.value("nodes") == json.loads(measured.read_text())["nodes"]
    assert bad.status == "crashed" and bad.value("nodes") is None and "boom" in bad.data["error"]
    assert bad.record.inputs.dtype is None  # not known to record-failure: not guessed
    assert ok.device == "cpu" and bad.device == "cpu"


def test_a_record_lacking_a_key_or_of_another_version_names_file_and_key(tmp_path, capsys):
    from gaugeflow.errors import UserError
    from gaugeflow.report.records import load_measurement

    good = _cli("dag", 4, tmp_path / "d.json")
    cases = {
        "nodes": lambda r: r.pop("nodes"),
        "inputs.L": lambda r: r["inputs"].pop("L"),
        "schema_version": lambda r: r.pop("schema_version"),
    }
    for key, damage in cases.items():
        record = json.loads(json.dumps(good))
        damage(record)
        path = tmp_path / f"bad-{key}.json"
        path.write_text(json.dumps(record))
        with pytest.raises(UserError, match="lacks key") as err:
            load_measurement(path)
        assert str(path) in str(err.value) and f"'{key}'" in str(err.value)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**good, "schema_version": M.SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match="schema_version") as err:
        load_measurement(old)
    assert str(old) in str(err.value)
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({**good, "inputs": {**good["inputs"], "L": "4"}}))
    with pytest.raises(UserError, match="'inputs.L' must be int"):
        load_measurement(typed)
    guessed = tmp_path / "alias.json"
    guessed.write_text(json.dumps({**good, "inputs": {**good["inputs"], "lattice_size": 4}}))
    with pytest.raises(UserError, match="lattice_size"):
        load_measurement(guessed)
    settings = _smk_settings("dag")
    del settings["hidden"]
    argv = ["record-failure", "--settings", json.dumps(settings), "--out", str(tmp_path / "f")]
    assert cli_main(argv) != 0
    assert "--settings lacks key 'inputs.hidden'" in capsys.readouterr().err


def test_fit_gives_the_closed_form_least_squares_numbers_it_gave_before_the_split():
    L, y = [4, 8, 12], [100, 200, 350]
    x = [v * v for v in L]
    xm, ym = sum(x) / 3, sum(y) / 3
    a = sum((xi - xm) * (yi - ym) for xi, yi in zip(x, y, strict=True)) / sum(
        (xi - xm) ** 2 for xi in x
    )
    fit = M.fit_quadratic(L, y)
    assert fit["a"] == pytest.approx(a, rel=1e-12) and fit["b"] == pytest.approx(ym - a * xm)
    # the numbers gaugeflow.measure.fit_quadratic gave before the package split (lstsq)
    assert fit["a"] == pytest.approx(1.9451530612244916, rel=1e-12)
    assert fit["b"] == pytest.approx(71.42857142857142, rel=1e-12)
    assert fit["max_residual"] == pytest.approx(4.081632653061121, rel=1e-9)
    assert not fit["integer_coefficients"] and fit["formula"] == "1.94515 L^2 + 71.4286"
    # integer coefficients are rounded to ints (the measured r.t.-loop graph: 20 L^2 + 1060)
    exact = M.fit_quadratic([4, 8], [1380, 2340])
    assert (exact["a"], exact["b"]) == (20, 1060) and type(exact["a"]) is int
    assert exact["exact"] and exact["formula"] == "20 L^2 + 1060"


# ------------------------------------------------------------------------------------------
# timing rows: the columns of one Table 1 row timed together, one step of each in turn


def test_rotation_puts_every_configuration_once_in_every_position():
    labels = ["a", "b", "c"]
    rounds = [M.timing.rotation(labels, r) for r in range(3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for position in range(3):
        assert sorted(order[position] for order in rounds) == labels
    assert M.timing.rotation(labels, 4) == rounds[1]


def _row_variants() -> list[dict]:
    return [
        _cfg(4, "rt", "loop"),
        _cfg(4, "reinforce", "scatter"),
        _cfg(4, "reinforce", "loop", amp=True),
    ]


def test_a_timing_row_steps_in_rotating_order_and_does_the_work_each_does_alone(monkeypatch):
    order: list[tuple[int, str]] = []
    real = M.timing.gradient_step

    def spy(setup, phase_timer=None):
        order.append((phase_timer is not None, M.row_label(setup.config)))
        return real(setup, phase_timer=phase_timer)

    monkeypatch.setattr(M.timing, "gradient_step", spy)
    records = M.run_timing_row(_row_variants(), steps=3, warmup=1)
    labels = ["rt-fp32-loop", "reinforce-fp32-scatter", "reinforce-amp-loop"]
    # warm-up round 0, then timed rounds 1-3, each a rotation of the last
    expected = [(r > 0, label) for r in range(4) for label in M.timing.rotation(labels, r)]
    assert order == expected
    for record, label in zip(records, labels, strict=True):
        assert record.ok and record.kind == "timing" and record.results["steps"] == 3
        assert record.results["interleaved_with"] == [x for x in labels if x != label]
        assert record.results["round_order"] == "rotating"
        assert len(record.results["samples"]["step_seconds"]) == 3
        assert record.results["total_seconds"] == pytest.approx(
            sum(record.results["samples"]["step_seconds"])
        )
        assert record.results["row_seconds"] >= record.results["total_seconds"]
    assert records[2].inputs.amp and records[0].inputs.assembly == "loop"

    # interleaving changes no configuration's work: the weights after the row equal those
    # after the same steps of the configuration measured alone (same seeds), bit for bit
    monkeypatch.setattr(M.timing, "gradient_step", real)
    built = [M.build_setup(v) for v in _row_variants()]
    setups = {M.row_label(setup.config): setup for setup in built}
    M.measure_timing_interleaved(dict(setups), steps=2, warmup=1)
    alone = M.build_setup(_row_variants()[1])
    M.measure_timing(alone, steps=2, warmup=1)
    together = setups["reinforce-fp32-scatter"].flow.state_dict()
    for name, tensor in alone.flow.state_dict().items():
        assert torch.equal(tensor, together[name]), name


def test_a_timing_row_records_one_column_out_of_memory_and_measures_the_others(monkeypatch):
    real = M.timing.gradient_step
    calls = {"n": 0}

    def oom_in_amp(setup, phase_timer=None):
        if setup.config["amp"]:
            calls["n"] += 1
            if calls["n"] == 2:  # its first timed step
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(setup, phase_timer=phase_timer)

    monkeypatch.setattr(M.timing, "gradient_step", oom_in_amp)
    records = M.run_timing_row(_row_variants(), steps=3, warmup=1)
    assert [r.status for r in records] == ["ok", "ok", "oom"]
    assert "out of memory" in records[2].error and records[2].results["step_seconds"] is None
    assert records[2].results["steps"] == 3  # known without running (as for one configuration)
    assert all(r.results["steps"] == 3 for r in records[:2])

    def boom(setup, phase_timer=None):
        raise ZeroDivisionError("not a memory error")

    monkeypatch.setattr(M.timing, "gradient_step", boom)
    with pytest.raises(ZeroDivisionError):
        M.run_timing_row(_row_variants(), steps=1, warmup=0)


def test_timing_row_cli_writes_one_record_per_variant_and_refuses_bad_flags(tmp_path, capsys):
    base = ["measure", "timing-row", "--L", "4", "--batch-size", "2", "--n-layers", "8",
            "--hidden", "8", "--device", "cpu", "--steps", "2", "--warmup", "0"]  # fmt: skip
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    argv = [*base, "--variant", "rt:fp32:loop", "--out", str(outs[0]),
            "--variant", "reinforce:amp:scatter", "--out", str(outs[1])]  # fmt: skip
    assert cli_main(argv) == 0
    a, b = (M.load_record(p) for p in outs)
    assert (a.inputs.estimator, a.inputs.amp, a.inputs.assembly) == ("rt", False, "loop")
    assert (b.inputs.estimator, b.inputs.amp, b.inputs.assembly) == ("reinforce", True, "scatter")
    assert a.results["interleaved_with"] == ["reinforce-amp-scatter"] and b.ok
    assert capsys.readouterr().out.count("measure timing") == 2
    for bad, named in (
        (
            [*base, "--variant", "rt:fp32:loop", "--variant", "rt:fp32:scatter", "--out", "x.json"],
            "one --out per --variant",
        ),  # fmt: skip
        ([*base, "--variant", "rt:fp16:loop", "--out", "x.json"], "unknown precision 'fp16'"),
        ([*base, "--variant", "rt-fp32-loop", "--out", "x.json"], "ESTIMATOR:PREC:ASSEMBLY"),
        (
            [
                *base,
                "--variant",
                "rt:fp32:loop",
                "--out",
                "x.json",
                "--variant",
                "rt:fp32:loop",
                "--out",
                "y.json",
            ],
            "repeated: ['rt-fp32-loop']",
        ),  # fmt: skip
    ):
        assert cli_main(bad) != 0
        assert named in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not Path("x.json").exists()
