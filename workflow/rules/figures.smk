# Figures 2-5: PDF for the paper, PNG (with a caption) for `snakemake --report`; the
# training figures also write the numbers behind them as CSV (the paper's text quotes them).

rule fig2:
    input:
        metrics=train_files("main", "metrics.csv"),
        summaries=train_files("main", "summary.json"),
        acceptance=train_files("main", "acceptance.csv"),
        code=REPORT_CODE,
    output:
        pdf="results/figures/fig2.pdf",
        png=report(
            "results/figures/fig2.png", caption="../report/fig2.rst", category="Figures"
        ),
        data="results/figures/fig2.csv",
    params:
        window=config["training"]["ess_window"],
        title=f"L = {config['training']['main']['L']}; {config['scale']}",
    log:
        "results/logs/figures/fig2.log",
    benchmark:
        "results/benchmarks/figures/fig2.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow figure training --metrics {input.metrics} --summaries {input.summaries}"
        " --acceptance {input.acceptance} --window {params.window}"
        " --title {params.title:q} --pdf {output.pdf} --png {output.png} --data {output.data}"
        " > {log} 2>&1"


use rule fig2 as fig4 with:
    input:
        metrics=train_files("large", "metrics.csv"),
        summaries=train_files("large", "summary.json"),
        acceptance=train_files("large", "acceptance.csv"),
        code=REPORT_CODE,
    output:
        pdf="results/figures/fig4.pdf",
        png=report(
            "results/figures/fig4.png", caption="../report/fig4.rst", category="Figures"
        ),
        data="results/figures/fig4.csv",
    params:
        window=config["training"]["ess_window"],
        title=f"L = {config['training']['large']['L']}; {config['scale']}",
    log:
        "results/logs/figures/fig4.log",
    benchmark:
        "results/benchmarks/figures/fig4.tsv"


rule fig3:
    input:
        chain="results/runs/chains/fig3/chain.npz",
        analysis="results/runs/chains/fig3/analysis.json",
        code=REPORT_CODE,
    output:
        pdf="results/figures/fig3.pdf",
        png=report(
            "results/figures/fig3.png", caption="../report/fig3.rst", category="Figures"
        ),
    params:
        bridge_min=config["chains"]["bridge_min"],
        title=chain_title("fig3"),
    log:
        "results/logs/figures/fig3.log",
    benchmark:
        "results/benchmarks/figures/fig3.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow figure history --chain {input.chain} --analysis {input.analysis}"
        " --bridge-min {params.bridge_min} --title {params.title:q}"
        " --pdf {output.pdf} --png {output.png} > {log} 2>&1"


use rule fig3 as fig5 with:
    input:
        chain="results/runs/chains/fig5/chain.npz",
        analysis="results/runs/chains/fig5/analysis.json",
        code=REPORT_CODE,
    output:
        pdf="results/figures/fig5.pdf",
        png=report(
            "results/figures/fig5.png", caption="../report/fig5.rst", category="Figures"
        ),
    params:
        bridge_min=config["chains"]["bridge_min"],
        title=chain_title("fig5"),
    log:
        "results/logs/figures/fig5.log",
    benchmark:
        "results/benchmarks/figures/fig5.tsv"
