"""Distributed data parallelism (pclbench.pretrain.distributed, trainer): 2 CPU processes with gloo.

The reference is ONE process on the same global batch. BatchNorm: torch's SyncBatchNorm does not
run on CPU, so gloo runs keep per-rank batch statistics (pclbench.pretrain.distributed docstring); the step tests
therefore run the networks in eval mode (BatchNorm with running statistics acts per sample, so a
rank's slice is computed exactly as inside the full batch). On CUDA the trainer converts BatchNorm
to SyncBatchNorm, which gives the global statistics.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pclbench.pretrain import distributed as ddp
from pclbench.pretrain.checkpoint import load_checkpoint
from pclbench.pretrain.methods import METHODS, PCL
from pclbench.pretrain.methods import pcl as pcl_module
from pclbench.models import ModelConfig
from pclbench.pretrain.distributed import shard_batches, sync_gradients
from pclbench.pretrain.preemption import Preempted
from pclbench.pretrain.trainer import train
from pclbench.pretrain.views import resize

from test_train import config as train_config
from test_train import write_shard
from tiny_sections import MODEL, VIEWS
from tiny_sections import PCL as PCL_CFG

WORLD = 2
GLOBAL_BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the worker cases (run in every rank, and in the parent with world 1 as the reference) -------


def _deterministic_face_views(x, draws, views, size):
    v = resize(x, size)
    return v, (v * 0.8 + 0.1).flip(-1)  # two different, fixed views


def _tiny_pcl() -> PCL:
    cfg = {"model": copy.deepcopy(MODEL), "views": copy.deepcopy(VIEWS), "pcl": copy.deepcopy(PCL_CFG)}
    cfg["pcl"]["noise_std"] = 0.0  # the pfe noise is random per rank: off, so the inputs are fixed
    cfg["pcl"]["neg_alpha"] = 0.0  # the Beta mixup draws per rank: off
    torch.manual_seed(0)
    net = METHODS.get("pcl")(cfg, ModelConfig.from_config(MODEL), 64)
    net.eval()  # BatchNorm with running statistics (module docstring)
    return net


def case_steps(rank: int, world: int) -> dict:
    """pfe and face steps of PCL on this rank's slice; the gradients the optimiser would see."""
    pcl_module.apply_face_views = _deterministic_face_views  # in this process only (spawned or restored)
    net = _tiny_pcl()
    x = torch.rand(GLOBAL_BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    b = GLOBAL_BATCH // world
    xs = x[rank * b:(rank + 1) * b]  # (b, 3, 64, 64)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    sync_gradients(opt)
    seen: dict = {}
    opt.register_step_post_hook(lambda o, a, k: seen.update(
        {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(5)
    out: dict = {}
    out["pfe"] = net.pfe_step(xs, opt, scaler, gen)["loss_pfe"]
    out["pfe_grads"] = dict(seen)
    seen.clear()
    out["face"] = net.face_step(xs, 1.0, opt, scaler, gen)["loss_face"]
    out["face_grads"] = dict(seen)
    # all_gather_with_grad on its own: a nonlinear function of the gathered rows
    w = torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4))
    t = torch.arange(6 * 3, dtype=torch.float32).reshape(6, 3)[rank * (6 // world):(rank + 1) * (6 // world)]
    g = ddp.all_gather_with_grad(torch.tanh(t @ w / 10))  # (6, 4)
    out["gathered"] = g.detach()
    (g.softmax(0) * torch.arange(4.0)).sum().log().backward()
    ddp.all_reduce_mean_grads_([w])
    out["gather_grad"] = w.grad.clone()
    return out


def case_train(rank: int, world: int, tmp: Path) -> dict:
    """A 1-epoch run (3 iterations), and the same run stopped by SIGTERM on rank 1 at iteration 2, then resumed."""
    shard = tmp / "shard"
    cfg = train_config(batch_size=2, epochs=1, num_threads=1)  # 6 videos -> 3 iterations; pose batch 2
    original = PCL.train_iteration
    held = {}

    def hold(self, *args):
        held["net"] = self
        return original(self, *args)

    PCL.train_iteration = hold
    try:
        a = train("pcl", shard, tmp / "a", cfg)
    finally:
        PCL.train_iteration = original
    own_a = {k: v.detach().clone() for k, v in held["net"].state_dict().items()}  # this rank's copy
    calls = {"n": 0}

    def kill_rank1(self, *args):
        out = original(self, *args)
        calls["n"] += 1
        if rank == 1 and calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    PCL.train_iteration = kill_rank1
    try:
        train("pcl", shard, tmp / "b", cfg)
        stopped = None
    except Preempted as e:
        stopped = e.code
    finally:
        PCL.train_iteration = original
    mid = load_checkpoint(tmp / "b" / "state" / "last.pt")
    b = train("pcl", shard, tmp / "b", cfg)
    ck_a = load_checkpoint(tmp / "a" / "checkpoint.pt")
    ck_b = load_checkpoint(tmp / "b" / "checkpoint.pt")
    return {"stopped": stopped, "mid_position": {k: mid["position"][k] for k in ("epoch", "step")},
            "mid_views": len(mid["rng"]["views_per_rank"]), "a": ck_a["model"], "b": ck_b["model"],
            "own_a": own_a,
            "summary_a": {k: a[k] for k in ("world_size", "iterations")}, "resumed": b["resumed"]}


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert ddp.init_from_env("gloo") and ddp.world_size() == world and ddp.rank() == rank
    try:  # one spawn for both cases: starting the processes costs more than the cases
        torch.save(case_steps(rank, world), Path(tmp) / f"steps.rank{rank}.pt")
        torch.save(case_train(rank, world, Path(tmp)), Path(tmp) / f"train.rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    """Run both cases in 2 spawned gloo ranks; their results lie in the returned folder."""
    tmp = tmp_path_factory.mktemp("ddp")
    write_shard(tmp / "shard")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp


def _results(tmp: Path, case: str) -> list[dict]:
    return [torch.load(tmp / f"{case}.rank{r}.pt", weights_only=True) for r in range(WORLD)]


# --- tests ---------------------------------------------------------------------------------------


def test_single_process_helpers_are_identities():
    assert not ddp.is_distributed() and ddp.rank() == 0 and ddp.world_size() == 1 and ddp.is_main()
    t = torch.randn(3, 2)
    assert ddp.all_gather_with_grad(t) is t
    assert ddp.all_gather_object({"a": 1}) == [{"a": 1}]
    ddp.barrier()
    assert ddp.init_from_env("gloo") is False  # no launcher variables in the test environment


def test_init_from_env_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(ValueError, match="neither RANK nor SLURM_PROCID"):
        ddp.init_from_env("gloo")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        ddp.init_from_env("gloo")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        ddp.init_from_env("gloo")
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(ValueError, match="WORLD_SIZE='x' is not an integer"):
        ddp.init_from_env("gloo")


def test_rank_shards_partition_the_global_batch():
    index = torch.arange(3 * 6).reshape(3, 6)
    parts = [shard_batches(index, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts, dim=1), index)
    with pytest.raises(ValueError, match="global batch of 6 images does not split over 4 ranks"):
        shard_batches(index, 0, 4)


def test_two_ranks_equal_one_process_on_the_global_batch(spawned, monkeypatch):
    """Losses and averaged gradients of the pfe and face steps (gathered negatives) equal one
    process on the same global batch."""
    got = _results(spawned, "steps")
    monkeypatch.setattr(pcl_module, "apply_face_views", pcl_module.apply_face_views)  # restored after case_steps
    ref = case_steps(0, 1)
    # pfe: local means; their average is the global mean
    assert torch.allclose((got[0]["pfe"] + got[1]["pfe"]) / 2, ref["pfe"], atol=1e-5)
    # face: every rank computes the global InfoNCE over the gathered batch
    for g in got:
        assert torch.allclose(g["face"], ref["face"], atol=1e-5)
        assert torch.allclose(g["gathered"], ref["gathered"], atol=1e-6)
        assert torch.allclose(g["gather_grad"], ref["gather_grad"], atol=1e-6)
    for step in ("pfe_grads", "face_grads"):
        assert set(got[0][step]) == set(ref[step]) and ref[step]
        for name, grad in ref[step].items():
            for g in got:
                assert torch.allclose(g[step][name], grad, atol=1e-5, rtol=1e-4), (step, name)
    # not vacuous: the face gradient reaches the projection and the trunk
    assert any(n.startswith("exp_fc") for n in ref["face_grads"]) and any(
        n.startswith("encoder") for n in ref["face_grads"])


def test_two_rank_training_stays_in_sync_and_resumes_exactly_after_sigterm(spawned):
    tmp_path = spawned
    got = _results(spawned, "train")
    for g in got:
        assert g["summary_a"] == {"world_size": 2, "iterations": 3}
        # rank 1 alone was signalled; both ranks stopped after the same iteration (epoch 1, step 2)
        assert g["stopped"] == 75 and g["mid_position"] == {"epoch": 1, "step": 2} and g["mid_views"] == 2
        assert g["resumed"]
        for k, v in g["a"].items():
            assert torch.equal(g["b"][k], v), k  # interrupted + resumed == uninterrupted, bitwise
            # averaged gradients keep the replicas identical (BatchNorm running statistics are
            # per rank on CPU, see the module docstring)
            if "running_" not in k and "num_batches" not in k:
                assert torch.equal(g["own_a"][k], v), k
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["world_size"] == 2
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 3
    assert [p.name for p in (tmp_path / "b" / "state").iterdir()] == ["final.pt"]  # a hard link of checkpoint.pt
