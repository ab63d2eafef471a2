"""``manual.alternatives``: a dataset with two official release layouts (AffectNet's csv release and its
newer ``train_set/``/``val_set/`` npy release, as listed in config/config.yaml) is acquired from
whichever layout is completely in place, and the instructions name both."""
from __future__ import annotations

import dataclasses
import json

import pytest

from pclbench.core.config import from_dict
from pclbench.data.acquire import DatasetNotFound, acquire, missing_manual_files
from pclbench.data.download import DownloadConfig


@pytest.fixture
def cfg(default_config, tmp_path) -> DownloadConfig:
    c = from_dict(DownloadConfig, default_config["download"], "download")
    return dataclasses.replace(c, retries=1, backoff_s=0.0, timeout_s=5.0, lock_file=str(tmp_path / "lock.yaml"))


def _npy_release(root):
    for split in ("train_set", "val_set"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "annotations").mkdir(parents=True)
        (root / split / "images" / "0.jpg").write_bytes(b"jpeg")
        (root / split / "annotations" / "0_exp.npy").write_bytes(b"npy")


def test_affectnet_npy_release_is_acquired_through_its_alternative(default_config, tmp_path, cfg):
    entry = default_config["datasets"]["affectnet"]
    sources = tmp_path / "sources"
    with pytest.raises(DatasetNotFound) as e:
        acquire("affectnet", entry, sources, sources / "affectnet.receipt.json", cfg)
    msg = str(e.value)
    assert "Manually_Annotated_file_lists/training.csv" in msg and "or, for the npy release" in msg
    assert "train_set/annotations/" in msg
    _npy_release(sources / "affectnet")
    assert missing_manual_files(entry, sources / "affectnet") == []
    out = acquire("affectnet", entry, sources, sources / "affectnet.receipt.json", cfg)
    assert sorted(f["path"] for f in out["files"]) == ["train_set/annotations", "train_set/images",
                                                       "val_set/annotations", "val_set/images"]
    assert json.loads((sources / "affectnet.receipt.json").read_text()) == out


def test_a_partial_alternative_is_not_enough(default_config, tmp_path, cfg):
    entry = default_config["datasets"]["affectnet"]
    root = tmp_path / "sources" / "affectnet"
    _npy_release(root)
    for f in (root / "val_set" / "annotations").iterdir():
        f.unlink()  # an empty folder does not count
    assert missing_manual_files(entry, root) != []
