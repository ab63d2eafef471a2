"""The pretraining data stream: an aligned shard sampled one frame per video, batched per iteration.

Sampling (docs/method.md §3.1, 3.9, A.3; authors' data_process/pfedb.py ``get_vox_image``): the authors'
VoxCeleb loader reads one directory per line of its data list, lists that directory's
subdirectories, picks one at random, then picks one frame file in it at random, every epoch anew.
``pretrain.epoch_unit`` says what one pass (one epoch) goes over:

* ``clips``: one random frame per (subject, clip) group of the shard's manifest (a VoxCeleb clip is
  one utterance), so an epoch has ``floor(n_clips / batch_size)`` iterations.
* ``identities``: the authors' unit. Their list has one line per IDENTITY directory (docs/method.md §2.7,
  3.9: ``vox_train_list_remove_id.txt`` under ``processed_align/<identity>/<video>/<frames>``), so
  each epoch draws one frame per identity: a clip of that identity uniformly at random, then a frame
  of that clip uniformly at random (the two ``random.choice`` calls; the list itself is not released,
  so whether their second level was the YouTube video or the utterance is unknown: here it is the
  manifest's clip). An epoch has ``floor(n_identities / batch_size)`` iterations (main.py's
  DataLoaders use drop_last=True, docs/method.md §2.7): 4 for VoxCeleb1 dev (1,211 identities) and 23 for
  VoxCeleb2 dev (5,994) at batch 256, against 580 and 4,265 with ``clips`` (148,642 and 1,092,009
  utterances). The per-epoch cosine schedule and DWA's per-epoch loss means follow the unit.

Each epoch every batch stream (PCL: pfe, face, pose) takes its own shuffled draw
(:meth:`VideoShard.epoch_batches`), and a stream with smaller batches (pose) uses only the first
iterations' worth of its draw, as the authors' ``itertools.cycle`` does. :class:`BatchLoader` reads
each iteration's images from the memory-mapped shard (:func:`pclbench.align.shards.open_shard`) in a
background thread.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

from pclbench.align.shards import IMAGES, MANIFEST, open_shard

EPOCH_UNITS = ("clips", "identities")


class VideoShard:
    """An aligned shard (``images.npy`` uint8 (N, 3, S, S) + ``manifest.csv``) indexed by video.

    ``unit`` (``pretrain.epoch_unit``): what one :meth:`draw` passes over, ``clips`` (one frame per
    (subject, clip) video) or ``identities`` (one frame per subject: a random clip of it, then a
    random frame of that clip; module docstring)."""

    def __init__(self, data_dir: Path, unit: str = "clips"):
        if unit not in EPOCH_UNITS:
            raise ValueError(f"epoch unit {unit!r} is not one of {list(EPOCH_UNITS)}")
        self.unit = unit
        self.dir = Path(data_dir)
        shard = open_shard(self.dir)  # memory-mapped uint8 (N, 3, S, S) images, checked
        self.images = shard.images
        man, man_path = shard.manifest, self.dir / MANIFEST
        missing = [c for c in ("subject", "clip", "row") if c not in man.columns]
        if missing:
            raise ValueError(f"{man_path}: missing column(s) {', '.join(missing)}")
        n = self.images.shape[0]
        rows = man["row"].to_numpy()
        if len(man) != n or not np.array_equal(np.sort(rows), np.arange(n)):
            raise ValueError(f"{man_path}: column row must hold 0..{n - 1} once each ({IMAGES} has "
                             f"{n} images, the manifest {len(man)} rows)")
        # Videos: (subject, clip) groups; stills (clip -1) form one group per subject.
        video = man.groupby(["subject", "clip"], sort=True).ngroup().to_numpy()
        order = np.argsort(video, kind="stable")
        self.rows = torch.from_numpy(rows[order].astype(np.int64))  # (N,) image rows grouped by video
        counts = np.bincount(video)
        self.counts = torch.from_numpy(counts.astype(np.int64))  # (V,)
        self.starts = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
        self.n_images = n
        self.n_videos = len(counts)
        self.size = int(self.images.shape[2])
        # Subjects (epoch_unit identities): the videos are numbered in (subject, clip) order, so each
        # subject's videos are consecutive: subject p owns videos subject_starts[p] + [0, subject_clips[p]).
        subject = man.groupby("subject", sort=True).ngroup().to_numpy()
        first_row_of_video = order[np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)]
        video_subject = subject[first_row_of_video]  # (V,) non-decreasing
        clips = np.bincount(video_subject)
        self.subject_clips = torch.from_numpy(clips.astype(np.int64))  # (P,)
        self.subject_starts = torch.from_numpy(np.concatenate([[0], np.cumsum(clips)[:-1]]).astype(np.int64))
        self.n_subjects = len(clips)

    @property
    def n_units(self) -> int:
        """Frames per :meth:`draw`: one per video (``clips``) or one per subject (``identities``)."""
        return self.n_subjects if self.unit == "identities" else self.n_videos

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """One random frame per unit, in random order: ``(n_units,)`` image rows."""
        if self.unit == "identities":
            return self._draw_identities(generator)
        perm = torch.randperm(self.n_videos, generator=generator)  # (V,)
        u = torch.rand(self.n_videos, generator=generator)  # (V,)
        counts = self.counts[perm]
        offset = torch.minimum((u * counts).long(), counts - 1)
        return self.rows[self.starts[perm] + offset]

    def _draw_identities(self, generator: torch.Generator) -> torch.Tensor:
        """One frame per subject in random subject order: a uniformly random clip of the subject,
        then a uniformly random frame of that clip (pfedb.py's two ``random.choice``): ``(P,)``."""
        perm = torch.randperm(self.n_subjects, generator=generator)  # (P,)
        u_clip = torch.rand(self.n_subjects, generator=generator)  # (P,)
        u_frame = torch.rand(self.n_subjects, generator=generator)  # (P,)
        n_clips = self.subject_clips[perm]
        video = self.subject_starts[perm] + torch.minimum((u_clip * n_clips).long(), n_clips - 1)  # (P,)
        counts = self.counts[video]
        offset = torch.minimum((u_frame * counts).long(), counts - 1)
        return self.rows[self.starts[video] + offset]

    def epoch_batches(self, n_iter: int, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``(n_iter, batch)`` image rows from as many consecutive draws as needed."""
        need = n_iter * batch
        draws, have = [], 0
        while have < need:
            draws.append(self.draw(generator))
            have += self.n_units
        return torch.cat(draws)[:need].reshape(n_iter, batch)

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 ``(len(rows), 3, S, S)``; reads the memory-mapped file in ascending row order."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out)


class BatchLoader:
    """Yields each iteration's batches on the device, reading the next one in a background thread."""

    def __init__(self, shard: VideoShard, index: Mapping[str, torch.Tensor], device: torch.device,
                 start: int = 0):
        # `start`: first iteration to yield (a mid-epoch resume skips the iterations already done).
        self.shard, self.index, self.device, self.start = shard, dict(index), device, start
        self.names = list(self.index)
        self.n_iter = next(iter(self.index.values())).shape[0] if self.index else 0

    def _read(self, it: int) -> torch.Tensor:
        rows = np.concatenate([self.index[k][it].numpy() for k in self.names])
        x = self.shard.gather(rows)
        return x.pin_memory() if self.device.type == "cuda" else x

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        sizes = [self.index[k].shape[1] for k in self.names]
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(self._read, self.start) if self.start < self.n_iter else None
            for it in range(self.start, self.n_iter):
                x = fut.result()
                if it + 1 < self.n_iter:
                    fut = pool.submit(self._read, it + 1)
                x = x.to(self.device, non_blocking=True).float().div_(255.0)  # (sum sizes, 3, S, S) in [0, 1]
                yield dict(zip(self.names, torch.split(x, sizes)))
