"""Video frames (data/video.py) and the VoxCeleb parser (data/parsers/voxceleb.py) on videos and frame
folders the tests write in the official layouts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pclbench.core.config import ConfigError, from_dict
from pclbench.data.parsers.registry import PARSERS
from pclbench.data.parsers import SourceLayoutError
from pclbench.data.video import VideoConfig, keep_frame, read_exclusion, sample_frames, write_video

pytest.importorskip("av")


def _video_cfg(**over) -> dict:
    d = dict(fps=5.0, max_frames_per_clip=100, image_format="png", jpeg_quality=95, exclusion_file="")
    d.update(over)
    return d


def _frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i: grey level 5 i, plus a white 8 x 8 square whose column is i mod 7 (content we can check)."""
    f = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        f[i] = 5 * i
        c = 8 * (i % 7)
        f[i, :8, c : c + 8] = 255
    return f


def test_sampling_rule_against_constant_rate_formula():
    """At a constant rate r, frame i (t = i / r) is kept iff floor(i fps / r) > floor((i - 1) fps / r)."""
    for r, fps in [(25, 6.0), (25, 5.0), (30, 1.0), (25, 25.0), (25, 100.0), (29.97, 6.0)]:
        last, kept = -1, []
        for i in range(200):
            keep, slot = keep_frame(i / r, fps, last)
            if keep:
                kept.append(i)
                last = slot
        expected = [i for i in range(200) if i == 0 or math.floor(i * fps / r + 1e-6) > math.floor((i - 1) * fps / r + 1e-6)]
        assert kept == expected, (r, fps)
        if fps >= r:
            assert kept == list(range(200))  # at or above the video's rate every frame is kept
    # the authors' 6-of-25 at 25 fps, one second: 0, 5, 9, 13, 17, 21 (ours) vs 0, 4, 8, 12, 16, 20 (A.3)
    last, first_second = -1, []
    for i in range(25):
        keep, slot = keep_frame(i / 25, 6.0, last)
        if keep:
            first_second.append(i)
            last = slot
    assert first_second == [0, 5, 9, 13, 17, 21]


def test_extract_frames_from_a_written_video(tmp_path):
    video = tmp_path / "clip.mp4"
    frames = _frames(50)  # 2 s at 25 fps
    write_video(video, frames, fps=25)
    got = list(sample_frames(video, fps=5.0, max_frames=100))
    assert [i for i, _, _ in got] == list(range(0, 50, 5))  # 10 frames: one per 0.2 s
    np.testing.assert_allclose([t for _, t, _ in got], np.arange(0, 2, 0.2), atol=1e-6)
    for i, _, im in got:
        a = np.asarray(im).astype(np.float64)
        assert a.shape == (48, 64, 3)
        assert abs(a[16:, :].mean() - 5 * i) < 8  # the grey level of source frame i
        col = int(np.argmax(a[:8].mean(axis=(0, 2)).reshape(8, 8).mean(axis=1)))
        assert col == i % 7  # the square sits where frame i put it
    capped = list(sample_frames(video, fps=5.0, max_frames=3))
    assert [i for i, _, _ in capped] == [0, 5, 10]


def test_video_config_errors():
    with pytest.raises(ConfigError, match="video.fps"):
        from_dict(VideoConfig, _video_cfg(fps=0), "video")
    with pytest.raises(ConfigError, match="video.image_format"):
        from_dict(VideoConfig, _video_cfg(image_format="gif"), "video")
    with pytest.raises(ConfigError, match="video.max_frames_per_clip"):
        from_dict(VideoConfig, _video_cfg(max_frames_per_clip=0), "video")


def test_exclusion_file(tmp_path):
    p = tmp_path / "ex.txt"
    p.write_text("# header\n\nid10001  # a comment\nA.J._Buckley\n")
    assert read_exclusion(p) == {"id10001", "A.J._Buckley"}
    assert read_exclusion("") == set()
    with pytest.raises(FileNotFoundError, match="video.exclusion_file: .*nope.txt not found"):
        read_exclusion(tmp_path / "nope.txt")
    shipped = Path(__file__).resolve().parents[1] / "config" / "voxceleb_exclusion.txt"
    assert read_exclusion(shipped) == set()  # documented header only: no guessed names


def _entry(splits):
    return {"source": "manual", "parser": "voxceleb2", "tasks": ["pretrain"], "licence": "x", "splits": splits,
            "size": 64, "description": "x"}


def test_voxceleb2_videos(tmp_path):
    src = tmp_path / "src"
    layout = {  # split dir, identity, youtube id, utterance, frames
        ("dev", "id00012", "21Uxsk56VDQ", "00001"): 25,
        ("dev", "id00012", "21Uxsk56VDQ", "00002"): 10,
        ("dev", "id00015", "0fijmz4vTVU", "00001"): 25,
        ("test", "id00017", "01dfn2spqyE", "00001"): 25,
    }
    for (part, ident, yt, utt), n in layout.items():
        d = src / part / "mp4" / ident / yt
        d.mkdir(parents=True, exist_ok=True)
        write_video(d / f"{utt}.mp4", _frames(n), fps=25)
    (src / "dev/mp4/id00012/21Uxsk56VDQ/00003.m4a").write_bytes(b"audio only: never read")
    (src / "dev/mp4/id00012/21Uxsk56VDQ/00004.mp4").write_bytes(b"not a video")
    excl = tmp_path / "ex.txt"
    excl.write_text("id00015\n")
    out = tmp_path / "raw"
    meta = PARSERS.get("voxceleb2")(_entry(["train", "test"]), src, out,
                                    video=_video_cfg(fps=5.0, max_frames_per_clip=4, image_format="jpg",
                                                     exclusion_file=str(excl)))
    train = pd.read_csv(out / "train.csv")
    test = pd.read_csv(out / "test.csv")
    # 1 s at 5 fps -> 5 frames, capped at 4; 10 frames (0.4 s) -> 2; id00015 excluded; bad file skipped
    assert train["path"].tolist() == [f"images/id00012/21Uxsk56VDQ/00001/{k:05d}.jpg" for k in range(4)] + [
        f"images/id00012/21Uxsk56VDQ/00002/{k:05d}.jpg" for k in range(2)]
    assert train["subject"].tolist() == ["id00012"] * 6
    assert train["clip"].tolist() == [0] * 4 + [1] * 2 and train["frame"].tolist() == [0, 1, 2, 3, 0, 1]
    assert (train["expression"] == -1).all() and (train["fold"] == -1).all() and train["yaw"].isna().all()
    assert test["subject"].tolist() == ["id00017"] * 4 and test["clip"].tolist() == [2] * 4
    for p in train["path"].tolist() + test["path"].tolist():
        assert Image.open(out / p).size == (64, 48)
    assert meta["exclusion"]["excluded"] == ["id00015"]
    assert [f["path"] for f in meta["failed_videos"]] == ["dev/mp4/id00012/21Uxsk56VDQ/00004.mp4"]
    assert meta["counts"]["train"] == {"frames": 6, "identities": 1, "clips": 2}
    assert json.loads((out / "meta.json").read_text())["variant"] == "videos"


def test_voxceleb1_face_frames(tmp_path):
    src = tmp_path / "src"
    data = src / "unzippedIntervalFaces" / "data"
    frames = {("A.J._Buckley", "1zcIwhmdeo4", "1"): 3, ("A.J._Buckley", "1zcIwhmdeo4", "2"): 1,
              ("Aamir_Khan", "5ablueV_1tw", "1"): 2, ("Eartha_Kitt", "xyz", "1"): 2}
    for (name, yt, utt), n in frames.items():
        d = data / name / "1.6" / yt / utt
        d.mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (32, 32), (10 * k, 0, 0)).save(d / f"{k + 1:02d}.jpg")
    # the official meta file is tab-separated
    (src / "vox1_meta.csv").write_text(
        "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
        "id10001\tA.J._Buckley\tm\tIreland\tdev\n"
        "id10003\tAamir_Khan\tm\tIndia\tdev\n"
        "id10270\tEartha_Kitt\tf\tUSA\ttest\n")
    excl = tmp_path / "ex.txt"
    excl.write_text("Aamir_Khan\n")  # by VGGFace1 name
    out = tmp_path / "raw"
    meta = PARSERS.get("voxceleb1")(_entry(["train", "test"]), src, out,
                                    video=_video_cfg(max_frames_per_clip=2, exclusion_file=str(excl)))
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    assert train["path"].tolist() == ["images/id10001/1zcIwhmdeo4/1/00000.jpg", "images/id10001/1zcIwhmdeo4/1/00001.jpg",
                                      "images/id10001/1zcIwhmdeo4/2/00000.jpg"]
    assert train["clip"].tolist() == [0, 0, 1] and train["frame"].tolist() == [0, 1, 0]
    assert test["subject"].tolist() == ["id10270"] * 2
    # the frames are the released files, unchanged
    assert (out / train["path"][1]).read_bytes() == (data / "A.J._Buckley/1.6/1zcIwhmdeo4/1/02.jpg").read_bytes()
    assert meta["exclusion"]["excluded"] == ["id10003"] and meta["variant"] == "face_frames"

    from pclbench.data.parsers.voxceleb import overlapping_identities, read_meta

    vmeta = read_meta(src / "vox1_meta.csv")
    assert overlapping_identities(vmeta, ["Eartha_Kitt", "Aaron_Eckhart", "A.J._Buckley"]) == ["id10001", "id10270"]


def test_voxceleb_missing_release_is_instructive(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(SourceLayoutError, match=r"dev/mp4/<id>/<youtube id>/<utterance>.mp4"):
        PARSERS.get("voxceleb2")(_entry(["train"]), tmp_path / "src", tmp_path / "raw", video=_video_cfg())
    with pytest.raises(ValueError, match=r"datasets.voxceleb2.splits is \['all'\]"):
        PARSERS.get("voxceleb2")(_entry(["all"]), tmp_path / "src", tmp_path / "raw", video=_video_cfg())
    assert not (tmp_path / "raw").exists()
