# Tables 1-5 from the measurement records: LaTeX (booktabs) for the paper, CSV (with a
# caption) for the report. Published numbers are printed beside ours where settings match.

rule table1:
    input:
        records=table_inputs("table1"),
        code=REPORT_CODE,
    output:
        tex="results/tables/table1.tex",
        csv=report("results/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
    params:
        table="table1",
        scale=config["scale"],
        extra="",
    log:
        "results/logs/tables/table1.log",
    benchmark:
        "results/benchmarks/tables/table1.tsv"
    threads: 1
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    conda:
        ENV
    shell:
        "gaugeflow table {params.table} --inputs {input.records} --scale {params.scale:q} {params.extra}"
        " --tex {output.tex} --csv {output.csv} > {log} 2>&1"


use rule table1 as table2 with:
    input:
        records=table_inputs("table2"),
        code=REPORT_CODE,
    output:
        tex="results/tables/table2.tex",
        csv=report("results/tables/table2.csv", caption="../report/table2.rst", category="Tables"),
    params:
        table="table2",
        scale=config["scale"],
        extra="",
    log:
        "results/logs/tables/table2.log",
    benchmark:
        "results/benchmarks/tables/table2.tsv"


use rule table1 as table3 with:
    input:
        records=table_inputs("table3"),
        code=REPORT_CODE,
    output:
        tex="results/tables/table3.tex",
        csv=report("results/tables/table3.csv", caption="../report/table3.rst", category="Tables"),
    params:
        table="table3",
        scale=config["scale"],
        extra="",
    log:
        "results/logs/tables/table3.log",
    benchmark:
        "results/benchmarks/tables/table3.tsv"


use rule table1 as table4 with:
    input:
        records=table_inputs("table4"),
        code=REPORT_CODE,
    output:
        tex="results/tables/table4.tex",
        csv=report("results/tables/table4.csv", caption="../report/table4.rst", category="Tables"),
    params:
        table="table4",
        scale=config["scale"],
        extra=f"--top {config['measure']['table4']['top']}",
    log:
        "results/logs/tables/table4.log",
    benchmark:
        "results/benchmarks/tables/table4.tsv"


use rule table1 as table5 with:
    input:
        records=table_inputs("table5"),
        code=REPORT_CODE,
    output:
        tex="results/tables/table5.tex",
        csv=report("results/tables/table5.csv", caption="../report/table5.rst", category="Tables"),
    params:
        table="table5",
        scale=config["scale"],
        extra="",
    log:
        "results/logs/tables/table5.log",
    benchmark:
        "results/benchmarks/tables/table5.tsv"
