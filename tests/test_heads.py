"""ProjectionMLP and Decoder (docs/method.md §1.4, 1.5, 1.7)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pclbench.models import (Decoder, ModelConfig, ProjectionMLP, build_decoder, build_encoder_from_config,
                             build_projection)

torch.set_num_threads(2)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_parameter_counts():
    # docs/method.md §1.7: each projection MLP 5,246,464; decoder 4,300,035.
    assert n_params(ProjectionMLP(2048, 2048, 512)) == 5_246_464
    assert n_params(Decoder(2048, 512, [256, 256, 256, 256, 128])) == 4_300_035


def test_projection_structure_and_output():
    torch.manual_seed(0)
    mlp = ProjectionMLP(12, 10, 6)
    layers = list(mlp.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    x = torch.randn(32, 12)
    y = mlp(x)  # train mode: BN normalises each output dim over the batch
    assert y.shape == (32, 6)
    torch.testing.assert_close(y.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    # reference: the same layers by hand
    lin1, lin2 = layers[0], layers[2]
    h = torch.relu(x @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    ref = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="hidden_dim"):
        ProjectionMLP(12, 0, 6)


def test_decoder_output_range_and_shape():
    torch.manual_seed(1)
    dec = Decoder(32, 16, [8, 8, 8, 8, 4])
    code = torch.randn(5, 32) * 10
    out = dec(code)
    assert out.shape == (5, 3, 64, 64)
    assert out.min() >= -1 and out.max() <= 1
    assert out.abs().max() > 0.01  # not a constant image


def test_decoder_paper_shape():
    torch.manual_seed(2)
    dec = Decoder(2048, 512, [256, 256, 256, 256, 128]).eval()
    with torch.no_grad():
        out = dec(torch.randn(2, 2048))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1


def test_decoder_normalises_its_input():
    # The caller passes e + p; the decoder applies N(.) itself (1.5), so scaling the code is a no-op.
    torch.manual_seed(3)
    dec = Decoder(16, 8, [4, 4, 4, 4, 4]).eval()
    code = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(dec(code), dec(7.5 * code))
        # and equals feeding the fc an explicitly normalised code
        z = dec.fc(code / code.norm(dim=1, keepdim=True))[:, :, None, None]
        for i, conv in enumerate(dec.convs):
            z = conv(nn.functional.interpolate(torch.relu(z), scale_factor=2, mode="bilinear"))
            if i < 5:
                z = dec.bns[i](z)
        torch.testing.assert_close(dec(code), torch.tanh(z))


def test_decoder_stages_layout():
    dec = Decoder(20, 12, [10, 9, 8, 7, 6])
    assert [(c.in_channels, c.out_channels) for c in dec.convs] == [(12, 10), (10, 9), (9, 8), (8, 7), (7, 6), (6, 3)]
    assert [b.num_features for b in dec.bns] == [10, 9, 8, 7, 6]
    with pytest.raises(ValueError, match="channels"):
        Decoder(20, 12, [10, 9, 8])


def test_builders_from_config():
    cfg = ModelConfig.from_config({"encoder": "facecycle", "width": 4,
                                   "projection": {"hidden_dim": 16, "out_dim": 8},
                                   "decoder": {"fc_dim": 8, "channels": [4, 4, 4, 4, 4]}})
    enc = build_encoder_from_config(cfg)
    d = enc.feature_dims(64)["face"]
    assert d == 2 * 4 * 16
    proj, dec = build_projection(cfg, d), build_decoder(cfg, d)
    with torch.no_grad():
        _, f, p = enc(torch.rand(4, 3, 64, 64))
        assert proj(f).shape == (4, 8)
        assert dec(f + p).shape == (4, 3, 64, 64)


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 5, 2, 3), (3, 4, 7, 5), (2, 8, 16, 16)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample2x_equals_torch_bilinear(shape, channels_last):
    """The decoder's shift-and-add upsampling is nn.Upsample(x2, bilinear, align_corners=False),
    values and gradients, including the 1 px input of the first stage and channels_last inputs."""
    from pclbench.models.heads import upsample2x_bilinear

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ours = upsample2x_bilinear(x)
    ref = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
    if channels_last and shape[2] * shape[3] > 1:
        assert ours.is_contiguous(memory_format=torch.channels_last)
