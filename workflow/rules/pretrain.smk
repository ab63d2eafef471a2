# pretrain {method}: PCL (or a baseline) on the aligned pretraining shard; `random` only initialises.
#
# Pre-emption / time limits (issue 3): the trainer keeps its resumable state in
# results/pretrain/{method}/state/last.pt, which is NOT a declared output, so Snakemake does not
# delete it when a job fails. On SIGTERM / SIGUSR1 it finishes the iteration, saves that state and
# exits 75 (EX_TEMPFAIL); the retried job (`retries` here and in profiles/slurm) runs the same command,
# which resumes from the state when the config matches. checkpoint.pt and metrics.csv are written
# only when training finishes. Snakemake deletes {log} before every attempt (snakemake/jobs.py,
# Job.remove_existing_output), so the trainer also appends each attempt's log lines, under a header
# line (attempt, time, pid, resumed-from iteration), to results/pretrain/{method}/attempts.log, which
# keeps every attempt. state/prev.pt is the state before last.pt (fallback if last.pt is torn);
# results/pretrain/{method}/.lock (flock) stops a second trainer on the folder (exit 73).



def pretrain_params(wildcards):
    """The sections the method's trainer reads (pclbench Method.config_sections + pretrain).

    pcl and random keep the historical selection; a baseline reads views, augment and its own section.
    A variant (config `variants`) runs its registered method with its overrides merged in.
    """
    method = base_method(wildcards.method)
    if method in ("pcl", "random"):
        sections = ("model", "views", "pcl", "pretrain")
    else:
        sections = ("model", "views", "augment", method, "pretrain")
    return params_json(*(s for s in sections if s in config), method=wildcards.method)


rule pretrain:
    input:
        f"{ALIGNED}/{PRETRAIN_DATASET}/{PRETRAIN_SPLIT}",
    output:
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
        metrics=f"{RESULTS}/pretrain/{{method}}/metrics.csv",
    params:
        cfg=pretrain_params,
        outdir=lambda w: f"{RESULTS}/pretrain/{w.method}",
        method=lambda w: base_method(w.method),
    log:
        f"{LOGS}/pretrain/{{method}}.log",
    threads: workflow.cores
    retries: 3
    # gpu = all GPUs of the job, nodes = nodes (set per cluster in profiles/default; these defaults
    # apply without a profile). pclbench.launch runs the trainer plainly with <= 1 GPU, under
    # `torchrun --standalone --nproc_per_node=<gpu>` with several, and with `srun` over several nodes.
    resources:
        gpu=0,
        nodes=1,
    shell:
        "{PCLBENCH_LAUNCH:q} --gpus {resources.gpu:q} --nodes {resources.nodes:q} -- "
        "pretrain --params {params.cfg:q} --method {params.method:q} --data {input:q} "
        "--out {params.outdir:q} >> {log:q} 2>&1"
