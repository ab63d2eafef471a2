# Stage 6: probe results -> comparison tables (methods x benchmarks, reproduced next to published),
# figures, and the Snakemake report:
#   snakemake --cores all                          tables + figures (report_targets(), part of `all`)
#   snakemake --report results/report.html         one self-contained HTML page with all of them
# Outputs marked report(...) go into the report, grouped by category (Tables / Figures) and
# subcategory (task or figure kind); captions are in workflow/report/.
report: "../report/workflow.rst"


# The tables' and figures' file names (REPORT_TASKS, TABLES_DIR, FIGURES_DIR, report_targets(), ...)
# are defined in common.smk, with every other function the rule files call.


rule tables:
    input:
        probes=[probe_json(m, b) for m in METHODS for b in RUNNABLE],
        published=PUBLISHED,
    output:
        **_table_outputs(),
    log:
        f"{LOGS}/tables.log",
    params:
        cfg=stage_params("tables"),
        outdir=lambda w, output: strip_tail(output.summary, "summary.html"),
        not_run=NOT_RUN_ARGS,
    shell:
        "{PCLBENCH:q} tables --params {params.cfg:q} --out {params.outdir:q} --published {input.published:q} "
        "--metrics-json {output.metrics:q} {params.not_run:q} {input.probes:q} --log {log:q}"


rule figure_bars:
    input:
        [probe_json(m, b) for m in METHODS for b in RUNNABLE],
    output:
        [
            report(
                f"{FIGURES_DIR}/bars_{t}.png",
                caption="../report/bars.rst",
                category="Figures",
                subcategory="bar charts",
                labels={"figure": "bars", "task": t},
            )
            for t in REPORT_TASKS
        ],
    log:
        f"{LOGS}/figures/bars.log",
    params:
        cfg=stage_params("figure_bars"),
        outdir=lambda w, output: strip_tail(output[0], f"bars_{REPORT_TASKS[0]}.png"),
        not_run=NOT_RUN_ARGS,
        tasks=REPORT_TASKS,
    shell:
        # the probe JSONs come right after the kind: argparse then reads them as positionals
        "{PCLBENCH:q} figures --params {params.cfg:q} bars {input:q} --out {params.outdir:q} --tasks {params.tasks:q} "
        "{params.not_run:q} --log {log:q}"


rule figure_curves:
    input:
        f"{RESULTS}/pretrain/{{method}}/metrics.csv",
    output:
        report(
            f"{FIGURES_DIR}/curves_{{method}}.png",
            caption="../report/curves.rst",
            category="Figures",
            subcategory="training curves",
            labels={"figure": "training curves", "method": "{method}"},
        ),
    log:
        f"{LOGS}/figures/curves_{{method}}.log",
    params:
        cfg=stage_params("figure_curves"),
    shell:
        "{PCLBENCH:q} figures --params {params.cfg:q} curves --method {wildcards.method:q} --metrics {input:q} "
        "--out {output:q} --log {log:q}"


rule figure_swap_grid:
    input:
        # the grids are side outputs of pretraining (their epochs depend on the schedule): the
        # checkpoint says the run that wrote them has finished
        f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
    output:
        report(
            f"{FIGURES_DIR}/swap_grid_{{method}}.png",
            caption="../report/swap_grid.rst",
            category="Figures",
            subcategory="reconstruction swap grid",
            labels={"figure": "swap grid", "method": "{method}"},
        ),
    log:
        f"{LOGS}/figures/swap_grid_{{method}}.log",
    params:
        cfg=stage_params("figure_swap_grid"),
        pretrain_dir=lambda w: f"{RESULTS}/pretrain/{w.method}",
    shell:
        "{PCLBENCH:q} figures --params {params.cfg:q} swap-grid --method {wildcards.method:q} "
        "--pretrain-dir {params.pretrain_dir:q} --out {output:q} --log {log:q}"


rule figure_embedding:
    input:
        features=f"{RESULTS}/features/{{method}}/{_EMB['dataset']}/{_EMB['split']}.npz",
        aligned=f"{ALIGNED}/{_EMB['dataset']}/{_EMB['split']}",
    output:
        report(
            f"{FIGURES_DIR}/embedding_{{method}}.png",
            caption="../report/embedding.rst",
            category="Figures",
            subcategory="embedding",
            labels={"figure": "t-SNE embedding", "method": "{method}"},
        ),
    log:
        f"{LOGS}/figures/embedding_{{method}}.log",
    params:
        cfg=stage_params("figure_embedding"),
    shell:
        "{PCLBENCH:q} figures --params {params.cfg:q} embedding --method {wildcards.method:q} "
        "--features {input.features:q} --manifest {input.aligned:q}/manifest.csv --out {output:q} --log {log:q}"
