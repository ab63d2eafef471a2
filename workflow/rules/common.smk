# Config validation, names, and every function the rule files call (input, params and target
# functions; `snakemake --lint` wants them apart from the rules). No logic beyond paths here: the
# stages themselves live in src/pclbench/.
import json
import os
import posixpath
import sys

import yaml

from snakemake.utils import validate

from pclbench.core.config import check_config_values
from pclbench.core.overrides import apply_overrides
from pclbench.core.schema import load_schema
from pclbench.core.stages import stage_config
from pclbench.data.acquire import missing_manual_files, receipts_dir
from pclbench.report.tables import table_names

# `snakemake --config set=KEY=VALUE` or `--config 'set=["KEY=VALUE", ...]'`: dotted-key overrides, as
# `pclbench <stage> --set` takes them (pclbench.core.overrides; Snakemake's own --config sets top-level
# keys only). Applied to the config in place (the `config` object is Snakemake's), before any check.
if "set" in config:
    _SETS = config.pop("set")
    _SET_CONFIG = apply_overrides(config, _SETS if isinstance(_SETS, list) else [_SETS], load_schema())
    config.clear()
    config.update(_SET_CONFIG)

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
# The shell commands use these two directly, not through params (`snakemake --lint` notes it; accepted
# in tests/test_lint.py): the interpreter is the software, not a parameter of a result, and as a param
# it would be recorded with every output, so an environment at another path would re-run every job.
PCLBENCH = [sys.executable, "-m", "pclbench"]
PCLBENCH_LAUNCH = [sys.executable, "-m", "pclbench.pretrain.launch"]

SOURCES = config["paths"]["sources"]
RAW = config["paths"]["raw"]
ALIGNED = config["paths"]["aligned"]
RESULTS = config["paths"]["results"]
# paths.logs / paths.receipts: null = under results (config/config.yaml says why they may live elsewhere)
LOGS = config["paths"].get("logs") or f"{RESULTS}/logs"
RECEIPTS = receipts_dir(config["paths"])

DATASETS = config["datasets"]
BENCH = config["benchmarks"]
WF = config["workflow"]
METHODS = WF["methods"]
BENCHMARKS = WF["benchmarks"]  # listed: every one gets a table cell (a number or "not run")
PRETRAIN_DATASET = WF["pretrain_dataset"]
PRETRAIN_SPLIT = WF["pretrain_split"]
SYNTHETIC = [name for name, d in DATASETS.items() if d["source"] == "synthetic"]


VARIANTS = config["variants"]
# the registered methods (pclbench.pretrain.methods.METHODS), as the schema lists them for variants.*.method
# (tests/test_baselines.py keeps the two equal; read here without importing torch)
with open(os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")) as _fh:
    REGISTERED_METHODS = tuple(
        yaml.safe_load(_fh)["properties"]["variants"]["additionalProperties"]["properties"]["method"]["enum"]
    )


def base_method(name):
    """The registered method a workflow method name runs (itself, or its variant's `method`)."""
    return VARIANTS[name]["method"] if name in VARIANTS else name


def _check_references():
    """Names that point at other config entries must exist (the schema cannot say this)."""
    for m in METHODS:
        if m not in VARIANTS and m not in REGISTERED_METHODS:
            raise ValueError(
                f"config error at workflow.methods: {m!r} is neither a registered method "
                f"{list(REGISTERED_METHODS)} nor an entry of variants {list(VARIANTS)}"
            )
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
                raise ValueError(
                    f"config error at benchmarks.{b}.{role}.dataset: {ref['dataset']!r} is not under datasets"
                )
            if ref["split"] not in DATASETS[ref["dataset"]]["splits"]:
                raise ValueError(
                    f"config error at benchmarks.{b}.{role}.split: {ref['split']!r} is not a split of "
                    f"{ref['dataset']} (splits: {DATASETS[ref['dataset']]['splits']})"
                )
    if PRETRAIN_DATASET not in DATASETS:
        raise ValueError(f"config error at workflow.pretrain_dataset: {PRETRAIN_DATASET!r} is not under datasets")
    if PRETRAIN_SPLIT not in DATASETS[PRETRAIN_DATASET]["splits"]:
        raise ValueError(
            f"config error at workflow.pretrain_split: {PRETRAIN_SPLIT!r} is not a split of {PRETRAIN_DATASET}"
        )


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
                reasons.append(
                    f"{ds} is licence-gated and not in place ({len(missing)} missing, e.g. {missing[0]}; "
                    f"`python -m pclbench acquire --dataset {ds}` says what to obtain and where to put it)"
                )
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
        raise ValueError(
            "workflow.missing_data is 'fail' and these benchmarks lack data:\n"
            + "\n".join(f"  {b}: {why}" for b, why in NOT_RUN.items())
        )
TASKS = list(dict.fromkeys(BENCH[b]["task"] for b in RUNNABLE))


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    benchmark="|".join(BENCHMARKS),
    split="[A-Za-z0-9_]+",


def stage_params(stage, **names):
    """The config one stage reads, as JSON: a change re-runs exactly the jobs reading it.

    Which keys a stage reads is declared once, in pclbench.core.stages (a method's config_sections,
    a parser's sections, a task's entry, a table for the rest); ``names`` are the job's wildcards
    (dataset, method, benchmark: a method that is a variant gets its overrides merged in). The CLI
    checks what it receives against the same declaration and the DVC export lists the same keys.
    """
    return json.dumps(stage_config(config, stage, **names), sort_keys=True, separators=(",", ":"))


def probe_json(method, benchmark):
    return f"{RESULTS}/probes/{method}/{benchmark}.json"


def bench_features(wildcards):
    return [f"{RESULTS}/features/{wildcards.method}/{d}/{s}.npz" for d, s in bench_splits(wildcards.benchmark)]


def bench_aligned(wildcards):
    return [f"{ALIGNED}/{d}/{s}" for d, s in bench_splits(wildcards.benchmark)]


def bench_raw(wildcards):
    return list(dict.fromkeys(f"{RAW}/{d}" for d, _ in bench_splits(wildcards.benchmark)))


def strip_tail(path, *parts):
    """``path`` without its trailing components ``parts``: the configured folder a job's file was
    composed from, exactly as configured (not normalised).

    A folder handed to a command is derived from the job's own input or output paths, as
    `snakemake --lint` asks (snakemake/linting/rules.py, lint_params_prefix and lint_not_used_params):
    the command names the paths Snakemake resolved for this job, and a params function that takes
    ``input`` or ``output`` is not recorded as a parameter of its own (snakemake/rules.py,
    _is_deriving_function): its files are.
    """
    tail = "".join(posixpath.sep + part for part in parts)
    if not path.endswith(tail):
        raise ValueError(f"{path!r} does not end with {tail!r}")
    return path[: -len(tail)]


def bench_aligned_root(wildcards, input):
    """paths.aligned, as the probe job's first aligned split (bench_aligned) names it."""
    dataset, split = bench_splits(wildcards.benchmark)[0]
    return strip_tail(input.aligned[0], dataset, split)


def bench_raw_root(wildcards, input):
    """paths.raw, as the probe job's first raw dataset (bench_raw) names it."""
    return strip_tail(input.raw[0], bench_splits(wildcards.benchmark)[0][0])


def pretrain_params(wildcards):
    """The sections the method's trainer reads: pretrain + its Method.config_sections (random: model
    only, so PCL's settings never re-run it); a variant (config `variants`) runs its registered method
    with its overrides merged in."""
    return stage_params("pretrain", method=wildcards.method)


def probe_params(wildcards):
    """What one probe job reads: sections probe and seed, this benchmark's entry and its task's
    protocol (a change to another benchmark or task does not re-run this job)."""
    return stage_params("probe", benchmark=wildcards.benchmark)


# Stage 6 (report.smk): the tables' and figures' file names, and the outputs of its tables job.
# Every listed benchmark gets a table column: a number when it ran, otherwise "not run" and the reason.
REPORT_TASKS = list(dict.fromkeys(BENCH[b]["task"] for b in BENCHMARKS))
TABLES_DIR = f"{RESULTS}/tables"
FIGURES_DIR = f"{RESULTS}/figures"
# a list of words: `{params.not_run:q}` quotes each one (a reason holds spaces and parentheses)
NOT_RUN_ARGS = [word for b, why in NOT_RUN.items() for word in ("--not-run", f"{b}={why}")]


def _in_workflow(path):
    """A config path relative to the workflow directory (the Snakefile's), as seen from the working
    directory (relative, so dvc.yaml stays portable when both are the repository root)."""
    return path if os.path.isabs(path) else os.path.relpath(os.path.join(workflow.basedir, path))


PUBLISHED = _in_workflow(config["tables"]["published"])
SWAP_GRID_METHODS = [m for m in config["figures"]["swap_grid_methods"] if m in METHODS]
_EMB = config["figures"]["embedding"]
# The embedding needs the features of its dataset: drawn when that dataset is generated here or read
# by a benchmark that runs (a licence-gated set that is not in place is left out).
_EMB_OK = (
    _EMB["dataset"] in DATASETS
    and _EMB["split"] in DATASETS[_EMB["dataset"]]["splits"]
    and (
        DATASETS[_EMB["dataset"]]["source"] != "manual"
        or any(_EMB["dataset"] in dict(bench_splits(b)) for b in RUNNABLE)
    )
)
EMBEDDING_METHODS = [m for m in _EMB["methods"] if m in METHODS] if _EMB_OK else []
if _EMB["methods"] and not _EMB_OK:
    print(
        f"pclbench: embedding figure skipped: figures.embedding.dataset {_EMB['dataset']!r} / split "
        f"{_EMB['split']!r} is not a dataset split whose data is in place",
        file=sys.stderr,
    )


def report_table_files(exts=("md", "csv", "tex", "html")):
    """Every table file `pclbench tables` writes (pclbench.report.tables.table_names; the summary has no .tex)."""
    return [
        f"{TABLES_DIR}/{n}.{e}" for n in table_names(REPORT_TASKS) for e in exts if not (n == "summary" and e == "tex")
    ]


def figure_files():
    return (
        [f"{FIGURES_DIR}/bars_{t}.png" for t in REPORT_TASKS]
        + [f"{FIGURES_DIR}/curves_{m}.png" for m in METHODS]
        + [f"{FIGURES_DIR}/swap_grid_{m}.png" for m in SWAP_GRID_METHODS]
        + [f"{FIGURES_DIR}/embedding_{m}.png" for m in EMBEDDING_METHODS]
    )


def report_targets():
    """Everything stage 6 writes (tables, metrics.json, figures): the inputs of `all` and the report."""
    return report_table_files() + [f"{RESULTS}/metrics.json"] + figure_files()


def _table_outputs():
    out = {}
    for t in REPORT_TASKS:
        out[t] = report(
            f"{TABLES_DIR}/{t}.html",
            caption="../report/table.rst",
            category="Tables",
            subcategory=t,
            labels={"table": t, "kind": "methods x benchmarks"},
        )
        out[f"{t}_readouts"] = report(
            f"{TABLES_DIR}/{t}_readouts.html",
            caption="../report/table_readouts.rst",
            category="Tables",
            subcategory=t,
            labels={"table": t, "kind": "readouts"},
        )
    out["ablation"] = report(
        f"{TABLES_DIR}/ablation.html",
        caption="../report/table_ablation.rst",
        category="Tables",
        subcategory="ablation",
        labels={"table": "ablation", "kind": "ablation"},
    )
    out["summary"] = report(
        f"{TABLES_DIR}/summary.html",
        caption="../report/table_summary.rst",
        category="Tables",
        subcategory="summary",
        labels={"table": "summary", "kind": "summary"},
    )
    out["disentanglement"] = report(
        f"{TABLES_DIR}/disentanglement.html",
        caption="../report/table_disentanglement.rst",
        category="Tables",
        subcategory="disentanglement",
        labels={"table": "disentanglement", "kind": "face head vs pose head"},
    )
    html = set(f"{TABLES_DIR}/{n}.html" for n in out)
    out["other"] = [f for f in report_table_files() if f not in html]
    out["metrics"] = f"{RESULTS}/metrics.json"
    return out


def all_targets():
    """Every table, figure and metrics.json (report_targets) + the contact sheets."""
    sheets = [f"{RESULTS}/contact_sheets/{d}.png" for d in SYNTHETIC]
    return report_targets() + sheets
