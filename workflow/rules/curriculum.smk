# Curriculum: warm-started training as a chain of jobs (issue 14).
#
# A training group may name
#   parent:   another group ("main") or one of its runs ({group: main, estimator: rt,
#             amp: false, seed: 1}; unset fields are the child run's own): the parent run's
#             model.pt initialises the group's runs;
#   pretrain: a list of stages ([{L: 4, kappa: 0.0, steps: 100}, {L: 4, steps: 100}]), each a
#             short training run whose keys override the group's (L, beta, kappa, steps,
#             batch_size, n_batches, lr, lr_schedule, estimator); stage 1 starts from the
#             parent (if any) or from scratch, stage k from stage k-1, and the group's run
#             from the last stage.
# Each link is a job (`gaugeflow train --init-from <previous model.pt>`), so Snakemake reruns
# only the stages whose settings (params) or inputs changed, and what follows them.
#
# Wall-clock limit: every training job (stages and the train checkpoint) gets
# `--time-limit` = its `runtime` resource (minutes) minus a margin of max(2 min, 10 %), so that
# on SLURM the job stops cleanly, with a checkpoint, before its walltime. A job stopped by the
# limit exits with code 75 (`gaugeflow train` does), so Snakemake does not take its partial
# model as done; its resumable state is kept outside the declared outputs, and a rerun (or
# `snakemake --retries N`) continues from the checkpoint to the requested steps.
#
# Warm starts act only at step 0; when a job's parent model changes (its resumable state keeps
# a copy of the model it started from), that state is discarded and the run starts over from
# the new parent (otherwise it would "resume" the old run and ignore the new parent).

PRETRAIN_DIR = "results/runs/pretrain/{group}/L{L}-{estimator}-{prec}-s{seed}/stage{stage}"
PRETRAIN_STATE = "results/state/pretrain/{group}/L{L}-{estimator}-{prec}-s{seed}/stage{stage}"


wildcard_constraints:
    stage=r"\d+",


def _group_parent(cfg, group):
    """(parent group, overrides of estimator/amp/seed) of a training group, or None."""
    parent = cfg["training"][group].get("parent")
    if parent is None:
        return None
    if isinstance(parent, str):
        return parent, {}
    parent = dict(parent)
    return parent.pop("group"), parent


def check_curriculum(cfg):
    """Stop before any job on a parent that is never trained or on a cycle of parents."""
    groups = list(GROUP_FIGURES)
    for group in groups:
        found = _group_parent(cfg, group)
        if found is None:
            continue
        pgroup, fixed = found
        if pgroup not in groups:
            raise WorkflowError(
                f"config key training.{group}.parent = {pgroup!r} names no training group; "
                f"the groups are {groups}"
            )
    for group in groups:
        seen = [group]
        found = _group_parent(cfg, group)
        while found is not None:
            if found[0] in seen:
                chain = " -> ".join(seen + [found[0]])
                raise WorkflowError(
                    f"config key training.{group}.parent: a cycle of parents: {chain}"
                )
            seen.append(found[0])
            found = _group_parent(cfg, found[0])
    for group in groups:
        found = _group_parent(cfg, group)
        if found is None:
            continue
        pgroup, fixed = found
        child, parent = cfg["training"][group], cfg["training"][pgroup]
        for key, plural in (("estimator", "estimators"), ("amp", "amp"), ("seed", "seeds")):
            wanted = [fixed[key]] if key in fixed else child.get(plural, [1])
            missing = [v for v in wanted if v not in parent.get(plural, [1])]
            if missing:
                raise WorkflowError(
                    f"config key training.{group}.parent: training.{pgroup} never trains "
                    f"{key} {missing} (it trains {plural} {parent.get(plural, [1])}), so "
                    f"the parent model of training.{group} would not exist"
                )


check_curriculum(config)


def pretrain_stages(group):
    return config["training"][group].get("pretrain") or []


def parent_model(group, estimator, amp, seed):
    """model.pt of the parent run of a run of `group`, or None."""
    found = _group_parent(config, group)
    if found is None:
        return None
    pgroup, fixed = found
    run = (
        fixed.get("estimator", estimator),
        bool(fixed.get("amp", amp)),
        int(fixed.get("seed", seed)),
    )
    return os.path.join(train_dir(pgroup, config["training"][pgroup]["L"], *run), "model.pt")


def pretrain_model(wildcards, stage):
    return os.path.join(PRETRAIN_DIR.format(**{**dict(wildcards), "stage": stage}), "model.pt")


def _run_of(wildcards):
    return wildcards.estimator, wildcards.prec == "amp", int(wildcards.seed)


def train_init_input(wildcards):
    """The model a training run starts from: its last pretraining stage, else its parent."""
    n = len(pretrain_stages(wildcards.group))
    if n:
        return pretrain_model(
            {k: getattr(wildcards, k) for k in ("group", "L", "estimator", "prec", "seed")}, n
        )
    parent = parent_model(wildcards.group, *_run_of(wildcards))
    return [parent] if parent else []


def stage_init_input(wildcards):
    k = int(wildcards.stage)
    if k > 1:
        return pretrain_model(wildcards, k - 1)
    parent = parent_model(wildcards.group, *_run_of(wildcards))
    return [parent] if parent else []


# Scheduling: Snakemake starts the ready job of highest priority first. A training job's
# priority is the work on the longest chain of training jobs it starts (itself, then the
# stages and runs warm-started from it, transitively), as steps x batch x L^2, scaled to
# 2..100; a chain's sampling job (rule sample) has priority 1 (SAMPLE_PRIORITY); every other
# job has priority 0. So the chain L = 4 parent -> L = 8 run -> Fig. 5's chain, the critical
# path of `make paper`, starts first and its next link starts as soon as it can, before the
# short side runs and the snapshots' acceptance jobs (which had delayed the parent by 3 min
# and the L = 8 run by 36 s; benchmarks/RESULTS.md, session 10) and before the 0-priority
# acceptance and measurement jobs (which had delayed Fig. 5's chain by 5.5 min; session 13).

#: priority of a chain's sampling job: below every training job, above every other job
SAMPLE_PRIORITY = 1


def _work(steps, batch_size, n_batches, L):
    return int(steps) * int(batch_size) * int(n_batches) * int(L) ** 2


def _stage_work(group, stage):
    g = config["training"][group]
    return _work(
        stage["steps"],
        stage.get("batch_size", g["batch_size"]),
        stage.get("n_batches", g["n_batches"]),
        stage.get("L", g["L"]),
    )


def _run_chain_work(group, estimator, amp, seed):
    """Training work of a group's run (its stages and itself) and of everything warm-started
    from its model, along the longest chain."""
    g = config["training"][group]
    own = sum(_stage_work(group, st) for st in pretrain_stages(group))
    own += _work(run_steps(group, estimator, amp), g["batch_size"], g["n_batches"], g["L"])
    model = os.path.join(train_dir(group, g["L"], estimator, amp, seed), "model.pt")
    after = [
        _run_chain_work(child, est, a, s)
        for child in GROUP_FIGURES
        for _, est, a, s in train_runs(child)
        if parent_model(child, est, a, s) == model
    ]
    return own + max(after, default=0)


def _chain_priority(work):
    longest = max(
        _run_chain_work(group, est, a, s)
        for group in GROUP_FIGURES
        for _, est, a, s in train_runs(group)
    )
    return max(SAMPLE_PRIORITY + 1, round(100 * work / max(longest, 1)))


def train_priority(wildcards):
    """Priority of a training run's job (see above)."""
    run = _run_of(wildcards)
    chain = _run_chain_work(wildcards.group, *run)
    stages = sum(_stage_work(wildcards.group, st) for st in pretrain_stages(wildcards.group))
    return _chain_priority(chain - stages)


def stage_priority(wildcards):
    """Priority of pretraining stage k's job: the work from stage k to the chain's end."""
    k = int(wildcards.stage)
    before = sum(
        _stage_work(wildcards.group, st) for st in pretrain_stages(wildcards.group)[: k - 1]
    )
    return _chain_priority(_run_chain_work(wildcards.group, *_run_of(wildcards)) - before)


def time_limit_seconds(runtime_minutes):
    """--time-limit of a job with this runtime resource: minus max(2 min, 10 %)."""
    seconds = 60 * runtime_minutes
    return max(seconds - max(120, seconds // 10), 30)


def stage_flags(wildcards):
    """`gaugeflow train` flags of pretraining stage k: the group's, overridden by the stage."""
    stages = pretrain_stages(wildcards.group)
    k = int(wildcards.stage)
    if not 1 <= k <= len(stages):
        raise WorkflowError(f"training.{wildcards.group}.pretrain has no stage {k}")
    stage = stages[k - 1]
    g, t, phys = config["training"][wildcards.group], config["training"], config["physics"]
    flags = [
        f"--L {stage.get('L', g['L'])}",
        f"--estimator {stage.get('estimator', wildcards.estimator)}",
        "--amp" if wildcards.prec == "amp" else "--no-amp",
        f"--seed {wildcards.seed}",
        f"--steps {stage['steps']}",
        f"--batch-size {stage.get('batch_size', g['batch_size'])}",
        f"--n-batches {stage.get('n_batches', g['n_batches'])}",
        f"--lr {stage.get('lr', t['lr'])}",
        f"--lr-schedule {lr_schedule(wildcards.group, stage)}",
        f"--assembly {t['assembly']}",
        f"--checkpoint-every {t['checkpoint_every']}",
        "--snapshot-every 0",
        f"--beta {stage.get('beta', phys['beta'])}",
        f"--kappa {stage.get('kappa', phys['kappa'])}",
        f"--n-layers {config['architecture']['n_layers']}",
        f"--hidden {config['architecture']['hidden']}",
        "--holonomy" if config["architecture"].get("holonomy") else "",
        "--charge-symmetric" if config["architecture"].get("charge_symmetric") else "",
        f"--device {config['device']}",
        "--no-progress",
    ]
    return " ".join(flag for flag in flags if flag)


def init_flag(wildcards, input):
    return f"--init-from {input.init}" if input.get("init") else ""


def warm_state_reset(state, init, flags):
    """Shell: drop resumable state that another command or another parent model started.

    Resuming is for the same run (a killed job, a time limit): the state folder records the
    training flags that started it (flags.txt) and a copy of the model it started from
    (init_from.pt; compared with POSIX `cmp`, no hashing tool needed; none from scratch). A
    run whose flags changed (Snakemake reruns it for changed params: e.g. other steps, which
    `gaugeflow train` would refuse to resume with a cosine schedule), or whose parent changed,
    appeared or went away, starts over. State from before flags.txt existed starts over too.
    """
    stamp, copy = f"{state}/flags.txt", f"{state}/init_from.pt"
    quoted = shlex.quote(flags)
    same_flags = f'[ "$(cat {stamp} 2>/dev/null)" = {quoted} ]'
    if init:
        same_parent = f"cmp -s {init} {copy}"
        keep_init = f" && cp {init} {copy}"
    else:
        same_parent, keep_init = f"[ ! -f {copy} ]", ""
    return (
        f"if [ -d {state} ] && ! ({same_flags} && {same_parent}); then rm -rf {state}; fi"
        f" && mkdir -p {state} && printf '%s' {quoted} > {stamp}{keep_init}"
    )
