# extract {method} x {dataset} x {split} once; probe {method} x {benchmark} on the cached features.


rule extract:
    input:
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
        data=f"{ALIGNED}/{{dataset}}/{{split}}",
    output:
        f"{RESULTS}/features/{{method}}/{{dataset}}/{{split}}.npz",
    log:
        f"{LOGS}/extract/{{method}}/{{dataset}}/{{split}}.log",
    threads: 1
    params:
        cfg=stage_params("extract"),
    shell:
        "{PCLBENCH:q} extract --params {params.cfg:q} --checkpoint {input.checkpoint:q} "
        "--data {input.data:q} --out {output:q} --log {log:q}"


# probe_params, bench_aligned_root and bench_raw_root are in common.smk.


rule probe:
    input:
        features=bench_features,
        aligned=bench_aligned,
        raw=bench_raw,
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
    output:
        f"{RESULTS}/probes/{{method}}/{{benchmark}}.json",
    log:
        f"{LOGS}/probe/{{method}}/{{benchmark}}.log",
    threads: 1
    params:
        cfg=probe_params,
        features_root=lambda w: f"{RESULTS}/features/{w.method}",
        aligned_root=bench_aligned_root,
        raw_root=bench_raw_root,
    shell:
        "{PCLBENCH:q} probe --params {params.cfg:q} --benchmark {wildcards.benchmark:q} --method {wildcards.method:q} "
        "--features-root {params.features_root:q} --aligned-root {params.aligned_root:q} --raw-root {params.raw_root:q} "
        "--checkpoint {input.checkpoint:q} --out {output:q} --log {log:q}"
