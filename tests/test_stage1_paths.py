"""The stage-1 primitives every parser uses for names read from untrusted release files.

The attacks are the reviewer's (a label line with ``..``, an absolute CSV path, a symlink out of the
release, an image listed twice, a FIFO where an image is expected); each must be refused with the
file:line it came from, and nothing outside the output folder may change.
"""
from __future__ import annotations

import os

import pytest

from bounded import run_bounded
from pclbench.data.parsers.stage1 import (DuplicateImageError, SourceFormatError, UnsafePathError, inside,
                                          is_regular_file, place_image, safe_relpath)


@pytest.mark.parametrize("name", ["", "   ", "/etc/passwd", "a/../../b", "..", "./..", "x/..", "C:\\windows\\x",
                                  "c:x", "\\\\server\\share\\x", "\\abs", "a\x00b", "train_x/../../../../victim/train.csv"])
def test_safe_relpath_refuses_escapes(name):
    with pytest.raises(UnsafePathError, match="labels.txt:7"):
        safe_relpath(name, where="labels.txt:7")


@pytest.mark.parametrize("name, want", [("a.jpg", "a.jpg"), ("./a/b.jpg", "a/b.jpg"), ("a//b.jpg", "a/b.jpg"),
                                        ("Manually_Annotated\\1\\x.jpg", "Manually_Annotated/1/x.jpg"),
                                        ("a..b.jpg", "a..b.jpg")])
def test_safe_relpath_normalises_benign_names(name, want):
    assert safe_relpath(name) == want


def test_inside_refuses_symlink_out_of_release(tmp_path):
    release, host = tmp_path / "release", tmp_path / "host.txt"
    release.mkdir()
    host.write_text("secret")
    os.symlink(host, release / "img.jpg")
    with pytest.raises(UnsafePathError, match="list.csv:3"):
        inside(release, "img.jpg", where="list.csv:3")
    (release / "ok.jpg").write_bytes(b"x")
    assert inside(release, "ok.jpg") == release / "ok.jpg"


def test_place_image_never_overwrites(tmp_path):
    src, victim = tmp_path / "a.jpg", tmp_path / "out" / "a.jpg"
    src.write_bytes(b"new")
    victim.parent.mkdir()
    victim.write_bytes(b"old")
    with pytest.raises(DuplicateImageError, match="f.csv:2"):
        place_image(src, victim, where="f.csv:2")
    assert victim.read_bytes() == b"old"


def test_place_image_copy_fallback_never_overwrites(tmp_path, monkeypatch):
    """Where hard links fail (another file system), the copy opens the destination exclusively."""
    src, dst = tmp_path / "a.jpg", tmp_path / "out" / "a.jpg"
    src.write_bytes(b"img")

    def no_link(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    place_image(src, dst)
    assert dst.read_bytes() == b"img"
    with pytest.raises(DuplicateImageError):
        place_image(src, dst)


def test_fifo_is_not_a_regular_file_and_is_not_opened(tmp_path):
    fifo = tmp_path / "img.jpg"
    os.mkfifo(fifo)
    assert not is_regular_file(fifo)
    with pytest.raises(SourceFormatError, match="not a regular file"):
        run_bounded(lambda: place_image(fifo, tmp_path / "out" / "img.jpg"), fifos=[fifo], timeout=10)
