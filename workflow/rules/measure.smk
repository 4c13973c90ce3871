# One measurement per (kind, L, batch, n_batches, estimator, amp, assembly, architecture):
# timing (Tables 1, 2), dag (Table 3), ops (Table 4), memory (Table 5).
#
# Measured alone (measure.exclusive, default true): timing, ops and memory jobs hold every
# core of a local run (`threads` = --cores), so the scheduler starts no other job beside
# them, while the measurement itself runs on resources.measure.threads (passed as
# --threads). No custom resource is needed: every job holds at least one core. Graph sizes
# (dag) do not depend on the load and share the machine. On SLURM the exclusivity is per
# node: these jobs ask for `sbatch --exclusive` through the plugin's slurm_extra resource.
#
# Timing rows (measure.interleave, default true): the timing records of one Table 1 row
# (every measure.variants column at one L, batch, n_batches) come from one job, one step of
# each variant in turn (`gaugeflow measure timing-row`), so a machine whose speed drifts
# (shared, virtual) changes the whole row and not the ratios between its columns.

rule measure:
    output:
        MEASURE,
    params:
        flags=measure_flags,
        on_failure=on_failure,
        threads=measure_torch_threads,
    log:
        MEASURE_LOG,
    benchmark:
        "results/benchmarks/measure/{kind}/L{L}-b{bs}x{nb}-{estimator}-{prec}-{assembly}-l{layers}h{hidden}.tsv"
    threads: measure_job_threads
    resources:
        mem_mb=res("measure", "mem_mb"),
        runtime=res("measure", "runtime"),
        gpu=gpus("measure"),
        slurm_extra=measure_slurm_extra,
    conda:
        ENV
    shell:
        "(gaugeflow measure {wildcards.kind} --L {wildcards.L} --batch-size {wildcards.bs}"
        " --n-batches {wildcards.nb} --estimator {wildcards.estimator}"
        " --assembly {wildcards.assembly} --n-layers {wildcards.layers}"
        " --hidden {wildcards.hidden} --threads {params.threads} {params.flags}"
        " --out {output} > {log} 2>&1) || {params.on_failure}"


if config["measure"]["interleave"]:

    ruleorder: measure_timing_row > measure

    rule measure_timing_row:
        output:
            timing_row_outputs(),
        params:
            variants=timing_row_variants,
            flags=timing_row_flags,
            on_failure=timing_row_on_failure,
            threads=measure_torch_threads,
        log:
            MEASURE_ROW_LOG,
        benchmark:
            "results/benchmarks/measure/timing-row/L{L}-b{bs}x{nb}-l{layers}h{hidden}.tsv"
        threads: timing_row_threads
        resources:
            mem_mb=res("measure", "mem_mb"),
            runtime=timing_row_runtime,
            gpu=gpus("measure"),
            slurm_extra=timing_row_slurm_extra,
        conda:
            ENV
        shell:
            "(gaugeflow measure timing-row --L {wildcards.L} --batch-size {wildcards.bs}"
            " --n-batches {wildcards.nb} --n-layers {wildcards.layers}"
            " --hidden {wildcards.hidden} --threads {params.threads} {params.flags}"
            " {params.variants} > {log} 2>&1) || {params.on_failure}"
