"""PCL's encoder: the FaceCycle-style trunk with a face-aware head and a pose-related head.

docs/method.md §1.1 (layer table), 1.2 (channel-wise self-attention), 1.3 (residual block),
1.6 (initialisation) and 1.7 (parameter counts). The paper calls the two head outputs F_f
(face-aware, code name "exp") and F_p (pose-related, code name "pose").

``width`` scales every stage: conv1/layer1 have ``w`` channels, layer2 and the heads ``2w``, and the
middle conv of layer3_1 ``4w``. ``width=64`` is the paper's network (64 px input -> 128 x 4 x 4 maps,
flat 2048; trunk 1,879,424 parameters, each head 295,168).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pclbench.core.registry import Registry

ENCODERS: Registry = Registry("encoder")

_SLOPE = 0.1  # every activation of the encoder is LeakyReLU(0.1) (1.1)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # Every conv of the encoder has a bias: there is no normalisation layer to absorb it (1.1).
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=True)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(_SLOPE)


class SelfAttention(nn.Module):
    """Channel-wise self-attention of FaceCycle (docs/method.md §1.2).

    With N = H*W, theta, phi, g = three 1x1 convs C -> C:
    ``A = phi (B,C,N) @ softmax_N(theta)^T (B,N,C)`` is a C x C affinity; the attention is
    ``A @ softmax_C(g) (B,C,N)``; the block returns ``LeakyReLU_0.1(x + attention)``. There is no
    learned gamma, and the affinity is between channels, not the usual N x N non-local one.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.g = nn.Conv2d(channels, channels, kernel_size=1, bias=True)
        self.theta = nn.Conv2d(channels, channels, kernel_size=1, bias=True)
        self.phi = nn.Conv2d(channels, channels, kernel_size=1, bias=True)
        self.act = _lrelu()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        theta = torch.softmax(self.theta(x).reshape(b, c, h * w), dim=2)  # (B, C, N), over positions
        phi = self.phi(x).reshape(b, c, h * w)  # (B, C, N)
        g = torch.softmax(self.g(x).reshape(b, c, h * w), dim=1)  # (B, C, N), over channels
        affinity = torch.bmm(phi, theta.transpose(1, 2))  # (B, C, C)
        att = torch.bmm(affinity, g).reshape(b, c, h, w)  # (B, C, H, W)
        return self.act(x + att)


class ResidualBlock(nn.Module):
    """BasicBlockNormal: conv3x3 -> LReLU -> conv3x3, + identity, LReLU; no BN (docs/method.md §1.3)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.conv2 = _conv3x3(channels, channels)
        self.act = _lrelu()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))


def _head(channels: int) -> nn.Sequential:
    # layer3_2_exp / layer3_2_pose: two conv3x3 at the trunk's resolution (1.1).
    return nn.Sequential(_conv3x3(channels, channels), _lrelu(), _conv3x3(channels, channels), _lrelu())


# Largest encoder a checkpoint spec (or model.width) may ask for: 4 GiB of fp32 parameters (about
# 1.07e9 parameters; FaceCycle width 1337). The paper's width 64 needs 9.4 MiB. A crafted checkpoint
# spec is untrusted: its width is checked in closed form before any module is allocated.
MAX_ENCODER_PARAM_BYTES = 4 * 2**30


def facecycle_param_count(width: int) -> int:
    """Parameters of ``FaceCycleEncoder(width)`` in closed form, from the layer shapes of 1.1-1.3.

    Per stage (w = width; a k x k conv c_in -> c_out with bias has k*k*c_in*c_out + c_out):
    conv1 7x7 3->w + 3x3 w->w: 9w^2 + 149w; layer1 two 3x3 w->w + attention (three 1x1 w->w):
    21w^2 + 5w; layer2_1 3x3 w->2w, attention 2w, 3x3 2w->2w: 66w^2 + 10w; two residual blocks of two
    3x3 2w->2w: 144w^2 + 8w; layer2_2: 72w^2 + 4w; layer3_1 3x3 2w->4w, 3x3 4w->2w: 144w^2 + 6w;
    two heads of two 3x3 2w->2w: 144w^2 + 8w. Total 600w^2 + 190w (width 64: 2,469,760 = the trunk's
    1,879,424 + 2 x 295,168 of docs/method.md §1.7; tests/test_hostile_config.py checks it against
    the built module at several widths).
    """
    return 600 * width * width + 190 * width


def check_encoder_size(name: str, width: int, where: str = "encoder spec") -> None:
    """ValueError naming the width when the encoder's fp32 parameters would exceed
    :data:`MAX_ENCODER_PARAM_BYTES`; computed from the spec alone, nothing is allocated."""
    if name != "facecycle" or isinstance(width, bool) or not isinstance(width, int):
        return  # the ResNets have a fixed width (checked by their constructor before building)
    n_bytes = 4 * facecycle_param_count(width)
    if n_bytes > MAX_ENCODER_PARAM_BYTES:
        raise ValueError(f"{where}: encoder {name!r} with width {width} would hold "
                         f"{facecycle_param_count(width):,} parameters ({n_bytes / 2**30:,.1f} GiB in fp32), above "
                         f"the limit of {MAX_ENCODER_PARAM_BYTES / 2**30:g} GiB "
                         f"(pclbench.models.encoders.MAX_ENCODER_PARAM_BYTES); refused before building it")


def _down_size(size: int, n: int) -> int:
    """Spatial size after ``n`` stride-2 convs with 'same' padding (7x7 p3 and 3x3 p1 alike)."""
    for _ in range(n):
        size = (size - 1) // 2 + 1
    return size


class TrunkHeadsEncoder(nn.Module):
    """The encoder interface PCL needs (docs/method.md §1.1): a shared trunk, then a face-aware and a
    pose-related head on the trunk's map. Subclasses define ``forward_trunk``, ``face_head`` and
    ``pose_head``; the forward variants below are shared (timm-style ``forward_features``)."""

    face_head: nn.Module
    pose_head: nn.Module

    def forward_trunk(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_heads(self, trunk_map: Tensor) -> tuple[Tensor, Tensor]:
        """Face-aware and pose-related head maps, each ``(B, C, S/16, S/16)``."""
        return self.face_head(trunk_map), self.pose_head(trunk_map)

    def forward_face(self, trunk_map: Tensor) -> Tensor:
        """Face-aware head only (the face contrastive step does not need the pose head)."""
        return self.face_head(trunk_map)

    def forward_pose(self, trunk_map: Tensor) -> Tensor:
        """Pose-related head only (the pose contrastive step does not need the face head)."""
        return self.pose_head(trunk_map)

    def forward_maps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, 3, S, S)`` in [0, 1] -> (trunk map, face map, pose map), each ``(B, C, S/16, S/16)``."""
        t = self.forward_trunk(x)
        f, p = self.forward_heads(t)
        return t, f, p

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Like the authors' encoder: (trunk, face, pose), each flattened to ``(B, C * (S/16)^2)``."""
        t, f, p = self.forward_maps(x)
        return t.flatten(1), f.flatten(1), p.flatten(1)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Flattened features for extraction: ``{"trunk": (B, Dt), "face": (B, D), "pose": (B, D)}``."""
        t, f, p = self.forward(x)
        return {"trunk": t, "face": f, "pose": p}


@ENCODERS.register("facecycle")
class FaceCycleEncoder(TrunkHeadsEncoder):
    """FaceCycleBackbone: shared trunk + face-aware head + pose-related head (docs/method.md §1.1).

    Input ``x (B, 3, S, S)`` float in [0, 1], no mean/std normalisation (section 3). The trunk ends
    with layer3_1 at S/16 resolution (4 stride-2 stages); the heads keep that resolution.
    """

    def __init__(self, width: int):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"FaceCycleEncoder: width must be a positive integer, got {width!r}")
        check_encoder_size("facecycle", width, "FaceCycleEncoder")
        w = width
        self.width = w
        self.out_channels = 2 * w
        self.spec = {"name": "facecycle", "kwargs": {"width": w}}
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=True), _lrelu(),
            _conv3x3(w, w), _lrelu(),
        )
        self.layer1 = nn.Sequential(_conv3x3(w, w), _lrelu(), SelfAttention(w), _conv3x3(w, w), _lrelu())
        self.layer2_1 = nn.Sequential(
            _conv3x3(w, 2 * w, stride=2), _lrelu(), SelfAttention(2 * w), _conv3x3(2 * w, 2 * w), _lrelu(),
        )
        self.resblock1 = ResidualBlock(2 * w)
        self.resblock2 = ResidualBlock(2 * w)
        self.layer2_2 = nn.Sequential(
            _conv3x3(2 * w, 2 * w, stride=2), _lrelu(), _conv3x3(2 * w, 2 * w), _lrelu(),
        )
        # The authors' comment says 256 output channels; the layer actually outputs 2w = 128 (1.1).
        self.layer3_1 = nn.Sequential(
            _conv3x3(2 * w, 4 * w, stride=2), _lrelu(), _conv3x3(4 * w, 2 * w), _lrelu(),
        )
        self.face_head = _head(2 * w)  # layer3_2_exp
        self.pose_head = _head(2 * w)  # layer3_2_pose
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He fan-out normal init of every conv (attention 1x1 convs included), zero bias (1.6)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):  # none in this encoder; kept to mirror 1.6
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):  # likewise none
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_trunk(self, x: Tensor) -> Tensor:
        """Shared trunk (conv1 .. layer3_1): ``(B, 3, S, S) -> (B, 2w, S/16, S/16)``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FaceCycleEncoder: expected input (B, 3, H, W), got {tuple(x.shape)}")
        x = self.conv1(x)  # (B, w, S/2, S/2)
        x = self.layer1(x)  # (B, w, S/2, S/2)
        x = self.layer2_1(x)  # (B, 2w, S/4, S/4)
        x = self.resblock2(self.resblock1(x))  # (B, 2w, S/4, S/4)
        x = self.layer2_2(x)  # (B, 2w, S/8, S/8)
        return self.layer3_1(x)  # (B, 2w, S/16, S/16)

    def feature_dims(self, img_size: int) -> dict[str, int]:
        """Flattened feature sizes for square ``img_size`` inputs (64 -> 2048 at width 64; 1.1)."""
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"FaceCycleEncoder.feature_dims: img_size must be a positive int, got {img_size!r}")
        s = _down_size(img_size, 4)
        d = self.out_channels * s * s
        return {"trunk": d, "face": d, "pose": d}


# --- torchvision ResNets with PCL's two heads ------------------------------------------------------

RESNET_WIDTH = 64  # torchvision's fixed base width (conv1 channels); model.width must equal it


def _stride_one(block: nn.Module) -> nn.Module:
    """Set every stride-2 conv of a torchvision ``layer4`` to stride 1 (downsample 1x1 included).

    The paper's heads keep the trunk's resolution (docs/method.md §1.1: layer3_2_exp/pose are stride 1),
    so the ResNet heads do too. 3x3 convs have padding 1 and 1x1 convs padding 0, so a stride-1
    conv keeps the spatial size exactly; the parameter shapes do not change.
    """
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)
    return block


class ResNetEncoder(TrunkHeadsEncoder):
    """A torchvision ResNet split like PCL's encoder: shared trunk + face head + pose head.

    - trunk = conv1, bn1, relu, maxpool, layer1, layer2, layer3 (stride 16: 64 px -> 4 x 4, like the
      FaceCycle trunk's 4 stride-2 stages, docs/method.md §1.1);
    - face head and pose head = two independently initialised copies of the ResNet's ``layer4``
      with its stride-2 convs set to stride 1 (:func:`_stride_one`), so both heads keep the trunk's
      S/16 resolution like layer3_2_exp / layer3_2_pose. The classifier (avgpool, fc) is dropped:
      features are the flattened maps, as for FaceCycle (so a projection MLP sees C * (S/16)^2 inputs).

    torchvision's own init (``weights=None``: nothing is downloaded), BatchNorm kept (these are the
    standard ResNets, not normalisation-free like FaceCycle). Input ``(B, 3, S, S)`` in [0, 1] without
    mean/std normalisation, the same input contract as :class:`FaceCycleEncoder`.
    ``width`` is accepted because ``model.width`` is passed to every encoder; it must be
    :data:`RESNET_WIDTH` (64), the ResNets' fixed base width.
    """

    arch = ""  # torchvision builder name, set by the registered subclasses
    trunk_channels = 0  # layer3 output channels
    head_channels = 0  # layer4 output channels

    def __init__(self, width: int):
        super().__init__()
        from pclbench.core.config import ConfigError

        if isinstance(width, bool) or not isinstance(width, int) or width != RESNET_WIDTH:
            raise ConfigError(f"model.width: encoder {self.arch!r} has torchvision's fixed base width "
                              f"{RESNET_WIDTH}; set model.width: {RESNET_WIDTH} (got {width!r})")
        import torchvision.models as tvm

        build = getattr(tvm, self.arch)
        net = build(weights=None)
        self.width = width
        self.spec = {"name": self.arch, "kwargs": {"width": width}}
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.face_head = _stride_one(net.layer4)
        # A second network gives the pose head its own random init (a deepcopy would start both heads
        # identical, and the orthogonality loss of 2.3 would start from a degenerate point).
        self.pose_head = _stride_one(build(weights=None).layer4)

    def forward_trunk(self, x: Tensor) -> Tensor:
        """Shared trunk (stem .. layer3): ``(B, 3, S, S) -> (B, C3, S/16, S/16)``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: expected input (B, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, S/4, S/4)
        x = self.layer1(x)  # (B, C1, S/4, S/4)
        x = self.layer2(x)  # (B, C2, S/8, S/8)
        return self.layer3(x)  # (B, C3, S/16, S/16)

    def feature_dims(self, img_size: int) -> dict[str, int]:
        """Flattened sizes: 4 stride-2 stages (7x7 conv, 3x3 max-pool, layer2, layer3; all 'same' padded)."""
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"{type(self).__name__}.feature_dims: img_size must be a positive int, "
                             f"got {img_size!r}")
        s = _down_size(img_size, 4)
        return {"trunk": self.trunk_channels * s * s, "face": self.head_channels * s * s,
                "pose": self.head_channels * s * s}


@ENCODERS.register("resnet18")
class ResNet18Encoder(ResNetEncoder):
    """torchvision resnet18 (BasicBlocks): trunk 256 x S/16 x S/16, heads 512 x S/16 x S/16."""

    arch = "resnet18"
    trunk_channels = 256
    head_channels = 512


@ENCODERS.register("resnet50")
class ResNet50Encoder(ResNetEncoder):
    """torchvision resnet50 (Bottlenecks, v1.5): trunk 1024 x S/16 x S/16, heads 2048 x S/16 x S/16."""

    arch = "resnet50"
    trunk_channels = 1024
    head_channels = 2048
