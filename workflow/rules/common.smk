# Config validation, names and target functions shared by all rules. No logic beyond paths here:
# the stages themselves live in src/pclbench/.
import json
import sys

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

# The interpreter running Snakemake has pclbench installed (make run / make test set this up).
PCLBENCH = f'"{sys.executable}" -m pclbench'

RAW = config["paths"]["raw"]
ALIGNED = config["paths"]["aligned"]
RESULTS = config["paths"]["results"]
LOGS = f"{RESULTS}/logs"

DATASETS = config["datasets"]
WF = config["workflow"]
METHODS = WF["methods"]
TASKS = WF["tasks"]
PRETRAIN_DATASET = WF["pretrain_dataset"]
PRETRAIN_SPLIT = WF["pretrain_split"]
SYNTHETIC = [name for name, d in DATASETS.items() if d["source"] == "synthetic"]


def _check_references():
    """Names that point at other config entries must exist (the schema cannot say this)."""
    for task in TASKS:
        if task not in config["tasks"]:
            raise ValueError(f"config error at workflow.tasks: task {task!r} has no entry under tasks")
        ds = config["tasks"][task]["dataset"]
        if ds not in DATASETS:
            raise ValueError(f"config error at tasks.{task}.dataset: {ds!r} is not under datasets")
    if PRETRAIN_DATASET not in DATASETS:
        raise ValueError(f"config error at workflow.pretrain_dataset: {PRETRAIN_DATASET!r} is not under datasets")
    if PRETRAIN_SPLIT not in DATASETS[PRETRAIN_DATASET]["splits"]:
        raise ValueError(f"config error at workflow.pretrain_split: {PRETRAIN_SPLIT!r} is not a split of {PRETRAIN_DATASET}")


_check_references()


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    task="|".join(TASKS),
    split="[A-Za-z0-9_]+",


def params_json(*sections, dataset=None):
    """The config one stage reads, as JSON: a change re-runs exactly the rules reading it.

    ``sections`` are whole top-level sections; ``dataset`` adds just that entry of ``datasets``.
    """
    sel = {s: config[s] for s in sections}
    if dataset is not None:
        sel["datasets"] = {dataset: DATASETS[dataset]}
    return json.dumps(sel, sort_keys=True, separators=(",", ":"))


def task_dataset(task):
    return config["tasks"][task]["dataset"]


def task_features(wildcards):
    ds = task_dataset(wildcards.task)
    return [f"{RESULTS}/features/{wildcards.method}/{ds}/{s}.npz" for s in DATASETS[ds]["splits"]]


def task_aligned(wildcards):
    ds = task_dataset(wildcards.task)
    return [f"{ALIGNED}/{ds}/{s}" for s in DATASETS[ds]["splits"]]


def table_files():
    names = list(TASKS) + ["summary"]
    return [f"{RESULTS}/tables/{n}.{ext}" for n in names for ext in ("md", "csv")]


def all_targets():
    sheets = [f"{RESULTS}/contact_sheets/{d}.png" for d in SYNTHETIC]
    return table_files() + sheets
