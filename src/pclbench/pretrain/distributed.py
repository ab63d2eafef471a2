"""pclbench distributed data parallelism: process group set-up and gradient-carrying all-gather.

Pretraining runs one process per device under ``torchrun`` or
Slurm's ``srun``. Every rank reads its own shard of each epoch's video order (:func:`shard_batches`),
computes its local loss, and the trainer (:mod:`pclbench.pretrain.trainer`) all-reduces (averages)
the gradients before every optimiser step (:func:`sync_gradients`), as DistributedDataParallel does.

In the trainer: every rank builds the same networks from the shared seed, draws the same per-epoch
frame order from the shared sampler seed and takes its contiguous slice of each stream's global
batch (``batch_size`` and the method's stream sizes are GLOBAL and must divide by the world size).
Gradients are averaged over ranks right before every optimiser step (an optimiser step pre-hook:
PCL makes three steps per iteration on different submodules, and averaging the gradients that
exist is exact where DistributedDataParallel's one-backward-per-step bookkeeping is not). Logged
values are averaged over ranks each iteration, so the metrics and the DWA weights are global and
equal on every rank. Each rank's views generator is seeded ``seed + 2 + 7919 * rank`` (rank 0 = the
single-process seed). BatchNorm layers become SyncBatchNorm on CUDA (global batch statistics, as one
process); torch's SyncBatchNorm does not run on CPU, so gloo/CPU runs keep per-rank statistics. Only
rank 0 writes files; rank 0 alone decides whether the run starts and broadcasts its decision
(:func:`broadcast_object`).

Contrastive losses need negatives from the whole global batch (docs/method.md §2.5: the face
InfoNCE contrasts every clip with every other clip of the batch), so the per-rank embeddings
are concatenated with :func:`all_gather_with_grad`.

Gradient scaling (why the gathered loss equals one process on the global batch)
-----------------------------------------------------------------------------
Let ``L`` be the loss of one process on the global batch of ``W * b`` clips. Every rank ``r``
computes the *same* global loss ``L`` from the gathered embeddings, but the autograd graph of
rank ``r`` only reaches its own ``b`` embeddings (the other slices are constants there). So
rank ``r`` gets ``dL/dz_r`` for its own slice, and its parameter gradient is the part of
``dL/dθ`` that flows through its own clips. Summing over ranks gives the full ``dL/dθ``;
the trainer *averages* (DDP convention), which gives ``dL/dθ / W``. To undo that,
:func:`all_gather_with_grad` multiplies the gradient flowing back into the local slice by
``W``: after averaging, each parameter receives exactly ``dL/dθ`` of the single-process run.

Losses that are a mean over the *local* batch (reconstruction, cross-entropy on local clips)
need no gather: the average of per-rank means over equal-sized shards is the global mean,
and DDP-style averaging of their gradients is exact.

With one process (or no process group) every function is the identity / a no-op, so the
trainer and the methods call them unconditionally.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0: the only rank that writes files (checkpoints, metrics, figures)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as err:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from err
    return None


def init_from_env(backend: str = "gloo") -> bool:
    """Start the process group from the launcher's environment; return True if one is running.

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun) or, failing that,
    ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` (srun). The rendezvous address comes
    from ``MASTER_ADDR``/``MASTER_PORT`` (torchrun sets them; over several Slurm nodes
    :mod:`pclbench.pretrain.launch` exports them before its ``srun``: the first host of the allocation, which
    it asks ``scontrol`` for, since the job-step plugin strips ``SLURM_JOB_NODELIST``).
    A world size of 1 (or no launcher variables) starts nothing and returns False.
    ``backend`` is ``"nccl"`` for GPUs or ``"gloo"`` for CPUs.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    world = _env_int(("WORLD_SIZE", "SLURM_NTASKS"))
    if world is None or world <= 1:
        return False
    global_rank = _env_int(("RANK", "SLURM_PROCID"))
    if global_rank is None:
        raise ValueError(f"world size {world} is set but neither RANK nor SLURM_PROCID is")
    if not 0 <= global_rank < world:
        raise ValueError(f"rank {global_rank} is outside world size {world}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(
                f"{name} is not set: torchrun and pclbench.pretrain.launch set it; set it yourself when you start "
                "the ranks another way"
            )
    local = _env_int(("LOCAL_RANK", "SLURM_LOCALID"))
    if backend == "nccl" and torch.cuda.is_available():
        torch.cuda.set_device(local if local is not None else 0)
    dist.init_process_group(backend=backend, rank=global_rank, world_size=world)
    return True


def local_rank() -> int:
    """The rank within this node (device index): LOCAL_RANK, SLURM_LOCALID, or 0."""
    value = _env_int(("LOCAL_RANK", "SLURM_LOCALID"))
    return 0 if value is None else value


def backend_for(device: str, dist_backend: str) -> str:
    """The process-group backend of ``pretrain.dist_backend`` (``auto``: nccl when the run uses CUDA,
    i.e. ``pretrain.device`` is ``cuda``, or ``auto`` with a GPU; gloo otherwise)."""
    if dist_backend != "auto":
        return dist_backend
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if wants_cuda else "gloo"


def shard_batches(index: Tensor, rank: int, world: int) -> Tensor:
    """This rank's contiguous slice of every global batch: ``(n_iter, B) -> (n_iter, B / world)``.

    Every rank draws the same ``index`` (shared sampler seed), so the union over ranks of one
    iteration's slices is exactly the single-process batch, in rank order.
    """
    n_iter, b = index.shape
    if b % world:
        raise ValueError(f"a global batch of {b} images does not split over {world} ranks; "
                         "pretrain.batch_size (and the method's other stream sizes, e.g. pcl.pose_batch) "
                         "must be multiples of the world size")
    per = b // world
    return index[:, rank * per:(rank + 1) * per]


def sync_gradients(optimizer: torch.optim.Optimizer):
    """Average the gradients that exist over ranks right before every ``optimizer.step()``.

    DDP's averaging done by hand: PCL makes three optimiser steps per iteration on different
    submodules (docs/method.md §2.7), so each step averages exactly the gradients its backward produced
    (``.grad`` None is skipped: the same parameters on every rank, which run the same code).
    Returns the hook handle.
    """
    def hook(opt, args, kwargs):
        all_reduce_mean_grads_([p for g in opt.param_groups for p in g["params"]])

    return optimizer.register_step_pre_hook(hook)


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate the per-rank tensors along dim 0; backward returns ``W *`` the local slice."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # noqa: D401 - autograd signature
        world = dist.get_world_size()
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        ctx.rank = dist.get_rank()
        ctx.size = t.shape[0]
        ctx.world = world
        return torch.cat(parts, dim=0)  # (W * b, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Only the local slice belongs to this rank's graph. Multiply by W so that the trainer's
        # gradient *averaging* over ranks yields exactly the single-process gradient (module doc).
        start = ctx.rank * ctx.size
        return grad[start:start + ctx.size] * ctx.world


def all_gather_with_grad(t: Tensor) -> Tensor:
    """All ranks' ``t`` concatenated along dim 0 in rank order, differentiable for the local slice.

    ``t``: (b, ...) with the same shape on every rank. Returns (W * b, ...). Without a process
    group (or with one rank) returns ``t`` itself. Gradients are scaled by the world size
    to cancel the trainer's gradient averaging (see the module docstring).
    """
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


def all_reduce_mean_(tensors) -> None:
    """Average tensors in place over ranks (gradients before an optimiser step; no-op alone)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)


def all_reduce_mean_grads_(params) -> None:
    """Average the existing ``.grad`` of ``params`` over ranks, in place (DDP's averaging).

    Parameters whose gradient is None on this rank are skipped; every rank must therefore have
    the same set of parameters with gradients (true here: each rank runs the same step).
    """
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    # One flat buffer per call: fewer collectives than one per parameter.
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj`` as a list in rank order (``[obj]`` alone)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (identity alone): the trainer's start decision (go, or rank 0's exit
    status when the output folder is locked or the Slurm time limit is near,
    :func:`pclbench.pretrain.run_folder.guard_out_dir`)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
