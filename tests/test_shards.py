"""Stage 2 shard format (docs/architecture.md) and the atomic folder write."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pclbench.align.shards import ShardWriter, _NpyAppender, open_shard, write_shard
from pclbench.core.io import atomic_dir


def _toy(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    landmarks = rng.normal(size=(n, 68, 2)).astype(np.float32) * size
    manifest = pd.DataFrame({"path": [f"images/{i}.png" for i in range(n)], "subject": rng.integers(0, 5, n)})
    return images, landmarks, manifest


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_round_trip_array_and_memmap(tmp_path):
    images, landmarks, manifest = _toy(7, 16)
    out = tmp_path / "ds" / "train"
    write_shard(out, images, manifest, landmarks, qc={"n_kept": 7})
    shard = open_shard(out)
    assert isinstance(shard.images, np.memmap) and shard.images.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(shard.images), images)
    np.testing.assert_array_equal(shard.landmarks, landmarks)
    assert shard.landmarks.dtype == np.float32
    assert list(shard.manifest.columns) == ["path", "subject", "row"]
    np.testing.assert_array_equal(shard.manifest["row"], np.arange(7))
    pd.testing.assert_frame_equal(shard.manifest.drop(columns="row"), manifest)
    assert shard.qc == {"n_kept": 7} and len(shard) == 7 and shard.size == 16
    # The standard loader sees the same array (the file is a plain .npy).
    np.testing.assert_array_equal(np.load(out / "images.npy"), images)


def test_round_trip_batches_iterator(tmp_path):
    images, landmarks, manifest = _toy(10, 8, seed=1)
    batches = (images[i : i + 3] for i in range(0, 10, 3))  # 3, 3, 3, 1
    write_shard(tmp_path / "s", batches, manifest, landmarks)
    shard = open_shard(tmp_path / "s")
    np.testing.assert_array_equal(np.asarray(shard.images), images)
    np.testing.assert_array_equal(shard.landmarks, landmarks)


@pytest.mark.parametrize("capacity,n", [(0, 0), (9, 9), (10, 3), (1000, 7), (100000, 99999), (99999, 12)])
def test_npy_appender_shrinks_header(tmp_path, capacity, n):
    """Final N below the announced capacity: same header length, data 64-byte aligned, np.load agrees."""
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, size=(n, 2, 3), dtype=np.uint8)
    app = _NpyAppender(tmp_path / "a.npy", np.uint8, (2, 3), capacity)
    for s in range(0, n, 4000):
        app.append(data[s : s + 4000])
    app.close()
    raw = (tmp_path / "a.npy").read_bytes()
    header_len = 10 + int.from_bytes(raw[8:10], "little")
    assert header_len % 64 == 0
    assert len(raw) == header_len + data.nbytes
    loaded = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert loaded.shape == (n, 2, 3)
    np.testing.assert_array_equal(np.asarray(loaded), data)


def test_writer_rejects_wrong_shapes(tmp_path):
    w = ShardWriter(tmp_path, capacity=2, size=8)
    with pytest.raises(ValueError, match=r"images: expected \(k, 3, 8, 8\)"):
        w.append(np.zeros((1, 3, 9, 9), np.uint8), np.zeros((1, 68, 2)))
    with pytest.raises(ValueError, match="uint8"):
        w.append(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 68, 2)))
    with pytest.raises(ValueError, match="landmarks"):
        w.append(np.zeros((1, 3, 8, 8), np.uint8), np.zeros((1, 5, 2)))
    w.append(np.zeros((2, 3, 8, 8), np.uint8), np.zeros((2, 68, 2)))
    with pytest.raises(ValueError, match="more than the announced 2 rows"):
        w.append(np.zeros((1, 3, 8, 8), np.uint8), np.zeros((1, 68, 2)))
    w.abort()


def test_write_shard_mismatch_leaves_nothing(tmp_path):
    images, landmarks, manifest = _toy(4, 8)
    out = tmp_path / "s"
    with pytest.raises(ValueError, match="images has 4 rows but the manifest has 3"):
        write_shard(out, images, manifest.iloc[:3], landmarks[:3])
    with pytest.raises(ValueError, match="images: more than the manifest's 3 rows"):
        write_shard(out, iter([images[:2], images[2:]]), manifest.iloc[:3], landmarks[:3])
    with pytest.raises(ValueError, match="manifest has 4 rows but 2 images were written"):
        write_shard(out, iter([images[:2]]), manifest, landmarks)
    assert not out.exists() and _leftovers(tmp_path, "s") == []


def test_open_shard_checks_consistency(tmp_path):
    images, landmarks, manifest = _toy(3, 8)
    write_shard(tmp_path / "s", images, manifest, landmarks)
    np.save(tmp_path / "s" / "landmarks.npy", landmarks[:2])
    with pytest.raises(ValueError, match="landmarks.npy"):
        open_shard(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="missing images.npy"):
        open_shard(tmp_path / "nothing")


def test_atomic_dir_success_failure_and_replace(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert not final.exists() and _leftovers(tmp_path, "out") == []

    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        (tmp / "a.txt").write_text("v1")
        assert not final.exists()  # nothing visible before success
    assert (final / "a.txt").read_text() == "v1"

    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("v2-half")
            raise KeyboardInterrupt
    assert (final / "a.txt").read_text() == "v1"  # a failed rerun keeps the old output

    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("v3")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced, not merged
    assert _leftovers(tmp_path, "out") == []


def test_atomic_dir_replaces_a_file(tmp_path):
    final = tmp_path / "out"
    final.write_text("i was a file")
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert final.is_dir() and (final / "x").read_text() == "1"
    assert _leftovers(tmp_path, "out") == []
