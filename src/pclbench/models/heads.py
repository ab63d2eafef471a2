"""PCL's projection MLPs (exp_fc / pose_fc) and reconstruction decoder (Generator).

Method doc 1.4 (projection), 1.5 (decoder), 1.6 (these modules keep PyTorch's default init).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _check_pos_int(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


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
    """The reconstruction Generator of the PDD step (method doc 1.5).

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
            # align_corners=False is the default of nn.Upsample(scale_factor=2, mode="bilinear").
            x = F.interpolate(self.relu(x), scale_factor=2, mode="bilinear", align_corners=False)
            x = conv(x)
            if i < len(self.bns):
                x = self.bns[i](x)
        return self.tanh(x)  # (B, 3, 64, 64) in [-1, 1]
