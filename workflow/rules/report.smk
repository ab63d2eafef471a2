# Stage 6: probe results -> comparison tables (methods x benchmarks, reproduced next to published),
# figures, and the Snakemake report:
#   snakemake --cores all                          tables + figures (report_targets(), part of `all`)
#   snakemake --report results/report.html         one self-contained HTML page with all of them
# Outputs marked report(...) go into the report, grouped by category (Tables / Figures) and
# subcategory (task or figure kind); captions are in workflow/report/.
from pclbench.tables import table_names

report: "../report/workflow.rst"

# Every listed benchmark gets a table column: a number when it ran, "not run" + the reason when not.
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
_EMB_OK = _EMB["dataset"] in DATASETS and _EMB["split"] in DATASETS[_EMB["dataset"]]["splits"] and (
    DATASETS[_EMB["dataset"]]["source"] != "manual"
    or any(_EMB["dataset"] in dict(bench_splits(b)) for b in RUNNABLE))
EMBEDDING_METHODS = [m for m in _EMB["methods"] if m in METHODS] if _EMB_OK else []
if _EMB["methods"] and not _EMB_OK:
    print(f"pclbench: embedding figure skipped: figures.embedding.dataset {_EMB['dataset']!r} / split "
          f"{_EMB['split']!r} is not a dataset split whose data is in place", file=sys.stderr)


def report_table_files(exts=("md", "csv", "tex", "html")):
    """Every table file `pclbench tables` writes (pclbench.tables.table_names; the summary has no .tex)."""
    return [f"{TABLES_DIR}/{n}.{e}" for n in table_names(REPORT_TASKS) for e in exts
            if not (n == "summary" and e == "tex")]


def figure_files():
    return ([f"{FIGURES_DIR}/bars_{t}.png" for t in REPORT_TASKS]
            + [f"{FIGURES_DIR}/curves_{m}.png" for m in METHODS]
            + [f"{FIGURES_DIR}/swap_grid_{m}.png" for m in SWAP_GRID_METHODS]
            + [f"{FIGURES_DIR}/embedding_{m}.png" for m in EMBEDDING_METHODS])


def report_targets():
    """Everything stage 6 writes (tables, metrics.json, figures): the inputs of `all` and the report."""
    return report_table_files() + [f"{RESULTS}/metrics.json"] + figure_files()


def _table_outputs():
    out = {}
    for t in REPORT_TASKS:
        out[t] = report(f"{TABLES_DIR}/{t}.html", caption="../report/table.rst", category="Tables",
                        subcategory=t, labels={"table": t, "kind": "methods x benchmarks"})
        out[f"{t}_readouts"] = report(f"{TABLES_DIR}/{t}_readouts.html", caption="../report/table_readouts.rst",
                                      category="Tables", subcategory=t, labels={"table": t, "kind": "readouts"})
    out["ablation"] = report(f"{TABLES_DIR}/ablation.html", caption="../report/table_ablation.rst",
                             category="Tables", subcategory="ablation", labels={"table": "ablation", "kind": "ablation"})
    out["summary"] = report(f"{TABLES_DIR}/summary.html", caption="../report/table_summary.rst",
                            category="Tables", subcategory="summary", labels={"table": "summary", "kind": "summary"})
    html = set(f"{TABLES_DIR}/{n}.html" for n in out)
    out["other"] = [f for f in report_table_files() if f not in html]
    out["metrics"] = f"{RESULTS}/metrics.json"
    return out


rule tables:
    input:
        probes=[probe_json(m, b) for m in METHODS for b in RUNNABLE],
        published=PUBLISHED,
    output:
        **_table_outputs(),
    params:
        cfg=params_json("tables", "workflow", "benchmarks"),
        outdir=TABLES_DIR,
        not_run=NOT_RUN_ARGS,
    log:
        f"{LOGS}/tables.log",
    shell:
        "{PCLBENCH:q} tables --params {params.cfg:q} --out {params.outdir:q} --published {input.published:q} "
        "--metrics-json {output.metrics:q} {params.not_run:q} {input.probes:q} > {log:q} 2>&1"


rule figure_bars:
    input:
        [probe_json(m, b) for m in METHODS for b in RUNNABLE],
    output:
        [report(f"{FIGURES_DIR}/bars_{t}.png", caption="../report/bars.rst", category="Figures",
                subcategory="bar charts", labels={"figure": "bars", "task": t}) for t in REPORT_TASKS],
    params:
        cfg=params_json("figures", "tables", "workflow", "benchmarks"),
        outdir=FIGURES_DIR,
        not_run=NOT_RUN_ARGS,
        tasks=REPORT_TASKS,
    log:
        f"{LOGS}/figures/bars.log",
    shell:
        # the probe JSONs come right after the kind: argparse then reads them as positionals
        "{PCLBENCH:q} figures --params {params.cfg:q} bars {input:q} --out {params.outdir:q} --tasks {params.tasks:q} "
        "{params.not_run:q} > {log:q} 2>&1"


rule figure_curves:
    input:
        f"{RESULTS}/pretrain/{{method}}/metrics.csv",
    output:
        report(f"{FIGURES_DIR}/curves_{{method}}.png", caption="../report/curves.rst", category="Figures",
               subcategory="training curves", labels={"figure": "training curves", "method": "{method}"}),
    params:
        cfg=params_json("figures"),
    log:
        f"{LOGS}/figures/curves_{{method}}.log",
    shell:
        "{PCLBENCH:q} figures --params {params.cfg:q} curves --method {wildcards.method:q} --metrics {input:q} "
        "--out {output:q} > {log:q} 2>&1"


rule figure_swap_grid:
    input:
        # the grids are side outputs of pretraining (their epochs depend on the schedule): the
        # checkpoint says the run that wrote them has finished
        f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
    output:
        report(f"{FIGURES_DIR}/swap_grid_{{method}}.png", caption="../report/swap_grid.rst", category="Figures",
               subcategory="reconstruction swap grid", labels={"figure": "swap grid", "method": "{method}"}),
    params:
        cfg=params_json("figures"),
        pretrain_dir=lambda w: f"{RESULTS}/pretrain/{w.method}",
    log:
        f"{LOGS}/figures/swap_grid_{{method}}.log",
    shell:
        "{PCLBENCH:q} figures --params {params.cfg:q} swap-grid --method {wildcards.method:q} "
        "--pretrain-dir {params.pretrain_dir:q} --out {output:q} > {log:q} 2>&1"


rule figure_embedding:
    input:
        features=f"{RESULTS}/features/{{method}}/{_EMB['dataset']}/{_EMB['split']}.npz",
        aligned=f"{ALIGNED}/{_EMB['dataset']}/{_EMB['split']}",
    output:
        report(f"{FIGURES_DIR}/embedding_{{method}}.png", caption="../report/embedding.rst", category="Figures",
               subcategory="embedding", labels={"figure": "t-SNE embedding", "method": "{method}"}),
    params:
        cfg=params_json("figures", "benchmarks"),
    log:
        f"{LOGS}/figures/embedding_{{method}}.log",
    shell:
        "{PCLBENCH:q} figures --params {params.cfg:q} embedding --method {wildcards.method:q} "
        "--features {input.features:q} --manifest {input.aligned:q}/manifest.csv --out {output:q} > {log:q} 2>&1"
