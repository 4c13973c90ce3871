# A three-rule workflow that checks the submission path of profiles/slurm on the test cluster
# (tests/cluster/test_slurm.py): every job must run inside a SLURM allocation, and only the
# rule that declares gpu=1 may get a GPU. Run from a scratch directory:
#   snakemake -s tests/cluster/smoke.smk --profile profiles/slurm --directory DIR


rule all:
    input:
        "smoke/host.txt",
        "smoke/python.txt",
        "smoke/gpu.txt",


rule host:
    output:
        "smoke/host.txt",
    log:
        "smoke/logs/host.log",
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    shell:
        "(echo host=$(hostname); echo job=${{SLURM_JOB_ID:-none}};"
        " echo gpus=${{SLURM_GPUS:-none}}) > {output} 2> {log}"


rule python:
    input:
        "smoke/host.txt",
    output:
        "smoke/python.txt",
    log:
        "smoke/logs/python.log",
    threads: 1
    resources:
        mem_mb=300,
        runtime=5,
    shell:
        "python -c 'import os, sys; print(\"job=\" + os.environ.get(\"SLURM_JOB_ID\", \"none\"));"
        " print(\"python=\" + sys.executable); print(\"gpus=\" + os.environ.get(\"SLURM_GPUS\", \"none\"))'"
        " > {output} 2> {log}"


rule gpu:
    output:
        "smoke/gpu.txt",
    log:
        "smoke/logs/gpu.log",
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
        gpu=1,
    shell:
        "(echo job=${{SLURM_JOB_ID:-none}}; echo gpus=${{SLURM_GPUS:-none}};"
        " echo cuda_visible=${{CUDA_VISIBLE_DEVICES:-none}}) > {output} 2> {log}"
