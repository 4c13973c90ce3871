# Rebuilds the paper "Training normalizing flows with computationally intensive target
# probability distributions" (arXiv:2308.13294) from one target:
#
#   snakemake                                   # default profile: 2 cores, config.yaml
#   snakemake --configfile config/paper.yaml    # the paper's settings (GPU cluster)
#   snakemake table3                            # one piece and only what it needs
#   snakemake all_but_pdf                       # everything but the PDF (no LaTeX needed)
#
# The rules hold no science: each calls a `gaugeflow` verb. Stages: workflow/rules/*.smk.

from snakemake.utils import min_version, validate

min_version("9.0")


# No `configfile:` here: a configfile directive is *merged* with --configfile, so every key
# of config.yaml that another config leaves out (a warm-start parent, per-run step counts,
# the holonomy layers) would leak into it. The workflow profile (profiles/default) passes
# `--configfile config.yaml` instead, and a --configfile on the command line replaces it.
if not config:
    raise WorkflowError(
        "no configuration: pass --configfile config.yaml (the default scale; plain `snakemake` "
        "in the repository root does, through the workflow profile profiles/default) or "
        "--configfile config/paper.yaml"
    )


# Stops here, before any job and before results/ is touched, on a misspelled key, a wrong
# type or an L that is not a multiple of 4; the message names the key.
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/curriculum.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/figure_cost.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/paper.smk"


rule all:
    input:
        "results/paper.pdf",
        "results/provenance.json",
        expand("results/figures/{fig}.{ext}", fig=FIGURES, ext=["pdf", "png"]),
        expand("results/tables/{table}.{ext}", table=TABLES, ext=["tex", "csv"]),
    default_target: True


# Every figure, table, the provenance stamp and the paper's macros: all but the PDF.
rule all_but_pdf:
    input:
        "results/provenance.json",
        "results/paper/macros.tex",
        expand("results/figures/{fig}.{ext}", fig=FIGURES, ext=["pdf", "png"]),
        expand("results/tables/{table}.{ext}", table=TABLES, ext=["tex", "csv"]),


# Without LaTeX, say so before the first job, not only when the last one (the PDF) fails.
onstart:
    from snakemake.logging import logger

    _latexmk = os.environ.get("GAUGEFLOW_LATEXMK", "latexmk")
    if not (shutil.which(_latexmk) and shutil.which("pdflatex")):
        try:
            _wants_pdf = any(job.rule.name == "paper" for job in workflow.dag.needrun_jobs())
        except Exception:  # Snakemake internals changed: warn anyway
            _wants_pdf = True
        if _wants_pdf:
            logger.warning(
                f"WARNING: {_latexmk} or pdflatex not found: every job runs, but the last one "
                "(results/paper.pdf) will fail. Install LaTeX first (sudo apt-get install -y "
                "--no-install-recommends texlive-latex-base texlive-latex-recommended "
                "texlive-science latexmk), or build all but the PDF: snakemake all_but_pdf "
                "(make figures)."
            )
