"""``pretrain.epoch_unit``: one epoch over clips (one frame per (subject, clip)) or over identities.

Reference facts: the authors' pretraining list has one line per identity directory and each item
picks a random subdirectory of it, then a random frame file in it (DreamMr/PCL
data_process/pfedb.py ``get_vox_image``: two ``random.choice`` over ``os.listdir``; docs/method.md §3.1,
3.9); main.py's loaders use batch 256 with drop_last=True, so an epoch is floor(n_lines / 256)
iterations (docs/method.md §2.7). VoxCeleb sizes (official counts, as tabulated in PaddleSpeech
examples/voxceleb/README.md): VoxCeleb1 dev 1,211 speakers / 148,642 utterances, VoxCeleb2 dev 5,994
speakers / 1,092,009 utterances.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import config, write_shard

from pclbench.cli import load_config
from pclbench.core.config import ConfigError
from pclbench.core.resources import REPO_ROOT
from pclbench.pretrain.stream import VideoShard
from pclbench.pretrain.trainer import PretrainConfig, train


def write_uneven_shard(d, clips_of_subject, size=4, seed=0):
    """Manifest in the stage-2 format (path, subject, clip, frame, row), rows in shuffled order;
    ``clips_of_subject[s]`` = the frame counts of subject s's clips."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = [(s, c, f) for s, clips in enumerate(clips_of_subject) for c, nf in enumerate(clips) for f in range(nf)]
    keys = [keys[i] for i in rng.permutation(len(keys))]
    np.save(d / "images.npy", rng.integers(0, 256, (len(keys), 3, size, size), dtype=np.uint8))
    np.save(d / "landmarks.npy", np.zeros((len(keys), 68, 2), dtype=np.float32))  # open_shard needs it
    pd.DataFrame([{"path": f"id{s}/v{c}/{f}.jpg", "subject": f"id{s:05d}", "clip": 100 * s + c, "frame": f, "row": i}
                  for i, (s, c, f) in enumerate(keys)]).to_csv(d / "manifest.csv", index=False)
    return d


def test_identities_draw_one_frame_per_subject(tmp_path):
    d = write_uneven_shard(tmp_path / "s", [[3, 1, 5], [2], [1, 1], [4, 6]])
    man = pd.read_csv(d / "manifest.csv").set_index("row")
    vs = VideoShard(d, "identities")
    assert (vs.n_subjects, vs.n_videos, vs.n_units) == (4, 8, 4)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        rows = vs.draw(g).numpy()
        assert len(rows) == 4
        assert sorted(man.loc[rows, "subject"]) == ["id00000", "id00001", "id00002", "id00003"]
    clips = VideoShard(d, "clips")
    assert clips.n_units == 8
    assert len(set(man.loc[clips.draw(g).numpy(), "clip"])) == 8


def test_identities_pick_the_clip_uniformly_then_the_frame(tmp_path):
    """Subject 0 has a 1-frame clip and a 9-frame clip: the clip is chosen first (each 1/2), not the
    frame (which would give the 1-frame clip 1/10); within the 9-frame clip every frame is equally likely."""
    d = write_uneven_shard(tmp_path / "s", [[1, 9], [2]])
    man = pd.read_csv(d / "manifest.csv").set_index("row")
    vs = VideoShard(d, "identities")
    g = torch.Generator().manual_seed(1)
    picks = [r for _ in range(4000) for r in vs.draw(g).numpy() if man.loc[r, "subject"] == "id00000"]
    clip = man.loc[picks, "clip"].to_numpy()
    assert abs((clip == 0).mean() - 0.5) < 0.03  # binomial sd 0.008
    frames = man.loc[picks, "frame"].to_numpy()[clip == 1]
    counts = np.bincount(frames, minlength=9)
    assert counts.min() > 0.7 * len(frames) / 9 and counts.max() < 1.3 * len(frames) / 9


@pytest.mark.parametrize("unit,n_lines,batch,expected", [
    ("identities", 1211, 256, 4),      # VoxCeleb1 dev
    ("identities", 5994, 256, 23),     # VoxCeleb2 dev
    ("identities", 1251, 256, 4),      # VoxCeleb1 dev + test
    ("clips", 148642, 256, 580),       # VoxCeleb1 dev utterances
])
def test_iterations_per_epoch_at_the_paper_batch(tmp_path, unit, n_lines, batch, expected):
    """floor(units / batch), drop_last: the README's iterations-per-epoch numbers."""
    if unit == "identities":
        d = write_uneven_shard(tmp_path / "s", [[1]] * n_lines, size=2)
    else:  # one subject per 100 clips of one frame
        d = write_uneven_shard(tmp_path / "s", [[1] * 100] * (n_lines // 100) + [[1] * (n_lines % 100)], size=2)
    vs = VideoShard(d, unit)
    assert vs.n_units == n_lines
    assert vs.n_units // batch == expected
    g = torch.Generator().manual_seed(0)
    assert vs.epoch_batches(expected, batch, g).shape == (expected, batch)


def test_training_runs_floor_identities_over_batch_iterations(tmp_path):
    """7 subjects x 2 clips, batch 3: identities -> 2 iterations per epoch, clips -> 4."""
    shard = write_shard(tmp_path / "shard", n_subjects=7, n_clips=2, n_frames=2)
    for unit, n_iter in (("identities", 2), ("clips", 4)):
        out = tmp_path / unit
        summary = train("pcl", shard, out, config(epochs=1, epoch_unit=unit))
        assert summary["iterations_per_epoch"] == n_iter and summary["iterations"] == n_iter
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == n_iter


def test_too_few_identities_for_a_batch_is_an_error(tmp_path):
    shard = write_shard(tmp_path / "shard", n_subjects=2, n_clips=3, n_frames=1)
    with pytest.raises(ValueError, match="identities"):
        train("pcl", shard, tmp_path / "out", config(epochs=1, epoch_unit="identities"))


def test_epoch_unit_is_validated():
    cfg = config()["pretrain"]
    with pytest.raises(ConfigError, match="epoch_unit"):
        PretrainConfig.from_config({**cfg, "epoch_unit": "frames"})
    with pytest.raises(ValueError, match="epoch unit"):
        VideoShard(REPO_ROOT, "utterances")  # checked before any file is read


def test_paper_yaml_uses_the_authors_unit():
    cfg = load_config([REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "paper.yaml"])
    assert PretrainConfig.from_config(cfg["pretrain"]).epoch_unit == "identities"
    default = load_config([REPO_ROOT / "config" / "config.yaml"])
    assert default["pretrain"]["epoch_unit"] == "clips"
