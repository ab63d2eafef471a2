"""The authors' probe loops (``tasks.<task>.train``: lr_step, init, shuffle, decay_bias, standardize).

Reference facts (docs/method.md §4.1, 4.2, A.1; DreamMr/PCL main.py ``linear_eval`` and main_pose.py
``linear_eval``): FER = Linear with weight N(0, 0.01) and bias 0, Adam (no weight decay),
CosineAnnealingLR(T_max = epochs) stepped once per epoch, a DataLoader with shuffle=False and
drop_last=False, the test set scored after every epoch; pose = BatchNorm1d + Linear with nn.Linear's
default start, AdamW with its default weight decay 0.01 over every parameter, shuffle=True, the
scheduler never stepped. Each test below writes that loop out in plain torch and compares it with
pclbench's probe on a small problem: the outputs (which read every weight) must be identical.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_probes import BENCHMARKS, LOOP, TRAIN, config, make_expression, make_pose, run_all

from pclbench.cli import load_config
from pclbench.core.config import from_dict
from pclbench.core.resources import REPO_ROOT
from pclbench.evaluate.linear import ProbeConfig, TrainConfig, fit_probe, train_linear


def _train(**over) -> TrainConfig:
    return from_dict(TrainConfig, {**TRAIN, **over}, "train").check("train")


def _problem(n=50, d=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)  # (N, D)
    y = torch.randint(0, k, (n,), generator=g)  # (N,)
    # an evaluation set that reads out every weight: the zero vector (bias) and the unit vectors
    probe_in = torch.cat([torch.zeros(1, d), torch.eye(d), torch.randn(5, d, generator=g)])  # (1 + D + 5, D)
    return x, y, probe_in


def test_fer_loop_matches_a_plain_torch_loop():
    """Adam, N(0, 0.01) start, data order, last batch smaller, cosine stepped per epoch, every epoch."""
    x, y, probe_in = _problem()
    k, lr, epochs, bs, seed = 4, 1e-2, 7, 16, 11
    cfg = _train(optimizer="adam", lr_grid=[lr], weight_decay_grid=[0.0], epochs=epochs, batch_size=bs,
                 lr_schedule="cosine", lr_step="epoch", eval_every=1, init="normal", shuffle=False,
                 decay_bias=False, standardize=False)
    ours = train_linear(x, y, "ce", k, lr=lr, weight_decay=0.0, cfg=cfg, seed=seed, eval_sets={"p": probe_in})

    # the reference loop, written out
    lin = torch.nn.Linear(x.shape[1], k)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lin.weight.normal_(mean=0.0, std=0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    ref, lrs = [], []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        for s in range(0, len(x), bs):  # shuffle=False, drop_last=False: 16, 16, 16, 2
            loss = F.cross_entropy(lin(x[s:s + bs]), y[s:s + bs])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            ref.append(lin(probe_in).numpy())

    assert [cp.epoch for cp in ours] == list(range(1, epochs + 1))
    for cp, r in zip(ours, ref):
        np.testing.assert_array_equal(cp.outputs["p"], r)
    # the schedule really is per epoch: constant within an epoch, lr * (1 + cos(pi e / E)) / 2
    np.testing.assert_allclose(lrs, [0.5 * lr * (1 + np.cos(np.pi * e / epochs)) for e in range(epochs)], rtol=1e-12)


def test_pose_loop_matches_a_plain_torch_loop():
    """AdamW (weight decay 0.01 on the bias too), nn.Linear's default start, reshuffled every epoch,
    constant lr, L1."""
    x, _, probe_in = _problem(n=45, d=10)
    g = torch.Generator().manual_seed(5)
    y = x[:, :3] * 20.0 + torch.randn(len(x), 3, generator=g)  # (N, 3) "degrees"
    lr, wd, epochs, bs, seed = 1e-2, 1e-2, 5, 8, 3
    cfg = _train(optimizer="adamw", lr_grid=[lr], weight_decay_grid=[wd], epochs=epochs, batch_size=bs,
                 lr_schedule="constant", lr_step="epoch", eval_every=1, init="torch_default", shuffle=True,
                 decay_bias=True, standardize=True)
    ours = train_linear(x, y, "l1", 3, lr=lr, weight_decay=wd, cfg=cfg, seed=seed, eval_sets={"p": probe_in})

    torch.manual_seed(seed)  # the authors build the head and draw the batch order from the global RNG
    lin = torch.nn.Linear(x.shape[1], 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=wd)
    ref = []
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for s in range(0, len(x), bs):
            idx = perm[s:s + bs]
            loss = F.l1_loss(lin(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            ref.append(lin(probe_in).numpy())
    for cp, r in zip(ours, ref):
        np.testing.assert_array_equal(cp.outputs["p"], r)


def test_decay_bias_and_shuffle_change_the_result():
    """The switches are live: without bias decay / with another batch order the weights differ."""
    x, y, probe_in = _problem()
    base = dict(optimizer="adamw", lr_grid=[0.05], weight_decay_grid=[0.5], epochs=4, batch_size=8,
                lr_schedule="cosine", lr_step="epoch", eval_every=4, init="zeros", shuffle=True,
                decay_bias=True, standardize=None)

    def out(**over):
        cfg = _train(**{**base, **over})
        return train_linear(x, y, "ce", 4, lr=0.05, weight_decay=0.5, cfg=cfg, seed=1,
                            eval_sets={"p": probe_in})[-1].outputs["p"]

    a = out()
    assert not np.array_equal(a[0], out(decay_bias=False)[0])  # row 0 = the bias
    assert not np.array_equal(a, out(shuffle=False))
    assert not np.array_equal(a, out(lr_step="step"))
    np.testing.assert_array_equal(a, out())  # and it is deterministic


def test_clean_defaults_are_unchanged():
    """config.yaml's defaults (zeros, per-step cosine, shuffled, bias not decayed) keep the former
    loop: zero start, so the bias output of an all-zero probe row is exactly 0 before training."""
    x, y, probe_in = _problem()
    cfg = _train(optimizer="adam", lr_grid=[0.1], weight_decay_grid=[0.0], epochs=1, batch_size=0,
                 lr_schedule="cosine", eval_every=1, **LOOP)
    # a full-batch step from zero: the Adam step moves every parameter by -lr * sign(grad) (first step)
    lin = torch.nn.Linear(x.shape[1], 4)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    F.cross_entropy(lin(x), y).backward()
    opt.step()
    ours = train_linear(x, y, "ce", 4, lr=0.1, weight_decay=0.0, cfg=cfg, seed=0, eval_sets={"p": probe_in})
    np.testing.assert_array_equal(ours[-1].outputs["p"], lin(probe_in).detach().numpy())


def test_paper_protocol_reports_the_best_test_epoch_of_the_hand_loop():
    """fit_probe under protocol paper with the FER loop = the max over epochs of the hand loop's
    test accuracy (main.py keeps best_linear_acc), on raw features."""
    rng = np.random.default_rng(0)
    k, d = 3, 6
    x_tr = rng.normal(size=(60, d)).astype(np.float32)
    y_tr = (x_tr[:, 0] > 0).astype(np.int64) + (x_tr[:, 1] > 0.5)
    x_te = rng.normal(size=(40, d)).astype(np.float32)
    y_te = (x_te[:, 0] > 0).astype(np.int64) + (x_te[:, 1] > 0.5)
    epochs, bs, lr, seed = 6, 16, 0.05, 2
    train = _train(optimizer="adam", lr_grid=[lr], weight_decay_grid=[0.0], epochs=epochs, batch_size=bs,
                   lr_schedule="cosine", lr_step="epoch", eval_every=1, init="normal", shuffle=False,
                   decay_bias=False, standardize=False)
    probe = from_dict(ProbeConfig, {**config()["probe"], "protocol": "paper", "standardize": True}, "probe")

    def acc(logits, y):
        return float((logits.argmax(axis=1) == y).mean())

    out = fit_probe(x_tr, y_tr, x_te, loss="ce", out_dim=k, probe=probe, train=train, score=acc,
                    higher_is_better=True, seed=seed, y_test=y_te)

    xt, yt, xe = torch.tensor(x_tr), torch.tensor(y_tr), torch.tensor(x_te)  # raw: train.standardize false
    lin = torch.nn.Linear(d, k)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lin.weight.normal_(0.0, 0.01, generator=g)
        lin.bias.zero_()
    opt = torch.optim.Adam(lin.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    curve = []
    for _ in range(epochs):
        for s in range(0, len(xt), bs):
            loss = F.cross_entropy(lin(xt[s:s + bs]), yt[s:s + bs])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            curve.append(acc(lin(xe).numpy(), y_te))
    assert [r["test_score"] for r in out.grid] == curve
    best = int(np.argmax(curve))  # the first maximum, as `best < acc` keeps it
    assert out.selected["epoch"] == best + 1 and out.selected["test_score"] == curve[best]


def test_paper_yaml_sets_the_authors_loops_and_raw_fer_features():
    # merged and validated against the schema, as `--configfile config.yaml paper.yaml` does
    cfg = load_config([REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "paper.yaml"])
    tr = {t: from_dict(TrainConfig, cfg["tasks"][t]["train"], f"tasks.{t}.train").check(f"tasks.{t}.train")
          for t in ("expression", "au", "pose")}
    assert tr["expression"].standardize is False and tr["expression"].init == "normal"
    assert not tr["expression"].shuffle and tr["expression"].lr_step == "epoch"
    assert tr["pose"].decay_bias and tr["pose"].shuffle and tr["pose"].init == "torch_default"
    assert tr["au"].standardize is True and not tr["au"].shuffle
    assert all(t.eval_every == 1 and t.epochs == 300 for t in tr.values())
    assert cfg["tasks"]["pose"]["standardize_targets"] is False
    assert cfg["pretrain"]["epoch_unit"] == "identities"


@pytest.mark.parametrize("task_std,expected", [(False, "features raw"), (True, "features standardised"),
                                               (None, "features standardised")])
def test_task_standardize_overrides_the_probe_setting(tmp_path, task_std, expected):
    """tasks.<task>.train.standardize wins over probe.standardize (true here), in the result file's
    protocol description too; null keeps the probe's."""
    make_expression(tmp_path, signal=1.0)
    cfg = config()
    cfg["tasks"]["expression"]["train"] = {**cfg["tasks"]["expression"]["train"], "standardize": task_std}
    res = run_all("expression", tmp_path, cfg)
    assert expected in res["protocol_description"]


def test_raw_and_standardised_features_give_different_probes(tmp_path):
    """standardize: false really trains on raw features (pose task, features with large scale)."""
    make_pose(tmp_path, "all")
    outs = {}
    for std in (False, True):
        cfg = config()
        cfg["tasks"]["pose"] = copy.deepcopy(cfg["tasks"]["pose"])
        cfg["tasks"]["pose"]["train"] = {**cfg["tasks"]["pose"]["train"], "standardize": std, "epochs": 5,
                                         "eval_every": 5}
        outs[std] = run_all("pose", tmp_path, cfg, BENCHMARKS["pose"])["runs"][0]["metrics"]["mae_mean_deg"]
    assert outs[False] != outs[True]


# ---------------------------------------------------------------------------------------------------
# crop mode as_is (pclbench.data.passthrough): RAF-DB's released aligned 100 px crops, as the authors
# read them (lineardb.py: Image.open(...).convert('RGB'), Resize(100), ToTensor)


def _raf_aligned_jpeg(path, size=100, seed=0):
    rng = np.random.default_rng(seed)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_as_is_keeps_the_released_pixels(tmp_path):
    from PIL import Image
    from torchvision import transforms

    from pclbench.data.passthrough import as_is_crop

    p = _raf_aligned_jpeg(tmp_path / "train_00001_aligned.jpg")
    with Image.open(p) as im:
        img = im.convert("RGB")
    authors = transforms.ToTensor()(transforms.Resize(100)(img))  # (3, 100, 100) in [0, 1]
    ours = as_is_crop(img, 100)
    assert ours.shape == (3, 100, 100) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, (authors * 255).round().to(torch.uint8).numpy())
    # another size: torchvision's Resize of a PIL image (bilinear)
    np.testing.assert_array_equal(as_is_crop(img, 64), np.asarray(transforms.Resize(64)(img)).transpose(2, 0, 1))


def test_as_is_rejects_non_square_images_by_name(tmp_path):
    from PIL import Image

    from pclbench.data.passthrough import FAIL_NOT_SQUARE, as_is_result

    square = Image.new("RGB", (100, 100), (10, 20, 30))
    original = Image.new("RGB", (120, 90), (0, 0, 0))  # an Image/original file, not an aligned crop
    res = as_is_result([4, 7, 9], [square, original, square], [(2, "unreadable image: x")], 100, 0.5)
    assert res["kept"] == [4, 9] and res["crops"].shape == (2, 3, 100, 100)
    assert [r for r, _ in res["failures"]] == [2, 7] and res["failures"][1][1].startswith(FAIL_NOT_SQUARE)
    assert res["landmarks"].shape == (2, 68, 2) and np.isnan(res["landmarks"]).all()
    assert (res["crops"][:, 0] == 10).all() and res["padding"].tolist() == [0.0, 0.0]


def test_align_stage_as_is_writes_the_released_pixels(tmp_path):
    """align.crops {raf_db: as_is} (config/paper.yaml): the shard holds RAF-DB's aligned pixels unchanged,
    no landmark backend is loaded (raf_db's is face_alignment, whose weights are not here), and a
    non-square file fails by name."""
    from PIL import Image

    from pclbench.align.aligner import AlignConfig, align_split
    from pclbench.align.shards import open_shard

    raw = tmp_path / "raw" / "raf_db"
    (raw / "images").mkdir(parents=True)
    rows, expected = [], []
    for i in range(5):
        rel = f"images/train_{i + 1:05d}_aligned.jpg"
        _raf_aligned_jpeg(raw / rel, seed=i)
        with Image.open(raw / rel) as im:
            expected.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
        rows.append({"path": rel, "subject": -1, "expression": i % 7})
    Image.new("RGB", (120, 90)).save(raw / "images" / "train_00006.jpg")
    rows.append({"path": "images/train_00006.jpg", "subject": -1, "expression": 0})
    import pandas as pd

    pd.DataFrame(rows).to_csv(raw / "train.csv", index=False)
    cfg = load_config([REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "paper.yaml"])
    align = {**cfg["align"], "max_failure_rate": 0.5, "device": "cpu"}
    assert align["crops"]["raf_db"] == "as_is" and align["backends"]["raf_db"] == "face_alignment"
    out = tmp_path / "aligned" / "raf_db" / "train"
    qc = align_split(raw, "train", out, from_dict(AlignConfig, align, "align"), size=100, dataset="raf_db")
    shard = open_shard(out)
    np.testing.assert_array_equal(np.asarray(shard.images), np.stack(expected))
    assert np.isnan(shard.landmarks).all()
    assert qc["n_kept"] == 5 and qc["n_failed"] == 1
    assert qc["failures"][0]["reason"].startswith("not a square face crop")
