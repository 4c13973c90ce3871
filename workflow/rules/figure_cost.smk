# The cost figure (issue 14): ESS on fresh samples (the acceptance chains' proposals at each
# snapshot) against training wall clock, per estimator of the main group; its sentence is
# the LaTeX macro \gfcostsentence (figcost.tex, next to the figure, on the paper's TEXINPUTS).

# one more figure of the paper: `rule all`, the provenance stamp and the paper pick it up
FIGURES.append("figcost")


rule figcost:
    input:
        metrics=train_files("main", "metrics.csv"),
        acceptance=train_files("main", "acceptance.csv"),
        summaries=train_files("main", "summary.json"),
        code=REPORT_CODE,
    output:
        pdf="results/figures/figcost.pdf",
        png=report(
            "results/figures/figcost.png", caption="../report/figcost.rst", category="Figures"
        ),
        data="results/figures/figcost.csv",
        tex="results/figures/figcost.tex",
    params:
        title=f"L = {config['training']['main']['L']}; {config['scale']}",
    log:
        "results/logs/figures/figcost.log",
    benchmark:
        "results/benchmarks/figures/figcost.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow figure-cost --metrics {input.metrics} --acceptance {input.acceptance}"
        " --summaries {input.summaries}"
        " --title {params.title:q} --pdf {output.pdf} --png {output.png}"
        " --data {output.data} --tex {output.tex} > {log} 2>&1"
