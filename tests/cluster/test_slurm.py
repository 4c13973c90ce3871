"""The workflow on a real (single-node) SLURM cluster, through snakemake-executor-plugin-slurm.

Brings up munged + slurmctld + slurmd on this machine (tests/cluster/slurm_up.sh), then:

1. smoke: a three-rule workflow (tests/cluster/smoke.smk) through `--profile profiles/slurm`:
   every job runs inside a SLURM allocation, and only the rule that declares gpu=1 gets
   `sbatch --gpus=1` (the test node has one fake GPU so that such a job is schedulable);
2. tiny: the real workflow, config/tiny.yaml (thinned, see CLUSTER_TEST_CONFIG), through
   `snakemake --profile profiles/slurm`: a training job is scancel'ed once it has written a
   checkpoint; the same command run again resumes it (checked by its metrics rows); that job
   is scancel'ed once more and the profile's `retries: 1` resumes it again; every
   deterministic result (weights, checkpoints, metrics, chains) equals a local run's, and the
   figures, tables and paper are there;
3. gpu: a dry run of the tiny workflow with `device=cuda` plans gpu=1 exactly for the
   training, sampling and measurement jobs;
4. two ranks: one sbatch job of 2 tasks trains through `srun gaugeflow train` (data-parallel,
   issue 15) and equals a local 1-process run to 1e-10.

Every daemon it started is stopped at the end, also on failure (slurm_down.sh). Runs as root
with `slurm-wlm` and `munge` installed, when CI is set (`.ci/run`) or GAUGEFLOW_CLUSTER_TEST=1;
otherwise it skips and says why. GAUGEFLOW_CLUSTER_KEEP=1 keeps its scratch folders and logs.
About 400 CPU-seconds: 13 min on a busy 2-core box, an estimated 5-6 min on an idle one.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SLURM_BINARIES = (
    "munged", "munge", "unmunge", "slurmctld", "slurmd",
    "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo",
)  # fmt: skip

# Settings for *this* test cluster, which has no slurmdbd (so no sacct): poll with squeue
# (slurm_up.sh keeps finished jobs visible for MinJobAge = 10 min), poll often, keep the
# per-job SLURM logs so the test can read them. A real cluster's profile needs none of these.
CLUSTER_FLAGS = [
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2",
    "--slurm-keep-successful-logs",
]  # fmt: skip

# Workflow pieces the tiny-workflow tests need (issue 7); they skip, naming what is missing.
WORKFLOW_FILES = ("Snakefile", "config/tiny.yaml", "profiles/slurm/config.yaml")
# Top-level items copied into each scratch copy of the workflow.
WORKFLOW_ITEMS = (
    "Snakefile", "config.yaml", "config", "workflow", "profiles", "paper", "src", "environment.yml",
)  # fmt: skip


def _path() -> str:
    """PATH with the venv first (jobs inherit it: sbatch --export=ALL) and the sbin dirs last."""
    return os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def _why_skip() -> str | None:
    if not (_truthy(os.environ.get("CI")) or _truthy(os.environ.get("GAUGEFLOW_CLUSTER_TEST"))):
        return (
            "SLURM cluster test is opt-in outside CI: set GAUGEFLOW_CLUSTER_TEST=1 (root only; it "
            "starts munged, slurmctld and slurmd and writes /etc/slurm/slurm.conf)"
        )
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "SLURM cluster test needs root (it starts SLURM daemons and writes /etc/slurm)"
    missing = [b for b in SLURM_BINARIES if shutil.which(b, path=_path()) is None]
    if missing:
        return f"SLURM cluster test: {', '.join(missing)} not found; apt-get install -y slurm-wlm munge"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return (
            "SLURM cluster test: snakemake-executor-plugin-slurm missing; pip install -e '.[slurm]'"
        )
    return None


_SKIP = _why_skip()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.workflow,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    state_dir: Path

    @property
    def jobcomp(self) -> Path:
        return self.state_dir / "log" / "jobcomp.log"

    def job_table(self, job_ids: list[str] | None = None) -> dict[str, dict[str, str]]:
        """State, name, comment and GRES of jobs slurmctld still knows (MinJobAge)."""
        out = _run(
            ["squeue", "--states=all", "--noheader", "-O",
             "JobID:|,Name:|,Comment:|,State:|,tres-per-job:|,NumCPUs:|,MinMemory:"],
        ).stdout  # fmt: skip
        table = {}
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) < 7:
                continue
            jid, name, comment, state, tres, cpus, mem = parts[:7]
            if job_ids is None or jid in job_ids:
                table[jid] = dict(
                    name=name, comment=comment, state=state, tres=tres, cpus=cpus, mem=mem
                )
        return table

    def jobcomp_states(self) -> dict[str, str]:
        """Final states from slurmctld's job-completion log (kept for the whole session)."""
        states = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                m = re.search(r"JobId=(\d+) .*JobState=(\S+)", line)
                if m:
                    states[m.group(1)] = m.group(2)
        return states


def _run(cmd, check=True, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", _env())
    return subprocess.run(
        [str(c) for c in cmd], check=check, timeout=timeout, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs,
    )  # fmt: skip


def _running_slurm_daemons() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                name = (proc / "comm").read_text().strip()
            except OSError:
                continue
            if name in ("slurmctld", "slurmd"):
                found.append(f"{name} pid {proc.name}")
    return found


def _keep() -> bool:
    return _truthy(os.environ.get("GAUGEFLOW_CLUSTER_KEEP"))


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """Scratch folder of this module: not pytest's tmp_path, whose numbered folders other
    pytest sessions of the same user rotate away (even while this one runs). Removed at the
    end unless GAUGEFLOW_CLUSTER_KEEP=1."""
    path = Path(tempfile.mkdtemp(prefix="gaugeflow-cluster-test-"))
    yield path
    if _keep():
        print(f"\nscratch kept: {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # /tmp, not pytest's tmp_path: munged runs as user munge and needs to reach its socket dir
    state_dir = Path(tempfile.mkdtemp(prefix="gaugeflow-slurm-", dir="/tmp"))
    state_dir.chmod(0o755)
    running = _running_slurm_daemons()
    if running:
        msg = f"a SLURM daemon is already running ({', '.join(running)}); not starting a second cluster"
        if _truthy(os.environ.get("CI")):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    # a CI runner's SIGTERM becomes KeyboardInterrupt, so that the teardown below still runs
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        up = _run(["bash", HERE / "slurm_up.sh", state_dir], check=False, timeout=120)
        print(up.stdout)
        if up.returncode != 0:
            pytest.fail(f"slurm_up.sh failed (rc {up.returncode}):\n{up.stdout}", pytrace=False)
        yield Cluster(state_dir)
    finally:
        down = _run(["bash", HERE / "slurm_down.sh", state_dir], check=False, timeout=120)
        print(down.stdout)
        signal.signal(signal.SIGTERM, previous)
        leftover = [
            f"{name} (pid {pidfile.read_text().strip()})"
            for name, pidfile in (
                ("slurmd", state_dir / "slurmd.pid"),
                ("slurmctld", state_dir / "slurmctld.pid"),
                ("munged", state_dir / "munge" / "munged.pid"),
            )
            if pidfile.exists()
        ]
        print(f"cluster: up for {time.monotonic() - started:.0f} s; state and logs in {state_dir}")
        assert not leftover, f"daemons left running: {leftover}"
        if not _keep():
            shutil.rmtree(state_dir, ignore_errors=True)


# --------------------------------------------------------------------------- snakemake


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = _path()
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("SLURM_CONF", None)
    return env


def _snakemake_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "snakemake", *map(str, args)]


def snakemake(workdir: Path, *args, log: str, timeout: int = 900) -> tuple[int, str]:
    """Run snakemake in `workdir`; return (exit code, its output, also saved to workdir/log)."""
    with open(workdir / log, "w") as fh:
        proc = subprocess.run(
            _snakemake_cmd(*args), cwd=workdir, env=_env(), stdin=subprocess.DEVNULL,
            stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
        )  # fmt: skip
    return proc.returncode, (workdir / log).read_text()


def submissions(output: str) -> list[tuple[str, str]]:
    """(snakemake job id, SLURM job id) of every job the plugin submitted with sbatch."""
    return re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)


def sbatch_calls(output: str) -> dict[str, str]:
    """Rule name -> the sbatch command line the plugin ran (needs --verbose)."""
    calls = {}
    for line in output.splitlines():
        if "sbatch call:" in line:
            m = re.search(r"--comment '?rule_([A-Za-z0-9_]+?)(?:_wildcards_\S*)?'?\s", line)
            if m:
                calls[m.group(1)] = line.split("sbatch call:", 1)[1].split("--wrap=")[0]
    return calls


def fail_with_log(msg: str, output: str, workdir: Path | None = None, tail: int = 60) -> None:
    """Fail with the end of snakemake's output and of the logs of the jobs that failed."""
    text = [msg, f"--- last {tail} lines of snakemake output ---", *output.splitlines()[-tail:]]
    if workdir is not None:
        logs = re.findall(r"log: (\S+) \(check log file", output)
        logs += re.findall(r"(\S*slurm_logs/\S+\.log)", output)
        for name in list(dict.fromkeys(logs))[:6]:
            path = Path(name) if Path(name).is_absolute() else workdir / name
            if path.is_file():
                text += [
                    f"--- last 30 lines of {name} ---",
                    *path.read_text(errors="replace").splitlines()[-30:],
                ]
    pytest.fail("\n".join(text), pytrace=False)


def report_jobs(cluster: Cluster, title: str, ids: list[tuple[str, str]]) -> dict[str, dict]:
    """Print (and return) what SLURM says about the submitted jobs; pytest -s or -rA shows it."""
    table = cluster.job_table([j for _, j in ids])
    final = cluster.jobcomp_states()
    print(f"\n== {title}: {len(ids)} sbatch submissions")
    for sm_id, jid in ids:
        row = table.get(jid, {})
        state = row.get("state") or final.get(jid, "?")
        print(
            f"  slurm job {jid:>4}  snakemake job {sm_id:>3}  {row.get('comment', '?'):40s} "
            f"{state:10s} cpus={row.get('cpus', '?')} mem={row.get('mem', '?')} gres={row.get('tres', '?')}"
        )
    return table


# --------------------------------------------------------------------------- 1. smoke


def test_smoke_submission_and_gpu_request(cluster: Cluster, scratch: Path) -> None:
    """Jobs go through sbatch and run in an allocation; only gpu=1 rules request a GPU."""
    tmp_path = scratch / "smoke"
    tmp_path.mkdir()
    t0 = time.monotonic()
    rc, out = snakemake(
        tmp_path, "--snakefile", HERE / "smoke.smk", "--profile", REPO / "profiles" / "slurm",
        "--workflow-profile", "none", *CLUSTER_FLAGS, "--verbose", log="smoke.log", timeout=300,
    )  # fmt: skip
    if rc != 0:
        fail_with_log(f"smoke workflow failed on SLURM (rc {rc})", out, tmp_path)
    ids = submissions(out)
    table = report_jobs(cluster, f"smoke ({time.monotonic() - t0:.0f} s)", ids)

    assert len(ids) == 3, f"expected 3 sbatch submissions, saw {ids}"
    for _, jid in ids:
        state = table.get(jid, {}).get("state") or cluster.jobcomp_states().get(jid)
        assert state == "COMPLETED", f"SLURM job {jid}: {state}"
    # each job ran inside its own allocation
    job_of = {}
    for name in ("host", "python", "gpu"):
        text = (tmp_path / "smoke" / f"{name}.txt").read_text()
        m = re.search(r"job=(\d+)", text)
        assert m, f"rule {name} did not run in a SLURM job:\n{text}"
        job_of[name] = m.group(1)
    assert sorted(job_of.values()) == sorted(j for _, j in ids)
    assert (
        "python=" + str(Path(sys.executable).parent)
        in (tmp_path / "smoke" / "python.txt").read_text()
    )

    # GPU request: in the sbatch command line, and as SLURM recorded it
    calls = sbatch_calls(out)
    assert set(calls) == {"host", "python", "gpu"}, calls
    assert "--gpus=1" in calls["gpu"], calls["gpu"]
    for name in ("host", "python"):
        assert "--gpus" not in calls[name] and "--gres" not in calls[name], calls[name]
    assert "gpu" in table[job_of["gpu"]]["tres"], table[job_of["gpu"]]
    assert "gpu" not in table[job_of["host"]]["tres"], table[job_of["host"]]
    assert "cuda_visible=none" not in (tmp_path / "smoke" / "gpu.txt").read_text()
    # resources from the rule reached sbatch
    assert re.search(r"--mem 300\b", calls["python"]) and re.search(r"-t 5\b", calls["python"])
    # the plugin kept one SLURM log per job
    logs = sorted((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == 3, logs


# --------------------------------------------------------------------------- 2. tiny workflow

TRAIN_RULE = "train"  # the training rule (a Snakemake checkpoint) in workflow/rules/train.smk
# Result keys/columns that measure time or place, not the computation: not compared.
# sha256: a warm-started run records the digest of its parent model.pt's bytes, and two saves
# of the same weights differ in bytes (torch's zip archive records the name of the atomic
# write's temporary file); the parent's weights themselves are compared as tensors.
UNCOMPARED = re.compile(
    r"time|seconds|wall|elapsed|duration|date|host|checkpoint_dir|path|sha256", re.I
)
# Laid over config/tiny.yaml in both the local and the cluster run, to fit the test in a few
# minutes on 2 cores: one training run per group instead of five (with 30 steps, so that a
# training job is still running for some seconds after its first checkpoint: the window in
# which the test cancels it), the measurement grid cut from 20 jobs to 8, no NIS. Every rule
# of the workflow still runs, through sbatch, up to the paper.
CLUSTER_TEST_CONFIG = """\
scale: "cluster test: tiny scale, one training run per group"
training:
  checkpoint_every: 5
  snapshot_every: 30
  main: {L: 4, estimators: [reinforce], amp: [false], seeds: [1], steps: 30, batch_size: 16}
  large: {L: 4, estimators: [reinforce], amp: [false], seeds: [1], steps: 30, batch_size: 8, n_batches: 2,
          parent: {group: main, estimator: reinforce}}
chains:
  nis: false
measure:
  variants:
    - {estimator: rt, assembly: loop}
    - {estimator: reinforce, assembly: loop}
  table1:
    - {L: 4, batch_size: 4}
  table3: {L: [4, 8], batch_size: 1, estimators: [reinforce], assemblies: [loop], n_layers: 8, hidden: 4}
  table4: {L: 4, batch_size: 4, estimators: [rt, reinforce]}
  table5:
    rows:
      - {L: 4, batch_size: 4}
"""
TINY = ["--configfile", "config/tiny.yaml", "config/cluster-test.yaml"]


def _require_workflow() -> None:
    missing = [f for f in WORKFLOW_FILES if not (REPO / f).exists()]
    if missing:
        pytest.skip(
            "the tiny workflow is not in the tree yet (issue 7): missing " + ", ".join(missing)
        )


@pytest.fixture(scope="module")
def workflow_copy(scratch: Path) -> Path:
    """One snapshot of the workflow (what a user clones), taken once, so that every run of
    this module sees the same files even while the tree is being edited."""
    _require_workflow()
    dest = scratch / "workflow"
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".snakemake", "results")
    for item in WORKFLOW_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / item)
    (dest / "config" / "cluster-test.yaml").write_text(CLUSTER_TEST_CONFIG)
    return dest


def copy_workflow(snapshot: Path, dest: Path) -> Path:
    shutil.copytree(snapshot, dest, symlinks=True)
    return dest


def _targets() -> list[str]:
    """The whole paper; without LaTeX, every figure and table (the paper rule would fail)."""
    if shutil.which("latexmk", path=_path()) and shutil.which("pdflatex", path=_path()):
        return []
    return ["fig2", "fig3", "fig4", "fig5", "table1", "table2", "table3", "table4", "table5"]


# The deterministic part of the workflow: training (models, checkpoints, metrics, snapshots,
# acceptance) and the NMCMC chains with their analysis. Measurements are timings.
DETERMINISTIC = ("results/runs/train", "results/runs/chains", "results/state")
# ... and the targets that build it, for CLUSTER_TEST_CONFIG (paths of workflow/rules/common.smk)
DETERMINISTIC_TARGETS = [
    *(
        f"results/runs/train/{group}/L4-reinforce-fp32-s1/acceptance.csv"
        for group in ("main", "large")
    ),
    *(f"results/runs/chains/{fig}/analysis.json" for fig in ("fig3", "fig5")),
]


@pytest.fixture(scope="module")
def tiny_local(workflow_copy: Path, scratch: Path) -> Path:
    """The reference a cluster run must reproduce: the deterministic part of the tiny
    workflow (training and chains; not the timing measurements), run locally."""
    work = copy_workflow(workflow_copy, scratch / "tiny-local")
    t0 = time.monotonic()
    rc, out = snakemake(
        work, *DETERMINISTIC_TARGETS, "--cores", "2", *TINY, log="local.log", timeout=1800
    )
    if rc != 0:
        fail_with_log(
            f"tiny workflow failed locally (rc {rc}); the cluster test needs it", out, work
        )
    print(
        f"\n== local reference run (training and chains of the tiny workflow): {time.monotonic() - t0:.0f} s"
    )
    return work


@dataclass
class Victim:
    job: str
    comment: str
    checkpoint_dir: Path
    out_dir: Path
    checkpoint_step: int
    steps: int
    #: metrics rows up to the checkpoint, as the cancelled job wrote them (with its timings)
    rows: list[dict] = field(default_factory=list)


def _slurm_log(workdir: Path, job: str) -> Path | None:
    found = sorted((workdir / ".snakemake" / "slurm_logs").rglob(f"{job}.log"))
    return found[0] if found else None


def _training_command(workdir: Path, job: str) -> tuple[Path, Path, int] | None:
    """(checkpoint folder, output folder, steps) of a running training job, from its SLURM log
    (the job's own snakemake prints the shell command: printshellcmds)."""
    log = _slurm_log(workdir, job)
    text = log.read_text(errors="replace") if log else ""
    cmd = re.search(r"gaugeflow train\b[^\n]*", text)
    if not cmd:
        return None
    out = re.search(r"--out[ =](?:\$\(dirname )?([^\s)]+)", cmd.group(0))
    ckpt = re.search(r"--checkpoint-dir[ =](\S+)", cmd.group(0))
    steps = re.search(r"--steps[ =](\d+)", cmd.group(0))
    if not (out and steps):
        return None
    out_dir = Path(out.group(1))
    if out_dir.suffix == ".pt":  # --out $(dirname .../model.pt)
        out_dir = out_dir.parent
    ckpt_dir = Path(ckpt.group(1)) if ckpt else out_dir / "checkpoints"
    return workdir / ckpt_dir, workdir / out_dir, int(steps.group(1))


def _last_checkpoint(ckpt_dir: Path) -> int | None:
    steps = [
        int(m.group(1))
        for p in ckpt_dir.glob("ckpt_*.pt")
        if (m := re.match(r"ckpt_(\d+)", p.name))
    ]
    return max(steps) if steps else None


def _metrics_rows(path: Path, up_to: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [
            r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= up_to
        ]


def interrupt_training(
    workdir: Path,
    proc: subprocess.Popen,
    log: Path,
    only: str | None = None,
    after_step: int = 0,
    timeout: float = 1500,
) -> Victim:
    """scancel a training job once it has written a checkpoint (beyond `after_step`) and
    before it finishes; `only`: the SLURM comment (rule and wildcards) of the job to cancel.

    Watches each running training job in turn (its checkpoint folder every 50 ms); if one
    finishes before the test could cancel it, the next one is tried."""
    deadline = time.monotonic() + timeout
    run_id, missed = None, set()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail_with_log(
                f"the workflow ended before a training job could be cancelled mid-way (missed: {sorted(missed)})",
                log.read_text(),
                workdir,
            )
        if run_id is None:
            m = re.search(r"SLURM run ID: (\S+)", log.read_text(errors="replace"))
            run_id = m.group(1) if m else None
        running = []
        if run_id:
            out = _run(
                ["squeue", "-h", "--name", run_id, "-t", "RUNNING", "-o", "%i|%k"], check=False
            ).stdout
            running = [line.strip().partition("|")[::2] for line in out.splitlines() if "|" in line]
        for job, comment in running:
            if job in missed or not comment.startswith(f"rule_{TRAIN_RULE}"):
                continue
            if only is not None and comment != only:
                continue
            cmd = _training_command(workdir, job)
            if cmd is None:
                continue
            ckpt_dir, out_dir, steps = cmd
            for tick in range(100_000):
                step = _last_checkpoint(ckpt_dir)
                if step is not None and after_step < step < steps:
                    _run(["scancel", job])
                    rows = _metrics_rows(ckpt_dir / "metrics.csv", step)
                    print(
                        f"\n== scancel {job} ({comment}) at checkpoint step {step}/{steps} ({ckpt_dir})"
                    )
                    return Victim(job, comment, ckpt_dir, out_dir, step, steps, rows)
                if step == steps or (tick % 20 == 19 and job not in _running_jobs(run_id)):
                    missed.add(job)
                    print(
                        f"\n== training job {job} finished before it could be cancelled; trying the next"
                    )
                    break
                time.sleep(0.05)
        time.sleep(0.3)
    fail_with_log(
        "no training job with a checkpoint to cancel within the time limit",
        log.read_text(),
        workdir,
    )
    raise AssertionError  # unreachable


def _running_jobs(run_id: str) -> set[str]:
    out = _run(["squeue", "-h", "--name", run_id, "-t", "RUNNING", "-o", "%i"], check=False).stdout
    return set(out.split())


def _wait_final_state(cluster: Cluster, job: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        state = cluster.job_table([job]).get(job, {}).get("state") or cluster.jobcomp_states().get(
            job, "?"
        )
        if state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "?"):
            break
        time.sleep(0.5)
    return state


def _load(path: Path):
    if path.suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if path.suffix == ".json":
        import json

        return json.loads(path.read_text())
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return {"rows": list(csv.DictReader(fh))}
    raise ValueError(path)


def _differences(a, b, where: str, roots: tuple[str, str]) -> list[str]:
    """Where `a` and `b` differ, ignoring time/place-like keys; tensors and arrays exactly."""
    import numpy as np
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if UNCOMPARED.search(str(k)):
                continue
            if k not in a or k not in b:
                out.append(
                    f"{where}/{k}: only in {'the local run' if k in a else 'the cluster run'}"
                )
            else:
                out += _differences(a[k], b[k], f"{where}/{k}", roots)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{where}[{i}]", roots)
        ]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ"]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return (
            []
            if np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
            else [f"{where}: arrays differ"]
        )
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(roots[0], "<work>"), b.replace(roots[1], "<work>")
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def compare_deterministic_results(ref: Path, got: Path) -> list[str]:
    """Same training and chain files; equal models, checkpoints, metrics, chains, summaries."""

    def files(root: Path) -> set[Path]:
        return {
            p.relative_to(root)
            for sub in DETERMINISTIC
            for p in (root / sub).rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }

    ref_files, got_files = files(ref), files(got)
    problems = [f"only in the local run: {p}" for p in sorted(ref_files - got_files)]
    problems += [f"only in the cluster run: {p}" for p in sorted(got_files - ref_files)]
    compared = 0
    for rel in sorted(ref_files & got_files):
        if rel.suffix in (".pt", ".npz", ".csv", ".json"):
            compared += 1
            problems += _differences(
                _load(ref / rel), _load(got / rel), str(rel), (str(ref), str(got))
            )
    print(
        f"== {compared} result files equal to the local run's (models, checkpoints, metrics, chains)"
    )
    assert compared, "no model/metrics/chain files found to compare"
    return problems


def test_tiny_workflow_on_slurm_resumes_cancelled_training(
    cluster: Cluster, tiny_local: Path, workflow_copy: Path, scratch: Path
) -> None:
    """The tiny workflow through profiles/slurm: a training job scancel'ed after a checkpoint
    resumes from it when the workflow is run again, and every result equals the local run's."""
    work = copy_workflow(workflow_copy, scratch / "tiny-slurm")
    # (targets first: --configfile takes every word after it)
    args = [*_targets(), "--profile", "profiles/slurm", *TINY, *CLUSTER_FLAGS]

    # run 1 without retries, so that the cancelled job fails the run (the profile's
    # `retries: 1` would resubmit it at once; the rerun below takes the same path)
    t0 = time.monotonic()
    log1 = work / "slurm-run1.log"
    with open(log1, "w") as fh:
        proc = subprocess.Popen(
            _snakemake_cmd(*args, "--retries", "0"), cwd=work, env=_env(),
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            victim = interrupt_training(work, proc, log1)
            rc1 = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # snakemake cancels its SLURM jobs on SIGINT
                proc.wait(timeout=120)
    out1 = log1.read_text()
    ids1 = submissions(out1)
    report_jobs(cluster, f"tiny run 1, training cancelled ({time.monotonic() - t0:.0f} s)", ids1)
    assert rc1 != 0, "the workflow should fail when one of its jobs is cancelled"
    assert _wait_final_state(cluster, victim.job) == "CANCELLED"
    assert re.search(rf"\b{victim.job}\b.*CANCELLED|CANCELLED.*\b{victim.job}\b", out1), (
        "snakemake did not report the cancelled job"
    )
    left = _last_checkpoint(victim.checkpoint_dir)
    assert left is not None and left >= victim.checkpoint_step, (
        f"the checkpoints of the cancelled job are gone from {victim.checkpoint_dir}: keep them "
        "outside the rule's declared outputs (Snakemake deletes a failed job's outputs)"
    )
    assert victim.rows, (
        f"no metrics rows up to step {victim.checkpoint_step} in {victim.checkpoint_dir}"
    )

    # run 2: the same command a user types again, with the profile's `retries: 1`. The
    # resubmitted training is cancelled once more, after a checkpoint beyond the first one:
    # Snakemake retries it (attempt 2), which resumes again, and the run completes.
    t1 = time.monotonic()
    log2 = work / "slurm-run2.log"
    with open(log2, "w") as fh:
        proc = subprocess.Popen(
            _snakemake_cmd(*args), cwd=work, env=_env(),
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            again = interrupt_training(
                work, proc, log2, only=victim.comment, after_step=victim.checkpoint_step
            )
            rc2 = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    out2 = log2.read_text()
    ids2 = submissions(out2)
    report_jobs(cluster, f"tiny run 2, rerun ({time.monotonic() - t1:.0f} s)", ids2)
    if rc2 != 0:
        fail_with_log(f"rerun of the tiny workflow on SLURM failed (rc {rc2})", out2, work)

    cancelled = {victim.job, again.job}
    final = {job: _wait_final_state(cluster, job) for _, job in ids1 + ids2}
    expected = {job: "CANCELLED" if job in cancelled else "COMPLETED" for job in final}
    assert final == expected, f"SLURM job states {final}"
    gres = {job: row["tres"] for job, row in cluster.job_table(list(final)).items()}
    assert not [j for j, t in gres.items() if "gpu" in t], f"CPU config, yet GPUs requested: {gres}"
    resubmitted = [
        job
        for _, job in ids2
        if cluster.job_table([job]).get(job, {}).get("comment") == victim.comment
    ]
    assert len(resubmitted) == 2 and resubmitted[0] == again.job, (
        f"expected the rerun to submit {victim.comment} twice (cancelled, then retried): {resubmitted}"
    )

    # Each time it resumed rather than restarted: the rows of metrics.csv up to a cancelled
    # job's checkpoint are that job's own, timings included (a fresh start would have measured
    # new step times).
    for cut, how in ((victim, "rerun of the workflow"), (again, "retry (retries: 1)")):
        after = _metrics_rows(victim.out_dir / "metrics.csv", cut.checkpoint_step)
        assert after == cut.rows, (
            f"metrics up to step {cut.checkpoint_step} differ from those of cancelled job {cut.job}: "
            f"the {how} did not resume from its checkpoint"
        )
    print(
        f"== {victim.comment}: job {victim.job} cancelled at step {victim.checkpoint_step}, "
        f"rerun job {again.job} resumed and was cancelled at step {again.checkpoint_step}, "
        f"retry job {resubmitted[1]} resumed and completed {victim.steps} steps"
    )

    finals = [f"results/figures/fig{i}.{ext}" for i in (2, 3, 4, 5) for ext in ("pdf", "png")]
    finals += [f"results/tables/table{i}.{ext}" for i in (1, 2, 3, 4, 5) for ext in ("tex", "csv")]
    finals += [] if _targets() else ["results/paper.pdf", "results/provenance.json"]
    missing = [f for f in finals if not (work / f).is_file()]
    assert not missing, f"the cluster run did not produce {missing}"

    problems = compare_deterministic_results(tiny_local, work)
    assert not problems, "cluster run differs from the local run:\n" + "\n".join(problems[:40])


# --------------------------------------------------------------------------- 3. GPU planning


def test_tiny_workflow_requests_gpu_only_for_training_and_measuring(
    workflow_copy: Path, scratch: Path
) -> None:
    """With device: cuda, the profile plans gpu=1 for training/measurement jobs only (dry run,
    so it needs the SLURM binaries but no running cluster)."""
    work = copy_workflow(workflow_copy, scratch / "tiny-gpu")
    rc, out = snakemake(
        work, "--profile", "profiles/slurm", *TINY, "--config", "device=cuda", "-n", "--quiet", "host",
        log="dryrun-gpu.log", timeout=300,
    )  # fmt: skip
    if rc != 0:
        fail_with_log("dry run with device=cuda failed", out, work)
    jobs = re.findall(
        r"^(?:local)?(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", out, flags=re.M | re.S
    )
    assert jobs, "dry run listed no jobs"
    gpu_rules = {name for name, body in jobs if re.search(r"\bgpu=1\b", body)}
    cpu_rules = {name for name, body in jobs if not re.search(r"\bgpu=1\b", body)}
    print(f"\n== device=cuda: gpu=1 for {sorted(gpu_rules)}; none for {sorted(cpu_rules)}")
    assert {TRAIN_RULE, "measure"} <= gpu_rules, gpu_rules
    assert not any(r.startswith(TRAIN_RULE) for r in cpu_rules), cpu_rules
    assert not any(r.startswith(("fig", "table", "paper", "all", "report")) for r in gpu_rules), (
        gpu_rules
    )


# --------------------------------------------------------------------------- 4. two ranks


def test_two_task_training_through_srun_matches_one_process(
    cluster: Cluster, scratch: Path
) -> None:
    """One sbatch job of 2 tasks; srun starts `gaugeflow train` in each, the ranks meet through
    the SLURM variables (SLURM_PROCID, SLURM_STEP_NUM_TASKS, the step's node list) and train
    one run: its weights and metrics equal a local 1-process run of the same parts to 1e-10."""
    import torch
    import yaml

    work = scratch / "ddp"
    work.mkdir()
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "L": 4, "beta": 2.0, "kappa": 0.276, "estimator": "reinforce", "steps": 4,
        "batch_size": 8, "n_batches": 2, "lr": 5e-3, "dtype": "float64", "device": "cpu",
        "seed": 3, "checkpoint_every": 2, "log_every": 1,
        "flow": {"n_layers": 8, "hidden_channels": 4, "dilations": [1]},
    }))  # fmt: skip
    train = f"{sys.executable} -m gaugeflow train --config {config} --no-progress --threads 1"
    env = {**_env(), "PYTHONPATH": str(REPO / "src")}
    _run([*train.split(), "--out", work / "local"], timeout=600, env=env)

    job = _run(
        ["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", "--mem=2000",
         "-o", work / "slurm.log", "-D", work,
         f"--wrap=srun --ntasks=2 --cpus-per-task=1 {train} --out {work / 'srun'} "
         "--dist-timeout 120"],
        env=env,
    ).stdout.strip().split(";")[0]  # fmt: skip
    state = _wait_final_state(cluster, job, timeout=600)
    log = (work / "slurm.log").read_text(errors="replace") if (work / "slurm.log").exists() else ""
    assert state == "COMPLETED", f"job {job}: {state}\n{log[-3000:]}"
    assert "2 ranks" in log and log.count("train: completed") == 1, log[-3000:]

    a = torch.load(work / "local" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(work / "srun" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= 1e-10, k
    rows = [_load(work / run / "metrics.csv")["rows"] for run in ("local", "srun")]
    assert len(rows[0]) == len(rows[1]) == 4
    for ra, rb in zip(*rows, strict=True):
        for key in ("loss", "free_energy", "ess", "logq_mean", "logp_mean"):
            assert abs(float(ra[key]) - float(rb[key])) <= 1e-10 * max(1, abs(float(ra[key])))
