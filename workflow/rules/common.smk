# Config validation, names and target functions shared by all rules. No logic beyond paths here:
# the stages themselves live in src/pclbench/.
import json
import os
import sys

import yaml

from snakemake.utils import validate

from pclbench.config import check_config_values, deep_merge
from pclbench.data.acquire import missing_manual_files
from pclbench.data.parsers import PARSER_SECTIONS


# NaN / +-inf (which jsonschema's `type: number` accepts) and shell syntax in paths.* are refused first,
# with the key path; then the schema. A config using Snakemake's YTE templating (`__use_yte__: true`)
# has already been evaluated by Snakemake when this runs: README "Configuration" says not to use it.
check_config_values(config)
validate(config, schema="../schemas/config.schema.yaml")

# The interpreter running Snakemake has pclbench installed (make run / make test set this up).
# Shell quoting: every substitution in a `shell:` directive carries Snakemake's `:q` format spec
# (shlex.quote each value, each element of a list: snakemake/utils.py QuotedFormatter and
# SequenceFormatter; Snakemake docs "Rules > Shell commands"), so a config value with a space or
# shell syntax stays one argument; tests/test_hostile_config.py fails on an unquoted one. Lists
# like this one expand to one quoted word per element.
PCLBENCH = [sys.executable, "-m", "pclbench"]
PCLBENCH_LAUNCH = [sys.executable, "-m", "pclbench.launch"]

SOURCES = config["paths"]["sources"]
RAW = config["paths"]["raw"]
ALIGNED = config["paths"]["aligned"]
RESULTS = config["paths"]["results"]
LOGS = f"{RESULTS}/logs"

DATASETS = config["datasets"]
BENCH = config["benchmarks"]
WF = config["workflow"]
METHODS = WF["methods"]
BENCHMARKS = WF["benchmarks"]  # listed: every one gets a table cell (a number or "not run")
PRETRAIN_DATASET = WF["pretrain_dataset"]
PRETRAIN_SPLIT = WF["pretrain_split"]
SYNTHETIC = [name for name, d in DATASETS.items() if d["source"] == "synthetic"]


VARIANTS = config["variants"]
# the registered methods (pclbench.methods.METHODS), as the schema lists them for variants.*.method
# (tests/test_baselines.py keeps the two equal; read here without importing torch)
with open(os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")) as _fh:
    REGISTERED_METHODS = tuple(yaml.safe_load(_fh)["properties"]["variants"]["additionalProperties"]
                               ["properties"]["method"]["enum"])


def base_method(name):
    """The registered method a workflow method name runs (itself, or its variant's `method`)."""
    return VARIANTS[name]["method"] if name in VARIANTS else name


def _check_references():
    """Names that point at other config entries must exist (the schema cannot say this)."""
    for m in METHODS:
        if m not in VARIANTS and m not in REGISTERED_METHODS:
            raise ValueError(f"config error at workflow.methods: {m!r} is neither a registered method "
                             f"{list(REGISTERED_METHODS)} nor an entry of variants {list(VARIANTS)}")
    for name, v in VARIANTS.items():
        if name in REGISTERED_METHODS:
            raise ValueError(f"config error at variants.{name}: a variant cannot reuse a registered method's name")
        for section in v["overrides"]:
            if section not in config:
                raise ValueError(f"config error at variants.{name}.overrides.{section}: no such config section")
    for b in BENCHMARKS:
        if b not in BENCH:
            raise ValueError(f"config error at workflow.benchmarks: {b!r} has no entry under benchmarks")
    for b, entry in BENCH.items():
        if entry["task"] not in config["tasks"]:
            raise ValueError(f"config error at benchmarks.{b}.task: task {entry['task']!r} has no entry under tasks")
        for role in ("train", "test"):
            ref = entry[role]
            if ref is None:
                continue
            if ref["dataset"] not in DATASETS:
                raise ValueError(f"config error at benchmarks.{b}.{role}.dataset: {ref['dataset']!r} is not under datasets")
            if ref["split"] not in DATASETS[ref["dataset"]]["splits"]:
                raise ValueError(f"config error at benchmarks.{b}.{role}.split: {ref['split']!r} is not a split of "
                                 f"{ref['dataset']} (splits: {DATASETS[ref['dataset']]['splits']})")
    if PRETRAIN_DATASET not in DATASETS:
        raise ValueError(f"config error at workflow.pretrain_dataset: {PRETRAIN_DATASET!r} is not under datasets")
    if PRETRAIN_SPLIT not in DATASETS[PRETRAIN_DATASET]["splits"]:
        raise ValueError(f"config error at workflow.pretrain_split: {PRETRAIN_SPLIT!r} is not a split of {PRETRAIN_DATASET}")


_check_references()


def bench_splits(benchmark):
    """The (dataset, split) pairs a benchmark reads, train first."""
    entry = BENCH[benchmark]
    return [(r["dataset"], r["split"]) for r in (entry["train"], entry["test"]) if r is not None]


def _missing_manual(dataset):
    """What a licence-gated dataset lacks under paths.sources (empty when in place or not manual);
    the same check `pclbench acquire` makes (pclbench.data.acquire)."""
    entry = DATASETS[dataset]
    if entry["source"] != "manual":
        return []
    root = os.path.join(SOURCES, dataset)
    return [os.path.join(root, p) for p in missing_manual_files(entry, root)]


def _runnable():
    """Listed benchmarks whose data is in place (or downloadable / generated); the rest with a reason."""
    runnable, not_run = [], {}
    for b in BENCHMARKS:
        reasons = []
        for ds in dict.fromkeys(d for d, _ in bench_splits(b)):
            missing = _missing_manual(ds)
            if missing:
                reasons.append(f"{ds} is licence-gated and not in place ({len(missing)} missing, e.g. {missing[0]}; "
                               f"`python -m pclbench acquire --dataset {ds}` says what to obtain and where to put it)")
        if reasons:
            not_run[b] = "; ".join(reasons)
        else:
            runnable.append(b)
    return runnable, not_run


RUNNABLE, NOT_RUN = _runnable()
if NOT_RUN:
    for _b, _why in NOT_RUN.items():
        print(f"pclbench: benchmark {_b} not run: {_why}", file=sys.stderr)
    if WF["missing_data"] == "fail":
        raise ValueError("workflow.missing_data is 'fail' and these benchmarks lack data:\n" +
                         "\n".join(f"  {b}: {why}" for b, why in NOT_RUN.items()))
TASKS = list(dict.fromkeys(BENCH[b]["task"] for b in RUNNABLE))


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    benchmark="|".join(BENCHMARKS),
    split="[A-Za-z0-9_]+",


def params_json(*sections, dataset=None, method=None):
    """The config one stage reads, as JSON: a change re-runs exactly the rules reading it.

    ``sections`` are whole top-level sections; ``dataset`` adds just that entry of ``datasets``;
    ``method`` (a variant name) deep-merges that variant's overrides onto the sections.
    """
    overrides = VARIANTS[method]["overrides"] if method in VARIANTS else {}
    sel = {s: deep_merge(config[s], overrides[s]) if s in overrides else config[s] for s in sections}
    if dataset is not None:
        sel["datasets"] = {dataset: DATASETS[dataset]}
    if method in VARIANTS:  # the variant's entry too, so DVC lists `variants` among the stage's params
        sel["variants"] = {method: VARIANTS[method]}
    return json.dumps(sel, sort_keys=True, separators=(",", ":"))


def probe_json(method, benchmark):
    return f"{RESULTS}/probes/{method}/{benchmark}.json"


def bench_features(wildcards):
    return [f"{RESULTS}/features/{wildcards.method}/{d}/{s}.npz" for d, s in bench_splits(wildcards.benchmark)]


def bench_aligned(wildcards):
    return [f"{ALIGNED}/{d}/{s}" for d, s in bench_splits(wildcards.benchmark)]


def bench_raw(wildcards):
    return list(dict.fromkeys(f"{RAW}/{d}" for d, _ in bench_splits(wildcards.benchmark)))


def all_targets():
    """Every table, figure and metrics.json (report.smk's report_targets) + the contact sheets."""
    sheets = [f"{RESULTS}/contact_sheets/{d}.png" for d in SYNTHETIC]
    return report_targets() + sheets
