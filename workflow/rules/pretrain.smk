# Pretraining stages of a training group (curriculum.smk): stage k of a run is a short
# `gaugeflow train` started from stage k-1's model (stage 1 from the group's parent, if any).


rule pretrain:
    input:
        init=stage_init_input,
    output:
        model=f"{PRETRAIN_DIR}/model.pt",
        metrics=f"{PRETRAIN_DIR}/metrics.csv",
        summary=f"{PRETRAIN_DIR}/summary.json",
    params:
        flags=stage_flags,
        init=init_flag,
        reset=lambda w, input: warm_state_reset(
            PRETRAIN_STATE.format(**w), input.get("init"), stage_flags(w)
        ),
        state=PRETRAIN_STATE,
        time_limit=lambda w, resources: time_limit_seconds(resources.runtime),
    log:
        "results/logs/pretrain/{group}/L{L}-{estimator}-{prec}-s{seed}/stage{stage}.log",
    benchmark:
        "results/benchmarks/pretrain/{group}/L{L}-{estimator}-{prec}-s{seed}/stage{stage}.tsv"
    threads: res("train", "threads")
    priority: stage_priority  # curriculum.smk: the longest training chain first
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=gpus("train"),
    conda:
        ENV
    shell:
        "({params.reset})"
        " && gaugeflow train --out $(dirname {output.model}) {params.flags} {params.init}"
        " --time-limit {params.time_limit} --checkpoint-dir {params.state}/checkpoints"
        " > {log} 2>&1"
