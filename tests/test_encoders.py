"""FaceCycleEncoder: shapes, parameter counts and init (docs/method.md §1.1-1.3, 1.6, 1.7)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pclbench.core.config import ConfigError
from pclbench.models import ENCODERS, FaceCycleEncoder, ModelConfig, build_encoder
from pclbench.models.encoders import ResidualBlock, SelfAttention

torch.set_num_threads(2)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def paper_encoder() -> FaceCycleEncoder:
    torch.manual_seed(0)
    return build_encoder("facecycle", width=64).eval()


def test_registry_and_spec_rebuild(paper_encoder):
    assert "facecycle" in ENCODERS
    spec = paper_encoder.spec
    assert spec == {"name": "facecycle", "kwargs": {"width": 64}}
    clone = build_encoder(spec["name"], **spec["kwargs"])
    clone.load_state_dict(paper_encoder.state_dict())  # strict: same parameter names and shapes
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(clone(x), paper_encoder(x)):
            torch.testing.assert_close(a, b)


def test_parameter_counts_match_method_doc(paper_encoder):
    # docs/method.md §1.7: trunk 1,879,424; each head 295,168.
    heads = {"face_head": 295_168, "pose_head": 295_168}
    for name, count in heads.items():
        assert n_params(getattr(paper_encoder, name)) == count
    assert n_params(paper_encoder) - sum(heads.values()) == 1_879_424


@pytest.mark.parametrize("size, flat", [(64, 2048), (100, 6272), (112, 6272), (128, 8192), (256, 32768)])
def test_paper_feature_sizes(paper_encoder, size, flat):
    # docs/method.md §1.1: 4 stride-2 stages; 64 -> 2048, 100 -> 6272 (7x7), 256 -> 32768 (16x16).
    assert paper_encoder.feature_dims(size) == {"trunk": flat, "face": flat, "pose": flat}
    if size in (64, 100, 256):
        with torch.no_grad():
            feats = paper_encoder.forward_features(torch.rand(1, 3, size, size))
        assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (1, flat) for k in ("trunk", "face", "pose")}


@pytest.mark.parametrize("width, size", [(4, 64), (8, 37), (8, 50), (6, 17)])
def test_feature_dims_agree_with_forward(width, size):
    enc = FaceCycleEncoder(width)
    with torch.no_grad():
        t, f, p = enc.forward_maps(torch.rand(2, 3, size, size))
    s = math.ceil(size / 16)  # each stride-2 'same' conv rounds up
    for m in (t, f, p):
        assert tuple(m.shape) == (2, 2 * width, s, s)
    assert enc.feature_dims(size) == {k: 2 * width * s * s for k in ("trunk", "face", "pose")}


def test_forward_variants_are_consistent():
    torch.manual_seed(1)
    enc = FaceCycleEncoder(4)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        t, f, p = enc.forward_maps(x)
        t2 = enc.forward_trunk(x)
        f2, p2 = enc.forward_heads(t2)
        feats = enc.forward_features(x)
    torch.testing.assert_close(t, t2)
    torch.testing.assert_close(f, f2)
    torch.testing.assert_close(p, p2)
    torch.testing.assert_close(enc.forward_face(t2), f)
    torch.testing.assert_close(enc.forward_pose(t2), p)
    torch.testing.assert_close(feats["trunk"], t.flatten(1))
    torch.testing.assert_close(feats["face"], f.flatten(1))
    torch.testing.assert_close(feats["pose"], p.flatten(1))
    assert not torch.equal(f, p)  # separate weights


def test_no_normalisation_and_leaky_relu_only(paper_encoder):
    kinds = {type(m) for m in paper_encoder.modules()}
    assert not kinds & {nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d}
    acts = [m for m in paper_encoder.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.GELU))]
    assert acts and all(isinstance(a, nn.LeakyReLU) and a.negative_slope == 0.1 for a in acts)
    convs = [m for m in paper_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)


def test_he_fan_out_init(paper_encoder):
    # docs/method.md §1.6: N(0, sqrt(2 / (k*k*out))) and zero bias, attention 1x1 convs included.
    for conv in (paper_encoder.layer3_1[0], paper_encoder.layer2_1[2].g, paper_encoder.conv1[0]):
        k = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        w = conv.weight.detach().double()
        assert abs(w.mean().item()) < 0.05 * math.sqrt(2 / k)
        assert w.std().item() == pytest.approx(math.sqrt(2 / k), rel=0.05)
        assert torch.count_nonzero(conv.bias) == 0


def _np_softmax(a: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_self_attention_against_loop_reference():
    torch.manual_seed(2)
    c, h, w = 5, 3, 4
    att = SelfAttention(c)
    for conv in (att.g, att.theta, att.phi):
        nn.init.normal_(conv.weight, 0, 0.5)
        nn.init.normal_(conv.bias, 0, 0.5)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        got = att(x).double().numpy()

    def conv1x1(conv, xb):  # xb (C, N)
        return conv.weight.detach().double().numpy()[:, :, 0, 0] @ xb + conv.bias.detach().double().numpy()[:, None]

    for b in range(2):
        xb = x[b].double().numpy().reshape(c, h * w)
        theta = _np_softmax(conv1x1(att.theta, xb), axis=1)  # over positions
        phi = conv1x1(att.phi, xb)
        g = _np_softmax(conv1x1(att.g, xb), axis=0)  # over channels
        aff = np.zeros((c, c))
        for i in range(c):
            for j in range(c):
                aff[i, j] = sum(phi[i, n] * theta[j, n] for n in range(h * w))
        out = np.zeros((c, h * w))
        for i in range(c):
            for n in range(h * w):
                out[i, n] = sum(aff[i, j] * g[j, n] for j in range(c))
        y = xb + out
        y = np.where(y > 0, y, 0.1 * y)
        np.testing.assert_allclose(got[b].reshape(c, h * w), y, rtol=1e-5, atol=1e-5)


def test_residual_block_structure():
    torch.manual_seed(3)
    blk = ResidualBlock(3)
    x = torch.randn(2, 3, 5, 5)
    lrelu = lambda t: torch.where(t > 0, t, 0.1 * t)  # noqa: E731
    conv = lambda t, c: nn.functional.conv2d(t, c.weight, c.bias, padding=1)  # noqa: E731
    with torch.no_grad():
        ref = lrelu(x + conv(lrelu(conv(x, blk.conv1)), blk.conv2))
        torch.testing.assert_close(blk(x), ref)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in blk.modules())


def test_bad_width_and_input_rejected():
    with pytest.raises(ValueError, match="width"):
        FaceCycleEncoder(0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FaceCycleEncoder(4).forward_trunk(torch.rand(1, 1, 32, 32))
    with pytest.raises(KeyError, match="unknown encoder"):
        build_encoder("resnet-nope", width=4)


def _model_section(**over):
    sec = {"encoder": "facecycle", "width": 16, "projection": {"hidden_dim": 512, "out_dim": 128},
           "decoder": {"fc_dim": 128, "channels": [64, 64, 64, 64, 32]}}
    sec.update(over)
    return sec


def test_model_config_validation():
    cfg = ModelConfig.from_config(_model_section())
    assert cfg.width == 16 and cfg.decoder.channels == [64, 64, 64, 64, 32]
    with pytest.raises(ConfigError, match="model.encoder"):
        ModelConfig.from_config(_model_section(encoder="vit"))
    with pytest.raises(ConfigError, match="model.decoder.channels"):
        ModelConfig.from_config(_model_section(decoder={"fc_dim": 8, "channels": [4, 4]}))
    with pytest.raises(ConfigError, match="model.width"):
        ModelConfig.from_config(_model_section(width=0))
    with pytest.raises(ConfigError, match="model.projection.hidden"):
        ModelConfig.from_config(_model_section(projection={"hidden": 3, "out_dim": 2}))


# --- every registered encoder (FaceCycle and the torchvision ResNets) -----------------------------

# A width each encoder accepts; the first test makes a new registry entry add itself here.
WIDTHS = {"facecycle": 8, "resnet18": 64, "resnet50": 64}
# Trunk / head channels: FaceCycle 2w / 2w; torchvision layer3 / layer4 outputs.
CHANNELS = {"facecycle": (16, 16), "resnet18": (256, 512), "resnet50": (1024, 2048)}


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {name: build_encoder(name, width=WIDTHS[name]).eval() for name in ENCODERS}


def test_every_registered_encoder_is_covered():
    assert set(ENCODERS) == set(WIDTHS) == set(CHANNELS)


@pytest.mark.parametrize("name", sorted(WIDTHS))
@pytest.mark.parametrize("size", [64, 37])
def test_registered_encoder_interface(built, name, size):
    enc = built[name]
    ct, ch = CHANNELS[name]
    s = math.ceil(size / 16)  # four stride-2 'same' stages, each rounding up
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        t, f, p = enc.forward_maps(x)
        f2, p2 = enc.forward_heads(enc.forward_trunk(x))
        feats = enc.forward_features(x)
    assert (tuple(t.shape), tuple(f.shape), tuple(p.shape)) == ((2, ct, s, s), (2, ch, s, s), (2, ch, s, s))
    assert enc.feature_dims(size) == {"trunk": ct * s * s, "face": ch * s * s, "pose": ch * s * s}
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (2, d) for k, d in enc.feature_dims(size).items()}
    assert torch.equal(f, f2) and torch.equal(p, p2)
    assert torch.equal(enc.forward_face(t), f) and torch.equal(enc.forward_pose(t), p)
    assert torch.equal(feats["trunk"], t.flatten(1)) and torch.equal(feats["face"], f.flatten(1))
    assert not torch.equal(f, p)  # two heads with their own weights


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_registered_encoder_spec_rebuild(built, name):
    enc = built[name]
    assert enc.spec == {"name": name, "kwargs": {"width": WIDTHS[name]}}
    torch.manual_seed(123)  # a different init: only the loaded state_dict makes the outputs agree
    clone = build_encoder(enc.spec["name"], **enc.spec["kwargs"]).eval()
    clone.load_state_dict(enc.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = clone.forward_features(x), enc.forward_features(x)
    assert all(torch.equal(a[k], b[k]) for k in ("trunk", "face", "pose"))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_heads_are_stride_one_layer4_copies(built, name):
    import torchvision.models as tvm

    enc = built[name]
    layer4 = getattr(tvm, name)(weights=None).layer4
    for head in (enc.face_head, enc.pose_head):
        assert n_params(head) == n_params(layer4)
        assert [tuple(v.shape) for v in head.state_dict().values()] == \
               [tuple(v.shape) for v in layer4.state_dict().values()]
        assert all(m.stride == (1, 1) for m in head.modules() if isinstance(m, nn.Conv2d))
    assert any(m.stride == (2, 2) for m in layer4.modules() if isinstance(m, nn.Conv2d))
    assert not torch.equal(enc.face_head[0].conv1.weight, enc.pose_head[0].conv1.weight)  # own init
    assert not hasattr(enc, "fc") and not hasattr(enc, "avgpool")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_trunk_matches_torchvision(built, name):
    # Reference: torchvision's own network, given our trunk weights, run through its layers 1-3.
    import torchvision.models as tvm

    enc = built[name]
    ref = getattr(tvm, name)(weights=None).eval()
    ref.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith(("face_head", "pose_head"))},
                        strict=False)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        h = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        want = ref.layer3(ref.layer2(ref.layer1(h)))
        got = enc.forward_trunk(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_width_must_be_64(name):
    with pytest.raises(ConfigError, match=r"model\.width.*fixed base width 64.*got 16"):
        build_encoder(name, width=16)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_encoder(name, width=64).forward_trunk(torch.rand(1, 1, 32, 32))
