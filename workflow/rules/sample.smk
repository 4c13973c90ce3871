# The final model of a chosen run -> NMCMC chain -> autocorrelation analysis (Figs. 3, 5);
# the chain's proposals -> neural importance sampling (free energy, quoted in the text).


rule sample:
    input:
        model=chain_model,
    output:
        "results/runs/chains/{fig}/chain.npz",
    params:
        n=chain_length,
        seed=chain_seed,
        symmetry=chain_symmetry,
        batch=config["chains"]["batch_size"],
        device=config["device"],
    log:
        "results/logs/sample/{fig}.log",
    benchmark:
        "results/benchmarks/sample/{fig}.tsv"
    threads: res("sample", "threads")
    priority: SAMPLE_PRIORITY  # curriculum.smk: after training, before everything else
    resources:
        mem_mb=res("sample", "mem_mb"),
        runtime=res("sample", "runtime"),
        gpu=gpus("sample"),
    conda:
        ENV
    shell:
        "gaugeflow sample --model {input.model} --n {params.n} --seed {params.seed}"
        " --batch-size {params.batch} --device {params.device} --no-progress --out {output}"
        " --symmetrize '{params.symmetry}' > {log} 2>&1"


rule analyze:
    input:
        chain="results/runs/chains/{fig}/chain.npz",
    output:
        "results/runs/chains/{fig}/analysis.json",
    params:
        bridge_min=config["chains"]["bridge_min"],
    log:
        "results/logs/analyze/{fig}.log",
    benchmark:
        "results/benchmarks/analyze/{fig}.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow analyze --chain {input.chain} --bridge-threshold {params.bridge_min}"
        " --out {output} > {log} 2>&1"


rule nis:
    # the chain file keeps every proposal it was offered (independent draws of the flow):
    # NIS reads them instead of drawing the same proposals a second time
    input:
        chain="results/runs/chains/{fig}/chain.npz",
    output:
        "results/runs/chains/{fig}/nis.json",
    log:
        "results/logs/nis/{fig}.log",
    benchmark:
        "results/benchmarks/nis/{fig}.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow nis --chain {input.chain} --out {output} > {log} 2>&1"
