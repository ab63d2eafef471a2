# extract {method} x {dataset} x {split} once; probe {method} x {task} on the cached features.


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
        "{PCLBENCH} extract --params {params.cfg:q} --checkpoint {input.checkpoint} "
        "--data {input.data} --out {output} > {log} 2>&1"


rule probe:
    input:
        features=task_features,
        aligned=task_aligned,
        raw=lambda w: f"{RAW}/{task_dataset(w.task)}",
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
    output:
        f"{RESULTS}/probes/{{method}}/{{task}}.json",
    params:
        cfg=params_json("probe", "tasks", "seed"),
        features=lambda w: f"{RESULTS}/features/{w.method}/{task_dataset(w.task)}",
        aligned=lambda w: f"{ALIGNED}/{task_dataset(w.task)}",
    log:
        f"{LOGS}/probe/{{method}}/{{task}}.log",
    threads: 1
    shell:
        "{PCLBENCH} probe --params {params.cfg:q} --task {wildcards.task} --method {wildcards.method} "
        "--features {params.features} --aligned {params.aligned} --raw {input.raw} "
        "--checkpoint {input.checkpoint} --out {output} > {log} 2>&1"
