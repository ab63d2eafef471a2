"""The helpers the trainer's split left in one place each, against hand-written expectations:
the stream's shard reading (pclbench.align.shards.open_shard), the checkpoint writer through
pclbench.core.io.atomic_file, the run folder's temporary-name pattern, the resume config diff, the
refusal of an unfinished checkpoint.pt, and the one-way import between checkpoint.py and official.py."""
from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pclbench.core.io import atomic_file
from pclbench.models import build_encoder
from pclbench.pretrain.checkpoint import DiskFullError, load_checkpoint, save_checkpoint
from pclbench.pretrain.resume import ConfigCheck, StatePaths, comparable_config, config_diff, find_resume_point
from pclbench.pretrain.run_folder import TMP_NAME
from pclbench.pretrain.stream import VideoShard

from test_checkpoint import make_state

PRETRAIN_SRC = Path(__file__).resolve().parents[1] / "src" / "pclbench" / "pretrain"


def _shard(d: Path, rows=(2, 0, 1), landmarks=True) -> Path:
    d.mkdir(parents=True)
    images = np.arange(3 * 3 * 4 * 4, dtype=np.uint8).reshape(3, 3, 4, 4)
    np.save(d / "images.npy", images)
    if landmarks:
        np.save(d / "landmarks.npy", np.zeros((3, 68, 2), np.float32))
    pd.DataFrame({"subject": ["a", "a", "b"], "clip": [0, 1, 0], "row": list(rows)}).to_csv(d / "manifest.csv",
                                                                                           index=False)
    return d


def test_stream_reads_the_shard_through_open_shard(tmp_path):
    vs = VideoShard(_shard(tmp_path / "ok"))
    assert isinstance(vs.images, np.memmap) and not vs.images.flags.writeable  # memory-mapped, read-only
    assert vs.images.dtype == np.uint8 and vs.images.shape == (3, 3, 4, 4)
    # manifest rows (2, 0, 1) for videos (a,0), (a,1), (b,0): grouped by video in (subject, clip) order
    assert vs.rows.tolist() == [2, 0, 1] and vs.n_videos == 3 and vs.n_subjects == 2
    assert torch.equal(vs.gather(np.array([1, 0])), torch.from_numpy(np.load(tmp_path / "ok" / "images.npy")[[1, 0]]))
    with pytest.raises(FileNotFoundError, match="missing landmarks.npy"):  # a shard is three files
        VideoShard(_shard(tmp_path / "no_lm", landmarks=False))
    with pytest.raises(ValueError, match=r"manifest.csv: column row must hold 0..2 once each"):
        VideoShard(_shard(tmp_path / "dup", rows=(0, 0, 1)))


def test_save_checkpoint_rotates_and_leaves_no_temporary(tmp_path, monkeypatch):
    enc = build_encoder("facecycle", width=4)
    path, prev = tmp_path / "state" / "last.pt", tmp_path / "state" / "prev.pt"
    save_checkpoint(path, make_state(enc, epoch=1), previous=prev)
    save_checkpoint(path, make_state(enc, epoch=2), previous=prev)
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt", "prev.pt"]

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match="disk full"):
        save_checkpoint(path, make_state(enc, epoch=3), previous=prev)
    monkeypatch.undo()
    # nothing rotated, nothing left behind
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(prev)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt", "prev.pt"]


def test_run_folder_tmp_pattern_matches_atomic_file_temporaries(tmp_path):
    seen = []
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "last.pt") as tmp:
            seen.append(tmp.name)
            raise RuntimeError("stop")
    assert TMP_NAME.match(seen[0])
    for name in (".last.pt.tmp-node7-12345-a1b2c3", ".metrics.csv.tmp-host.example-7-q"):
        assert TMP_NAME.match(name), name
    for name in ("notes.tmp", "last.pt", ".lock", "attempts.log", ".last.pt.tmp"):
        assert not TMP_NAME.match(name), name


def test_config_diff_and_runtime_keys():
    a = {"pcl": {"t": 0.1, "k": 3}, "pretrain": {"lr": 1e-3, "device": "cpu", "log_every": 1}}
    b = {"pcl": {"t": 0.2, "k": 3, "new": True}, "pretrain": {"lr": 1e-3, "device": "cuda", "log_every": 9}}
    assert comparable_config(b, ("pcl",)) == {"pcl": b["pcl"], "pretrain": {"lr": 1e-3}}
    assert config_diff(comparable_config(a, ("pcl",)), comparable_config(b, ("pcl",))) == [
        "pcl.new: '<absent>' -> True", "pcl.t: 0.1 -> 0.2"]


def test_an_unfinished_checkpoint_pt_is_refused(tmp_path):
    """pclbench writes checkpoint.pt only when a run finishes; an unfinished one is not resumed."""
    enc = build_encoder("facecycle", width=4)
    state = make_state(enc, finished=False, epoch=1)
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    check = ConfigCheck("random", ("model",), state["config"])
    with pytest.raises(ValueError, match="checkpoint.pt holds an unfinished run"):
        find_resume_point(StatePaths(tmp_path), check)
    save_checkpoint(tmp_path / "checkpoint.pt", make_state(enc, finished=True, epoch=1))
    assert find_resume_point(StatePaths(tmp_path), check).finished["epoch"] == 1


def _imports(py: Path) -> set[str]:
    tree = ast.parse(py.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_checkpoint_and_official_import_one_way():
    assert "pclbench.pretrain.official" in _imports(PRETRAIN_SRC / "checkpoint.py")
    assert not {m for m in _imports(PRETRAIN_SRC / "official.py") if m.startswith("pclbench.pretrain")}
