# pretrain {method}: PCL (or a baseline) on the aligned pretraining shard; `random` only initialises.


rule pretrain:
    input:
        f"{ALIGNED}/{PRETRAIN_DATASET}/{PRETRAIN_SPLIT}",
    output:
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
    params:
        cfg=params_json("model", "views", "pcl", "pretrain"),
        outdir=lambda w: f"{RESULTS}/pretrain/{w.method}",
    log:
        f"{LOGS}/pretrain/{{method}}.log",
    threads: workflow.cores
    shell:
        "{PCLBENCH} pretrain --params {params.cfg:q} --method {wildcards.method} --data {input} "
        "--out {params.outdir} > {log} 2>&1"
