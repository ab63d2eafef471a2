"""The authors' CPU data path, rebuilt as benchmark code (method doc 3.1-3.4, 2.7, 2.10).

The released PCL code augments every image on the CPU with a PIL pipeline inside torch DataLoader
workers (three loaders: PfeDB, ExpDB, PoseConDB, each with ``num_workers = num_threads``, 3.4).
pclbench computes the same views on the training device for whole batches (src/pclbench/pretrain/views.py).
``benchmarks/train_step.py`` times one PCL iteration fed by each path; this module is the reference
path. It is NOT used by the pipeline.

Per image, as in the authors' loaders:

- PfeDB (3.1): ``Resize((S, S)) + ToTensor`` of the frame and of its horizontal flip.
- ExpDB (3.2): :class:`DistanceCrop` on the full-resolution frame, then each of the two patches
  through :func:`photometric_transform`.
- PoseConDB (3.3): 2 independent passes of :func:`photometric_transform` over the full frame and
  ``K`` (100) independent passes over its flip.

:func:`photometric_transform` is ``Resize((S, S))``, ``RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2),
p=0.8)``, ``RandomGrayscale(0.2)``, ``RandomApply(GaussianBlur(int(0.1 S)), p=0.8)``,
``RandomApply(Sobel, p=0.6)``, ``ToTensor`` (3.2, 3.4), with torchvision's v1 PIL transforms and
this module's :class:`GaussianBlur` and :class:`Sobel`, which, like the authors', convert PIL ->
tensor -> PIL per image. The parameters come from the ``views`` config section (:class:`ViewConfig`).

One difference, stated in the benchmark's JSON: the frames come from the same uint8 memmap shard as
pclbench's path (no JPEG decode). The authors read a JPEG file per image, so this reference is a
LOWER bound on their data cost.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from pclbench.pretrain.views import ViewConfig, patch_half_size

# The authors' Sobel grayscale weights (3.4); they sum to 219.859 / 256, not 1.
_SOBEL_GRAY = (65.738 / 256.0, 129.057 / 256.0, 25.064 / 256.0)


class DistanceCrop:
    """Two non-overlapping patches from two different quadrants of a PIL image (method doc 3.2).

    Half-size ``b = floor(ratio / 2 * H)`` (likewise W), so each patch is ``2b`` px (0.4 H at ratio
    0.4). Two of the four quadrants are picked without replacement; in each, the patch position is
    uniform among those that keep it inside the quadrant. Random numbers: Python's ``random``
    (re-seeded per DataLoader worker by torch).
    """

    def __init__(self, ratio: float):
        if not 0 < ratio <= 0.5:
            raise ValueError(f"DistanceCrop: ratio must be in (0, 0.5], got {ratio!r}")
        self.ratio = ratio

    def __call__(self, img: Image.Image) -> tuple[Image.Image, Image.Image]:
        w, h = img.size
        bh, bw = patch_half_size(self.ratio, h), patch_half_size(self.ratio, w)
        hh, hw = h // 2, w // 2
        if bh < 1 or bw < 1 or 2 * bh > hh or 2 * bw > hw:
            raise ValueError(f"DistanceCrop: ratio {self.ratio} gives {2 * bh}x{2 * bw} patches for a "
                             f"{h}x{w} image; a patch must be >= 2 px and fit inside a quadrant")
        patches = []
        for q in random.sample(range(4), 2):
            qy, qx = divmod(q, 2)
            y_lo, y_hi = (0, hh) if qy == 0 else (hh, h)  # quadrant rows [y_lo, y_hi)
            x_lo, x_hi = (0, hw) if qx == 0 else (hw, w)
            y0 = random.randint(y_lo, y_hi - 2 * bh)  # inclusive: the patch ends at y0 + 2bh <= y_hi
            x0 = random.randint(x_lo, x_hi - 2 * bw)
            patches.append(img.crop((x0, y0, x0 + 2 * bw, y0 + 2 * bh)))
        return patches[0], patches[1]


class GaussianBlur:
    """The authors' blur (3.4): PIL -> tensor, separable depthwise convs after reflection padding
    with ``2 (kernel_size // 2) + 1`` taps, ``sigma ~ U(low, high)`` from numpy, -> PIL."""

    def __init__(self, kernel_size: int, sigma: tuple[float, float] | list[float]):
        self.radius = int(kernel_size) // 2
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.radius <= 0:
            return img
        r = self.radius
        sigma = np.random.uniform(*self.sigma)
        taps = torch.arange(-r, r + 1, dtype=torch.float32)  # (2r+1,)
        k = torch.exp(-taps ** 2 / (2 * sigma ** 2))
        k = k / k.sum()
        x = TF.to_tensor(img)[None]  # (1, 3, H, W) in [0, 1]
        c = x.shape[1]
        x = F.pad(x, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, 2 * r + 1), groups=c)  # horizontal
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, 2 * r + 1, 1), groups=c)  # vertical
        return TF.to_pil_image(x[0].clamp(0, 1))


class Sobel:
    """The authors' Sobel edge map (3.4): PIL -> tensor, grayscale ``(65.738 R + 129.057 G +
    25.064 B) / 256``, central differences ``[-1, 0, 1]`` (zero padding), magnitude
    ``sqrt(gx^2 + gy^2 + 1e-6)`` on 3 channels, -> PIL.

    ``overflow='faithful'``: ``to_pil_image``'s ``(m * 255).byte()`` wraps magnitudes above 1 (bug 18);
    ``'fixed'`` clamps them to 1 first.
    """

    def __init__(self, overflow: str):
        if overflow not in ("faithful", "fixed"):
            raise ValueError(f"Sobel: overflow must be 'faithful' or 'fixed', got {overflow!r}")
        self.overflow = overflow
        self.kx = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
        self.ky = self.kx.view(1, 1, 3, 1)

    def __call__(self, img: Image.Image) -> Image.Image:
        x = TF.to_tensor(img)  # (3, H, W)
        gray = (_SOBEL_GRAY[0] * x[0] + _SOBEL_GRAY[1] * x[1] + _SOBEL_GRAY[2] * x[2])[None, None]  # (1, 1, H, W)
        gx = F.conv2d(gray, self.kx, padding=(0, 1))
        gy = F.conv2d(gray, self.ky, padding=(1, 0))
        mag = torch.sqrt(gx * gx + gy * gy + 1e-6)[0].expand(3, -1, -1)  # (3, H, W), up to ~1.21
        if self.overflow == "fixed":
            mag = mag.clamp(0, 1)
        else:
            # what ToPILImage does to a float tensor, written out: the float -> uint8 cast wraps
            mag = torch.remainder(torch.floor(mag * 255.0), 256.0).to(torch.uint8)
        return TF.to_pil_image(mag)


def photometric_transform(cfg: ViewConfig, size: int) -> T.Compose:
    """The per-image pipeline of 3.2 / 3.4 as torchvision v1 PIL transforms, ending in ToTensor."""
    return T.Compose([
        T.Resize((size, size)),
        T.RandomApply([T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        T.RandomGrayscale(p=cfg.grayscale_p),
        T.RandomApply([GaussianBlur(int(cfg.blur_kernel_fraction * size), cfg.blur_sigma)], p=cfg.blur_p),
        T.RandomApply([Sobel(cfg.sobel_overflow)], p=cfg.sobel_p),
        T.ToTensor(),
    ])


# --------------------------------------------------------------------------------------------------
# datasets over a uint8 shard (images.npy (N, 3, S, S)), one per authors' loader


class _ShardDataset(Dataset):
    """Item ``i`` is image row ``rows[i]`` of ``images.npy`` as a PIL RGB image. The memmap is opened
    lazily in each process, so a worker never receives the array through pickling."""

    def __init__(self, images_npy: Path, rows: np.ndarray):
        self.path = Path(images_npy)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> Image.Image:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        arr = self._images[self.rows[i]]  # (3, S, S) uint8
        return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))  # (S, S, 3) -> RGB


class PfeDataset(_ShardDataset):
    """PfeDB (3.1): ``(normal, flip)``, each ``(3, S, S)``: Resize + ToTensor, no other augmentation."""

    def __init__(self, images_npy: Path, rows: np.ndarray, size: int):
        super().__init__(images_npy, rows)
        self.tf = T.Compose([T.Resize((size, size)), T.ToTensor()])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = self.image(i)
        return self.tf(img), self.tf(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


class ExpDataset(_ShardDataset):
    """ExpDB (3.2): DistanceCrop on the full frame, then the photometric pipeline per patch."""

    def __init__(self, images_npy: Path, rows: np.ndarray, cfg: ViewConfig, size: int):
        super().__init__(images_npy, rows)
        self.crop = DistanceCrop(cfg.crop_ratio)
        self.tf = photometric_transform(cfg, size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        p1, p2 = self.crop(self.image(i))
        return self.tf(p1), self.tf(p2)  # (3, S, S) each


class PoseDataset(_ShardDataset):
    """PoseConDB (3.3): 2 passes of the pipeline over the full frame -> ``pos (2, 3, S, S)``, and
    ``n_neg`` passes over its horizontal flip -> ``neg (n_neg, 3, S, S)``."""

    def __init__(self, images_npy: Path, rows: np.ndarray, cfg: ViewConfig, size: int, n_neg: int):
        super().__init__(images_npy, rows)
        if n_neg < 1:
            raise ValueError(f"PoseDataset: n_neg must be >= 1, got {n_neg!r}")
        self.n_neg = n_neg
        self.tf = photometric_transform(cfg, size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = self.image(i)
        flip = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pos = torch.stack([self.tf(img) for _ in range(2)])
        neg = torch.stack([self.tf(flip) for _ in range(self.n_neg)])
        return pos, neg


class ReferenceLoader:
    """The three authors' loaders advanced in lock-step (2.7): each iteration yields

    ``{"pfe": (normal, flip) (B, 3, S, S) each, "face": (v1, v2) (B, 3, S, S) each,
    "pose": (pos (P, 2, 3, S, S), neg (P, K, 3, S, S))}`` on the CPU.

    ``index[name]`` is ``(n_iter, batch)`` shard rows (the same frames pclbench's path reads).
    Each loader has ``workers`` worker processes (the authors: num_workers = num_threads, 3.4),
    ``pin_memory`` for a CUDA target, and torch's default ``prefetch_factor`` (2 batches per worker).
    """

    def __init__(self, images_npy: Path, index: Mapping[str, Tensor], cfg: ViewConfig, size: int, n_neg: int,
                 workers: int, pin_memory: bool, seed: int = 0, prefetch_factor: int = 2):
        missing = {"pfe", "face", "pose"} - set(index)
        if missing:
            raise ValueError(f"ReferenceLoader: index lacks stream(s) {sorted(missing)}")
        if workers < 0:
            raise ValueError(f"ReferenceLoader: workers must be >= 0, got {workers!r}")
        self.workers, self.prefetch_factor = workers, prefetch_factor
        self.n_iter = int(index["pfe"].shape[0])
        if any(int(v.shape[0]) != self.n_iter for v in index.values()):
            raise ValueError("ReferenceLoader: every stream needs the same number of iterations")
        datasets = {
            "pfe": PfeDataset(images_npy, index["pfe"].reshape(-1).numpy(), size),
            "face": ExpDataset(images_npy, index["face"].reshape(-1).numpy(), cfg, size),
            "pose": PoseDataset(images_npy, index["pose"].reshape(-1).numpy(), cfg, size, n_neg),
        }
        self.loaders = {}
        for j, (name, ds) in enumerate(datasets.items()):
            extra = {"prefetch_factor": prefetch_factor} if workers > 0 else {}
            # The rows are already a random draw (pclbench's sampler), so the loaders read in order.
            self.loaders[name] = DataLoader(
                ds, batch_size=int(index[name].shape[1]), shuffle=False, drop_last=True, num_workers=workers,
                pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed + j), **extra)

    def batches_in_flight(self) -> int:
        """Most batches one loader prepares ahead of the consumer (prefetch_factor x workers)."""
        return self.prefetch_factor * self.workers if self.workers > 0 else 0

    def __len__(self) -> int:
        return self.n_iter

    def __iter__(self) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
        its = {name: iter(loader) for name, loader in self.loaders.items()}
        for _ in range(self.n_iter):
            yield {name: tuple(next(it)) for name, it in its.items()}


__all__ = ["DistanceCrop", "GaussianBlur", "Sobel", "photometric_transform", "PfeDataset", "ExpDataset",
           "PoseDataset", "ReferenceLoader"]
