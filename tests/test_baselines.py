"""Baselines (methods/simclr.py, moco.py, byol.py, two_view.py) and their augmentation (augment.py):
losses against hand-written references, EMA and queue against their formulas, one CPU iteration each."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from pclbench.pretrain.augment import AugmentConfig, crop_resize, random_resized_crop, sample_crop_boxes, two_views
from pclbench.pretrain.losses.info_nce import nt_xent
from pclbench.core.config import ConfigError
from pclbench.pretrain.methods import METHODS, MoCoConfig
from pclbench.pretrain.methods.byol import byol_loss
from pclbench.pretrain.methods.moco import moco_logits
from pclbench.pretrain.methods.two_view import ema_update
from pclbench.models import ModelConfig
from pclbench.pretrain.views import ViewConfig

from tiny_sections import MODEL, VIEWS

torch.set_num_threads(2)

AUGMENT = {"scale": [0.2, 1.0], "ratio": [0.75, 4 / 3], "flip_p": 0.5, "sobel_p": 0.0}
SECTIONS = {"views": VIEWS, "augment": AUGMENT, "simclr": {"temperature": 0.1},
            "moco": {"queue_size": 6, "momentum": 0.9, "temperature": 0.2}, "byol": {"momentum": 0.9}}
BASELINES = ["simclr", "moco", "byol"]
# modules updated by EMA only, never by a gradient
EMA_MODULES = {"simclr": set(), "moco": {"key_encoder", "key_head"}, "byol": {"target_encoder", "target_projector"}}


def build(name, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = {**SECTIONS, **{k: {**SECTIONS[k], **v} for k, v in overrides.items()}}
    return METHODS.get(name)(cfg, ModelConfig.from_config(MODEL), 64)


def iterate(method, opt, seed):
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return method.train_iteration({"images": x}, opt, torch.amp.GradScaler("cpu", enabled=False), 1,
                                  torch.Generator().manual_seed(100 + seed))


# ---------------------------------------------------------------------------------------------
# losses vs references


def test_nt_xent_matches_a_loop_over_anchors():
    g = torch.Generator().manual_seed(0)
    b, t = 5, 0.3
    z1, z2 = torch.randn(b, 7, generator=g), torch.randn(b, 7, generator=g)
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    total = 0.0
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * b) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / denom)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(total / (2 * b), rel=1e-5)
    with pytest.raises(ValueError, match="nt_xent"):
        nt_xent(z1, z2[:3], t)


def test_moco_logits_match_a_loop_and_the_loss_is_ce_at_zero():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    k = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    queue = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    logits = moco_logits(q, k, queue, 0.2)
    for i in range(3):
        assert float(logits[i, 0]) == pytest.approx(float(q[i] @ k[i]) / 0.2, rel=1e-6)
        for j in range(5):
            assert float(logits[i, 1 + j]) == pytest.approx(float(q[i] @ queue[j]) / 0.2, rel=1e-6)
    ref = sum(-math.log(math.exp(float(logits[i, 0])) / float(logits[i].exp().sum())) for i in range(3)) / 3
    assert float(F.cross_entropy(logits, torch.zeros(3, dtype=torch.long))) == pytest.approx(ref, rel=1e-5)


def test_byol_loss_is_two_minus_two_cosine_and_stops_target_gradients():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(4, 6, generator=g, requires_grad=True)
    t = torch.randn(4, 6, generator=g, requires_grad=True)
    loss = byol_loss(p, t)
    p_, t_ = p.detach(), t.detach()
    for i in range(4):
        cos = float(p_[i] @ t_[i]) / (float(p_[i].norm()) * float(t_[i].norm()))
        assert float(loss[i].detach()) == pytest.approx(2 - 2 * cos, rel=1e-5, abs=1e-6)
    loss.sum().backward()
    assert p.grad is not None and t.grad is None


def test_moco_loss_of_an_iteration_uses_the_queue_before_the_enqueue():
    m = build("moco")
    queue0 = m.queue.clone()
    seen = {}
    m.head.register_forward_hook(lambda mod, a, o: seen.__setitem__("q", o.detach()))
    m.key_head.register_forward_hook(lambda mod, a, o: seen.__setitem__("k", o.detach()))
    opt = torch.optim.Adam(m.parameter_groups(), lr=1e-3)
    out = iterate(m, opt, 0)
    q, k = F.normalize(seen["q"], dim=1), F.normalize(seen["k"], dim=1)
    ref = F.cross_entropy(moco_logits(q, k, queue0, 0.2), torch.zeros(4, dtype=torch.long))
    assert float(out["loss_moco"]) == pytest.approx(float(ref), rel=1e-5)
    # queue_size 6, batch 4: slots 0..3 now hold this batch's keys, in order; 4, 5 untouched
    assert torch.allclose(m.queue[:4], k) and torch.equal(m.queue[4:], queue0[4:])
    assert int(m.queue_ptr) == 4


# ---------------------------------------------------------------------------------------------
# EMA, queue


def test_ema_update_follows_the_formula_and_copies_buffers():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(5, 3))  # changes the BN running statistics
    t0 = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.75)
    for pt, p0, po in zip(target.parameters(), t0, online.parameters()):
        assert torch.allclose(pt, 0.75 * p0 + 0.25 * po)
    for bt, bo in zip(target.buffers(), online.buffers()):
        assert torch.equal(bt, bo)


def test_moco_queue_is_a_ring_buffer_overwriting_the_oldest_keys():
    m = build("moco", moco={"queue_size": 5})
    d = m.queue.shape[1]
    keys = torch.arange(1, 8, dtype=torch.float32)[:, None].expand(7, d)  # key value = its index + 1
    m.enqueue(keys[:3])
    assert m.queue[:3, 0].tolist() == [1, 2, 3] and int(m.queue_ptr) == 3
    m.enqueue(keys[3:6])  # slots 3, 4, then wraps to 0
    assert m.queue[:, 0].tolist() == [6, 2, 3, 4, 5] and int(m.queue_ptr) == 1
    m.enqueue(keys)  # more keys than slots: the last 5 (3..7) from slot 1 on
    assert m.queue[:, 0].tolist() == [7, 3, 4, 5, 6] and int(m.queue_ptr) == 1


# ---------------------------------------------------------------------------------------------
# one iteration on CPU


@pytest.mark.parametrize("name", BASELINES)
def test_one_iteration_moves_online_modules_and_ema_ones_only_by_ema(name):
    m = build(name)
    assert m.batch_sizes(4) == {"images": 4}
    trainable = {n for g in m.parameter_groups() for n, p in m.named_parameters() if any(p is q for q in g["params"])}
    assert {n.split(".")[0] for n in trainable} & EMA_MODULES[name] == set()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam(m.parameter_groups(), lr=1e-3)
    out = iterate(m, opt, 0)
    assert all(math.isfinite(float(v)) for v in out.values())
    moved = {n.split(".")[0] for n, p in m.named_parameters() if not torch.equal(before[n], p.detach())}
    online = {"simclr": {"encoder", "projector"}, "moco": {"encoder", "head"},
              "byol": {"encoder", "projector", "predictor"}}[name]
    assert online <= moved
    assert all(p.grad is None for n, p in m.named_parameters() if n.split(".")[0] in EMA_MODULES[name])
    # the trunk is trained, the PCL heads are not used by the baselines (readout = trunk)
    assert any(n.startswith("encoder.layer3_1") and n.split(".")[0] == "encoder"
               and not torch.equal(before[n], p.detach()) for n, p in m.named_parameters())
    assert all(torch.equal(before[n], p.detach()) for n, p in m.named_parameters()
               if n.startswith(("encoder.face_head", "encoder.pose_head")))
    if name == "moco":
        # EMA before the keys (builder.py): iteration 1 averages two equal networks -> no change;
        # iteration 2: key = m * key + (1 - m) * query-after-step-1
        assert all(torch.allclose(before[n], p, atol=1e-7)
                   for n, p in m.key_encoder.named_parameters(prefix="key_encoder"))
        query1 = {n: p.detach().clone() for n, p in m.encoder.named_parameters()}
        iterate(m, opt, 1)
        for n, p in m.key_encoder.named_parameters():
            assert torch.allclose(p, 0.9 * before["key_encoder." + n] + 0.1 * query1[n], atol=1e-7)
    if name == "byol":
        # EMA after the step: target = m * target + (1 - m) * online-after-step
        for n, p in m.target_encoder.named_parameters():
            expect = 0.9 * before["target_encoder." + n] + 0.1 * m.encoder.get_parameter(n).detach()
            assert torch.allclose(p, expect, atol=1e-7)


@pytest.mark.parametrize("name", BASELINES)
def test_state_dict_resumes_exactly(name):
    a = build(name)
    opt_a = torch.optim.Adam(a.parameter_groups(), lr=1e-3)
    iterate(a, opt_a, 0)
    b = build(name, seed=5)  # different init and queue: everything must come from the state
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    b.load_extra_state(copy.deepcopy(a.extra_state()))
    opt_b = torch.optim.Adam(b.parameter_groups(), lr=1e-3)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    oa, ob = iterate(a, opt_a, 1), iterate(b, opt_b, 1)
    assert {k: float(v) for k, v in oa.items()} == {k: float(v) for k, v in ob.items()}
    for (n, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), n


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="moco.momentum"):
        MoCoConfig.from_config({"queue_size": 4, "momentum": 1.5, "temperature": 0.2})
    with pytest.raises(ConfigError, match="simclr.temperature"):
        build("simclr", simclr={"temperature": 0.0})
    with pytest.raises(ConfigError, match="augment.scale"):
        build("byol", augment={"scale": [0.5, 0.2]})
    with pytest.raises(ConfigError, match="missing section moco"):
        METHODS.get("moco")({"views": VIEWS, "augment": AUGMENT}, ModelConfig.from_config(MODEL), 64)


# ---------------------------------------------------------------------------------------------
# augmentation


def test_crop_resize_known_answers():
    x = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    # a box of side out_size at integer offsets is exactly a slice; the whole image flipped is x.flip(-1)
    boxes = torch.tensor([[2.0, 3.0, 8.0, 8.0], [16.0, 12.0, 8.0, 8.0], [5.0, 0.0, 8.0, 8.0]])
    out = crop_resize(x, boxes, torch.tensor([False, False, True]), 8)
    assert torch.allclose(out[0], x[0, :, 3:11, 2:10], atol=1e-5)
    assert torch.allclose(out[1], x[1, :, 12:20, 16:24], atol=1e-5)
    assert torch.allclose(out[2], x[2, :, 0:8, 5:13].flip(-1), atol=1e-5)
    full = crop_resize(x, torch.tensor([[0.0, 0.0, 24.0, 20.0]]).expand(3, 4), torch.ones(3, dtype=torch.bool), 20)
    assert full.shape == (3, 3, 20, 20)
    sq = torch.rand(2, 3, 16, 16)
    assert torch.allclose(crop_resize(sq, torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2), torch.tensor([True, False]), 16),
                          torch.stack([sq[0].flip(-1), sq[1]]), atol=1e-5)


def test_crop_boxes_follow_the_ranges_and_stay_inside():
    g = torch.Generator().manual_seed(4)
    boxes = sample_crop_boxes(4000, 64, 64, [0.2, 1.0], [0.75, 4 / 3], g, "cpu")
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 64 + 1e-4).all() and (y0 + h <= 64 + 1e-4).all()
    inside = (w < 64) & (h < 64)  # not clamped: area and ratio are the drawn ones
    frac, ratio = (w * h / 64 ** 2)[inside], (w / h)[inside]
    assert frac.min() >= 0.2 - 1e-5 and frac.max() <= 1.0 + 1e-5
    assert ratio.min() >= 0.75 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert inside.float().mean() > 0.5


def test_two_views_are_batched_deterministic_and_independent():
    x = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    cfg, views = AugmentConfig.from_config(AUGMENT), ViewConfig.from_config(VIEWS)
    v1, v2 = two_views(x, cfg, views, 32, torch.Generator().manual_seed(0))
    w1, w2 = two_views(x, cfg, views, 32, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (4, 3, 32, 32)
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert not torch.allclose(v1, v2)
    assert v1.min() >= 0 and v1.max() <= 1
    # flip_p 1 with the full image: the crop is the mirrored (resized) image
    full = AugmentConfig.from_config({**AUGMENT, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "flip_p": 1.0})
    out = random_resized_crop(x, full, 48, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_methods_are_registered_and_in_the_schema(repo_root):
    import yaml

    schema = yaml.safe_load((repo_root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    # workflow.methods takes registered methods and variant names; a variant's `method` must be registered
    enum = schema["properties"]["variants"]["additionalProperties"]["properties"]["method"]["enum"]
    assert sorted(enum) == sorted(METHODS.names())
    for name in BASELINES:
        assert name in METHODS


# ---------------------------------------------------------------------------------------------
# through the trainer


def test_moco_run_resumes_exactly_through_the_trainer(tmp_path, monkeypatch):
    """Crash in epoch 2; the resumed run ends with the same networks, key encoder and queue as an
    uninterrupted one (the queue and its pointer are state_dict buffers)."""
    from pclbench.pretrain.checkpoint import load_checkpoint
    from pclbench.pretrain.methods import MoCo
    from pclbench.pretrain.trainer import train
    from test_train import PRETRAIN, write_shard

    shard = write_shard(tmp_path / "shard")
    cfg = {"model": copy.deepcopy(MODEL), **copy.deepcopy(SECTIONS), "pretrain": {**PRETRAIN, "epochs": 2}}
    train("moco", shard, tmp_path / "ref", copy.deepcopy(cfg))
    original = MoCo.train_iteration

    def crash(self, batches, optimizer, scaler, epoch, generator):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, batches, optimizer, scaler, epoch, generator)

    monkeypatch.setattr(MoCo, "train_iteration", crash)
    with pytest.raises(KeyboardInterrupt):
        train("moco", shard, tmp_path / "run", copy.deepcopy(cfg))
    monkeypatch.setattr(MoCo, "train_iteration", original)
    assert train("moco", shard, tmp_path / "run", copy.deepcopy(cfg))["resumed"]
    ref, got = load_checkpoint(tmp_path / "ref" / "checkpoint.pt"), load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert {"queue", "queue_ptr"} <= set(ref["model"]) and any(k.startswith("key_encoder.") for k in ref["model"])
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
