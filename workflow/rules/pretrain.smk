# pretrain {method}: PCL (or a baseline) on the aligned pretraining shard; `random` only initialises.
#
# Pre-emption / time limits (README, "Clusters"): the trainer keeps its resumable state in
# results/pretrain/{method}/state/last.pt, which is NOT a declared output, so Snakemake does not
# delete it when a job fails. On SIGTERM / SIGUSR1 it finishes the iteration, saves that state and
# exits 75 (EX_TEMPFAIL); the retried job (`retries` here and in profiles/slurm) runs the same command,
# which resumes from the state when the config matches. checkpoint.pt and metrics.csv are written
# only when training finishes. Snakemake deletes {log} before every attempt (snakemake/jobs.py,
# Job.remove_existing_output), so the trainer also appends each attempt's log lines, under a header
# line (attempt, time, pid, resumed-from iteration), to results/pretrain/{method}/attempts.log, which
# keeps every attempt. state/prev.pt is the state before last.pt (fallback if last.pt is torn);
# results/pretrain/{method}/.lock (flock): a rerun waits up to pretrain.lock_wait_s for an earlier
# attempt that still holds it (e.g. orphaned by a signal and saving), then resumes; exit 73 after
# that. Inside a Slurm job the trainer stops itself pretrain.stop_before_limit_s before the time
# limit (squeue %L), and a rerun with less time left exits 75 at once. `retries: 3` also applies in
# the Slurm batch-step Snakemake (rule retries win over its --retries 0): the first retries run in
# the same allocation, then the main Snakemake submits a new job. A finished run keeps
# state/final.pt, so a job recorded as failed after training (TIMEOUT) is restored, not retrained.


# pretrain_params (the config sections a method's trainer reads) is in common.smk.


rule pretrain:
    input:
        f"{ALIGNED}/{PRETRAIN_DATASET}/{PRETRAIN_SPLIT}",
    output:
        checkpoint=f"{RESULTS}/pretrain/{{method}}/checkpoint.pt",
        metrics=f"{RESULTS}/pretrain/{{method}}/metrics.csv",
    log:
        f"{LOGS}/pretrain/{{method}}.log",
    retries: 3
    threads: workflow.cores
    # gpu = all GPUs of the job, nodes = nodes (set per cluster in profiles/default; these defaults
    # apply without a profile). pclbench.pretrain.launch runs the trainer plainly with <= 1 GPU, under
    # `torchrun --standalone --nproc_per_node=<gpu>` with several, and with `srun` over several nodes.
    resources:
        gpu=0,
        nodes=1,
    params:
        cfg=pretrain_params,
        outdir=lambda w: f"{RESULTS}/pretrain/{w.method}",
        method=lambda w: base_method(w.method),
    # `exec`: the launcher (which itself execs the trainer) replaces Snakemake's `bash -c` wrapper, so a
    # SIGTERM sent to the job step reaches a trainer whose parent is the job-step Snakemake, which on
    # SIGTERM waits for it (snakemake/scheduling/job_scheduler.py, exit_gracefully) instead of a shell
    # that would die and orphan it.
    shell:
        "exec {PCLBENCH_LAUNCH:q} --gpus {resources.gpu:q} --nodes {resources.nodes:q} -- "
        "pretrain --params {params.cfg:q} --method {params.method:q} --data {input:q} "
        "--out {params.outdir:q} --log {log:q}"
