# collect probe results -> comparison tables (methods as rows), one per task plus a summary.


rule tables:
    input:
        expand(f"{RESULTS}/probes/{{method}}/{{task}}.json", method=METHODS, task=TASKS),
    output:
        table_files(),
    params:
        cfg=params_json("probe", "tasks", "workflow"),
        outdir=f"{RESULTS}/tables",
    log:
        f"{LOGS}/tables.log",
    shell:
        "{PCLBENCH} tables --params {params.cfg:q} --out {params.outdir} {input} > {log} 2>&1"
