"""PCL's augmented views, computed on the device for a whole batch (docs/method.md §2.1, 3.2-3.4).

The authors run a PIL pipeline per image in DataLoader workers. Here every transform is a batched
tensor operation with per-sample random parameters drawn from one explicit ``torch.Generator`` on
the images' device: no PIL, no Python loop over samples, no host-device sync.

Differences from the PIL pipeline, on purpose:

- Values stay float in [0, 1] between the transforms; PIL rounds to uint8 after each one.
- ColorJitter applies brightness, contrast, saturation, hue in this FIXED order; torchvision draws a
  random order per image. A per-sample random order would cost 4x the jitter compute on the GPU.
- Resizing is bilinear with antialiasing (``F.interpolate(antialias=True)``), the same filter family
  as PIL's bilinear resize.
- Sobel's border: the central differences use zero padding, as the released Sobel does (docs/method.md §3.4).
- Sobel overflow (bug 18): magnitudes reach ~1.21; ``sobel_overflow: fixed`` clamps them to [0, 1],
  ``faithful`` emulates ``ToPILImage`` (``(m * 255).byte()``, which wraps modulo 256).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from pclbench.core.config import ConfigError, from_dict, setting

# ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
# The authors' Sobel grayscale (section 3.4); the weights sum to 219.859 / 256, not 1.
_SOBEL_GRAY = (65.738 / 256.0, 129.057 / 256.0, 25.064 / 256.0)


@dataclass
class ViewConfig:
    """On-device PCL augmentations (docs/method.md section 3.2-3.4). Paper values in the descriptions."""

    crop_ratio: float = setting("DistanceCrop patch side / image side, at most 0.5 so a patch fits in a quadrant. "
                                "Paper 0.4.", exclusiveMinimum=0, maximum=0.5)
    jitter_p: float = setting("P(ColorJitter). Paper 0.8.", minimum=0, maximum=1)
    brightness: float = setting("Brightness jitter strength b: factor ~ U[max(0, 1 - b), 1 + b]. Paper 0.8.",
                                minimum=0)
    contrast: float = setting("Contrast jitter strength. Paper 0.8.", minimum=0)
    saturation: float = setting("Saturation jitter strength. Paper 0.8.", minimum=0)
    hue: float = setting("Max hue shift h: shift ~ U[-h, h], in turns of the colour wheel. Paper 0.2.",
                         minimum=0, maximum=0.5)
    grayscale_p: float = setting("P(greyscale). Paper 0.2.", minimum=0, maximum=1)
    blur_p: float = setting("P(Gaussian blur). Paper 0.8.", minimum=0, maximum=1)
    # radius 0 (no blur) when fraction * S < 2, e.g. views under 20 px at 0.1
    blur_kernel_fraction: float = setting("kernel_size = int(fraction * side), radius = kernel_size // 2. "
                                          "Paper 0.1.", minimum=0, exclusiveMaximum=1)
    blur_sigma: list[float] = setting("[low, high] of the uniform blur sigma, low <= high. Paper [0.1, 2.0].",
                                      items={"exclusiveMinimum": 0}, minItems=2, maxItems=2)
    sobel_p: float = setting("P(Sobel edge map). Paper 0.6.", minimum=0, maximum=1)
    sobel_overflow: Literal["faithful", "fixed"] = setting(
        "Sobel magnitude > 1 (bug 18): faithful = uint8 wrap, fixed = clamp.")

    def __post_init__(self) -> None:
        """The check the schema cannot say (between two values): blur_sigma low <= high."""
        if not self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"views.blur_sigma: must be [low, high] with 0 < low <= high, got {self.blur_sigma!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "ViewConfig":
        return from_dict(cls, section, "views")


# ----------------------------------------------------------------------------------------------
# helpers


def _float32(fn: Callable) -> Callable:
    """Run ``fn(x, ...)`` with autocast off on x's device: views are float32 even inside an AMP region."""

    @functools.wraps(fn)
    def wrapper(x: Tensor, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return wrapper


def check_images(x: Tensor, generator: torch.Generator | None, who: str) -> Tensor:
    """``x (B, 3, H, W)`` as float in [0, 1] (uint8 is divided by 255); checks shape and generator device."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{who}: expected images (B, 3, H, W), got {tuple(x.shape)}")
    if generator is not None and torch.device(generator.device).type != x.device.type:
        raise ValueError(f"{who}: generator is on {generator.device} but the images are on {x.device}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{who}: expected float images in [0, 1] or uint8, got {x.dtype}")
    return x


def _rand(n: int, generator: torch.Generator | None, device: torch.device | str, low: float = 0.0,
          high: float = 1.0) -> Tensor:
    """``(n,)`` float32 uniform draws in [low, high) on ``device``."""
    return low + (high - low) * torch.rand(n, generator=generator, device=device, dtype=torch.float32)


def _bcast(v: Tensor) -> Tensor:
    return v[:, None, None, None]  # (N,) -> (N, 1, 1, 1)


def _weighted_gray(x: Tensor, weights: tuple[float, float, float]) -> Tensor:
    r, g, b = x.unbind(1)
    return (weights[0] * r + weights[1] * g + weights[2] * b)[:, None]  # (N, 1, H, W)


def resize(x: Tensor, out_size: int) -> Tensor:
    """Bilinear, antialiased resize of ``(N, 3, H, W)`` to ``(N, 3, out_size, out_size)``."""
    if x.shape[-2:] == (out_size, out_size):
        return x
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)


# ----------------------------------------------------------------------------------------------
# DistanceCrop (3.2)


def patch_half_size(ratio: float, size: int) -> int:
    """DistanceCrop half-size ``floor(ratio / 2 * size)`` (0.4 at 64 px -> 12, a 24 px patch); the
    1e-9 keeps float error from flooring an exact product down (0.3 / 2 * 20 = 2.9999...)."""
    return math.floor(ratio / 2 * size + 1e-9)


def sample_distance_boxes(batch: int, height: int, width: int, ratio: float, generator: torch.Generator | None,
                          device: torch.device | str) -> Tensor:
    """Boxes ``(B, 2, 4)`` int64 ``[x0, y0, x1, y1]`` (ends exclusive) of the two DistanceCrop patches.

    Half-size ``b = floor(ratio/2 * H)`` (likewise W), so a patch is ``2b`` pixels. Two of the four
    quadrants (rows ``[0, H//2)`` / ``[H//2, H)``, columns likewise) are picked without replacement,
    and in each a top-left corner is drawn uniformly among those that keep the patch inside it.
    """
    bh, bw = patch_half_size(ratio, height), patch_half_size(ratio, width)
    hh, hw = height // 2, width // 2
    if bh < 1 or bw < 1 or 2 * bh > hh or 2 * bw > hw:
        raise ValueError(f"distance_crop: ratio {ratio} gives {2 * bh}x{2 * bw} patches for a {height}x{width} "
                         "image; a patch must be >= 2 px and fit inside a quadrant")
    quad = torch.rand((batch, 4), generator=generator, device=device).argsort(dim=1)[:, :2]  # (B, 2) distinct
    qy, qx = quad // 2, quad % 2  # (B, 2)
    ry = torch.rand((batch, 2), generator=generator, device=device)
    rx = torch.rand((batch, 2), generator=generator, device=device)
    # quadrant extent along each axis: [0, hh) or [hh, H)
    ny = torch.where(qy == 0, hh, height - hh) - 2 * bh + 1  # (B, 2) number of valid top rows
    nx = torch.where(qx == 0, hw, width - hw) - 2 * bw + 1
    y0 = qy * hh + torch.minimum((ry * ny).long(), ny - 1)
    x0 = qx * hw + torch.minimum((rx * nx).long(), nx - 1)
    return torch.stack([x0, y0, x0 + 2 * bw, y0 + 2 * bh], dim=2)  # (B, 2, 4)


def crop_fixed(x: Tensor, x0: Tensor, y0: Tensor, ph: int, pw: int, src: Tensor | None = None) -> Tensor:
    """Cut one ``ph x pw`` window per row of ``x0, y0 (M,)`` (top-left corners) out of image ``src[m]``
    of ``x (B, C, H, W)`` (``src`` defaults to ``arange(B)``) -> ``(M, C, ph, pw)``, by index gather."""
    if src is None:
        src = torch.arange(x.shape[0], device=x.device)
    rows = y0[:, None] + torch.arange(ph, device=x.device)  # (M, ph)
    cols = x0[:, None] + torch.arange(pw, device=x.device)  # (M, pw)
    return x[src[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (M, C, ph, pw)


@_float32
def distance_crop(x: Tensor, ratio: float, out_size: int, generator: torch.Generator | None,
                  return_boxes: bool = False):
    """Two non-overlapping local patches per image, from two different quadrants (docs/method.md §3.2).

    ``x (B, 3, H, W)`` -> ``(v1, v2)`` each ``(B, 3, out_size, out_size)``; with ``return_boxes``
    also the ``(B, 2, 4)`` boxes of :func:`sample_distance_boxes` (same draws, same order).
    """
    x = check_images(x, generator, "distance_crop")
    b, _, h, w = x.shape
    boxes = sample_distance_boxes(b, h, w, ratio, generator, x.device)  # (B, 2, 4)
    v1, v2 = crop_boxes(x, boxes, ratio, out_size)
    return (v1, v2, boxes) if return_boxes else (v1, v2)


def crop_boxes(x: Tensor, boxes: Tensor, ratio: float, out_size: int) -> tuple[Tensor, Tensor]:
    """The two patches of :func:`sample_distance_boxes` ``boxes (B, 2, 4)`` cut out of ``x (B, 3, H, W)``
    (float) and resized to ``out_size``: ``(v1, v2)``, each ``(B, 3, out_size, out_size)``."""
    b, _, h, w = x.shape
    ph, pw = 2 * patch_half_size(ratio, h), 2 * patch_half_size(ratio, w)
    flat = boxes.reshape(2 * b, 4)  # rows (sample, patch)
    src = torch.arange(b, device=x.device).repeat_interleave(2)  # (2B,)
    patches = crop_fixed(x, flat[:, 0], flat[:, 1], ph, pw, src)  # (2B, 3, ph, pw)
    views = resize(patches, out_size).reshape(b, 2, 3, out_size, out_size)
    return views[:, 0], views[:, 1]


# ----------------------------------------------------------------------------------------------
# photometric pipeline (3.2, 3.4)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _bcast(factor)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = _weighted_gray(x, _LUMA).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    f = _bcast(factor)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    f = _bcast(factor)
    return (f * x + (1 - f) * _weighted_gray(x, _LUMA)).clamp(0, 1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] -> HSV with all channels in [0, 1] (hue in turns)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    grey = delta == 0
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    d = torch.where(grey, torch.ones_like(delta), delta)
    h = torch.where(maxc == r, (g - b) / d,
                    torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = torch.where(grey, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


# For sector i = floor(6h), (R, G, B) = columns picked from (v, q, p, t) by this table.
_HSV_TABLE = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))


@functools.lru_cache(maxsize=None)
def _hsv_table(device: torch.device) -> Tensor:
    # built once per device: a list -> CUDA tensor is a host-to-device copy on every call otherwise
    return torch.tensor(_HSV_TABLE, device=device)  # (6, 3)


def hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    i = torch.remainder(sector.long(), 6)  # (N, H, W)
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    vals = torch.stack([v, q, p, t], dim=0)  # (4, N, H, W)
    # under torch.compile the table is a graph constant (the cache is for eager mode only)
    table = torch.tensor(_HSV_TABLE, device=x.device) if torch.compiler.is_compiling() else _hsv_table(x.device)
    sel = table[i].permute(3, 0, 1, 2)  # (3, N, H, W)
    return torch.gather(vals, 0, sel).permute(1, 0, 2, 3)  # (N, 3, H, W)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift[:, None, None], 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def gaussian_blur(x: Tensor, radius: int, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-image ``sigma (N,)``, reflect padding, ``2 radius + 1`` taps."""
    if radius <= 0:
        return x
    n, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # (2r+1,)
    k = torch.exp(-taps[None, :] ** 2 / (2 * sigma[:, None].to(x.dtype) ** 2))  # (N, 2r+1)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, 2r+1)
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect").reshape(1, n * c, h + 2 * radius, w + 2 * radius)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)  # horizontal
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)  # vertical
    # a convex combination of values in [0, 1] can leave it by a rounding error only
    return y.reshape(n, c, h, w).clamp(0, 1)


def sobel(x: Tensor, overflow: str) -> Tensor:
    """The authors' Sobel edge map (3.4): central-difference gradient magnitude of their grayscale.

    ``sqrt(gx^2 + gy^2 + 1e-6)`` copied to 3 channels. Values reach ~1.21; ``overflow='fixed'``
    clamps to [0, 1], ``'faithful'`` wraps like ``ToPILImage``'s ``(m * 255).byte()``.
    """
    gray = _weighted_gray(x, _SOBEL_GRAY)  # (N, 1, H, W)
    kx = torch.arange(-1, 2, device=x.device, dtype=x.dtype)  # [-1, 0, 1], made on the device
    gx = F.conv2d(gray, kx.view(1, 1, 1, 3), padding=(0, 1))
    gy = F.conv2d(gray, kx.view(1, 1, 3, 1), padding=(1, 0))
    mag = torch.sqrt(gx * gx + gy * gy + 1e-6)
    if overflow == "fixed":
        mag = mag.clamp(0, 1)
    elif overflow == "faithful":
        mag = torch.remainder(torch.floor(mag * 255.0), 256.0) / 255.0
    else:
        raise ValueError(f"sobel: overflow must be 'faithful' or 'fixed', got {overflow!r}")
    return mag.expand(-1, 3, -1, -1)


@_float32
def photometric(x: Tensor, cfg: ViewConfig, generator: torch.Generator | None) -> Tensor:
    """RandomApply(ColorJitter, p) -> RandomGrayscale(p) -> RandomApply(GaussianBlur, p) ->
    RandomApply(Sobel, p), with independent parameters per image (docs/method.md §3.2, 3.4).

    ``x (N, 3, S, S)`` in [0, 1] -> same shape, in [0, 1]. All random numbers are drawn up front,
    in a fixed order, so one generator state gives one set of views.
    """
    x = check_images(x, generator, "photometric")
    return apply_photometric(x, draw_photometric(x.shape[0], cfg, generator, x.device), cfg)


def draw_photometric(n: int, cfg: ViewConfig, generator: torch.Generator | None,
                     device: torch.device | str) -> dict[str, Tensor]:
    """The random parameters of :func:`photometric` for ``n`` images, each ``(n,)``, drawn in a fixed
    order. Separate from :func:`apply_photometric` so the application has no random draw inside
    (it can then be compiled together with the network)."""
    p = {"apply_jitter": _rand(n, generator, device) < cfg.jitter_p,
         "brightness": _rand(n, generator, device, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
         "contrast": _rand(n, generator, device, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
         "saturation": _rand(n, generator, device, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
         "hue": _rand(n, generator, device, -cfg.hue, cfg.hue)}
    p["apply_gray"] = _rand(n, generator, device) < cfg.grayscale_p
    p["apply_blur"] = _rand(n, generator, device) < cfg.blur_p
    p["sigma"] = _rand(n, generator, device, cfg.blur_sigma[0], cfg.blur_sigma[1])
    p["apply_sobel"] = _rand(n, generator, device) < cfg.sobel_p
    return p


@_float32
def apply_photometric(x: Tensor, p: Mapping[str, Tensor], cfg: ViewConfig) -> Tensor:
    """:func:`photometric` of float images ``x (N, 3, S, S)`` in [0, 1] with the parameters ``p`` of
    :func:`draw_photometric`."""
    _, _, h, _ = x.shape
    apply_jitter, fb, fc, fs, fh = p["apply_jitter"], p["brightness"], p["contrast"], p["saturation"], p["hue"]
    apply_gray, apply_blur, sigma, apply_sobel = p["apply_gray"], p["apply_blur"], p["sigma"], p["apply_sobel"]
    if cfg.jitter_p > 0:
        j = adjust_brightness(x, fb)
        j = adjust_contrast(j, fc)
        j = adjust_saturation(j, fs)
        if cfg.hue > 0:
            j = adjust_hue(j, fh)
        x = torch.where(_bcast(apply_jitter), j, x)
    if cfg.grayscale_p > 0:
        x = torch.where(_bcast(apply_gray), _weighted_gray(x, _LUMA).expand(-1, 3, -1, -1), x)
    radius = int(cfg.blur_kernel_fraction * h) // 2
    if cfg.blur_p > 0 and radius > 0:
        x = torch.where(_bcast(apply_blur), gaussian_blur(x, radius, sigma), x)
    if cfg.sobel_p > 0:
        x = torch.where(_bcast(apply_sobel), sobel(x, cfg.sobel_overflow), x)
    return x


# ----------------------------------------------------------------------------------------------
# the views of the three PCL steps


def face_views(x: Tensor, cfg: ViewConfig, out_size: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Face-aware positive pair (3.2): DistanceCrop, then the photometric pipeline on each patch.

    ``x (B, 3, H, W)`` -> two ``(B, 3, out_size, out_size)`` views.
    """
    x = check_images(x, generator, "face_views")
    return apply_face_views(x, draw_face_views(x.shape, cfg, generator, x.device), cfg, out_size)


def draw_face_views(shape: tuple[int, ...], cfg: ViewConfig, generator: torch.Generator | None,
                    device: torch.device | str) -> dict[str, Any]:
    """Every random draw of :func:`face_views` for images of ``shape (B, 3, H, W)``, in its order:
    the DistanceCrop boxes, then the photometric parameters of the 2B patches."""
    b, _, h, w = shape
    boxes = sample_distance_boxes(b, h, w, cfg.crop_ratio, generator, device)  # (B, 2, 4)
    return {"boxes": boxes, "photometric": draw_photometric(2 * b, cfg, generator, device)}


@_float32
def apply_face_views(x: Tensor, d: Mapping[str, Any], cfg: ViewConfig, out_size: int) -> tuple[Tensor, Tensor]:
    """:func:`face_views` of float images ``x`` with the draws ``d`` of :func:`draw_face_views`."""
    v1, v2 = crop_boxes(x, d["boxes"], cfg.crop_ratio, out_size)
    b = v1.shape[0]
    v = apply_photometric(torch.cat([v1, v2], dim=0), d["photometric"], cfg)  # (2B, 3, S, S): one pass
    return v[:b], v[b:]


@_float32
def pose_views(x: Tensor, n_neg: int, cfg: ViewConfig, out_size: int,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Pose contrastive batch (3.3): no crop, no flip for the positives; flipped image for negatives.

    ``x (B, 3, H, W)`` -> ``pos (B, 2, 3, S, S)``: two photometric views of the resized full image,
    ``neg (B, n_neg, 3, S, S)``: ``n_neg`` photometric views of its horizontal flip.
    """
    x = check_images(x, generator, "pose_views")
    if isinstance(n_neg, bool) or not isinstance(n_neg, int) or n_neg < 1:
        raise ValueError(f"pose_views: n_neg must be a positive integer, got {n_neg!r}")
    return apply_pose_views(x, n_neg, draw_pose_views(x.shape[0], n_neg, cfg, generator, x.device), cfg, out_size)


def draw_pose_views(b: int, n_neg: int, cfg: ViewConfig, generator: torch.Generator | None,
                    device: torch.device | str) -> dict[str, Tensor]:
    """Every random draw of :func:`pose_views` for ``b`` images: photometric parameters of the
    ``b (2 + n_neg)`` views, image-major (image s: its 2 positives, then its n_neg negatives)."""
    return draw_photometric(b * (2 + n_neg), cfg, generator, device)


@_float32
def apply_pose_views(x: Tensor, n_neg: int, d: Mapping[str, Tensor], cfg: ViewConfig,
                     out_size: int) -> tuple[Tensor, Tensor]:
    """:func:`pose_views` of float images ``x`` with the draws ``d`` of :func:`draw_pose_views`."""
    b = x.shape[0]
    xr = resize(x, out_size)  # (B, 3, S, S); resize and hflip commute
    s = xr.shape[-1]
    pos = xr[:, None].expand(b, 2, 3, s, s)
    neg = xr.flip(-1)[:, None].expand(b, n_neg, 3, s, s)
    allv = torch.cat([pos, neg], dim=1).reshape(b * (2 + n_neg), 3, s, s)
    allv = apply_photometric(allv, d, cfg).reshape(b, 2 + n_neg, 3, s, s)
    return allv[:, :2], allv[:, 2:]


def add_noise(x: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """``x + std * N(0, 1)`` i.i.d. per pixel, no clamping (docs/method.md §2.1: PDD input noise, std 0.4)."""
    if not std >= 0:
        raise ValueError(f"add_noise: std must be >= 0, got {std!r}")
    if generator is not None and torch.device(generator.device).type != x.device.type:
        raise ValueError(f"add_noise: generator is on {generator.device} but the images are on {x.device}")
    return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
