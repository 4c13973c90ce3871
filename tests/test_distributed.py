"""Data-parallel training (issue 15): rank environments, equivalence with one process, resume
across world sizes, and a rank that dies or hangs. CPU, gloo, 2 ranks of one thread each."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gaugeflow.distributed import DEFAULT_TIMEOUT, Group, detect, first_host
from gaugeflow.errors import UserError
from gaugeflow.runtime import seed_everything
from gaugeflow.training import TIMING_COLUMNS, TrainStep, make_config
from gaugeflow.training.distributed import DataParallelStep, check_world

# a small flow in float64 with fermions (kappa > 0), two parts per step
CONFIG = {
    "L": 4,
    "beta": 2.0,
    "kappa": 0.276,
    "batch_size": 8,
    "n_batches": 2,
    "lr": 5e-3,
    "flow": {"n_layers": 8, "hidden_channels": 4, "dilations": [1]},
    "device": "cpu",
    "dtype": "float64",
    "seed": 3,
    "log_every": 1,
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for _key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
             "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_NODELIST"):  # fmt: skip
    ENV.pop(_key, None)
WAIT = 300  # s: the most a subprocess may take before the test fails (not a timing assertion)


# --------------------------------------------------------------------------------------------
# helpers


def _config_file(folder: Path, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **overrides}))
    return path


def _cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gaugeflow", "train", "--config", str(config), "--out", str(out),
            "--no-progress", "--threads", "1", *extra]  # fmt: skip


def _train(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _cmd(config, out, *extra), env=ENV, capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=False)["state_dict"]


def _metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_same_run(a: Path, b: Path, tol: float) -> None:
    """Weights and (non-timing) metrics of two runs equal to `tol` (0: bit for bit)."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        diff = float((wa[k] - wb[k]).abs().max())
        assert diff <= tol, f"weights {k} differ by {diff:.3g}"
    ma, mb = _metrics(a), _metrics(b)
    assert len(ma) == len(mb) > 0
    for ra, rb in zip(ma, mb, strict=True):
        for key in ra:
            if key in TIMING_COLUMNS or key == "wall_time":
                continue
            x, y = float(ra[key]), float(rb[key])
            assert abs(x - y) <= tol * max(1.0, abs(x)), f"step {ra['step']} {key}: {x} vs {y}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _srun_like(config: Path, out: Path, port: int, *extra: str) -> list[subprocess.Popen]:
    """Two ranks started the way srun starts them (SLURM_* variables, no launcher)."""
    procs = []
    for rank in range(2):
        env = {**ENV, "SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": "2",
               "SLURM_LOCALID": str(rank), "SLURM_STEP_NODELIST": "127.0.0.1",
               "MASTER_PORT": str(port)}  # fmt: skip
        procs.append(
            subprocess.Popen(
                _cmd(config, out, *extra),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    return procs


def _latest_checkpoint(out: Path) -> int:
    paths = sorted((out / "checkpoints").glob("ckpt_*.pt"))
    return int(paths[-1].stem.split("_")[1]) if paths else 0


def _wait_for_checkpoint(out: Path, step: int, procs) -> None:
    deadline = time.time() + WAIT
    while _latest_checkpoint(out) < step:
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise AssertionError(f"no checkpoint of step {step} in {out} (a rank ended early?)")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# environments and errors (no processes)


def test_torchrun_environment_is_read():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
           "MASTER_PORT": "29500"}  # fmt: skip
    info = detect(env)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == (
        1, 4, 1, "n1", 29500
    )  # fmt: skip
    assert info.source == "torchrun"
    assert detect({**env, "WORLD_SIZE": "1"}) is None
    with pytest.raises(UserError, match="MASTER_PORT"):
        detect({k: v for k, v in env.items() if k != "MASTER_PORT"})


def test_slurm_environment_is_read_and_the_batch_script_is_no_rank():
    step = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "gpu7,gpu8", "SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": "4"}  # fmt: skip
    info = detect(step)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr) == (3, 4, 1, "gpu7")
    assert info.source == "slurm"
    assert info.master_port == detect(step).master_port  # the same on every rank
    other_step = detect({**step, "SLURM_STEP_ID": "1"}).master_port
    assert other_step != info.master_port
    assert detect({**step, "MASTER_PORT": "4000"}).master_port == 4000
    # the batch script of an --ntasks=4 job is one process, not rank 0 of 4
    batch = {k: v for k, v in step.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert detect(batch) is None
    assert detect({}) is None


def test_bracketed_node_list_needs_scontrol(monkeypatch):
    assert first_host("a01,a02") == "a01"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="MASTER_ADDR"):
        first_host("node[03-05]")


def test_parts_must_split_evenly_over_the_ranks(tmp_path):
    with pytest.raises(UserError, match="'n_batches' \\(3\\).*2"):
        check_world(make_config({**CONFIG, "n_batches": 3}), 2)
    config = _config_file(tmp_path, n_batches=3, steps=2)
    done = subprocess.run(_cmd(config, tmp_path / "out", "--nproc", "2"), env=ENV,
                          capture_output=True, text=True, timeout=WAIT)  # fmt: skip
    assert done.returncode == 2
    assert "n_batches" in done.stderr and "multiple of the number of processes" in done.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_rank_alone_gives_up_on_the_rendezvous_after_the_timeout(tmp_path):
    config = _config_file(tmp_path, steps=1)
    env = {**ENV, "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}  # fmt: skip
    done = subprocess.run(_cmd(config, tmp_path / "out", "--dist-timeout", "3"), env=env,
                          capture_output=True, text=True, timeout=WAIT)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rank 1 of 2 (torchrun): the rendezvous at 127.0.0.1" in done.stderr
    assert "failed within 3 s" in done.stderr


def test_a_world_of_one_rank_equals_the_plain_step(tmp_path):
    """The all-reduce, gather and divergence agreement of a 1-rank gloo group change nothing."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        config = make_config({**CONFIG, "estimator": "rt"})
        seed_everything(config["seed"])
        plain = TrainStep(config, torch.device("cpu"))
        seed_everything(config["seed"])
        group = Group(rank=0, world_size=1, backend="gloo", timeout=DEFAULT_TIMEOUT)
        data_parallel = DataParallelStep(config, group)
        assert list(data_parallel.parts) == [0, 1]
        for n in (1, 2, 3):
            a, b = plain.run(n), data_parallel.run(n)
            assert a.metrics() | {"step_seconds": 0} == b.metrics() | {"step_seconds": 0}
        for p, q in zip(plain.flow.parameters(), data_parallel.flow.parameters(), strict=True):
            assert torch.equal(p, q)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# two processes


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["rt", "reinforce", "path"])
def test_two_ranks_of_one_part_equal_one_process_of_two_parts(tmp_path, estimator):
    config = _config_file(tmp_path, estimator=estimator, steps=5)
    _train(config, tmp_path / "one")
    two = _train(config, tmp_path / "two", "--nproc", "2")
    assert "2 ranks" in two.stdout
    assert two.stdout.count("step 5/5 loss") == 1  # progress from rank 0 only
    _assert_same_run(tmp_path / "one", tmp_path / "two", tol=1e-10)


LONG = {"estimator": "reinforce", "steps": 10, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(config file, output) of an uninterrupted 2-rank run of 10 steps."""
    folder = tmp_path_factory.mktemp("reference")
    config = _config_file(folder, **LONG)
    _train(config, folder / "out", "--nproc", "2")
    return config, folder / "out"


@pytest.mark.slow
def test_killed_two_rank_run_resumes_exactly_also_in_one_process(tmp_path, reference):
    config, ref = reference
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(config, run, "--nproc", "2"), env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_for_checkpoint(run, 4, [proc])
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait()
    killed_at = _latest_checkpoint(run)
    assert 4 <= killed_at < LONG["steps"], "the run finished before it was killed"
    single = tmp_path / "single"
    shutil.copytree(run, single)

    _train(config, run, "--nproc", "2")  # same world size: bit for bit
    _assert_same_run(ref, run, tol=0.0)
    resumed = _train(config, single)  # one process resumes the 2-rank checkpoint
    assert f"step {killed_at + 1}/" in resumed.stdout and "step 1/" not in resumed.stdout
    _assert_same_run(ref, single, tol=1e-10)


@pytest.mark.slow
def test_time_limit_stops_every_rank_at_one_step_and_the_rerun_continues(tmp_path, reference):
    config, ref = reference
    run = tmp_path / "run"
    stopped = subprocess.run(_cmd(config, run, "--nproc", "2", "--time-limit", "0.001"),
                             env=ENV, capture_output=True, text=True, timeout=WAIT)  # fmt: skip
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr  # EX_TEMPFAIL, as 1 process
    assert "train: time_limit at step 1/10" in stopped.stdout
    assert _latest_checkpoint(run) == 1
    _train(config, run, "--nproc", "2")
    _assert_same_run(ref, run, tol=0.0)


@pytest.mark.slow
def test_a_hung_or_killed_rank_fails_the_other_in_bounded_time_and_rerun_resumes(
    tmp_path, reference
):
    config, ref = reference
    run = tmp_path / "run"
    timeout = "10"

    # rank 1 stops answering (SIGSTOP): rank 0 gives up after the collective timeout
    ranks = _srun_like(config, run, _free_port(), "--dist-timeout", timeout)
    _wait_for_checkpoint(run, 2, ranks)
    ranks[1].send_signal(signal.SIGSTOP)
    out, err = ranks[0].communicate(timeout=WAIT)
    ranks[1].kill()
    ranks[1].communicate()
    assert ranks[0].returncode == 1, out + err
    assert "rank 0 of 2" in err and "did not answer within 10 s" in err, err
    assert "run the same command again" in err

    # rank 1 is killed: rank 0 fails (the connection drops, no need to wait for the timeout)
    stopped_at = _latest_checkpoint(run)
    assert stopped_at < LONG["steps"]
    ranks = _srun_like(config, run, _free_port(), "--dist-timeout", timeout)
    _wait_for_checkpoint(run, stopped_at + 2, ranks)
    ranks[1].kill()
    out, err = ranks[0].communicate(timeout=WAIT)
    ranks[1].communicate()
    assert ranks[0].returncode == 1, out + err
    assert "rank 0 of 2" in err and "failed" in err, err
    assert _latest_checkpoint(run) < LONG["steps"], "the run finished before it was killed"

    # the same run through the local launcher: a rank killed there is named by the launcher
    _train(config, run, "--nproc", "2")
    _assert_same_run(ref, run, tol=0.0)


@pytest.mark.slow
def test_launcher_names_a_killed_rank(tmp_path):
    config = _config_file(tmp_path, **{**LONG, "steps": 40})
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(config, run, "--nproc", "2"), env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_checkpoint(run, 2, [proc])
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    ranks = [  # the launcher's children that run a rank (not multiprocessing's helpers)
        int(pid)
        for pid in children.stdout.split()
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(ranks) == 2, children.stdout
    os.kill(ranks[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1, out + err
    assert "gaugeflow train: error: rank" in err and "killed by signal 9" in err, err


def _rank_with_nan_action(config: dict, out: str) -> dict:
    """A rank of `launch_local`: rank 1's action turns NaN from its 3rd call (its step 3)."""
    from gaugeflow.distributed import process_group
    from gaugeflow.physics.action import SchwingerAction
    from gaugeflow.training import train

    with process_group("cpu", timeout=60) as group:
        if group.rank == 1:
            calls = {"n": 0}
            original = SchwingerAction.log_prob

            def poisoned(self, theta):
                calls["n"] += 1
                return original(self, theta) * (float("nan") if calls["n"] >= 3 else 1.0)

            SchwingerAction.log_prob = poisoned
        summary = train(config, out, progress=False, group=group)
    return {k: summary[k] for k in ("status", "step", "last_good_step", "failure", "divergence")}


@pytest.mark.slow
def test_a_divergence_on_one_rank_stops_all_and_is_recorded_once(tmp_path):
    from gaugeflow.distributed import launch_local

    config = {**CONFIG, "estimator": "reinforce", "steps": 6, "checkpoint_every": 1}
    out = tmp_path / "out"
    returned = launch_local(2, _rank_with_nan_action, (config, str(out)))
    assert returned[0] == returned[1]  # both ranks took the same branch
    result = returned[0]
    assert result["status"] == "diverged" and result["divergence"] == "non_finite_loss"
    assert result["step"] == 3 and result["last_good_step"] == 2
    assert "(rank 1 of 2)" in result["failure"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["status"] == "diverged" and saved["failure"] == result["failure"]
    assert len(_metrics(out)) == 2
    assert torch.load(out / "model.pt", weights_only=False)["step"] == 2


# --------------------------------------------------------------------------------------------
# workflow: what the train rule asks of SLURM (snakemake-executor-plugin-slurm's own sbatch line)

REPO = Path(__file__).resolve().parents[1]


def _planned_train_jobs(tmp_path: Path, cfg: dict, fake_srun: bool) -> dict[str, dict]:
    """group -> {"resources": {...}, "threads": int, "shell": str} of a dry run."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    path = f"{Path(sys.executable).parent}{os.pathsep}{ENV['PATH']}"
    if fake_srun:  # the check that srun exists runs at parse time; a dry run never calls it
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / "srun").chmod(0o755)
        path = f"{tmp_path / 'bin'}{os.pathsep}{path}"
    targets = [f"results/runs/train/{g}/L4-reinforce-fp32-s1/model.pt" for g in ("main", "large")]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path / "wd"), "-n", "-p", "--cores", "8", "--configfile",
         str(config), "--", *targets],
        cwd=REPO, env={**ENV, "PATH": path}, capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {}
    for block in done.stdout.split("checkpoint train:")[1:]:
        group = re.search(r"wildcards: group=(\w+)", block).group(1)
        resources = {}
        for item in re.search(r"resources: (.*)", block).group(1).split(", "):
            key, value = item.split("=", 1)
            resources[key] = int(value) if value.isdigit() else value
        jobs[group] = {
            "resources": resources,
            "threads": int(re.search(r"threads: (\d+)", block).group(1)),
            "shell": re.search(r"Shell command: (.*)", block).group(1),
        }
    return jobs


def _sbatch_line(job: dict) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        resources = Resources(job["resources"])
        threads = job["threads"]

    params = {"run_uuid": "x", "slurm_logfile": "log", "comment_str": "c", "account": "",
              "partition": "", "workdir": None}  # fmt: skip
    return get_submit_command(Job, params) + set_gres_string(Job)


@pytest.mark.workflow
def test_train_rule_asks_slurm_for_the_ranks_gpus_and_nodes(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cfg = yaml.safe_load((REPO / "config/tiny.yaml").read_text())
    cfg["device"] = "cuda"
    cfg["resources"]["train"]["threads"] = 8
    for group in ("main", "large"):
        cfg["training"][group].update(estimators=["reinforce"], amp=[False], seeds=[1])
    cfg["training"]["main"].update(gpus=4, n_batches=4)  # one node, 4 GPUs
    cfg["training"]["large"].update(gpus=4, nodes=2, n_batches=8)  # two nodes of 4 GPUs
    jobs = _planned_train_jobs(tmp_path, cfg, fake_srun=True)

    one_node = _sbatch_line(jobs["main"])
    assert "--gpus=4" in one_node and "--cpus-per-task=8" in one_node
    assert "--nodes" not in one_node and "--ntasks-per-gpu" not in one_node
    # the rule first resets a warm start's stale state (curriculum), then launches the ranks
    assert " && gaugeflow train " in jobs["main"]["shell"], jobs["main"]["shell"]
    assert "--nproc 4 --threads 2" in jobs["main"]["shell"]

    two_nodes = _sbatch_line(jobs["large"])
    for flag in ("--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--ntasks-per-gpu=1",
                 "--cpus-per-task=2"):  # fmt: skip
        assert flag in two_nodes, two_nodes
    assert "--gpus=" not in two_nodes
    assert jobs["large"]["resources"]["mpi"] == "srun"  # the plugin then adds no srun -n1
    assert (
        " && srun --nodes=2 --ntasks-per-node=4 --cpus-per-task=2 --gpus-per-node=4 gaugeflow train "
        in jobs["large"]["shell"]
    ), jobs["large"]["shell"]
    assert "--nproc" not in jobs["large"]["shell"]

    # one GPU on each of two nodes: two tasks, one per GPU (not `tasks` tasks per GPU)
    cfg["training"]["main"].update(gpus=1, nodes=2, n_batches=2)
    (tmp_path / "one_gpu").mkdir()
    line = _sbatch_line(_planned_train_jobs(tmp_path / "one_gpu", cfg, fake_srun=True)["main"])
    for flag in ("--nodes=2", "--ntasks=2", "--gres=gpu:1", "--ntasks-per-gpu=1",
                 "--cpus-per-task=8"):  # fmt: skip
        assert flag in line, line

    # CPU: ranks on one node share the job's threads; one process unless asked
    cfg["device"] = "cpu"
    cfg["training"]["main"].update(cpu_ranks=2, nodes=1, n_batches=2)
    cfg["training"]["large"].update(nodes=1)
    (tmp_path / "cpu").mkdir()
    cpu = _planned_train_jobs(tmp_path / "cpu", cfg, fake_srun=False)
    line = _sbatch_line(cpu["main"])
    assert "--ntasks=1" in line and "--cpus-per-task=8" in line and "--gpus" not in line
    assert "--nproc 2 --threads 4" in cpu["main"]["shell"]
    assert "--nproc" not in cpu["large"]["shell"] and "srun" not in cpu["large"]["shell"]
    assert "--ntasks=1" in _sbatch_line(cpu["large"])


@pytest.mark.slow
@pytest.mark.workflow
def test_workflow_trains_a_run_on_two_cpu_ranks_like_one_process(tmp_path):
    """The train rule with cpu_ranks: 2 (gaugeflow train --nproc 2 under Snakemake) gives the
    weights and metrics of the same run in one process (float32, one thread a rank: 1e-10)."""
    cfg = yaml.safe_load((REPO / "config/tiny.yaml").read_text())
    target = "results/runs/train/large/L4-reinforce-fp32-s1"
    runs = {}
    for ranks in (1, 2):
        cfg["training"]["large"]["cpu_ranks"] = ranks
        cfg["resources"]["train"]["threads"] = ranks  # one thread a rank in both runs
        work = tmp_path / f"ranks{ranks}"
        work.mkdir()
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        done = subprocess.run(
            [str(Path(sys.executable).parent / "snakemake"), "--snakefile",
             str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2", "--configfile",
             str(work / "config.yaml"), "--", f"{target}/model.pt"],
            cwd=REPO, capture_output=True, text=True, timeout=WAIT,
            env={**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{ENV['PATH']}"},
        )  # fmt: skip
        log = work / "results/logs/train/large/L4-reinforce-fp32-s1.log"
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[ranks] = work / target
        text = log.read_text()
        assert ("2 ranks" in text) == (ranks == 2), text[-2000:]
    _assert_same_run(runs[1], runs[2], tol=1e-10)
