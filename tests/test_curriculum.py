"""Curriculum in the workflow (workflow/rules/curriculum.smk): parents and pretraining stages.

Dry runs check the chain of jobs and the refusals (seconds); one end-to-end run trains two
pretraining stages and the run they initialise at a toy scale, checks that each job started
from the model before it (the SHA-256 recorded by `gaugeflow train --init-from`), and that
changing the second stage reruns only that stage and what follows it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, planned_commands, snakemake

RUN = "results/runs/train/main/L4-rt-fp32-s1"
STAGES = "results/runs/pretrain/main/L4-rt-fp32-s1"


def curriculum_config(tmp_path: Path, edit=None, name="curriculum.yaml") -> Path:
    cfg = yaml.safe_load((REPO / "config/tiny.yaml").read_text())
    cfg["training"]["checkpoint_every"] = 2
    main = cfg["training"]["main"]
    main.update(steps=4, estimators=["rt"], amp=[False])
    main["pretrain"] = [{"L": 4, "kappa": 0.0, "steps": 3}, {"L": 4, "steps": 2}]
    cfg["training"]["large"]["parent"] = {"group": "main", "estimator": "rt"}
    cfg["chains"]["fig3"]["estimator"] = "rt"
    if edit is not None:
        edit(cfg)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def init_from(command: str) -> str | None:
    found = re.search(r"--init-from (\S+)", command)
    return found.group(1) if found else None


def planned_large_run(tmp_path: Path, config: Path) -> dict[str, str]:
    """The commands `snakemake -n -p` plans for large's RE run and what it needs."""
    result = snakemake(
        "results/runs/train/large/L4-reinforce-fp32-s1/model.pt",
        "-n",
        "-p",
        "--cores",
        "1",
        "--configfile",
        str(config),
        workdir=tmp_path / "work",
    )
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    return planned_commands(text)


def test_dry_run_chains_the_stages_and_the_parent(tmp_path):
    config = curriculum_config(tmp_path)
    commands = planned_large_run(tmp_path, config)
    stage1, stage2 = f"{STAGES}/stage1/model.pt", f"{STAGES}/stage2/model.pt"
    assert init_from(commands[stage1]) is None  # the first stage starts from scratch
    assert "--kappa 0.0" in commands[stage1] and "--steps 3" in commands[stage1]
    assert init_from(commands[stage2]) == stage1
    assert "--kappa 0.276" in commands[stage2] and "--steps 2" in commands[stage2]
    assert init_from(commands[f"{RUN}/model.pt"]) == stage2
    # large's reinforce run starts from main's r.t. run (the parent mapping fixes estimator)
    large = commands["results/runs/train/large/L4-reinforce-fp32-s1/model.pt"]
    assert init_from(large) == f"{RUN}/model.pt"
    # every training job stops before its runtime resource (10 min) minus the margin
    for command in commands.values():
        assert "--time-limit 480" in command
    assert not (tmp_path / "work" / "results").exists()


def _unknown_parent(cfg):
    cfg["training"]["large"]["parent"] = "mian"


def _cycle(cfg):
    cfg["training"]["main"]["parent"] = "large"
    cfg["training"]["large"]["parent"] = "main"


def _self(cfg):
    cfg["training"]["large"]["parent"] = "large"


def _untrained_parent_run(cfg):
    cfg["training"]["large"]["parent"] = {"group": "main", "estimator": "path"}


def _untrained_parent_amp(cfg):
    cfg["training"]["large"]["amp"] = [False, True]


def _stage_typo(cfg):
    cfg["training"]["main"]["pretrain"][1]["stepz"] = 2


def _stage_lattice(cfg):
    cfg["training"]["main"]["pretrain"][0]["L"] = 6


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_unknown_parent, "training.large.parent = 'mian' names no training group"),
        (_cycle, "a cycle of parents: main -> large -> main"),
        (_self, "a cycle of parents: large -> large"),
        (_untrained_parent_run, "training.main never trains estimator ['path']"),
        (_untrained_parent_amp, "training.main never trains amp [True]"),
        (_stage_typo, "stepz"),
        (_stage_lattice, "multiple of 4"),
    ],
    ids=["unknown", "cycle", "self", "run", "amp", "stage-typo", "stage-lattice"],
)
def test_bad_curriculum_is_refused_before_any_job(tmp_path, edit, named):
    workdir = tmp_path / "work"
    config = curriculum_config(tmp_path, edit)
    result = snakemake("--cores", "1", "--configfile", str(config), workdir=workdir)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in text, text[-3000:]
    assert not (workdir / "results").exists()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cosine_stage2(cfg):
    cfg["training"]["main"]["pretrain"][1]["lr_schedule"] = "cosine"


def _cosine_stage2_longer(cfg):
    _cosine_stage2(cfg)
    cfg["training"]["main"]["pretrain"][1].update(steps=3)


@pytest.mark.workflow
def test_two_stages_chain_end_to_end_and_rerun_only_what_changed(tmp_path):
    workdir = tmp_path / "work"
    # stage 2 on a cosine schedule: its learning rates depend on its steps, so resuming its
    # old state with other steps is refused (gaugeflow train); the rerun below must start over
    config = curriculum_config(tmp_path, _cosine_stage2)
    target = f"{RUN}/model.pt"
    run = snakemake(target, "--cores", "1", "--configfile", str(config), workdir=workdir)
    logs = "\n".join(p.read_text()[-1500:] for p in (workdir / "results/logs").rglob("*.log"))
    assert run.returncode == 0, run.stderr[-3000:] + logs
    stage1, stage2 = workdir / STAGES / "stage1", workdir / STAGES / "stage2"
    final = workdir / RUN
    expect = [(stage1, None, 3, 0.0), (stage2, stage1, 2, 0.276), (final, stage2, 4, 0.276)]
    for folder, parent, steps, kappa in expect:
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["step"] == steps and summary["config"]["kappa"] == kappa
        if parent is None:
            assert not summary.get("parent")
        else:
            assert summary["parent"]["sha256"] == _sha256(parent / "model.pt")
            assert Path(summary["parent"]["path"]).name == "model.pt"

    # a change of stage 2 reruns stage 2 and the run it initialises, not stage 1
    changed = curriculum_config(tmp_path, _cosine_stage2_longer, name="changed.yaml")
    plan = snakemake(target, "-n", "--cores", "1", "--configfile", str(changed), workdir=workdir)
    text = plan.stdout + plan.stderr
    assert plan.returncode == 0, text[-3000:]
    planned = set(planned_commands(text))
    assert planned == {f"{STAGES}/stage2/model.pt", target}, planned

    # and for real: the run starts over from the new stage 2 (its resumable state, started
    # from the old one, is dropped), stage 1 is untouched
    stage1_sha = _sha256(stage1 / "model.pt")
    rerun = snakemake(target, "--cores", "1", "--configfile", str(changed), workdir=workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _sha256(stage1 / "model.pt") == stage1_sha
    stage2_summary = json.loads((stage2 / "summary.json").read_text())
    assert stage2_summary["step"] == 3
    # the state records the command that made it (the reset compares it on the next run)
    state2 = workdir / "results/state/pretrain/main/L4-rt-fp32-s1/stage2"
    flags = (state2 / "flags.txt").read_text()
    assert "--steps 3" in flags and "--lr-schedule cosine" in flags
    summary = json.loads((final / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4
    assert summary["parent"]["sha256"] == _sha256(stage2 / "model.pt")


def _schedules(cfg):
    cfg["training"]["main"]["pretrain"][1]["lr_schedule"] = "cosine"
    cfg["training"]["large"]["lr_schedule"] = "cosine"


def test_lr_schedule_reaches_each_job_from_its_stage_group_or_training(tmp_path):
    """training.lr_schedule (default constant) < the group's < the stage's."""
    config = curriculum_config(tmp_path, _schedules)
    commands = planned_large_run(tmp_path, config)
    assert "--lr-schedule constant" in commands[f"{STAGES}/stage1/model.pt"]
    assert "--lr-schedule cosine" in commands[f"{STAGES}/stage2/model.pt"]
    assert "--lr-schedule constant" in commands[f"{RUN}/model.pt"]
    large = commands["results/runs/train/large/L4-reinforce-fp32-s1/model.pt"]
    assert "--lr-schedule cosine" in large


def test_unknown_lr_schedule_is_refused_before_any_job(tmp_path):
    workdir = tmp_path / "work"
    config = curriculum_config(
        tmp_path, lambda cfg: cfg["training"]["large"].update(lr_schedule="cosin")
    )
    result = snakemake("--cores", "1", "--configfile", str(config), workdir=workdir)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "cosin" in text and "lr_schedule" in text, text[-3000:]
    assert not (workdir / "results").exists()
