"""The Snakemake workflow: plans for every config, lint, config validation, tiny end to end.

Dry runs and lint take seconds; the end-to-end run of config/tiny.yaml (marked `workflow`)
trains, samples and measures for real, at a toy scale, in a temporary folder.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake") if (BIN / "snakemake").exists() else "snakemake"
CONFIGS = ["config.yaml", "config/paper.yaml", "config/tiny.yaml"]
TRAIN_OUTPUT = re.compile(
    r"results/runs/train/(main|large)/L(\d+)-(\w+)-(fp32|amp)-s(\d+)/model\.pt"
)


def snakemake(
    *args: str,
    workdir: Path | None = None,
    timeout: int = 300,
    venv_on_path: bool = True,
    **env_extra: str,
):
    """Run snakemake on the repository's Snakefile (results in `workdir`, if given).

    ``venv_on_path=False`` runs it as the README does, ``.venv/bin/snakemake`` with the
    environment's bin folder *not* on PATH: the workflow itself must find the CLI.
    """
    path = os.environ["PATH"]
    if venv_on_path or SNAKEMAKE == "snakemake":
        path = f"{BIN}{os.pathsep}{path}"
    else:
        path = os.pathsep.join(p for p in path.split(os.pathsep) if Path(p or ".") != BIN)
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=path)
    env.update(env_extra)
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile")]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    return subprocess.run(
        [*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def planned_commands(text: str) -> dict[str, str]:
    """output model.pt -> its shell command, from `snakemake -n -p` output."""
    commands = {}
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} )", text):
        out = re.search(r"output: (\S+/model\.pt)", block)
        cmd = re.search(r"Shell command: (.*)", block)
        if out and cmd:
            commands[out.group(1).rstrip(",")] = cmd.group(1)
    return commands


def planned_training_runs(output: str) -> set[tuple]:
    return {
        (group, int(L), est, prec == "amp", int(seed))
        for group, L, est, prec, seed in TRAIN_OUTPUT.findall(output)
    }


def configured_training_runs(config_file: str) -> set[tuple]:
    cfg = yaml.safe_load((REPO / config_file).read_text())
    runs = set()
    for group in ("main", "large"):
        g = cfg["training"][group]
        for est, amp, seed in itertools.product(g["estimators"], g["amp"], g.get("seeds", [1])):
            runs.add((group, g["L"], est, amp, seed))
    return runs


@pytest.mark.parametrize("config_file", CONFIGS)
def test_dry_run_plans_every_training_run_of_the_config(config_file, tmp_path):
    result = snakemake("-n", "--cores", "2", "--configfile", config_file, workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = planned_training_runs(result.stdout + result.stderr)
    expected = configured_training_runs(config_file)
    assert planned == expected, f"missing {expected - planned}, extra {planned - expected}"
    assert not (tmp_path / "results").exists()


def test_paper_config_trains_both_estimators_with_and_without_amp_at_16_and_24():
    runs = configured_training_runs("config/paper.yaml")
    for est, amp in itertools.product(("rt", "reinforce"), (False, True)):
        assert ("main", 16, est, amp, 1) in runs
    assert ("large", 24, "reinforce", False, 1) in runs


def test_lint_is_clean():
    result = snakemake("--lint")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "Lints for" not in text, text[-3000:]


def test_named_target_plans_only_what_it_needs(tmp_path):
    # the target first: --configfile takes every word after it
    result = snakemake(
        "table3", "-n", "--cores", "2", "--configfile", "config/tiny.yaml", workdir=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", text, flags=re.M))
    assert "table3" in jobs and "measure" in jobs
    assert "train" not in jobs and "paper" not in jobs
    assert "results/runs/measure/timing" not in text


def bad_config(tmp_path: Path, edit) -> Path:
    cfg = yaml.safe_load((REPO / "config/tiny.yaml").read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _typo(cfg):
    cfg["training"]["checkpoint_evry"] = cfg["training"].pop("checkpoint_every")


def _wrong_type(cfg):
    cfg["training"]["main"]["steps"] = "twelve"


def _bad_lattice(cfg):
    cfg["training"]["large"]["L"] = 10


def _bad_enum(cfg):
    cfg["measure"]["table3"]["estimators"] = ["rt", "reinforcee"]


def _bad_measure_lattice(cfg):
    cfg["measure"]["table1"][0]["L"] = 6


def _missing_required(cfg):
    del cfg["scale"]


def _untrained_chain(cfg):
    cfg["chains"]["fig3"]["estimator"] = "path"


def _amp_steps_without_amp(cfg):
    cfg["training"]["large"]["amp_steps"] = 3


def _bad_wait_policy(cfg):
    cfg["omp_wait_policy"] = "spin"


def _bad_symmetry(cfg):
    cfg["chains"]["fig5"]["symmetrize"] = "T+T2"


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_typo, "checkpoint_evry"),
        (_wrong_type, "steps"),
        (_bad_lattice, "multiple of 4"),
        (_bad_enum, "reinforcee"),
        (_bad_measure_lattice, "['measure']['table1'][0]['L']"),
        (_missing_required, "'scale' is a required property"),
        (_untrained_chain, "chains.fig3.estimator"),
        (_amp_steps_without_amp, "training.large.amp_steps is set"),
        (_bad_wait_policy, "'spin' is not one of ['PASSIVE', 'ACTIVE']"),
        (_bad_symmetry, "chains.fig5.symmetrize: symmetry 'T+T2': name one translation group"),
    ],
    ids=[
        "typo",
        "type",
        "lattice",
        "enum",
        "measure-lattice",
        "required",
        "cross-key",
        "amp-steps",
        "wait-policy",
        "symmetry",
    ],  # fmt: skip
)
def test_invalid_config_stops_before_any_job_naming_the_key(tmp_path, edit, named):
    workdir = tmp_path / "work"
    result = snakemake(
        "--cores", "1", "--configfile", str(bad_config(tmp_path, edit)), workdir=workdir
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in text, text[-3000:]
    assert not (workdir / "results").exists()


def test_omp_wait_policy_comes_from_the_config_unless_the_environment_sets_it(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    tiny = ["-n", "--cores", "1", "--configfile", "config/tiny.yaml"]
    for extra, expected in (([], "PASSIVE"), (["--config", "omp_wait_policy=ACTIVE"], "ACTIVE")):
        result = snakemake(*tiny, *extra, workdir=tmp_path / expected)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"jobs run with OMP_WAIT_POLICY={expected}" in result.stderr
    # a policy in the environment wins, and the workflow says nothing
    result = snakemake(
        *tiny,
        "--config",
        "omp_wait_policy=ACTIVE",
        workdir=tmp_path / "env",
        OMP_WAIT_POLICY="PASSIVE",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jobs run with OMP_WAIT_POLICY" not in result.stderr


def planned_with(tmp_path: Path, edit) -> dict[str, str]:
    """`planned_commands` of a dry run of the tiny config as `edit` changes it."""
    result = snakemake(
        "-n", "-p", "--cores", "1", "--configfile", str(bad_config(tmp_path, edit)),
        workdir=tmp_path / "work",
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    return planned_commands(text)


def test_each_run_trains_its_steps_amp_steps_then_steps_by_estimator(tmp_path):
    def edit(cfg):
        cfg["training"]["main"].update(steps=7, steps_by_estimator={"reinforce": 9}, amp_steps=5)

    steps = {
        re.fullmatch(r"results/runs/train/main/(L4-\w+-\w+)-s1/model\.pt", out).group(1): int(
            re.search(r"--steps (\d+)", command).group(1)
        )
        for out, command in planned_with(tmp_path, edit).items()
        if out.startswith("results/runs/train/main/")
    }
    assert steps == {
        "L4-rt-fp32": 7, "L4-rt-amp": 5, "L4-reinforce-fp32": 9, "L4-reinforce-amp": 5,
    }  # fmt: skip


def planned_priorities(tmp_path: Path, edit, name: str) -> dict[str, int]:
    """model.pt of each training job or stage, chain.npz of each chain's sampling job -> its
    priority, in a dry run (2 cores) of the tiny config as `edit` changes it."""
    result = snakemake(
        "-n", "--cores", "2", "--configfile", str(bad_config(tmp_path, edit)),
        workdir=tmp_path / name,
    )  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    found = {}
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} )", text):
        out = re.search(r"output: (\S+/(?:model\.pt|chain\.npz))", block)
        if out:
            prio = re.search(r"priority: (\d+)", block)
            found[out.group(1).rstrip(",")] = int(prio.group(1)) if prio else 0
    return found


def test_the_longest_training_chain_is_scheduled_first(tmp_path):
    """The parent of the warm-started group outranks every other training job, its child
    comes next, and a pretraining stage ranks with the work left on its chain."""

    def edit(cfg):
        cfg["training"]["main"].update(
            steps=20, steps_by_estimator={"reinforce": 400}, amp_steps=20
        )
        cfg["training"]["large"].update(
            steps=300, parent={"group": "main", "estimator": "reinforce"}
        )

    prio = planned_priorities(tmp_path, edit, "work")
    chains = {k: prio.pop(k) for k in list(prio) if k.endswith("chain.npz")}
    parent = "results/runs/train/main/L4-reinforce-fp32-s1/model.pt"
    child = [k for k in prio if k.startswith("results/runs/train/large/")]
    assert prio[parent] == 100 and len(child) == 1
    others = [v for k, v in prio.items() if k != parent and k not in child]
    assert others and 0 < max(others) < prio[child[0]] < prio[parent]
    # the chains (Figs. 3 and 5) come after every training job, before all else (priority 0)
    assert len(chains) == 2 and 0 < max(chains.values()) < min(prio.values())

    def staged(cfg):
        edit(cfg)
        cfg["training"]["large"]["pretrain"] = [{"L": 4, "steps": 50}, {"L": 4, "steps": 50}]

    prio = planned_priorities(tmp_path, staged, "staged")
    stages = sorted((k, v) for k, v in prio.items() if "/pretrain/" in k)
    assert len(stages) == 2
    run = next(v for k, v in prio.items() if k.startswith("results/runs/train/large/"))
    assert prio[parent] > stages[0][1] > stages[1][1] > run > 0


def test_charge_symmetric_architecture_reaches_every_training_job(tmp_path):
    def edit(cfg):
        cfg["architecture"]["charge_symmetric"] = True
        cfg["training"]["large"]["pretrain"] = [{"L": 4, "steps": 3}]

    commands = [c for c in planned_with(tmp_path, edit).values() if "gaugeflow train" in c]
    assert len(commands) > 2 and any("--snapshot-every 0" in c for c in commands)  # a stage
    assert all("--charge-symmetric" in c for c in commands), commands
    # off where the architecture does not name it (the tiny config); config.yaml turns it on
    plain = snakemake(
        "-n", "-p", "--cores", "1", "--configfile", str(REPO / "config/tiny.yaml"),
        workdir=tmp_path / "plain",
    )  # fmt: skip
    assert plain.returncode == 0
    assert "--charge-symmetric" not in plain.stdout + plain.stderr
    default = snakemake("-n", "-p", "--cores", "1", workdir=tmp_path / "default")
    assert default.returncode == 0
    planned = planned_commands(default.stdout + default.stderr)
    trains = [c for c in planned.values() if "gaugeflow train" in c]
    assert trains and all("--charge-symmetric" in c for c in trains)


def test_config_yaml_is_the_default_and_never_leaks_into_another_config(tmp_path):
    """Plain `snakemake` reads config.yaml (through the workflow profile); --configfile
    replaces it: none of its keys (the L = 8 warm start and learning rate, amp_steps, the
    cosine schedule, the holonomy layers) reach the paper's runs."""
    default = snakemake("-n", "-p", "--cores", "2", workdir=tmp_path / "a")
    assert default.returncode == 0, default.stderr[-3000:]
    runs = planned_commands(default.stdout + default.stderr)
    ours = yaml.safe_load((REPO / "config.yaml").read_text())["training"]
    large = runs[f"results/runs/train/large/L{ours['large']['L']}-reinforce-fp32-s1/model.pt"]
    assert "--init-from" in large and "--lr-schedule cosine" in large
    # a group's lr overrides training.lr for that group's runs only
    assert f"--lr {ours['large']['lr']} " in large and ours["large"]["lr"] != ours["lr"]
    main_re = runs[f"results/runs/train/main/L{ours['main']['L']}-reinforce-fp32-s1/model.pt"]
    assert f"--lr {ours['lr']} " in main_re
    paper = snakemake(
        "-n", "-p", "--cores", "2", "--configfile", "config/paper.yaml", workdir=tmp_path / "b"
    )
    assert paper.returncode == 0, paper.stderr[-3000:]
    runs = planned_commands(paper.stdout + paper.stderr)
    runs = {
        out.removeprefix("results/runs/train/").removesuffix("/model.pt"): command
        for out, command in runs.items()
        if out.startswith("results/runs/train/")
    }
    assert runs, paper.stdout[-3000:]
    for name, command in runs.items():
        assert "--init-from" not in command and "--holonomy" not in command, name
        assert "--lr-schedule constant" in command, name
    assert "--steps 120000" in runs["main/L16-reinforce-amp-s1"]
    assert "--steps 120000" in runs["large/L24-reinforce-fp32-s1"]
    assert "--steps 40000" in runs["main/L16-rt-fp32-s1"]


def test_without_the_profile_and_a_configfile_the_workflow_names_the_flag(tmp_path):
    result = snakemake("-n", "--workflow-profile", "none", workdir=tmp_path / "work")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no configuration: pass --configfile config.yaml" in text, text[-3000:]
    assert not (tmp_path / "work" / "results").exists()


def test_lattice_error_names_the_key_path(tmp_path):
    result = snakemake("-n", "--configfile", str(bad_config(tmp_path, _bad_lattice)))
    assert "['training']['large']['L']" in result.stdout + result.stderr


@pytest.mark.workflow
@pytest.mark.slow
def test_tiny_config_end_to_end_builds_every_figure_table_and_the_paper(tmp_path):
    start = time.perf_counter()
    # as the README runs it: .venv/bin/snakemake, the environment not activated
    run = snakemake(
        "--cores",
        "2",
        "--configfile",
        "config/tiny.yaml",
        workdir=tmp_path,
        timeout=1800,
        venv_on_path=False,
    )
    elapsed = time.perf_counter() - start
    latex = shutil.which("latexmk") is not None and shutil.which("pdflatex") is not None
    results = tmp_path / "results"
    logs = (
        "\n".join(
            f"== {p}\n{p.read_text(errors='replace')[-1500:]}"
            for p in sorted((results / "logs").rglob("*.log"))
            if "rror" in p.read_text(errors="replace")
        )
        if (results / "logs").exists()
        else ""
    )
    if latex:
        assert run.returncode == 0, run.stderr[-4000:] + logs
    for fig in ("fig2", "fig3", "fig4", "fig5"):
        for ext in ("pdf", "png"):
            path = results / "figures" / f"{fig}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or empty"
    for table in ("table1", "table2", "table3", "table4", "table5"):
        tex = (results / "tables" / f"{table}.tex").read_text()
        assert r"\begin{tabular}" in tex and r"\bottomrule" in tex
        assert (results / "tables" / f"{table}.csv").stat().st_size > 0
    assert (results / "provenance.json").is_file()
    if latex:
        assert (results / "paper.pdf").read_bytes()[:5] == b"%PDF-"
    else:
        assert "apt-get install" in run.stderr, "no LaTeX: the paper rule must say how to get it"
    print(f"tiny workflow: {elapsed:.0f} s wall on --cores 2")

    # nothing left to do, and a report with every figure and table
    again = snakemake("-n", "--cores", "2", "--configfile", "config/tiny.yaml", workdir=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
    report = snakemake(
        "--configfile",
        "config/tiny.yaml",
        "--report",
        "results/report.html",
        workdir=tmp_path,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    html = (results / "report.html").read_text(errors="replace")
    for name in ("fig2.png", "fig5.png", "table1.csv", "table5.csv"):
        assert name in html, f"{name} not in the report"

    # training state (checkpoints) is never a declared output: a failed job cannot delete it
    state = list((results / "state").rglob("checkpoints"))
    assert state, "training kept no checkpoints under results/state"
    listing = snakemake(
        "--configfile", "config/tiny.yaml", "--delete-all-output", "--dry-run", workdir=tmp_path
    )
    declared = listing.stdout + listing.stderr
    assert "results/runs/train" in declared, declared[-2000:]
    assert "results/state" not in declared

    # without LaTeX only the paper job fails, saying how to install it
    no_latex = snakemake(
        "paper",
        "--cores",
        "1",
        "--forcerun",
        "paper",
        "--configfile",
        "config/tiny.yaml",
        workdir=tmp_path,
        GAUGEFLOW_LATEXMK="latexmk-not-installed",
    )
    assert no_latex.returncode != 0
    message = no_latex.stdout + no_latex.stderr
    assert "apt-get install -y --no-install-recommends texlive-latex-base" in message
    # ... and said so before the job ran, with the way to everything but the PDF
    warning = message.find("latexmk-not-installed or pdflatex not found")
    assert 0 <= warning < message.find("rule paper:"), message[-3000:]
    assert "snakemake all_but_pdf" in message
    assert (results / "tables" / "table5.tex").is_file()  # nothing else was redone or removed


# --- measurements run alone (issue 16) ---------------------------------------------------

MEASURE_ALONE = ("timing", "ops", "memory")
MEASURE_RULES = ("measure", "measure_timing_row")


def measured_kind(block: dict[str, str]) -> str | None:
    """The kind a job block measures (a timing row measures timing), None if it measures none."""
    if block["rule"] == "measure_timing_row":
        return "timing"
    if block["rule"] == "measure":
        return re.search(r"kind=(\w+)", block["wildcards"]).group(1)
    return None


def job_blocks(text: str) -> list[dict[str, str]]:
    """The job blocks Snakemake prints (dry run or real run): rule, jobid, wildcards,
    threads, shell command, and the position of the block in the output."""
    blocks = []
    for m in re.finditer(r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", text, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", m.group(2), re.M))
        fields["rule"], fields["pos"] = m.group(1), m.start()
        shell = re.match(r"Shell command: (.*)", text[m.end() :])
        fields["shell"] = shell.group(1) if shell else ""
        blocks.append(fields)
    return blocks


def test_timing_ops_and_memory_jobs_hold_every_core_and_measure_on_the_configured_threads(
    tmp_path,
):
    result = snakemake(
        "-n", "-p", "--cores", "3", "--configfile", "config/tiny.yaml", workdir=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measures = [b for b in job_blocks(result.stdout + result.stderr) if measured_kind(b)]
    kinds = {measured_kind(b) for b in measures}
    assert kinds == {"timing", "dag", "ops", "memory"}
    for b in measures:
        kind = measured_kind(b)
        # the measurement itself: resources.measure.threads of config/tiny.yaml
        assert " --threads 1 " in b["shell"], b["shell"]
        if kind in MEASURE_ALONE:  # all 3 cores held: the scheduler can start nothing beside
            assert b.get("threads") == "3", b
            assert "slurm_extra=--exclusive" in b["resources"], b
        else:  # graph sizes do not depend on the load
            assert b.get("threads", "1") == "1", b
            assert "slurm_extra=--exclusive" not in b["resources"], b


def test_measure_exclusive_false_lets_measurements_share_the_machine(tmp_path):
    config = bad_config(tmp_path, lambda cfg: cfg["measure"].update(exclusive=False))
    result = snakemake("-n", "-p", "--cores", "3", "--configfile", str(config), workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    measures = [b for b in job_blocks(result.stdout + result.stderr) if measured_kind(b)]
    assert {measured_kind(b) for b in measures} == {"timing", "dag", "ops", "memory"}
    for b in measures:
        assert b.get("threads", "1") == "1" and "--exclusive" not in b["resources"], b


def test_each_table1_row_is_one_job_timing_its_variants_together(tmp_path):
    measure = yaml.safe_load((REPO / "config/tiny.yaml").read_text())["measure"]
    variants = measure["variants"]
    result = snakemake(
        "-n", "-p", "table1", "--cores", "2", "--configfile", "config/tiny.yaml",
        workdir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = job_blocks(result.stdout + result.stderr)
    rows = [b for b in blocks if b["rule"] == "measure_timing_row"]
    assert len(rows) == len(measure["table1"]) and not [b for b in blocks if b["rule"] == "measure"]
    for b in rows:
        assert "gaugeflow measure timing-row" in b["shell"]
        # every column of the row, each with its own record, in the order of measure.variants
        pairs = re.findall(r"--variant (\S+) --out (\S+)", b["shell"].split(")")[0])
        expected = [f"{v['estimator']}:{'amp' if v.get('amp') else 'fp32'}:{v['assembly']}"
                    for v in variants]  # fmt: skip
        assert [spec for spec, _ in pairs] == expected, b["shell"]
        for spec, out in pairs:
            assert out.startswith("results/runs/measure/timing/")
            assert "-".join(spec.split(":")) in out
        assert b["shell"].endswith("|| exit 1")  # config/tiny.yaml: on_failure: stop

    # on_failure: record: a crash leaves a 'crashed' record for every column
    record = bad_config(tmp_path, lambda cfg: cfg.update(on_failure="record"))
    result = snakemake(
        "-n", "-p", "table1", "--cores", "2", "--configfile", str(record), workdir=tmp_path
    )
    rows = [
        b for b in job_blocks(result.stdout + result.stderr) if b["rule"] == "measure_timing_row"
    ]
    assert rows and all(b["shell"].count("gaugeflow record-failure") == len(variants) for b in rows)

    one_by_one = bad_config(tmp_path, lambda cfg: cfg["measure"].update(interleave=False))
    result = snakemake(
        "-n", "table1", "--cores", "2", "--configfile", str(one_by_one), workdir=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = job_blocks(result.stdout + result.stderr)
    assert not [b for b in blocks if b["rule"] == "measure_timing_row"]
    timing = [b for b in blocks if b["rule"] == "measure" and measured_kind(b) == "timing"]
    assert len(timing) == len(measure["table1"]) * len(variants)


@pytest.mark.workflow
@pytest.mark.slow
def test_timing_jobs_never_share_the_machine_with_other_jobs(tmp_path):
    """A real run of Tables 1 and 3 of config/tiny.yaml on 2 cores: while a timing job runs,
    no other job runs; the dag jobs (not exclusive) do run two at a time."""
    run = snakemake(
        "table1", "table3", "--cores", "2", "--configfile", "config/tiny.yaml",
        workdir=tmp_path, timeout=1200,
    )  # fmt: skip
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-4000:]
    events = [(b["pos"], "start", b) for b in job_blocks(text) if "jobid" in b]
    for m in re.finditer(r"^Finished job(?:id:)? (\d+)", text, re.M):
        events.append((m.start(), "end", m.group(1)))
    running: dict[str, bool] = {}  # jobid -> must run alone
    overlaps = timing_jobs = 0
    for _, what, item in sorted(events, key=lambda e: e[0]):
        if what == "end":
            running.pop(item, None)
            continue
        alone = measured_kind(item) in MEASURE_ALONE
        timing_jobs += alone
        assert not alone or not running, f"job {item['jobid']} started beside {running}"
        assert not any(running.values()), f"job {item['jobid']} started beside a timing job"
        overlaps += bool(running)
        running[item["jobid"]] = alone
    measure = yaml.safe_load((REPO / "config/tiny.yaml").read_text())["measure"]
    assert timing_jobs == len(measure["table1"]), timing_jobs  # one job per row
    assert overlaps > 0, "no two jobs ever ran together: the check above proves nothing"


# --- no LaTeX: said within seconds, with the way to all but the PDF (issue 16) -----------


def test_all_but_pdf_plans_every_figure_and_table_but_no_latex(tmp_path):
    result = snakemake(
        "all_but_pdf", "-n", "--cores", "2", "--configfile", "config/tiny.yaml", workdir=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {b["rule"] for b in job_blocks(result.stdout + result.stderr)}
    assert {"provenance", "macros", "measure", "train", "table1", "fig2"} <= jobs, jobs
    assert "paper" not in jobs


def test_make_paper_without_latex_stops_before_any_job_and_names_make_figures():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run = subprocess.run(
        ["make", "--no-print-directory", "latex", "LATEX_INSTALL=no"],
        cwd=REPO,
        env=dict(os.environ, GAUGEFLOW_LATEXMK="latexmk-not-installed"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "make figures" in run.stderr and "apt-get install" in run.stderr, run.stderr
    # the check comes first: `make paper` runs it before the set-up and any job
    dry = subprocess.run(
        ["make", "-n", "paper"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0
    assert dry.stdout.find("command -v") < dry.stdout.find("snakemake --cores"), dry.stdout
