"""Standard two-view augmentation of the instance-discrimination baselines (SimCLR, MoCo v2, BYOL).

SimCLR (Chen et al. 2020, https://arxiv.org/abs/2002.05709, appendix A) / MoCo v2
(https://arxiv.org/abs/2003.04297): RandomResizedCrop -> RandomHorizontalFlip -> ColorJitter /
Grayscale / GaussianBlur. The photometric part is PCL's own pipeline (:func:`pclbench.pretrain.views.photometric`,
section ``views``, docs/method.md §3.2, 3.4) so the baselines see the same colour statistics as PCL;
``augment.sobel_p`` replaces ``views.sobel_p`` (the Sobel view is PCL's addition, not the baselines').

Batched on the device, per-sample parameters from one generator, no Python loop over samples.
Differences from torchvision's ``RandomResizedCrop``, on purpose:

- One draw per sample instead of up to 10 rejection tries: the box side that would leave the image
  is clamped to the image side (so for extreme draws the area / aspect ratio leave their ranges).
- The crop is resampled with ``grid_sample`` (bilinear, no antialiasing): at 64 px shards and
  scale >= 0.2 the crop is upsampled or barely downsampled, where antialiasing does nothing.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from pclbench.core.config import ConfigError, from_dict, setting
from pclbench.pretrain.views import ViewConfig, _float32, check_images, photometric


@dataclass
class AugmentConfig:
    """Two-view augmentation of the baselines: crop + flip; photometric settings come from `views`."""

    scale: list[float] = setting("[low, high] crop area / image area, low <= high. MoCo v2 [0.2, 1.0] "
                                 "(SimCLR 0.08).", items={"exclusiveMinimum": 0, "maximum": 1}, minItems=2, maxItems=2)
    ratio: list[float] = setting("[low, high] crop aspect ratio w / h, low <= high. Standard [0.75, 1.3333].",
                                 items={"exclusiveMinimum": 0}, minItems=2, maxItems=2)
    flip_p: float = setting("Horizontal flip probability. Standard 0.5.", minimum=0, maximum=1)
    sobel_p: float = setting("Replaces views.sobel_p for the baselines (0 = no Sobel view).", minimum=0, maximum=1)

    def __post_init__(self) -> None:
        """The checks the schema cannot say (between two values): low <= high of scale and ratio."""
        if not self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augment.scale: must be [low, high] with 0 < low <= high <= 1, got {self.scale!r}")
        if not self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augment.ratio: must be [low, high] with 0 < low <= high, got {self.ratio!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "AugmentConfig":
        return from_dict(cls, section, "augment")


def sample_crop_boxes(n: int, height: int, width: int, scale: list[float], ratio: list[float],
                      generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """Boxes ``(n, 4)`` float ``[x0, y0, w, h]`` in pixels: area fraction ~ U[scale], log aspect
    ratio ~ U[log ratio] (torchvision's distributions), sides clamped to the image, top-left uniform."""
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator, device=device))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        n, generator=generator, device=device)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(1.0, width)  # (n,)
    h = torch.sqrt(area / r).clamp(1.0, height)
    x0 = (width - w) * torch.rand(n, generator=generator, device=device)
    y0 = (height - h) * torch.rand(n, generator=generator, device=device)
    return torch.stack([x0, y0, w, h], dim=1)


@_float32
def crop_resize(x: Tensor, boxes: Tensor, flip: Tensor, out_size: int) -> Tensor:
    """Resample box ``boxes[i] = [x0, y0, w, h]`` (pixel edges) of ``x[i]`` to ``out_size`` px,
    mirrored where ``flip[i]``: ``(N, 3, H, W) -> (N, 3, out_size, out_size)`` by one ``grid_sample``.

    With ``align_corners=False`` output pixel j samples source x = x0 + (j + 0.5) w / out_size (pixel
    edges), so a box of side out_size at integer offsets is exactly a slice of the image.
    """
    x = check_images(x, None, "crop_resize")
    n, _, hgt, wid = x.shape
    bx = boxes.to(x.dtype)
    x0, y0, w, h = bx.unbind(1)  # (N,) each
    sign = 1.0 - 2.0 * flip.to(x.dtype)  # -1 mirrors the sampling grid horizontally
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = sign * w / wid  # half-width of the box in normalised [-1, 1] units
    theta[:, 0, 2] = (2 * x0 + w) / wid - 1  # box centre
    theta[:, 1, 1] = h / hgt
    theta[:, 1, 2] = (2 * y0 + h) / hgt - 1
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@_float32
def random_resized_crop(x: Tensor, cfg: AugmentConfig, out_size: int, generator: torch.Generator | None) -> Tensor:
    """RandomResizedCrop + RandomHorizontalFlip with per-sample parameters: ``(N, 3, H, W)`` ->
    ``(N, 3, out_size, out_size)``."""
    x = check_images(x, generator, "random_resized_crop")
    n, _, h, w = x.shape
    boxes = sample_crop_boxes(n, h, w, cfg.scale, cfg.ratio, generator, x.device)
    flip = torch.rand(n, generator=generator, device=x.device) < cfg.flip_p
    return crop_resize(x, boxes, flip, out_size)


def two_views(x: Tensor, cfg: AugmentConfig, views: ViewConfig, out_size: int,
              generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Two independent augmentations of each image: ``(B, 3, H, W)`` -> two ``(B, 3, S, S)``."""
    b = x.shape[0]
    v = random_resized_crop(torch.cat([x, x], dim=0), cfg, out_size, generator)  # (2B, 3, S, S)
    v = photometric(v, dataclasses.replace(views, sobel_p=cfg.sobel_p), generator)
    return v[:b], v[b:]
