"""PCL's projection MLPs (exp_fc / pose_fc) and reconstruction decoder (Generator).

docs/method.md §1.4 (projection), 1.5 (decoder), 1.6 (these modules keep PyTorch's default init).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_pos_int(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def _upsample2x_axis(x: Tensor, dim: int) -> Tensor:
    """Bilinear x2 along one axis, align_corners=False: out[2i] = 3/4 x[i] + 1/4 x[i-1],
    out[2i+1] = 3/4 x[i] + 1/4 x[i+1], indices clamped to the edge (PyTorch clamps the source
    coordinate (o + 0.5) / 2 - 0.5 at 0 and uses the last row past the end)."""
    n = x.shape[dim]
    prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)  # x[i-1], clamped
    nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)  # x[i+1], clamped
    even = torch.lerp(x, prev, 0.25)  # 3/4 x[i] + 1/4 x[i-1]
    odd = torch.lerp(x, nxt, 0.25)  # 3/4 x[i] + 1/4 x[i+1]
    return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)


def upsample2x_bilinear(x: Tensor) -> Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`` for ``x (B, C, H, W)``,
    written as shifts and weighted sums.

    Same numbers (to float rounding), different speed: CUDA's ``upsample_bilinear2d`` backward
    scatters with atomic adds, which are slow in bf16 and dominated the PDD step (four decoder calls
    x six up-stages, docs/method.md §1.5); here the backward is slicing and adds only. A channels_last
    input is processed in its physical (B, H, W, C) order and returned channels_last.
    """
    if x.dim() != 4:
        raise ValueError(f"upsample2x_bilinear: expected (B, C, H, W), got {tuple(x.shape)}")
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = x.permute(0, 2, 3, 1)  # (B, H, W, C), a view of the channels_last storage
        y = _upsample2x_axis(_upsample2x_axis(y, 1), 2)  # (B, 2H, 2W, C), contiguous
        return y.permute(0, 3, 1, 2)  # (B, C, 2H, 2W), channels_last strides
    return _upsample2x_axis(_upsample2x_axis(x, 2), 3)  # (B, C, 2H, 2W)


class ProjectionMLP(nn.Module):
    """exp_fc / pose_fc: Linear(in, hidden), ReLU, Linear(hidden, out), BatchNorm1d(out) (1.4).

    Paper: 2048 -> 2048 -> 512 (5,246,464 parameters). Its output feeds the InfoNCE losses only.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            _check_pos_int("ProjectionMLP", name, v)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim),
            nn.BatchNorm1d(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # (B, out_dim)


class Decoder(nn.Module):
    """The reconstruction Generator of the PDD step (docs/method.md §1.5).

    Input: ``code (B, code_dim)``, the SUM of a face-head vector and a pose-head vector (the caller
    sums, this module L2-normalises, so ``Decoder(e + p)`` is the paper's D(N(e + p))).
    Then Linear(code_dim, fc_dim) -> (B, fc_dim, 1, 1) and six up-stages, each
    [ReLU, bilinear x2, conv3x3, BN]; the last stage is [ReLU, bilinear x2, conv3x3 -> 3, Tanh].
    Output ``(B, 3, 64, 64)`` in [-1, 1]. The first ReLU acts on the fc output, as in the authors' code.

    ``channels`` are the output channels of stages 1..5 (paper: 256, 256, 256, 256, 128; fc_dim 512;
    4,300,035 parameters); stage 6 always outputs 3 channels.
    """

    n_stages = 6
    out_size = 2 ** n_stages  # 64: the decoder's output resolution, independent of the input size

    def __init__(self, code_dim: int, fc_dim: int, channels: Sequence[int]):
        super().__init__()
        _check_pos_int("Decoder", "code_dim", code_dim)
        _check_pos_int("Decoder", "fc_dim", fc_dim)
        channels = list(channels)
        if len(channels) != self.n_stages - 1:
            raise ValueError(f"Decoder: channels must list the {self.n_stages - 1} channel counts of "
                             f"stages 1..{self.n_stages - 1}, got {channels!r}")
        for i, c in enumerate(channels):
            _check_pos_int("Decoder", f"channels[{i}]", c)
        self.fc = nn.Linear(code_dim, fc_dim)
        # One ReLU object is reused at every stage in the authors' code (1.5); ReLU has no state,
        # so a single module is equivalent.
        self.relu = nn.ReLU()
        convs, bns = [], []
        c_in = fc_dim
        for c in channels:
            convs.append(nn.Conv2d(c_in, c, kernel_size=3, stride=1, padding=1))
            bns.append(nn.BatchNorm2d(c))
            c_in = c
        convs.append(nn.Conv2d(c_in, 3, kernel_size=3, stride=1, padding=1))
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(bns)
        self.tanh = nn.Tanh()

    def forward(self, code: Tensor) -> Tensor:
        code = F.normalize(code.flatten(1), dim=1)  # (B, code_dim): N(e + p)
        x = self.fc(code)[:, :, None, None]  # (B, fc_dim, 1, 1)
        for i, conv in enumerate(self.convs):
            # nn.Upsample(scale_factor=2, mode="bilinear") with its default align_corners=False
            x = upsample2x_bilinear(self.relu(x))
            x = conv(x)
            if i < len(self.bns):
                x = self.bns[i](x)
        return self.tanh(x)  # (B, 3, 64, 64) in [-1, 1]
