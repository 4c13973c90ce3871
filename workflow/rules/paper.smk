# Provenance stamp, LaTeX macros with the numbers quoted in the text, and the paper PDF.


rule provenance:
    input:
        figures=figure_outputs(),
        tables=table_outputs(),
    output:
        stamp="results/provenance.json",
        config="results/paper/config.json",
    params:
        config=config_json(),
        source=workflow.basedir,
        device=config["device"],
    log:
        "results/logs/paper/provenance.log",
    benchmark:
        "results/benchmarks/paper/provenance.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow provenance --config-json {params.config:q} --source-dir {params.source:q}"
        " --device {params.device} --inputs {input.figures} {input.tables}"
        " --out {output.stamp} --config-out {output.config} > {log} 2>&1"


rule macros:
    input:
        provenance="results/provenance.json",
        training_main="results/figures/fig2.csv",
        training_large="results/figures/fig4.csv",
        analysis_main="results/runs/chains/fig3/analysis.json",
        analysis_large="results/runs/chains/fig5/analysis.json",
        nis=nis_files(),
        table1="results/tables/table1.csv",
        table3="results/tables/table3.csv",
        table5="results/tables/table5.csv",
        code=REPORT_CODE,
    output:
        "results/paper/macros.tex",
    params:
        settings=macro_settings(),
        nis=nis_flags(),
    log:
        "results/logs/paper/macros.log",
    benchmark:
        "results/benchmarks/paper/macros.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow macros --settings {params.settings:q} --provenance {input.provenance}"
        " --training-main {input.training_main} --training-large {input.training_large}"
        " --analysis-main {input.analysis_main} --analysis-large {input.analysis_large}"
        " {params.nis} --table1 {input.table1} --table3 {input.table3}"
        " --table5 {input.table5} --out {output} > {log} 2>&1"


# Without LaTeX this job fails alone, with the command that installs it; being the last
# job, everything else (figures, tables, report) is built by then.
rule paper:
    input:
        tex=os.path.join(PAPER_DIR, "main.tex"),
        bib=os.path.join(PAPER_DIR, "refs.bib"),
        macros="results/paper/macros.tex",
        tables=expand("results/tables/{table}.tex", table=TABLES),
        figures=expand("results/figures/{fig}.pdf", fig=FIGURES),
    output:
        report("results/paper.pdf", caption="../report/paper.rst", category="Paper"),
    params:
        build="results/paper/build",
        texinputs=tex_search_path(),
        bibinputs=f"{PAPER_DIR}:",
        latexmk=os.environ.get("GAUGEFLOW_LATEXMK", "latexmk"),
    log:
        "results/logs/paper/latexmk.log",
    benchmark:
        "results/benchmarks/paper/latexmk.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "if ! command -v {params.latexmk} > /dev/null || ! command -v pdflatex > /dev/null; then"
        " echo 'paper: {params.latexmk} or pdflatex not found, so results/paper.pdf cannot be built."
        " Figures, tables and the report are complete. Install LaTeX with:"
        " sudo apt-get install -y --no-install-recommends texlive-latex-base"
        " texlive-latex-recommended texlive-science latexmk"
        " (other systems: a TeX Live with latexmk), then run snakemake again.' | tee {log} >&2;"
        " exit 1; fi;"
        " mkdir -p {params.build};"
        " TEXINPUTS={params.texinputs:q} BIBINPUTS={params.bibinputs:q}"
        " {params.latexmk} -pdf -interaction=nonstopmode -halt-on-error -outdir={params.build}"
        " {input.tex:q} > {log} 2>&1"
        " || (echo 'paper: LaTeX failed; see {log}' >&2; tail -n 30 {log} >&2; exit 1);"
        " cp {params.build}/main.pdf {output}"
