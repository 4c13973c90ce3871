# Training per (group, L, estimator, amp, seed) -> model, metrics, summary, snapshots;
# snapshots -> acceptance of a Metropolis chain at each (Fig. 2 and 4, right).


# A Snakemake checkpoint: which snapshots exist is known only after training (a diverged
# run stops early). `gaugeflow train` keeps its resumable state and snapshots in STATE_DIR,
# which is no declared output: when a job is killed, Snakemake removes the declared outputs
# but the next run resumes from the last checkpoint. Snapshots are hard-linked (or copied)
# into the run folder at the end.
checkpoint train:
    input:
        init=train_init_input,  # curriculum.smk: the parent's / last stage's model, if any
    output:
        model="results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}/model.pt",
        metrics="results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}/metrics.csv",
        summary="results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}/summary.json",
        snapshots=directory("results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}/snapshots"),
    params:
        flags=train_flags,
        state=STATE_DIR,
        launch=train_launch,
        ranks=train_rank_flags,
        init=init_flag,
        reset=lambda w, input: warm_state_reset(
            STATE_DIR.format(**w), input.get("init"), train_flags(w)
        ),
        time_limit=lambda w, resources: time_limit_seconds(resources.runtime),
    log:
        "results/logs/train/{group}/L{L}-{estimator}-{prec}-s{seed}.log",
    benchmark:
        "results/benchmarks/train/{group}/L{L}-{estimator}-{prec}-s{seed}.tsv"
    threads: res("train", "threads")
    priority: train_priority  # curriculum.smk: the longest training chain first
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        **TRAIN_RESOURCES,  # common.smk: GPUs, nodes, tasks of data-parallel runs
    conda:
        ENV
    shell:
        "({params.reset})"
        " && {params.launch}gaugeflow train --out $(dirname {output.model}) {params.flags}"
        " {params.ranks} {params.init} --time-limit {params.time_limit}"
        " --checkpoint-dir {params.state}/checkpoints --snapshot-dir {params.state}/snapshots"
        " > {log} 2>&1"
        " && mkdir -p {params.state}/snapshots {output.snapshots}"
        " && (cp -R --link {params.state}/snapshots/. {output.snapshots}/ 2>/dev/null"
        " || cp -R {params.state}/snapshots/. {output.snapshots}/)"


rule acceptance:
    input:
        snapshot="results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}/snapshots/step_{step}.pt",
    output:
        "results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}/acceptance/step_{step}.json",
    params:
        n=config["training"]["acceptance_samples"],
        batch=config["chains"]["batch_size"],
        device=config["device"],
    log:
        "results/logs/acceptance/{group}/L{L}-{estimator}-{prec}-s{seed}/step_{step}.log",
    benchmark:
        "results/benchmarks/acceptance/{group}/L{L}-{estimator}-{prec}-s{seed}/step_{step}.tsv"
    threads: res("sample", "threads")
    resources:
        mem_mb=res("sample", "mem_mb"),
        runtime=res("sample", "runtime"),
        gpu=gpus("sample"),
    conda:
        ENV
    shell:
        "gaugeflow acceptance --model {input.snapshot} --n {params.n} --seed {wildcards.step}"
        " --batch-size {params.batch} --device {params.device} --no-progress --out {output}"
        " > {log} 2>&1"


rule acceptance_history:
    input:
        records=acceptance_records,
    output:
        "results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}/acceptance.csv",
    params:
        steps=acceptance_step_numbers,
    log:
        "results/logs/acceptance_history/{group}/L{L}-{estimator}-{prec}-s{seed}.log",
    benchmark:
        "results/benchmarks/acceptance_history/{group}/L{L}-{estimator}-{prec}-s{seed}.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow collect-acceptance --inputs {input.records} --steps {params.steps}"
        " --out {output} > {log} 2>&1"
