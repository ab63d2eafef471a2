"""Launch ``pclbench pretrain`` with one process per GPU: plain, ``torchrun`` or ``srun``.

Issue 6 ("Cluster and versioning"). The pretrain rule's shell command runs
``python -m pclbench.launch --gpus {resources.gpu} --nodes {resources.nodes} -- <pretrain args>``;
the workflow profile (profiles/default, per-rule resources) sets ``gpu`` (all GPUs of the job, the
Slurm plugin's ``--gpus``) and ``nodes``, so the same rule runs on a laptop, on one multi-GPU node
and on several nodes (``gpu / nodes`` GPUs on each):

* ``gpus <= 1`` and one node: ``python -m pclbench pretrain ...`` in this process (``exec``), so
  signals (SIGTERM / SIGUSR1 -> save state, exit 75, see :mod:`pclbench.train`) reach the trainer.
* ``gpus > 1`` on one node: ``torchrun --standalone --nproc_per_node=<gpus>`` (PyTorch's elastic
  launcher: a local rendezvous, ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` per worker, which
  :func:`pclbench.distributed.init_from_env` reads first).
* several nodes (inside a Slurm allocation, ``SLURM_JOB_ID`` set): ``srun --nodes=<n>
  --ntasks-per-node=<gpus / n>`` starts one task per GPU; every task reads its rank from
  ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, and the rendezvous address is the first host
  of the allocation (``MASTER_ADDR``; ``MASTER_PORT`` 29500 unless already set). The rule must then
  run in the batch script, not in a job step: the Slurm plugin does that for jobs with the ``mpi``
  resource (README, "Clusters").

The process choice is a pure function (:func:`launch_command`), tested in tests/test_launch.py.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Mapping, Sequence

DEFAULT_MASTER_PORT = "29500"


def _count(value, name: str) -> int:
    """A resource value as a count (Snakemake passes ints; an unset resource may come as '' or None)."""
    if value in (None, "", "None"):
        return 0 if name == "gpus" else 1
    try:
        count = int(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"pclbench.launch: --{name} must be a whole number, got {value!r}") from err
    if count < 0:
        raise ValueError(f"pclbench.launch: --{name} must be >= 0, got {count}")
    return count


def slurm_hosts(nodelist: str) -> list[str]:
    """Expand a Slurm node list (``node[01-02],gpu7``) with ``scontrol show hostnames``."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    return out.stdout.split()


def launch_command(gpus, nodes, args: Sequence[str], env: Mapping[str, str],
                   python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The command line and the extra environment that run ``pclbench <args>`` on ``gpus`` x ``nodes``.

    Returns ``(argv, extra_env)``. Raises ``ValueError`` for a multi-node request outside Slurm.
    """
    gpus, nodes = _count(gpus, "gpus"), _count(nodes, "nodes")
    nodes = max(nodes, 1)
    module = [python, "-m", "pclbench", *args]
    if nodes == 1 and gpus <= 1:
        return module, {}
    if nodes == 1:
        torchrun = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
        return torchrun + ["-m", "pclbench", *args], {}
    if not env.get("SLURM_JOB_ID"):
        raise ValueError(f"pclbench.launch: --nodes {nodes} needs a Slurm allocation (SLURM_JOB_ID is not set); "
                         "run it through `snakemake --profile slurm` or set nodes to 1")
    if gpus % nodes:
        raise ValueError(f"pclbench.launch: --gpus {gpus} (all GPUs of the job) does not divide over --nodes {nodes}")
    per_node = max(gpus // nodes, 1)
    extra = {"MASTER_PORT": env.get("MASTER_PORT") or DEFAULT_MASTER_PORT}
    if not env.get("MASTER_ADDR"):
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("pclbench.launch: SLURM_JOB_NODELIST is not set; cannot pick the rendezvous host")
        extra["MASTER_ADDR"] = slurm_hosts(nodelist)[0]
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes * per_node}", f"--ntasks-per-node={per_node}"]
    if gpus >= 1:
        srun.append("--gpus-per-task=1")
    return srun + module, extra


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pclbench.launch",
        description="Run `pclbench <args>` with one process per GPU (plain / torchrun / srun).")
    parser.add_argument("--gpus", default="0", help="GPUs of the job, all nodes (Snakemake resource `gpu`)")
    parser.add_argument("--nodes", default="1", help="nodes (Snakemake resource `nodes`)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- followed by the pclbench arguments")
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    if not args:
        parser.error("no pclbench arguments given (e.g. -- pretrain --params ...)")
    try:
        cmd, extra = launch_command(ns.gpus, ns.nodes, args, os.environ)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"pclbench.launch: {' '.join(cmd[:8])}{' ...' if len(cmd) > 8 else ''}", file=sys.stderr, flush=True)
    env = {**os.environ, **extra}
    # exec: the launched process replaces this one, so its exit status (75 = requeue) and the
    # signals Slurm sends (SIGTERM, SIGUSR1) are the trainer's / launcher's own.
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
