# One measurement per (kind, L, batch, n_batches, estimator, amp, assembly, architecture):
# timing (Tables 1, 2), dag (Table 3), ops (Table 4), memory (Table 5).


rule measure:
    output:
        MEASURE,
    params:
        flags=measure_flags,
        on_failure=on_failure,
    log:
        MEASURE_LOG,
    benchmark:
        "results/benchmarks/measure/{kind}/L{L}-b{bs}x{nb}-{estimator}-{prec}-{assembly}-l{layers}h{hidden}.tsv"
    threads: res("measure", "threads")
    resources:
        mem_mb=res("measure", "mem_mb"),
        runtime=res("measure", "runtime"),
        gpu=gpus("measure"),
    conda:
        ENV
    shell:
        "(gaugeflow measure {wildcards.kind} --L {wildcards.L} --batch-size {wildcards.bs}"
        " --n-batches {wildcards.nb} --estimator {wildcards.estimator}"
        " --assembly {wildcards.assembly} --n-layers {wildcards.layers}"
        " --hidden {wildcards.hidden} {params.flags} --out {output} > {log} 2>&1)"
        " || {params.on_failure}"
