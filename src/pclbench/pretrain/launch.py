"""Launch ``pclbench pretrain`` with one process per GPU: plain, ``torchrun`` or ``srun``.

The pretrain rule's shell command runs
``python -m pclbench.pretrain.launch --gpus {resources.gpu} --nodes {resources.nodes} -- <pretrain args>``;
the workflow profile (profiles/default, per-rule resources) sets ``gpu`` and ``nodes``, so the same
rule runs on a laptop, on one multi-GPU node and on several nodes:

* ``plain`` (one node, ``gpus <= 1``): ``python -m pclbench pretrain ...`` in this process (``exec``),
  so signals (SIGTERM / SIGUSR1 -> save state, exit 75, see :mod:`pclbench.pretrain.trainer`) reach the trainer.
* ``torchrun`` (one node, ``gpus > 1``): ``torchrun --standalone --nproc_per_node=<gpus>`` (PyTorch's
  elastic launcher: a local rendezvous, ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` per worker, which
  :func:`pclbench.pretrain.distributed.init_from_env` reads first). On Slurm this runs inside the job step
  the jobstep plugin starts (``srun -n1 ... --gpus=<gpus> --nodes=1 <snakemake>``), which holds
  every GPU of the job.
* ``srun`` (several nodes): one ``srun`` step with one task per GPU (one per node without GPUs)
  across the whole allocation. Slurm itself sets ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
  in every task (srun(1), "OUTPUT ENVIRONMENT VARIABLES"), and init_from_env reads them.

Why the ``srun`` mode asks Slurm instead of reading the environment
--------------------------------------------------------------------
A multi-node job has the ``mpi`` resource, so snakemake-executor-plugin-slurm-jobstep 0.6.1
(``snakemake_executor_plugin_slurm_jobstep/__init__.py``, ``Executor.run_job``) runs the rule in the
batch script itself rather than in an ``srun -n1`` step, but with every ``SLURM_*`` variable
removed except ``SLURM_JOB_ID``/``SLURM_JOBID``, the ``SLURM_ARRAY_*`` ones,
``SLURM_CLUSTER_NAME`` and ``SLURM_SUBMIT_DIR``/``SLURM_SUBMIT_HOST`` (and every ``SRUN_*`` /
``SBATCH_*``). ``SLURM_JOB_NODELIST`` is gone, and so is the default of
``scontrol show hostnames`` (which reads it when given no argument; scontrol(1)). So, given only
``SLURM_JOB_ID``, :func:`slurm_allocation` asks slurmctld with ``scontrol show job -o <id>``
(scontrol(1): ``-o, --oneliner``: one line per record) for ``NodeList``, ``NumNodes``, ``NumCPUs``
and the allocated TRES (``TRES=`` up to Slurm 22.05, ``AllocTRES=`` later; a GPU count appears as
``gres/gpu=<n>``, the TRES name of https://slurm.schedmd.com/tres.html), and expands the node list
with ``scontrol show hostnames <list>``. The first host is the rendezvous (``MASTER_ADDR``): srun's
``--distribution=block`` (given explicitly; srun(1): consecutive tasks share a node) puts task 0
(rank 0, which opens the TCP store) on the first node of the allocation.

The per-node GPU count comes from the allocation too (the allocated ``gres/gpu`` total divided by
the node count): profiles/default asks for GPUs per node with ``gres: gpu:<n>`` on several nodes
(sbatch(1) ``--gres``: "allocated to the job on each node") and leaves the plugin's ``gpu`` resource
(sbatch ``--gpus``, a total that Slurm may spread unevenly) at 0, so ``--gpus`` here is 0 then; a
non-zero ``--gpus`` must equal the allocated total.

The step's options, because the jobstep removed what srun would otherwise inherit:
``--cpus-per-task`` = the node's allocated CPUs / tasks per node (srun(1) ``-c``: the default is one
CPU per task), ``--mem=0`` (srun(1) ``--mem``: zero gives the step all the job's memory on each
node). No ``--gpus-per-task``: every task sees all GPUs of its node (srun(1) ``--gres``: "By default,
a job step is allocated all of the generic resources that have been requested by the job"), and
the trainer takes ``cuda:<SLURM_LOCALID>`` (:mod:`pclbench.pretrain.trainer`), which would not exist if each task saw only
its one bound GPU.

The process choice is :func:`launch_command`; tests/test_launch.py covers it with a fake
``scontrol`` on ``PATH`` and tests/test_slurm_shapes.py runs the srun mode on a real Slurm.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

# torchrun's default port (torch.distributed.run --master_port); the srun mode adds the job id
# modulo 1000 so that two multi-node jobs whose first node is the same do not collide.
DEFAULT_MASTER_PORT = 29500
LAUNCHERS = ("auto", "plain", "torchrun", "srun")


def _count(value, name: str) -> int:
    """A resource value as a count (Snakemake passes ints; an unset resource may come as '' or None)."""
    if value in (None, "", "None"):
        return 0 if name in ("gpus", "procs-per-node") else 1
    try:
        count = int(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"pclbench.pretrain.launch: --{name} must be a whole number, got {value!r}") from err
    if count < 0:
        raise ValueError(f"pclbench.pretrain.launch: --{name} must be >= 0, got {count}")
    return count


@dataclass(frozen=True)
class Allocation:
    """What Slurm allocated to a running job (``scontrol show job -o``)."""

    job_id: str
    hosts: tuple[str, ...]  # expanded NodeList, in Slurm's order
    cpus: int  # NumCPUs, all nodes
    gpus: int  # allocated gres/gpu, all nodes (0: none)


def slurm_hosts(nodelist: str) -> list[str]:
    """Expand a Slurm node list (``node[01-02],gpu7``) with ``scontrol show hostnames <list>``."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True)
    return out.stdout.split()


def _field(record: str, key: str) -> str | None:
    """The value of ``key=`` in a one-line ``scontrol show job`` record (None if absent)."""
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", record)
    return m.group(1) if m else None


def parse_job_record(record: str, job_id: str) -> tuple[str, int, int]:
    """``(NodeList, NumCPUs, gres/gpu count)`` from ``scontrol show job -o <id>`` output."""
    nodelist = _field(record, "NodeList")
    if not nodelist or nodelist == "(null)":
        raise ValueError(f"pclbench.pretrain.launch: Slurm job {job_id} has no NodeList yet (not running?): {record[:200]!r}")
    cpus = _field(record, "NumCPUs")
    # Allocated TRES: `AllocTRES=` in newer scontrol, `TRES=` in 22.05 (ReqTRES= is the request).
    tres = _field(record, "AllocTRES") or _field(record, "TRES") or ""
    gpus = re.search(r"(?:^|,)gres/gpu=(\d+)", tres)  # the untyped total; typed entries are gres/gpu:<type>=
    return nodelist, int(cpus) if cpus and cpus.isdigit() else 0, int(gpus.group(1)) if gpus else 0


def slurm_allocation(job_id: str) -> Allocation:
    """Ask slurmctld what job ``job_id`` holds: needs nothing from the environment but the id."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], check=True, capture_output=True,
                             text=True, timeout=60)
    except FileNotFoundError as err:
        raise ValueError("pclbench.pretrain.launch: `scontrol` is not on PATH; the srun launcher needs Slurm") from err
    except subprocess.CalledProcessError as err:
        raise ValueError(f"pclbench.pretrain.launch: `scontrol show job -o {job_id}` failed: {err.stderr.strip()}") from err
    records = [line for line in out.stdout.splitlines() if re.match(rf"JobId={re.escape(str(job_id))}\s", line)]
    if not records:
        raise ValueError(f"pclbench.pretrain.launch: `scontrol show job -o {job_id}` printed no record for that job")
    # A heterogeneous job prints one record per component; the step runs in the first.
    nodelist, cpus, gpus = parse_job_record(records[0], str(job_id))
    hosts = tuple(slurm_hosts(nodelist))
    if not hosts:
        raise ValueError(f"pclbench.pretrain.launch: `scontrol show hostnames {nodelist}` printed no host")
    return Allocation(str(job_id), hosts, cpus, gpus)


def _srun_command(gpus: int, nodes: int, procs_per_node: int, module: list[str], env: Mapping[str, str],
                  query: Callable[[str], Allocation]) -> tuple[list[str], dict[str, str]]:
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        raise ValueError(f"pclbench.pretrain.launch: --nodes {nodes} needs a Slurm allocation (SLURM_JOB_ID is not set); "
                         "run it through `snakemake --profile slurm` or set nodes to 1")
    alloc = query(job_id)
    n = len(alloc.hosts)
    if nodes != n:
        raise ValueError(f"pclbench.pretrain.launch: --nodes {nodes}, but Slurm job {job_id} has {n} node(s) "
                         f"({','.join(alloc.hosts)})")
    if alloc.gpus % n:
        raise ValueError(f"pclbench.pretrain.launch: Slurm job {job_id} holds {alloc.gpus} GPUs on {n} nodes, not the same "
                         "number on each; ask for GPUs per node (gres: gpu:<n>, profiles/default)")
    if gpus and gpus != alloc.gpus:
        raise ValueError(f"pclbench.pretrain.launch: --gpus {gpus}, but Slurm job {job_id} holds {alloc.gpus} GPU(s)")
    per_node = alloc.gpus // n
    procs = procs_per_node or max(per_node, 1)
    if per_node and procs != per_node:
        raise ValueError(f"pclbench.pretrain.launch: --procs-per-node {procs} on nodes with {per_node} GPU(s) each; "
                         "the trainer runs one process per GPU")
    cpus_per_task = max(alloc.cpus // (n * procs), 1)
    offset = int(job_id) % 1000 if job_id.isdigit() else 0
    extra = {"MASTER_PORT": env.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT + offset)}
    if not env.get("MASTER_ADDR"):
        extra["MASTER_ADDR"] = alloc.hosts[0]
    srun = ["srun", f"--nodes={n}", f"--ntasks={n * procs}", f"--ntasks-per-node={procs}",
            f"--cpus-per-task={cpus_per_task}", "--mem=0", "--distribution=block"]
    return srun + module, extra


def launch_command(gpus, nodes, args: Sequence[str], env: Mapping[str, str], python: str = sys.executable,
                   launcher: str = "auto", procs_per_node=None, module: str = "pclbench",
                   query: Callable[[str], Allocation] = slurm_allocation) -> tuple[list[str], dict[str, str]]:
    """The command line and the extra environment that run ``<module> <args>`` on ``gpus`` x ``nodes``.

    ``launcher``: ``auto`` (plain / torchrun on one node by the GPU count, srun on several),
    or one of them by name (``srun`` on one node runs the multi-node path there: the cluster test).
    ``procs_per_node`` (srun only): processes per node without GPUs (default 1); with GPUs it must
    equal the GPUs per node. ``query`` asks Slurm for the allocation (:func:`slurm_allocation`).
    Returns ``(argv, extra_env)``. Raises ``ValueError`` for a request that cannot run.
    """
    gpus, nodes = _count(gpus, "gpus"), max(_count(nodes, "nodes"), 1)
    procs_per_node = _count(procs_per_node, "procs-per-node")
    if launcher not in LAUNCHERS:
        raise ValueError(f"pclbench.pretrain.launch: --launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "auto":
        launcher = "srun" if nodes > 1 else "torchrun" if gpus > 1 else "plain"
    if launcher != "srun" and nodes > 1:
        raise ValueError(f"pclbench.pretrain.launch: --launcher {launcher} runs on one node, not --nodes {nodes}")
    program = [python, "-m", module, *args]
    if launcher == "plain":
        if gpus > 1:
            raise ValueError(f"pclbench.pretrain.launch: --launcher plain runs one process, not --gpus {gpus}")
        return program, {}
    if launcher == "torchrun":
        nproc = max(gpus, procs_per_node, 1)
        torchrun = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        return torchrun + ["-m", module, *args], {}
    return _srun_command(gpus, nodes, procs_per_node, program, env, query)


def _note_in_log(args: Sequence[str], line: str) -> None:
    """Append the launcher's own line to the job log the launched command will own (``--log FILE``,
    :mod:`pclbench.core.joblog`), so the log says how the trainer was started; best effort: the line is on
    stderr already, and the command reports a log it cannot write itself."""
    path = None
    for i, arg in enumerate(args):
        if arg == "--log" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--log="):
            path = arg[len("--log="):]
    if not path:
        return
    try:
        # O_NONBLOCK: a FIFO in the log's place fails (ENXIO without a reader) instead of blocking
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError:
        return
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pclbench.pretrain.launch",
        description="Run `pclbench <args>` with one process per GPU (plain / torchrun / srun).")
    parser.add_argument("--gpus", default="0",
                        help="GPUs of the job, all nodes (Snakemake resource `gpu`); on several nodes 0 = as allocated")
    parser.add_argument("--nodes", default="1", help="nodes (Snakemake resource `nodes`)")
    parser.add_argument("--launcher", default="auto", choices=LAUNCHERS,
                        help="auto: plain with <= 1 GPU, torchrun with several, srun over several nodes")
    parser.add_argument("--procs-per-node", default=None,
                        help="srun: processes per node on CPU-only nodes (default 1; with GPUs: one per GPU)")
    parser.add_argument("--module", default="pclbench", help="Python module every process runs (default pclbench)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- followed by the pclbench arguments")
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    if not args:
        parser.error("no pclbench arguments given (e.g. -- pretrain --params ...)")
    try:
        cmd, extra = launch_command(ns.gpus, ns.nodes, args, os.environ, launcher=ns.launcher,
                                    procs_per_node=ns.procs_per_node, module=ns.module)
    except (ValueError, subprocess.SubprocessError, OSError) as err:
        print(err, file=sys.stderr)
        _note_in_log(args, str(err))
        return 2
    shown = " ".join(cmd[:10]) + (" ..." if len(cmd) > 10 else "")
    rendezvous = " ".join(f"{k}={v}" for k, v in sorted(extra.items()))
    line = f"pclbench.pretrain.launch: {rendezvous + ' ' if rendezvous else ''}{shown}"
    print(line, file=sys.stderr, flush=True)
    _note_in_log(args, line)
    env = {**os.environ, **extra}
    # exec: the launched process replaces this one, so its exit status (75 = requeue) and the
    # signals Slurm sends (SIGTERM, SIGUSR1) are the trainer's / launcher's own.
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
