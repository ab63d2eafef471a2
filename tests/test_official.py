"""Authors' checkpoints (docs/method.md §1.8, 2.9): load_encoder and `pclbench import-official`.

The reference below is written from docs/method.md's description of the authors' FaceCycleBackbone
(1.1-1.3) with the authors' stage names and the inner layout pclbench.pretrain.official infers, independently
of pclbench.models: its state_dict, wrapped like the authors' main.py saves it, must load into our
encoder and give bit-identical fp32 features.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pclbench
from pclbench.pretrain.checkpoint import load_checkpoint, load_encoder
from pclbench.cli import main
from pclbench.pretrain.import_official import import_official
from pclbench.pretrain.official import AUTHORS_ENCODER_LAYOUT, encoder_key_map

from tiny_sections import MODEL

torch.set_num_threads(2)


class RefAttention(nn.Module):
    """1.2: g/theta/phi 1x1; softmax(theta) over N; affinity phi @ theta^T (C x C); softmax(g) over C."""

    def __init__(self, c):
        super().__init__()
        self.g = nn.Conv2d(c, c, 1)
        self.theta = nn.Conv2d(c, c, 1)
        self.phi = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        g = F.softmax(self.g(x).view(b, c, -1), dim=1)  # (B, C, N)
        theta = F.softmax(self.theta(x).view(b, c, -1), dim=-1).permute(0, 2, 1)  # (B, N, C)
        phi = self.phi(x).view(b, c, -1)  # (B, C, N)
        att = torch.bmm(torch.bmm(phi, theta), g).view(b, c, h, w)
        return F.leaky_relu(x + att, 0.1)


class RefBlock(nn.Module):
    """1.3: conv -> LReLU -> conv, + x, LReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.1)) + x, 0.1)


def _seq(*mods):
    return nn.Sequential(*mods)


def lrelu():
    return nn.LeakyReLU(0.1)


class RefBackbone(nn.Module):
    """The authors' FaceCycleBackbone as docs/method.md's table 1.1 lists it (stage names kept)."""

    def __init__(self, w):
        super().__init__()
        self.conv1 = _seq(nn.Conv2d(3, w, 7, 2, 3), lrelu(), nn.Conv2d(w, w, 3, 1, 1), lrelu())
        self.layer1 = _seq(nn.Conv2d(w, w, 3, 1, 1), lrelu(), RefAttention(w), nn.Conv2d(w, w, 3, 1, 1), lrelu())
        self.layer2_1 = _seq(nn.Conv2d(w, 2 * w, 3, 2, 1), lrelu(), RefAttention(2 * w),
                             nn.Conv2d(2 * w, 2 * w, 3, 1, 1), lrelu())
        self.resblock1 = RefBlock(2 * w)
        self.resblock2 = RefBlock(2 * w)
        self.layer2_2 = _seq(nn.Conv2d(2 * w, 2 * w, 3, 2, 1), lrelu(), nn.Conv2d(2 * w, 2 * w, 3, 1, 1), lrelu())
        self.layer3_1 = _seq(nn.Conv2d(2 * w, 4 * w, 3, 2, 1), lrelu(), nn.Conv2d(4 * w, 2 * w, 3, 1, 1), lrelu())
        self.layer3_2_exp = _seq(nn.Conv2d(2 * w, 2 * w, 3, 1, 1), lrelu(), nn.Conv2d(2 * w, 2 * w, 3, 1, 1), lrelu())
        self.layer3_2_pose = _seq(nn.Conv2d(2 * w, 2 * w, 3, 1, 1), lrelu(), nn.Conv2d(2 * w, 2 * w, 3, 1, 1),
                                  lrelu())
        for p in self.parameters():  # random biases too, so a bias mapped to the wrong conv shows
            nn.init.normal_(p, 0.0, 0.05)

    def forward(self, x):
        t = self.layer3_1(self.layer2_2(self.resblock2(self.resblock1(self.layer2_1(self.layer1(self.conv1(x)))))))
        b = x.shape[0]
        return t.view(b, -1), self.layer3_2_exp(t).view(b, -1), self.layer3_2_pose(t).view(b, -1)


def authors_file(path, w, *, data_parallel=True, hidden=32, out=16, epoch=301, seed=0):
    """What the authors' main.py saves: {'epoch', 'state_dict' of DataParallel(ExpPoseModel)}."""
    torch.manual_seed(seed)
    ref = RefBackbone(w)
    d = 2 * w * 16  # head features at 64 px (1.4: 2048 in the paper)
    sd = {f"encoder.{k}": v for k, v in ref.state_dict().items()}
    for name in ("exp_fc", "pose_fc"):  # nn.Sequential(Linear, ReLU, Linear, BatchNorm1d)
        fc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, out), nn.BatchNorm1d(out))
        sd.update({f"{name}.{k}": v for k, v in fc.state_dict().items()})
    sd["decoder.fc.weight"] = torch.randn(8, d)
    sd["decoder.model.2.weight"] = torch.randn(4, 8, 3, 3)
    if data_parallel:
        sd = {f"module.{k}": v for k, v in sd.items()}
    torch.save({"epoch": epoch, "state_dict": sd}, path)
    return ref.eval()


@pytest.mark.parametrize("size", [64, 100])
def test_authors_file_gives_bit_identical_features(tmp_path, size):
    ref = authors_file(tmp_path / "best.pth", 64)
    enc = pclbench.load_encoder(tmp_path / "best.pth")
    assert enc.spec == {"name": "facecycle", "kwargs": {"width": 64}}
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        t, f, p = ref(x)
        feats = enc.forward_features(x)
    assert feats["trunk"].shape == (2, 2048 if size == 64 else 6272)  # 1.1
    for key, want in (("trunk", t), ("face", f), ("pose", p)):
        assert torch.equal(feats[key], want), key
    assert not torch.equal(f, p)  # the heads really got different weights


def test_data_parallel_free_and_bare_backbone_files_load(tmp_path):
    ref = authors_file(tmp_path / "plain.pth", 8, data_parallel=False)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
        got = load_encoder(tmp_path / "plain.pth").forward_features(x)
        assert all(torch.equal(got[k], w) for k, w in zip(("trunk", "face", "pose"), want))
        torch.save({"epoch": 3, "state_dict": ref.state_dict()}, tmp_path / "bare.pth")  # eval-mode model
        got = load_encoder(tmp_path / "bare.pth").forward_features(x)
        assert all(torch.equal(got[k], w) for k, w in zip(("trunk", "face", "pose"), want))


def _rewrite(path, edit):
    ck = torch.load(path, weights_only=True)
    edit(ck["state_dict"])
    torch.save(ck, path)


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    p = tmp_path / "best.pth"
    authors_file(p, 8)
    _rewrite(p, lambda sd: sd.pop("module.encoder.layer2_1.2.theta.bias"))
    with pytest.raises(ValueError, match=r"missing keys: encoder\.layer2_1\.2\.theta\.bias"):
        load_encoder(p)
    authors_file(p, 8)
    _rewrite(p, lambda sd: sd.__setitem__("module.encoder.layer3_2_exp.4.weight", torch.zeros(16, 16, 3, 3)))
    with pytest.raises(ValueError, match=r"unexpected keys: encoder\.layer3_2_exp\.4\.weight"):
        load_encoder(p)
    authors_file(p, 8)
    _rewrite(p, lambda sd: sd.__setitem__("module.encoder.layer3_1.2.weight", torch.zeros(16, 16, 3, 3)))
    with pytest.raises(ValueError, match=r"wrong shapes: encoder\.layer3_1\.2\.weight \(16, 16, 3, 3\) "
                                         r"\(expected \(16, 32, 3, 3\)\)"):
        load_encoder(p)
    authors_file(p, 8)
    _rewrite(p, lambda sd: sd.__setitem__("module.teacher.w", torch.zeros(1)))
    with pytest.raises(ValueError, match=r"keys outside .*module\.teacher\.w"):
        load_encoder(p)


def test_layout_table_covers_every_reference_parameter():
    # The data table lists exactly the reference's parameters (no buffers: the encoder has no BN, 1.1).
    ref_keys = set(RefBackbone(4).state_dict())
    assert set(encoder_key_map(4)) == ref_keys
    assert list(AUTHORS_ENCODER_LAYOUT) == ["conv1", "layer1", "layer2_1", "resblock1", "resblock2", "layer2_2",
                                            "layer3_1", "layer3_2_exp", "layer3_2_pose"]


def test_import_official_round_trip_keeps_fitting_projections(tmp_path):
    src, dst = tmp_path / "best.pth", tmp_path / "out" / "checkpoint.pt"
    ref = authors_file(src, 8, hidden=32, out=16, epoch=6000)
    cfg = {"model": {**MODEL, "projection": {"hidden_dim": 32, "out_dim": 16}}}
    record = import_official(src, dst, cfg)
    ck = load_checkpoint(dst)  # weights_only=True
    assert ck["method"] == "pcl" and ck["finished"] is True and ck["epoch"] == 6000
    assert ck["encoder"] == {"name": "facecycle", "kwargs": {"width": 8}}
    assert ck["imported_from"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() == record["sha256"]
    assert ck["imported_from"]["epoch"] == 6000 and ck["imported_from"]["path"] == str(src.resolve())
    assert "pcl" not in ck["config"] and ck["config"]["model"]["width"] == 8
    sd = torch.load(src, weights_only=True)["state_dict"]
    assert torch.equal(ck["model"]["exp_fc.net.2.weight"], sd["module.exp_fc.2.weight"])
    assert torch.equal(ck["model"]["pose_fc.net.3.running_var"], sd["module.pose_fc.3.running_var"])
    assert not any(k.startswith("decoder.") for k in ck["model"])
    assert any(n.startswith("decoder: dropped") for n in record["notes"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
        got = load_encoder(dst).forward_features(x)
    assert all(torch.equal(got[k], w) for k, w in zip(("trunk", "face", "pose"), want))


def test_cli_import_drops_projections_that_do_not_fit(tmp_path):
    src, dst = tmp_path / "best.pth", tmp_path / "ck.pt"
    authors_file(src, 8, hidden=24, out=16)  # MODEL's projection is 16 -> 8
    assert main(["import-official", str(src), str(dst), "--params", json.dumps({"model": MODEL})]) == 0
    ck = load_checkpoint(dst)
    assert not any(k.startswith(("exp_fc.", "pose_fc.")) for k in ck["model"])
    assert any(n.startswith("exp_fc: dropped") for n in ck["imported_from"]["notes"])
    assert set(ck["encoder_state"]) == {ours for ours, _ in encoder_key_map(8).values()}


def test_load_checkpoint_still_rejects_authors_file_with_a_hint(tmp_path):
    authors_file(tmp_path / "best.pth", 4)
    with pytest.raises(ValueError, match=r"not a pclbench checkpoint.*import-official"):
        load_checkpoint(tmp_path / "best.pth")
