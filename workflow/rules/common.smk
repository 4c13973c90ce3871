# Helpers of the rules: paths, flags, resources. Pure functions of the (validated) config.

import glob
import json
import os
import shlex
import shutil
import sys
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError

# the named choices (estimators, assemblies, labels) of this source tree, not of whichever
# gaugeflow the interpreter has installed
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
from gaugeflow.choices import ASSEMBLIES, ESTIMATOR_LABELS, ESTIMATORS  # noqa: E402
from gaugeflow.errors import UserError  # noqa: E402
from gaugeflow.symmetry import parse_symmetry  # noqa: E402


def _locate_cli():
    """Make the `gaugeflow` command reachable from every job's shell.

    `.venv/bin/snakemake` (the README's command) runs without the virtual environment on
    PATH: the CLI installed next to this interpreter is then put first on PATH (jobs inherit
    it). Without it anywhere, stop now, before any job, with the way out.
    """
    here = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(here, "gaugeflow")):
        if shutil.which("gaugeflow") != os.path.join(here, "gaugeflow"):
            os.environ.update(PATH=os.pathsep.join([here, os.getenv("PATH", "")]))
        return
    if shutil.which("gaugeflow") is not None:
        return
    methods = getattr(workflow.deployment_settings, "deployment_method", ()) or ()
    if any("conda" in str(m).lower() for m in methods):
        return  # the rules' conda environment (environment.yml) provides it
    raise WorkflowError(
        "the `gaugeflow` command is not installed next to this snakemake "
        f"({sys.executable}) nor on PATH: run `make install` and then "
        "`.venv/bin/snakemake`, or `pip install -e .` into this environment"
    )


_locate_cli()
# OpenMP threads that spin while they wait made a 2-thread step 4x slower when other jobs
# shared the cores, and 1.4x faster on cores of its own (benchmarks/RESULTS.md, session 7):
# config key omp_wait_policy (PASSIVE by default); jobs inherit it unless the user set it
_INHERITED_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", config["omp_wait_policy"])
if _INHERITED_WAIT_POLICY is None:
    print(
        f"gaugeflow: jobs run with OMP_WAIT_POLICY={config['omp_wait_policy']} (config key "
        "omp_wait_policy; an OMP_WAIT_POLICY in the environment takes precedence)",
        file=sys.stderr,
    )


FIGURES = ["fig2", "fig3", "fig4", "fig5"]
TABLES = ["table1", "table2", "table3", "table4", "table5"]
# training group -> (its training figure, its Monte Carlo history figure)
GROUP_FIGURES = {"main": ("fig2", "fig3"), "large": ("fig4", "fig5")}
CHAIN_GROUP = {"fig3": "main", "fig5": "large"}
PAPER_DIR = os.path.join(workflow.basedir, "paper")
ENV = "../../environment.yml"  # the project's conda environment, relative to the rule files
# the report library: an edit reruns the figures, tables and macros (cheap), nothing else
REPORT_CODE = sorted(
    glob.glob(os.path.join(workflow.basedir, "src/gaugeflow/report/**/*.py"), recursive=True)
    + [os.path.join(workflow.basedir, "src/gaugeflow/choices.py")]
)

TRAIN_DIR = "results/runs/train/{group}/L{L}-{estimator}-{prec}-s{seed}"
# resumable state of training lives outside the declared outputs, so that Snakemake's
# removal of a failed job's outputs never reaches the checkpoints (or earlier snapshots)
STATE_DIR = "results/state/train/{group}/L{L}-{estimator}-{prec}-s{seed}"
MEASURE = "results/runs/measure/{kind}/L{L}-b{bs}x{nb}-{estimator}-{prec}-{assembly}-l{layers}h{hidden}.json"
MEASURE_LOG = "results/logs/measure/{kind}/L{L}-b{bs}x{nb}-{estimator}-{prec}-{assembly}-l{layers}h{hidden}.log"


wildcard_constraints:
    group="main|large",
    L=r"\d+",
    estimator="|".join(ESTIMATORS),
    prec="fp32|amp",
    seed=r"\d+",
    step=r"\d+",
    fig="fig3|fig5",
    kind="timing|dag|ops|memory",
    bs=r"\d+",
    nb=r"\d+",
    assembly="|".join(ASSEMBLIES),
    layers=r"\d+",
    hidden=r"\d+",


def prec(amp):
    return "amp" if amp else "fp32"


# ---------------------------------------------------------------------------------------
# cross-key checks the schema cannot express (message names the key)


def check_config(cfg):
    for fig, group in CHAIN_GROUP.items():
        chain = cfg["chains"][fig]
        runs = cfg["training"][group]
        for key, allowed in (
            ("estimator", runs["estimators"]),
            ("amp", runs["amp"]),
            ("seed", runs["seeds"]),
        ):
            if chain[key] not in allowed:
                raise WorkflowError(
                    f"config key chains.{fig}.{key} = {chain[key]!r} names no training run: "
                    f"training.{group} trains {key} in {allowed}"
                )
        try:  # the CLI's own parser: the same names, the same message, before any job
            parse_symmetry(chain["symmetrize"], runs["L"])
        except UserError as err:
            raise WorkflowError(f"config key chains.{fig}.symmetrize: {err}") from None
    for group in GROUP_FIGURES:
        extra = set(cfg["training"][group]["steps_by_estimator"]) - set(
            cfg["training"][group]["estimators"]
        )
        if extra:
            raise WorkflowError(
                f"config key training.{group}.steps_by_estimator names estimators not trained "
                f"in training.{group}.estimators: {sorted(extra)}"
            )
        if "amp_steps" in cfg["training"][group] and True not in cfg["training"][group]["amp"]:
            raise WorkflowError(
                f"config key training.{group}.amp_steps is set, but training.{group}.amp "
                f"= {cfg['training'][group]['amp']} trains no run with amp"
            )


check_config(config)


# ---------------------------------------------------------------------------------------
# resources


def res(kind, key):
    return config["resources"][kind][key]


def gpus(kind):
    """gpu=1 for the jobs that run a flow (train, sample, measure) when the config asks for CUDA."""
    return 1 if kind in ("train", "sample", "measure") and config["device"] == "cuda" else 0


# ---------------------------------------------------------------------------------------
# data-parallel training (issue 15): a group's runs may take several ranks


def rank_layout(wildcards):
    """(ranks per node, nodes) of a training run: one rank per GPU on CUDA, else cpu_ranks."""
    g = config["training"][wildcards.group]
    per_node = g["gpus"] if config["device"] == "cuda" else g["cpu_ranks"]
    return per_node, g["nodes"]


def _multi_node(wildcards):
    return rank_layout(wildcards)[1] > 1


def _threads_per_rank(wildcards):
    """resources.train.threads is per node, shared by the node's ranks."""
    return max(1, res("train", "threads") // rank_layout(wildcards)[0])


def _if_multi_node(value):
    return lambda w: value(w) if _multi_node(w) else None


# Resources of training jobs (None drops a key). One node -- one SLURM task holds the node's
# GPUs (gpu=N: sbatch --gpus=N) and threads, and `gaugeflow train --nproc N` starts the ranks
# in it. Several nodes: one SLURM task per rank (--nodes, --ntasks-per-node (or --ntasks for
# one rank a node), --gres=gpu:N per node, --ntasks-per-gpu=1, --cpus-per-task), started by
# the srun in the rule's shell; `mpi` tells snakemake-executor-plugin-slurm that the shell
# launches its own tasks (else it wraps the job in `srun -n1`). tasks_per_gpu is explicit:
# without it the plugin would take `tasks` as the tasks per GPU.
TRAIN_RESOURCES = {
    "gpu": lambda w: (
        0 if config["device"] != "cuda" else None if _multi_node(w) else rank_layout(w)[0]
    ),
    "nodes": _if_multi_node(lambda w: rank_layout(w)[1]),
    "gres": _if_multi_node(
        lambda w: f"gpu:{rank_layout(w)[0]}" if config["device"] == "cuda" else None
    ),
    "tasks_per_node": _if_multi_node(lambda w: rank_layout(w)[0] if rank_layout(w)[0] > 1 else None),
    "tasks": _if_multi_node(lambda w: rank_layout(w)[1] if rank_layout(w)[0] == 1 else None),
    "tasks_per_gpu": _if_multi_node(lambda w: 1 if config["device"] == "cuda" else None),
    "cpus_per_task": _if_multi_node(_threads_per_rank),
    "mpi": _if_multi_node(lambda w: "srun"),
}


def train_launch(wildcards):
    """What comes before `gaugeflow train`: srun across several nodes, else nothing."""
    per_node, nodes = rank_layout(wildcards)
    if nodes == 1:
        return ""
    gpus_flag = f" --gpus-per-node={per_node}" if config["device"] == "cuda" else ""
    return (
        f"srun --nodes={nodes} --ntasks-per-node={per_node} "
        f"--cpus-per-task={_threads_per_rank(wildcards)}{gpus_flag} "
    )


def train_rank_flags(wildcards):
    """Flags of `gaugeflow train` for its ranks: --nproc on one node, threads per rank."""
    per_node, nodes = rank_layout(wildcards)
    if per_node * nodes == 1:
        return ""
    nproc = f"--nproc {per_node} " if nodes == 1 else ""
    return f"{nproc}--threads {_threads_per_rank(wildcards)}"


def check_ranks(cfg):
    for group in GROUP_FIGURES:
        g = cfg["training"][group]
        per_node = g["gpus"] if cfg["device"] == "cuda" else g["cpu_ranks"]
        world = per_node * g["nodes"]
        if g["n_batches"] % world:
            key = "gpus" if cfg["device"] == "cuda" else "cpu_ranks"
            raise WorkflowError(
                f"config key training.{group}.n_batches ({g['n_batches']}) must be a multiple "
                f"of the ranks of a run, training.{group}.{key} x nodes = {world}: each rank "
                "computes n_batches / ranks parts of every step"
            )
        if g["nodes"] > 1 and shutil.which("srun") is None:
            raise WorkflowError(
                f"config key training.{group}.nodes = {g['nodes']}: runs across nodes start "
                "their ranks with srun, which is not on PATH; run on a SLURM cluster "
                "(--profile profiles/slurm)"
            )


check_ranks(config)


# ---------------------------------------------------------------------------------------
# training


def train_runs(group):
    """(L, estimator, amp, seed) of every run of a training group, in config order."""
    g = config["training"][group]
    return [
        (g["L"], est, amp, seed)
        for est in g["estimators"]
        for amp in g["amp"]
        for seed in g["seeds"]
    ]


def train_dir(group, L, estimator, amp, seed):
    return TRAIN_DIR.format(group=group, L=L, estimator=estimator, prec=prec(amp), seed=seed)


def train_files(group, name):
    return [os.path.join(train_dir(group, *run), name) for run in train_runs(group)]


def run_steps(group, estimator, amp):
    """Gradient steps of one run of a group: amp_steps, steps_by_estimator, else steps."""
    g = config["training"][group]
    if amp and "amp_steps" in g:
        return g["amp_steps"]
    return g["steps_by_estimator"].get(estimator, g["steps"])


def lr_schedule(group, stage=None):
    """A run's learning-rate schedule: its pretraining stage's, else its group's, else
    training.lr_schedule."""
    g, t = config["training"][group], config["training"]
    return (stage or {}).get("lr_schedule", g.get("lr_schedule", t["lr_schedule"]))


def train_flags(wildcards):
    g = config["training"][wildcards.group]
    t = config["training"]
    steps = run_steps(wildcards.group, wildcards.estimator, wildcards.prec == "amp")
    flags = [
        f"--L {wildcards.L}",
        f"--estimator {wildcards.estimator}",
        "--amp" if wildcards.prec == "amp" else "--no-amp",
        f"--seed {wildcards.seed}",
        f"--steps {steps}",
        f"--batch-size {g['batch_size']}",
        f"--n-batches {g['n_batches']}",
        f"--lr {g.get('lr', t['lr'])}",
        f"--lr-schedule {lr_schedule(wildcards.group)}",
        f"--assembly {t['assembly']}",
        f"--checkpoint-every {t['checkpoint_every']}",
        f"--snapshot-every {g.get('snapshot_every', t['snapshot_every'])}",
        f"--beta {config['physics']['beta']}",
        f"--kappa {config['physics']['kappa']}",
        f"--n-layers {config['architecture']['n_layers']}",
        f"--hidden {config['architecture']['hidden']}",
        "--holonomy" if config["architecture"].get("holonomy") else "",
        "--charge-symmetric" if config["architecture"].get("charge_symmetric") else "",
        f"--device {config['device']}",
        "--no-progress",
    ]
    return " ".join(flag for flag in flags if flag)


def snapshot_steps(wildcards):
    """Steps of the snapshots a finished training run left (known only after training)."""
    snapshots = checkpoints.train.get(**wildcards).output.snapshots
    found = glob_wildcards(os.path.join(snapshots, "step_{step}.pt")).step
    return sorted(found, key=int)


def acceptance_records(wildcards):
    folder = TRAIN_DIR.format(**wildcards)
    return [f"{folder}/acceptance/step_{step}.json" for step in snapshot_steps(wildcards)]


def acceptance_step_numbers(wildcards):
    return [int(step) for step in snapshot_steps(wildcards)]


# ---------------------------------------------------------------------------------------
# chains (Figs. 3 and 5)


def chain_model(wildcards):
    chain = config["chains"][wildcards.fig]
    group = CHAIN_GROUP[wildcards.fig]
    L = config["training"][group]["L"]
    folder = train_dir(group, L, chain["estimator"], chain["amp"], chain["seed"])
    return os.path.join(folder, "model.pt")


def chain_length(wildcards):
    return config["chains"][wildcards.fig]["length"]


def chain_seed(wildcards):
    return config["chains"][wildcards.fig]["chain_seed"]


def chain_symmetry(wildcards):
    return config["chains"][wildcards.fig]["symmetrize"]


def chain_title(fig):
    chain = config["chains"][fig]
    group = CHAIN_GROUP[fig]
    est = ESTIMATOR_LABELS[chain["estimator"]]
    amp = " amp" if chain["amp"] else ""
    return f"L = {config['training'][group]['L']}, {est}{amp}, {config['scale']}"


def nis_files():
    if not config["chains"]["nis"]:
        return []
    return [f"results/runs/chains/{fig}/nis.json" for fig in CHAIN_GROUP]


# ---------------------------------------------------------------------------------------
# measurements (Tables 1-5)


def measure_arch(spec):
    """(n_layers, hidden) of a table: its own, else measure's, else the training flow's."""
    m, arch = config["measure"], config["architecture"]
    layers = spec.get("n_layers", m.get("n_layers", arch["n_layers"]))
    hidden = spec.get("hidden", m.get("hidden", arch["hidden"]))
    return layers, hidden


def measure_file(kind, L, bs, nb, estimator, amp, assembly, arch):
    return MEASURE.format(
        kind=kind,
        L=L,
        bs=bs,
        nb=nb,
        estimator=estimator,
        prec=prec(amp),
        assembly=assembly,
        layers=arch[0],
        hidden=arch[1],
    )


def table_inputs(table):
    """Measurement records behind a table, in the order its rows and columns appear."""
    m = config["measure"]
    if table in ("table1", "table2"):
        arch = measure_arch({})
        return [
            measure_file(
                "timing",
                row["L"],
                row["batch_size"],
                row["n_batches"],
                v["estimator"],
                v["amp"],
                v["assembly"],
                arch,
            )
            for row in m["table1"]
            for v in m["variants"]
        ]
    if table == "table3":
        spec = m["table3"]
        return [
            measure_file("dag", L, spec["batch_size"], 1, est, False, asm, measure_arch(spec))
            for est in spec["estimators"]
            for asm in spec["assemblies"]
            for L in spec["L"]
        ]
    if table == "table4":
        spec = m["table4"]
        return [
            measure_file("ops", spec["L"], spec["batch_size"], 1, est, False, asm, measure_arch(spec))
            for est in spec["estimators"]
            for asm in spec["assemblies"]
        ]
    if table == "table5":
        spec = m["table5"]
        return [
            measure_file("memory", row["L"], row["batch_size"], 1, est, False, asm, measure_arch(spec))
            for row in spec["rows"]
            for est in spec["estimators"]
            for asm in spec["assemblies"]
        ]
    raise ValueError(f"unknown table {table!r}")


def measure_flags(wildcards):
    m = config["measure"]
    flags = [
        "--amp" if wildcards.prec == "amp" else "",
        f"--beta {config['physics']['beta']}",
        f"--kappa {config['physics']['kappa']}",
        f"--device {config['device']}",
    ]
    if wildcards.kind == "timing":
        flags += [f"--steps {m['steps']}", f"--warmup {m['warmup']}"]
    if wildcards.kind == "ops":
        flags.append(f"--repeats {m['repeats']}")
    return " ".join(f for f in flags if f)


def measure_settings(wildcards):
    """The entry a failed measurement is recorded under (on_failure: record)."""
    return json.dumps(
        {
            "kind": wildcards.kind,
            "L": int(wildcards.L),
            "batch_size": int(wildcards.bs),
            "n_batches": int(wildcards.nb),
            "estimator": wildcards.estimator,
            "amp": wildcards.prec == "amp",
            "assembly": wildcards.assembly,
            "n_layers": int(wildcards.layers),
            "hidden": int(wildcards.hidden),
            "device": config["device"],
        }
    )


def on_failure(wildcards, output):
    """Shell run when a measurement fails: stop (exit 1) or write a 'crashed' record."""
    if config["on_failure"] == "stop":
        return "exit 1"
    log = MEASURE_LOG.format(**wildcards)
    settings = measure_settings(wildcards)  # JSON: double quotes only
    return (
        f"gaugeflow record-failure --settings '{settings}' --log {log} --out {output[0]} "
        f">> {log} 2>&1"
    )


# ---------------------------------------------------------------------------------------
# report and paper


def figure_outputs():
    return expand("results/figures/{fig}.{ext}", fig=FIGURES, ext=["pdf", "png"])


def table_outputs():
    return expand("results/tables/{table}.{ext}", table=TABLES, ext=["tex", "csv"])


def config_json():
    return json.dumps(config, sort_keys=True)


def tex_search_path():
    """TEXINPUTS for the paper: its sources, then the generated tables, figures, macros."""
    parts = [PAPER_DIR, "results/tables", "results/figures", "results/paper"]
    return ":".join(os.path.abspath(p) for p in parts) + ":"


def nis_flags():
    if not config["chains"]["nis"]:
        return ""
    return "--nis-main results/runs/chains/fig3/nis.json --nis-large results/runs/chains/fig5/nis.json"


def macro_settings():
    """The run settings the paper's text quotes, as `gaugeflow macros --settings` takes them."""
    t = config["training"]
    groups = {
        group: {
            "L": t[group]["L"],
            "steps": t[group]["steps"],
            "steps_by_estimator": t[group]["steps_by_estimator"],
            **({"amp_steps": t[group]["amp_steps"]} if "amp_steps" in t[group] else {}),
            "batch_size": t[group]["batch_size"],
            "n_batches": t[group]["n_batches"],
            "chain_length": config["chains"][GROUP_FIGURES[group][1]]["length"],
        }
        for group in GROUP_FIGURES
    }
    settings = {
        "scale": config["scale"],
        "device": config["device"],
        "beta": config["physics"]["beta"],
        "kappa": config["physics"]["kappa"],
        "n_layers": config["architecture"]["n_layers"],
        "hidden": config["architecture"]["hidden"],
        "holonomy": bool(config["architecture"].get("holonomy")),
        "charge_symmetric": bool(config["architecture"].get("charge_symmetric")),
        "ess_window": t["ess_window"],
        "snapshot_every": t["snapshot_every"],
        "acceptance_samples": t["acceptance_samples"],
        "bridge_min": config["chains"]["bridge_min"],
        "measure_steps": config["measure"]["steps"],
        "groups": groups,
    }
    return json.dumps(settings, sort_keys=True)


# ---------------------------------------------------------------------------------------
# measurements that run alone (measure.smk; README, "Workflow")

MEASURE_ALONE = ("timing", "ops", "memory")


def measure_alone(kind):
    return config["measure"]["exclusive"] and kind in MEASURE_ALONE


def _local_cores():
    """--cores of a local run (None when jobs go to a cluster or no core count is set)."""
    if not workflow.local_exec:
        return None
    try:
        return workflow.cores
    except WorkflowError:  # no --cores given
        return None


def measure_torch_threads(wildcards):
    """Threads the measurement runs on: resources.measure.threads, capped (as Snakemake caps
    `threads`) at the cores of a local run."""
    threads = res("measure", "threads")
    return threads if _local_cores() is None else min(threads, _local_cores())


def measure_job_threads(wildcards):
    """Cores the job holds: all of a local run's for a measurement that must run alone."""
    if measure_alone(wildcards.kind) and _local_cores() is not None:
        return _local_cores()
    return res("measure", "threads")


def measure_slurm_extra(wildcards):
    return "--exclusive" if measure_alone(wildcards.kind) else ""


# ---------------------------------------------------------------------------------------
# timing rows (measure.interleave): the columns of one Table 1 row timed in one job, one
# step of each in turn, so their ratios come from the same minutes of the machine

MEASURE_ROW_LOG = "results/logs/measure/timing-row/L{L}-b{bs}x{nb}-l{layers}h{hidden}.log"


def _variant_name(v):
    return f"{v['estimator']}-{prec(v['amp'])}-{v['assembly']}"


def timing_row_outputs():
    """The row job's outputs: one timing record per variant (wildcards L, bs, nb, layers,
    hidden left open), in the order of measure.variants."""
    outputs = []
    for v in config["measure"]["variants"]:
        path = MEASURE.replace("{kind}", "timing").replace("{estimator}", v["estimator"])
        path = path.replace("{prec}", prec(v["amp"])).replace("{assembly}", v["assembly"])
        outputs.append(path)
    return outputs


def timing_row_variants(wildcards, output):
    """--variant/--out pairs of `gaugeflow measure timing-row`."""
    pairs = zip(config["measure"]["variants"], output)
    return " ".join(
        f"--variant {v['estimator']}:{prec(v['amp'])}:{v['assembly']} --out {out}"
        for v, out in pairs
    )


def timing_row_flags(wildcards):
    m = config["measure"]
    return (
        f"--beta {config['physics']['beta']} --kappa {config['physics']['kappa']}"
        f" --device {config['device']} --steps {m['steps']} --warmup {m['warmup']}"
    )


def timing_row_threads(wildcards):
    """Cores the row job holds: every core of a local run when timing runs alone."""
    if config["measure"]["exclusive"] and _local_cores() is not None:
        return _local_cores()
    return res("measure", "threads")


def timing_row_runtime(wildcards):
    """A row runs each of its variants: the measure runtime (minutes) once per variant."""
    return res("measure", "runtime") * len(config["measure"]["variants"])


def timing_row_slurm_extra(wildcards):
    return "--exclusive" if config["measure"]["exclusive"] else ""


def timing_row_on_failure(wildcards, output):
    """Shell run when the row job fails: stop, or a 'crashed' record for every variant."""
    if config["on_failure"] == "stop":
        return "exit 1"
    log = MEASURE_ROW_LOG.format(**wildcards)
    commands = []
    for v, out in zip(config["measure"]["variants"], output):
        fields = dict(wildcards) | {
            "kind": "timing",
            "estimator": v["estimator"],
            "prec": prec(v["amp"]),
            "assembly": v["assembly"],
        }
        settings = measure_settings(SimpleNamespace(**fields))
        commands.append(
            f"gaugeflow record-failure --settings '{settings}' --log {log} --out {out} "
            f">> {log} 2>&1"
        )
    return "{ " + " && ".join(commands) + "; }"
