"""Pretraining loop (pclbench.pretrain.trainer, stream): sampling, outputs, the random baseline, resume, config errors."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pclbench.pretrain.checkpoint import load_checkpoint, load_encoder
from pclbench.core.config import ConfigError
from pclbench.pretrain.methods import METHODS, PCL
from pclbench.models import ModelConfig
from pclbench.pretrain.stream import VideoShard
from pclbench.pretrain.trainer import train

from tiny_sections import MODEL, VIEWS
from tiny_sections import PCL as PCL_CFG

torch.set_num_threads(2)

PRETRAIN = {"epochs": 2, "epoch_unit": "clips", "batch_size": 3, "img_size": 64, "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 1e-3,
            "schedule": "cosine", "min_lr": 0.0, "seed": 7, "device": "cpu", "amp": False, "num_threads": 2,
            "log_every": 1, "checkpoint_every": 1,
            "swap_grid_every": 0, "tensorboard": False, "dist_backend": "auto",
            "channels_last": False, "compile": "off", "stop_before_limit_s": 300, "lock_wait_s": 900}


def config(**pretrain):
    return {"model": copy.deepcopy(MODEL), "views": copy.deepcopy(VIEWS), "pcl": copy.deepcopy(PCL_CFG),
            "pretrain": {**PRETRAIN, **pretrain}}


def write_shard(d, n_subjects=3, n_clips=2, n_frames=3, size=64, seed=0):
    """A fake aligned shard: random uint8 images, manifest in a shuffled order (row != video order)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = [(s, c, f) for s in range(n_subjects) for c in range(n_clips) for f in range(n_frames)]
    keys = [keys[i] for i in rng.permutation(len(keys))]
    np.save(d / "images.npy", rng.integers(0, 256, (len(keys), 3, size, size), dtype=np.uint8))
    np.save(d / "landmarks.npy", np.zeros((len(keys), 68, 2), dtype=np.float32))  # open_shard needs it
    pd.DataFrame([{"path": f"x{i}.png", "subject": f"id{s}", "clip": c, "frame": f, "row": i}
                  for i, (s, c, f) in enumerate(keys)]).to_csv(d / "manifest.csv", index=False)
    return d


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    return write_shard(tmp_path_factory.mktemp("shard"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shard):
    out = tmp_path_factory.mktemp("run") / "pcl"
    return out, train("pcl", shard, out, config())


def test_one_random_frame_per_video_per_draw(shard):
    vs = VideoShard(shard)
    man = pd.read_csv(shard / "manifest.csv").set_index("row")
    assert (vs.n_images, vs.n_videos, vs.size) == (18, 6, 64)
    g = torch.Generator().manual_seed(0)
    seen_frames = set()
    for _ in range(20):
        rows = vs.draw(g).tolist()
        videos = [(man.loc[r, "subject"], man.loc[r, "clip"]) for r in rows]
        assert sorted(videos) == sorted({(f"id{s}", c) for s in range(3) for c in range(2)})
        seen_frames |= {int(man.loc[r, "frame"]) for r in rows}
    assert seen_frames == {0, 1, 2}  # every frame index gets drawn
    b = vs.epoch_batches(4, 4, g)  # 16 rows > 6 videos: consecutive draws
    assert b.shape == (4, 4)
    videos = [(man.loc[r, "subject"], man.loc[r, "clip"]) for r in b.flatten().tolist()[:6]]
    assert len(set(videos)) == 6
    x = vs.gather(np.array([5, 2, 5]))
    imgs = np.load(shard / "images.npy")
    assert torch.equal(x, torch.from_numpy(imgs[[5, 2, 5]]))


def test_pcl_run_writes_checkpoint_metrics_and_run_json(finished_run):
    out, summary = finished_run
    # the resumable state/ folder is gone once checkpoint.pt is final
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "metrics.jsonl", "metrics.csv", "run.json", ".lock", "attempts.log",
                                               "state"}
    # state/ keeps only final.pt, a hard link of checkpoint.pt (restores a checkpoint deleted after a TIMEOUT)
    assert [p.name for p in (out / "state").iterdir()] == ["final.pt"]
    assert (out / "state" / "final.pt").samefile(out / "checkpoint.pt")
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    # metrics.csv: the same rows and columns as metrics.jsonl
    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv.columns) == list(lines[0]) and len(csv) == len(lines)
    np.testing.assert_allclose(csv["loss_face"].to_numpy(), [r["loss_face"] for r in lines], rtol=1e-12)
    # 6 videos // batch 3 = 2 iterations per epoch, 2 epochs
    assert [(r["epoch"], r["iteration"]) for r in lines] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    for r in lines:
        assert {"loss_pfe", "loss_orth", "loss_rec1", "loss_rec4", "loss_face", "loss_pose", "w_face", "w_pose",
                "lr", "seconds"} <= set(r)
    assert lines[0]["lr"] == pytest.approx(1e-3) and lines[2]["lr"] == pytest.approx(0.5e-3)  # cosine, T_max 2
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["finished"] and ck["epoch"] == 2 and ck["iteration"] == 4 and ck["method"] == "pcl"
    assert ck["config"]["pcl"]["pose_negatives"] == "fixed"
    assert [e for e, _ in ck["extra"]["dwa"]["history"]] == [1, 2]
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "pretrain" and run["method"] == "pcl" and run["n_images"] == 18
    assert run["seeds"]["init"] == 7 and run["config"]["pretrain"]["epochs"] == 2
    assert summary["iterations"] == 4


def test_checkpoint_encoder_round_trip(finished_run, shard):
    out, _ = finished_run
    ck = load_checkpoint(out / "checkpoint.pt")
    torch.manual_seed(0)
    method = METHODS.get("pcl")(config(), ModelConfig.from_config(MODEL), 64)
    method.load_state_dict(ck["model"])
    method.eval()
    enc = load_encoder(out / "checkpoint.pt")
    x = torch.from_numpy(np.load(shard / "images.npy")[:4]).float() / 255
    with torch.no_grad():
        want, got = method.encoder.forward_features(x), enc.forward_features(x)
    for k in ("trunk", "face", "pose"):
        assert torch.equal(want[k], got[k])


def test_finished_run_is_not_repeated_and_a_changed_config_is_refused(finished_run, shard):
    out, _ = finished_run
    before = (out / "checkpoint.pt").read_bytes()
    again = train("pcl", shard, out, config(log_every=5, num_threads=1))  # runtime keys may differ
    assert again["already_finished"] and (out / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ValueError, match=r"pretrain.lr: 0.001 -> 0.002"):
        train("pcl", shard, out, config(lr=2e-3))
    cfg = config()
    cfg["pcl"]["pose_negatives"] = "faithful"
    with pytest.raises(ValueError, match=r"pcl.pose_negatives: 'fixed' -> 'faithful'"):
        train("pcl", shard, out, cfg)


def test_random_method_writes_the_initial_encoder_without_training(tmp_path, shard):
    out = tmp_path / "random"
    summary = train("random", shard, out, config())
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["finished"] and ck["epoch"] == 0 and ck["optimizer"] is None and summary["iterations"] == 0
    assert (out / "metrics.jsonl").read_text() == ""
    # it is exactly PCL's starting encoder (same seed, encoder built first)
    torch.manual_seed(PRETRAIN["seed"])
    pcl = METHODS.get("pcl")(config(), ModelConfig.from_config(MODEL), 64)
    for k, v in pcl.encoder.state_dict().items():
        assert torch.equal(ck["encoder_state"][k], v)


def test_resume_after_a_crash_continues_from_the_last_checkpoint(tmp_path, shard, finished_run, monkeypatch):
    """Crash in epoch 2 after the epoch-1 checkpoint; the rerun resumes and ends where an
    uninterrupted run ends (same data draws, views, DWA history and optimiser state)."""
    out = tmp_path / "pcl"
    original = PCL.train_iteration

    def crash(self, batches, optimizer, scaler, epoch, generator):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, batches, optimizer, scaler, epoch, generator)

    monkeypatch.setattr(PCL, "train_iteration", crash)
    with pytest.raises(KeyboardInterrupt):
        train("pcl", shard, out, config())
    # the resumable state lives outside the declared output checkpoint.pt (written only at the end)
    assert not (out / "checkpoint.pt").exists()
    ck = load_checkpoint(out / "state" / "last.pt")
    assert not ck["finished"] and ck["epoch"] == 1 and ck["position"] is None
    assert not (out / "metrics.jsonl").exists()
    monkeypatch.setattr(PCL, "train_iteration", original)
    summary = train("pcl", shard, out, config())
    assert summary["resumed"] and summary["resumed_from_epoch"] == 1
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(s) for s in (finished_run[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4]
    for a, b in zip(lines, ref_lines):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    ref = load_checkpoint(finished_run[0] / "checkpoint.pt")
    got = load_checkpoint(out / "checkpoint.pt")
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k


def test_config_and_shard_errors(tmp_path, shard):
    cfg = config()
    cfg["pretrain"]["learning_rate"] = 1.0
    with pytest.raises(ConfigError, match="pretrain.learning_rate"):
        train("pcl", shard, tmp_path / "a", cfg)
    cfg = config()
    cfg["pcl"]["noise"] = 0.4
    with pytest.raises(ConfigError, match="pcl.noise"):
        train("pcl", shard, tmp_path / "a", cfg)
    cfg = config()
    del cfg["views"]
    with pytest.raises(ConfigError, match="views"):
        train("pcl", shard, tmp_path / "a", cfg)
    with pytest.raises(KeyError, match="unknown method 'no_such_method'"):
        train("no_such_method", shard, tmp_path / "a", config())
    with pytest.raises(ValueError, match="6 videos .* fewer than pretrain.batch_size = 8"):
        train("pcl", shard, tmp_path / "a", config(batch_size=8))
    bad = write_shard(tmp_path / "bad")
    pd.read_csv(bad / "manifest.csv").drop(columns=["clip"]).to_csv(bad / "manifest.csv", index=False)
    with pytest.raises(ValueError, match="manifest.csv: missing column.*clip"):
        train("pcl", bad, tmp_path / "b", config())


def test_swap_grid_pngs_do_not_change_training(tmp_path, shard, finished_run):
    out = tmp_path / "pcl"
    train("pcl", shard, out, config(swap_grid_every=1))
    from PIL import Image

    for epoch in (1, 2):
        with Image.open(out / f"swap_grid_epoch{epoch}.png") as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    # the figure reads fixed images in eval mode and draws no random number
    ref, got = load_checkpoint(finished_run[0] / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k


def test_swap_grid_columns_are_the_image_its_flip_and_the_four_decodings():
    torch.manual_seed(0)
    net = METHODS.get("pcl")(config(), ModelConfig.from_config(MODEL), 64).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    grid = net.swap_grid(x)
    assert grid.shape == (2, 6, 3, 64, 64)
    assert torch.equal(grid[:, 0], x) and torch.equal(grid[:, 1], x.flip(-1))
    with torch.no_grad():
        e_n, p_n = (t.flatten(1) for t in net.encoder.forward_maps(x)[1:])
        e_f, p_f = (t.flatten(1) for t in net.encoder.forward_maps(x.flip(-1))[1:])
        for col, code in enumerate((e_f + p_n, e_n + p_f, e_n + p_n, e_f + p_f), start=2):
            torch.testing.assert_close(grid[:, col], net.decoder(code).clamp(0, 1), atol=1e-5, rtol=1e-4)
    from pclbench.report.figures import save_swap_grid

    with pytest.raises(ValueError, match=r"expected \(rows, 6, 3, H, W\)"):
        save_swap_grid(grid[:, :5], "unused.png")


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, shard, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pretrain.tensorboard is true but the tensorboard package"):
        train("pcl", shard, tmp_path / "tb", config(tensorboard=True))
    with pytest.raises(ConfigError, match=r"config error at pretrain\.swap_grid_every: -1 is less than the minimum of 0"):
        train("pcl", shard, tmp_path / "tb", config(swap_grid_every=-1))


def test_compile_modules_of_a_baseline_compiles_its_networks_in_place(default_config):
    """The generic Method.compile_modules (SimCLR here): every encoder stage and every other child with
    parameters is compiled in place (lazily: nothing is traced here); state_dict keys do not change."""
    cfg = {"model": MODEL, "views": VIEWS, "augment": default_config["augment"], "simclr": default_config["simclr"]}
    net = METHODS.get("simclr")(cfg, ModelConfig.from_config(MODEL), 64)
    keys = list(net.state_dict())
    names = net.compile_modules(mode="default")
    stages = {f"encoder.{n}" for n, _ in net.encoder.named_children()}
    assert stages <= set(names) and len(names) > len(stages)
    for name in names:
        assert net.get_submodule(name)._compiled_call_impl is not None, name
    assert list(net.state_dict()) == keys


def test_pcl_compiled_steps_equal_eager_steps():
    """PCL compiles each step's forward + loss as one graph; the random draws stay outside, so a
    compiled iteration (aot_eager backend: dynamo + AOT autograd, no code generation) gives the
    eager iteration's losses and weights from the same seeds."""
    cfg = {"model": MODEL, "pcl": PCL_CFG, "views": VIEWS}
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = METHODS.get("pcl")(cfg, ModelConfig.from_config(MODEL), 64)
        keys = list(net.state_dict())
        if compiled:
            assert net.compile_modules(mode=None, backend="aot_eager") == ["_pfe_loss", "_face_loss", "_pose_loss"]
            assert list(net.state_dict()) == keys
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        logs = [net.train_iteration({"pfe": x[:4], "face": x[2:], "pose": x[:2]}, opt, scaler, 1, gen)
                for _ in range(2)]
        results.append((logs, {k: v.clone() for k, v in net.state_dict().items()}))
    (eager_logs, eager_w), (comp_logs, comp_w) = results
    for a, b in zip(eager_logs, comp_logs):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    for k in eager_w:
        torch.testing.assert_close(eager_w[k].float(), comp_w[k].float(), rtol=1e-3, atol=1e-5)
