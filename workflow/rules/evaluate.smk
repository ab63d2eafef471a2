# extract {method} x {dataset} x {split} once; probe {method} x {benchmark} on the cached features.


rule extract:
    input:
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
        data=f"{ALIGNED}/{{dataset}}/{{split}}",
    output:
        f"{RESULTS}/features/{{method}}/{{dataset}}/{{split}}.npz",
    params:
        cfg=params_json("evaluate"),
    log:
        f"{LOGS}/extract/{{method}}/{{dataset}}/{{split}}.log",
    threads: 1
    shell:
        "{PCLBENCH:q} extract --params {params.cfg:q} --checkpoint {input.checkpoint:q} "
        "--data {input.data:q} --out {output:q} > {log:q} 2>&1"


def probe_params(wildcards):
    """What one probe job reads: sections probe and seed, this benchmark's entry and its task's
    protocol (a change to another benchmark or task does not re-run this job)."""
    entry = BENCH[wildcards.benchmark]
    return json.dumps({"probe": config["probe"], "seed": config["seed"],
                       "tasks": {entry["task"]: config["tasks"][entry["task"]]},
                       "benchmarks": {wildcards.benchmark: entry}}, sort_keys=True, separators=(",", ":"))


rule probe:
    input:
        features=bench_features,
        aligned=bench_aligned,
        raw=bench_raw,
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
    output:
        f"{RESULTS}/probes/{{method}}/{{benchmark}}.json",
    params:
        cfg=probe_params,
        features_root=lambda w: f"{RESULTS}/features/{w.method}",
    log:
        f"{LOGS}/probe/{{method}}/{{benchmark}}.log",
    threads: 1
    shell:
        "{PCLBENCH:q} probe --params {params.cfg:q} --benchmark {wildcards.benchmark:q} --method {wildcards.method:q} "
        "--features-root {params.features_root:q} --aligned-root {ALIGNED:q} --raw-root {RAW:q} "
        "--checkpoint {input.checkpoint:q} --out {output:q} > {log:q} 2>&1"
