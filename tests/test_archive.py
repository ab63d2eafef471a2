"""pclbench.data.archive: malicious archives are refused with nothing written outside the target."""
from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pclbench.data.archive import UnsafeArchive, extract_archive

LIMITS = {"max_bytes": 1 << 20, "max_files": 100}


def _tar(path: Path, members: list[tuple], mode: str = "w:gz") -> Path:
    """members: (name, kind, payload) with kind file | dir | sym | hard | chr; payload = bytes / link target."""
    with tarfile.open(path, mode) as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                       "chr": tarfile.CHRTYPE}[kind]
            if kind == "dir":
                ti.mode = 0o755
            if kind in ("sym", "hard"):
                ti.linkname = payload
            tf.addfile(ti)
    return path


def _zip(path: Path, members: list[tuple]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, kind, payload in members:
            if kind == "file":
                zf.writestr(name, payload)
            elif kind == "sym":
                zi = zipfile.ZipInfo(name)
                zi.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(zi, payload)
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture()
def box(tmp_path):
    """box/ holds the archive (in arc/) and the target parent (out/); everything is compared after."""
    (tmp_path / "arc").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("pre-existing")
    return tmp_path


def test_safe_tar_is_extracted_with_links_inside(box):
    arc = _tar(box / "arc" / "ok.tgz", [
        ("lfw/", "dir", None),
        ("lfw/a/img1.jpg", "file", b"one"),
        ("lfw/b/img2.jpg", "file", b"two"),
        ("lfw/latest", "sym", "a/img1.jpg"),       # a relative link that stays inside
        ("lfw/copy.jpg", "hard", "lfw/b/img2.jpg"),
    ])
    target = box / "out" / "lfw_src"
    tops = extract_archive(arc, target, **LIMITS)
    assert tops == ["lfw"]
    assert (target / "lfw/a/img1.jpg").read_bytes() == b"one"
    assert (target / "lfw/latest").is_symlink() and (target / "lfw/latest").read_bytes() == b"one"
    assert (target / "lfw/copy.jpg").read_bytes() == b"two"
    assert _listing(target) == ["lfw", "lfw/a", "lfw/a/img1.jpg", "lfw/b", "lfw/b/img2.jpg", "lfw/copy.jpg",
                                "lfw/latest"]  # no temporary folder left behind


def test_safe_zip_merges_into_existing_target(box):
    arc = _zip(box / "arc" / "ok.zip", [("AFLW2000/image00002.jpg", "file", b"x" * 100),
                                        ("AFLW2000/image00002.mat", "file", b"m")])
    target = box / "out" / "aflw"
    (target / "downloads").mkdir(parents=True)
    assert extract_archive(arc, target, **LIMITS) == ["AFLW2000"]
    assert _listing(target) == ["AFLW2000", "AFLW2000/image00002.jpg", "AFLW2000/image00002.mat", "downloads"]
    # Extracting the same archive again (a rerun) replaces the files, no error, no duplicates.
    assert extract_archive(arc, target, **LIMITS) == ["AFLW2000"]
    assert (target / "AFLW2000/image00002.jpg").read_bytes() == b"x" * 100


MALICIOUS_TAR = {
    "dotdot": ([("ok.txt", "file", b"fine"), ("../evil.txt", "file", b"pwned")], "'..'"),
    "dotdot_nested": ([("a/../../evil.txt", "file", b"pwned")], "'..'"),
    "symlink_outside": ([("link", "sym", "../"), ("link/evil.txt", "file", b"pwned")], "symlink"),
    "symlink_absolute": ([("link", "sym", "/etc/passwd")], "absolute"),
    "hardlink_outside": ([("h", "hard", "../evil.txt")], "'..'"),
    "hardlink_to_unknown": ([("h", "hard", "etc/passwd")], "hardlink"),
    "device": ([("dev", "chr", None)], "character device"),
    # Every link stays inside on its own, but a -> d/e/s/../x goes through s -> ../.. (the root) and
    # `..` of the root is outside: only a physical resolution (realpath) sees it.
    "symlink_chain": ([("d/e/", "dir", None), ("d/e/s", "sym", "../.."), ("a", "sym", "d/e/s/../evil")],
                      "through other links"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TAR))
def test_malicious_tar_is_refused_and_nothing_is_written(box, case):
    members, why = MALICIOUS_TAR[case]
    arc = _tar(box / "arc" / f"{case}.tar", members, mode="w")
    before = _listing(box)
    target = box / "out" / "target"
    with pytest.raises(UnsafeArchive, match=why):
        extract_archive(arc, target, **LIMITS)
    assert _listing(box) == before  # no target/, no temp folder, no evil.txt anywhere


def test_absolute_path_entry_is_refused(box):
    escape = box / "out" / "abs_evil.txt"   # absolute path that would land in the parent
    arc = _tar(box / "arc" / "abs.tar", [("fine.txt", "file", b"ok"), (str(escape), "file", b"pwned")], mode="w")
    before = _listing(box)
    with pytest.raises(UnsafeArchive, match="absolute path"):
        extract_archive(arc, box / "out" / "target", **LIMITS)
    assert _listing(box) == before and not escape.exists()


def test_malicious_zip_entries_are_refused(box):
    target = box / "out" / "target"
    target.mkdir()
    (target / "mine.txt").write_text("user file")
    for name, members, why in [
        ("dotdot.zip", [("ok", "file", b"1"), ("../evil.txt", "file", b"pwned")], "'..'"),
        ("abs.zip", [("/tmp/evil.txt", "file", b"pwned")], "absolute"),
        ("win.zip", [("..\\evil.txt", "file", b"pwned")], "'..'"),
        ("sym.zip", [("l", "sym", "../../etc"), ("x", "file", b"1")], "outside"),
    ]:
        arc = _zip(box / "arc" / name, members)
        before = _listing(box)
        with pytest.raises(UnsafeArchive, match=why):
            extract_archive(arc, target, **LIMITS)
        assert _listing(box) == before
    assert _listing(target) == ["mine.txt"]  # an existing target is left exactly as it was


def test_zip_bomb_over_the_byte_limit_is_refused(box):
    arc = box / "arc" / "bomb.zip"
    with zipfile.ZipFile(arc, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(8 << 20))  # 8 MiB of zeros -> ~8 KiB deflated
    assert arc.stat().st_size < 64 << 10
    before = _listing(box)
    with pytest.raises(UnsafeArchive, match="max_extract_bytes"):
        extract_archive(arc, box / "out" / "target", **LIMITS)  # limit 1 MiB
    assert _listing(box) == before


def test_running_byte_count_stops_an_entry_larger_than_declared(box, monkeypatch):
    """Second guard: even if the declared sizes passed (headers can lie), writing stops at the limit."""
    import pclbench.data.archive as archive

    arc = _tar(box / "arc" / "big.tar", [("a.bin", "file", bytes(1 << 20)), ("b.bin", "file", bytes(2 << 20))],
               mode="w")
    monkeypatch.setattr(archive, "_check", lambda *a, **k: None)  # pretend the pre-scan was fooled
    before = _listing(box)
    with pytest.raises(UnsafeArchive, match="max_extract_bytes"):
        extract_archive(arc, box / "out" / "target", max_bytes=2 << 20, max_files=10)
    assert _listing(box) == before


def test_too_many_entries_is_refused(box):
    arc = _tar(box / "arc" / "many.tgz", [(f"f{i}", "file", b"") for i in range(101)])
    with pytest.raises(UnsafeArchive, match="max_extract_files"):
        extract_archive(arc, box / "out" / "target", **LIMITS)
    assert not (box / "out" / "target").exists()


def test_not_an_archive(box):
    p = box / "arc" / "x.tgz"
    p.write_bytes(b"<html>mirror error page</html>")
    with pytest.raises(UnsafeArchive, match="neither a zip nor a tar"):
        extract_archive(p, box / "out" / "target", **LIMITS)


def test_setuid_bits_are_dropped(box):
    arc = box / "arc" / "suid.tar"
    with tarfile.open(arc, "w") as tf:
        ti = tarfile.TarInfo("tool")
        ti.size, ti.mode = 2, 0o4755
        tf.addfile(ti, io.BytesIO(b"#!"))
    extract_archive(arc, box / "out" / "t", **LIMITS)
    mode = os.stat(box / "out" / "t" / "tool").st_mode
    assert not mode & stat.S_ISUID and mode & stat.S_IXUSR
