# Rebuilds the paper "Training normalizing flows with computationally intensive target
# probability distributions" (arXiv:2308.13294) from one target:
#
#   snakemake                                   # default profile: 2 cores, config.yaml
#   snakemake --configfile config/paper.yaml    # the paper's settings (GPU cluster)
#   snakemake table3                            # one piece and only what it needs
#
# The rules hold no science: each calls a `gaugeflow` verb. Stages: workflow/rules/*.smk.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


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
