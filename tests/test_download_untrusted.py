"""Downloads from untrusted mirrors in the lock-file mode (no published checksum; 300W-LP, AFLW2000-3D).

A first download must never record an HTML error page, a body shorter than
announced, or a splice of two versions of the file; an archive must open before it is recorded; a bad
recorded entry is recoverable; one file has an overall deadline. Such failures are
one-line errors of `pclbench acquire`, not tracebacks.

The HTTP behaviour the local server (tests/local_http.py) plays is that of RFC 9110 (If-Range 13.1.5,
Range 14.2, Content-Range 14.4); the archives are written by the standard library's own writers
(zipfile, tarfile), and every expected digest is hashlib's over the bytes served. Each failure test
asserts that nothing was recorded in the lock file and that no final file appeared.
"""
from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from local_http import Route, serve
from pclbench.core.config import from_dict
from pclbench.data.archive import CorruptArchive, verify_archive
from pclbench.data.download import (ChecksumMismatch, DeadlineExceeded, DownloadConfig, DownloadError, FileSpec,
                                    LockFile, fetch)

ROOT = Path(__file__).resolve().parents[1]
RNG = random.Random(1)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


# Incompressible member data, so that the archives are large enough to cut and resume in the middle.
ZIP = _zip({"300W_LP/AFW/AFW_1_0.jpg": RNG.randbytes(60_000), "300W_LP/AFW/AFW_1_0.mat": RNG.randbytes(40_000)})
ZIP_V2 = _zip({"300W_LP/AFW/AFW_1_0.jpg": RNG.randbytes(60_000), "300W_LP/AFW/AFW_1_0.mat": RNG.randbytes(40_000)})
TAR = _tar({"a/one.bin": RNG.randbytes(5000), "a/two.bin": RNG.randbytes(5000)})
TGZ = _tar({"a/one.bin": RNG.randbytes(30_000)}, "w:gz")
HTML = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n")


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture()
def cfg(default_config, tmp_path) -> DownloadConfig:
    """The shipped `download` section, with test-sized waits and chunks (deadline as shipped)."""
    c = from_dict(DownloadConfig, default_config["download"], "download")
    return dataclasses.replace(c, retries=2, backoff_s=0.0, backoff_max_s=0.0, timeout_s=5.0, chunk_bytes=4096,
                               progress_every_s=60.0, lock_file=str(tmp_path / "lock.yaml"))


def spec(url, name="300W-LP.zip", extract=True, sha256=None):
    return FileSpec(name=name, urls=[url] if isinstance(url, str) else list(url), sha256=sha256, md5=None,
                    size=None, extract=extract)


def assert_nothing_recorded(cfg, dest: Path, dataset="300w_lp"):
    lock = Path(cfg.lock_file)
    recorded = (yaml.safe_load(lock.read_text()) or {}) if lock.exists() else {}
    assert dest.name not in (recorded.get(dataset) or {})
    assert not dest.exists()


def lock_entry(cfg, name, dataset="300w_lp"):
    return yaml.safe_load(Path(cfg.lock_file).read_text())[dataset][name]


def http_date(seconds_ago: float) -> str:
    return email.utils.formatdate(time.time() - seconds_ago, usegmt=True)


# --------------------------------------------------------------------------------------------------
# HTML pages


def test_html_error_page_with_200_and_text_html_is_refused_before_saving(cfg, tmp_path):
    dest = tmp_path / "dl" / "300W-LP.zip"
    with serve({"/z": Route(HTML, content_type="text/html; charset=utf-8")}) as srv:
        with pytest.raises(DownloadError) as ei:
            fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        assert len(srv.requests) == 1  # an HTML page is not retried on the same mirror
    assert "HTML page (Content-Type text/html" in str(ei.value) and srv.url("/z") in str(ei.value)
    assert_nothing_recorded(cfg, dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # no .part either


@pytest.mark.parametrize("name,body", [("300W-LP.zip", HTML), ("pairs.txt", b"\xef\xbb\xbf  \n<HTML><body>moved</body>")])
def test_html_body_under_a_binary_content_type_is_refused(cfg, tmp_path, name, body):
    """Mislabelled pages: the first bytes decide, for archives and for text files alike."""
    dest = tmp_path / name
    with serve({"/f": Route(body, content_type="application/octet-stream")}) as srv:
        with pytest.raises(DownloadError, match="are an HTML page") as ei:
            fetch(spec(srv.url("/f"), name=name, extract=False), dest, cfg, dataset="300w_lp",
                  lock=LockFile(cfg.lock_file))
    assert not isinstance(ei.value, ChecksumMismatch)
    assert_nothing_recorded(cfg, dest)
    assert list(tmp_path.iterdir()) == []


def test_html_page_for_a_file_with_published_checksum_names_the_page(cfg, tmp_path):
    dest = tmp_path / "lfw.tgz"
    with serve({"/f": Route(HTML, content_type="text/html")}) as srv:
        with pytest.raises(DownloadError, match="HTML page"):
            fetch(spec(srv.url("/f"), name="lfw.tgz", sha256=sha(TGZ)), dest, cfg, dataset="lfw")
    assert not dest.exists()


# --------------------------------------------------------------------------------------------------
# short bodies


def test_body_shorter_than_content_length_is_never_recorded(cfg, tmp_path):
    """Every answer announces len(ZIP) bytes and sends 30,000: retried, then an error; no resume splice."""
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP, cut_after=30_000, cut_times=99, etag_kind="none")}) as srv:
        with pytest.raises(DownloadError) as ei:
            fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        assert all("Range" not in h for _, h in srv.requests)  # no validator: every attempt from byte 0
        assert len(srv.requests) == cfg.retries + 1
    assert f"the body ended after 30000 of the {len(ZIP)} bytes announced" in str(ei.value)
    assert "starts from zero" in str(ei.value)  # the kept .part cannot be resumed without a validator
    assert_nothing_recorded(cfg, dest)


def test_short_body_then_complete_body_records_the_complete_file(cfg, tmp_path):
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP, cut_after=30_000, cut_times=1)}) as srv:
        rec = fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        assert srv.requests[1][1]["Range"] == "bytes=30000-"  # strong ETag: resumed
    assert dest.read_bytes() == ZIP and rec["sha256"] == sha(ZIP)
    entry = lock_entry(cfg, "300W-LP.zip")
    assert (entry["sha256"], entry["size"]) == (sha(ZIP), len(ZIP))


# --------------------------------------------------------------------------------------------------
# a file that changes between requests: never a splice


@pytest.mark.parametrize("etag_kind", ["none", "weak"])
def test_changed_file_without_strong_validator_restarts_from_zero(cfg, tmp_path, etag_kind):
    """No (strong) ETag: the partial bytes cannot be tied to a version, so the retry starts over."""
    dest = tmp_path / "300W-LP.zip"
    route = Route(ZIP, cut_after=50_000, cut_times=1, etag_kind=etag_kind, next_bodies=[ZIP_V2])
    with serve({"/z": route}) as srv:
        rec = fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        first, second = srv.requests
    assert "Range" not in second[1] and "If-Range" not in second[1]
    assert dest.read_bytes() == ZIP_V2                     # the whole second version, not ZIP[:50000] + ...
    assert rec["sha256"] == sha(ZIP_V2) == lock_entry(cfg, "300W-LP.zip")["sha256"]


def test_changed_file_with_strong_etag_gets_the_whole_new_version(cfg, tmp_path):
    """If-Range carries the old ETag; the server's 200 with the new version replaces the partial bytes."""
    dest = tmp_path / "300W-LP.zip"
    old_etag = Route(ZIP).etag
    with serve({"/z": Route(ZIP, cut_after=50_000, cut_times=1, next_bodies=[ZIP_V2])}) as srv:
        fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        second = srv.requests[1][1]
    assert second["Range"] == "bytes=50000-" and second["If-Range"] == old_etag
    assert dest.read_bytes() == ZIP_V2 and lock_entry(cfg, "300W-LP.zip")["sha256"] == sha(ZIP_V2)


def test_server_ignoring_if_range_cannot_splice(cfg, tmp_path):
    """A broken server answers the resume of a changed file with 206 of the new version: detected by its ETag."""
    dest = tmp_path / "300W-LP.zip"
    route = Route(ZIP, cut_after=50_000, cut_times=1, if_range=False, next_bodies=[ZIP_V2])
    with serve({"/z": route}) as srv:
        fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        ranges = [h.get("Range") for _, h in srv.requests]
    assert ranges == [None, "bytes=50000-", None]          # the 206 of another version was dropped
    assert dest.read_bytes() == ZIP_V2 and lock_entry(cfg, "300W-LP.zip")["sha256"] == sha(ZIP_V2)


def test_server_ignoring_if_range_with_retries_exhausted_records_nothing(cfg, tmp_path):
    c = dataclasses.replace(cfg, retries=1)
    dest = tmp_path / "300W-LP.zip"
    route = Route(ZIP, cut_after=50_000, cut_times=1, if_range=False, next_bodies=[ZIP_V2])
    with serve({"/z": route}) as srv:
        with pytest.raises(DownloadError, match="the file changed"):
            fetch(spec(srv.url("/z")), dest, c, dataset="300w_lp", lock=LockFile(c.lock_file))
    assert_nothing_recorded(c, dest)


@pytest.mark.parametrize("age_s,resumes", [(3600, True), (10, False)])
def test_last_modified_is_a_validator_only_when_strong(cfg, tmp_path, age_s, resumes):
    """RFC 7232 2.2.2: a client may use Last-Modified as strong only if >= 60 s before the response's Date."""
    dest = tmp_path / "300W-LP.zip"
    lm = http_date(age_s)
    with serve({"/z": Route(ZIP, cut_after=40_000, cut_times=1, etag_kind="none", last_modified=lm)}) as srv:
        fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        second = srv.requests[1][1]
    if resumes:
        assert second["Range"] == "bytes=40000-" and second["If-Range"] == lm
    else:
        assert "Range" not in second and "If-Range" not in second
    assert dest.read_bytes() == ZIP


def test_200_answer_to_a_range_request_is_not_appended(cfg, tmp_path):
    """A .part of 1,000 bytes under the current ETag; the server ignores Range and sends the whole file."""
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP, ranges=False)}) as srv:
        (tmp_path / "300W-LP.zip.part").write_bytes(ZIP[:1000])
        (tmp_path / "300W-LP.zip.part.json").write_text(json.dumps({"url": srv.url("/z"), "etag": Route(ZIP).etag}))
        fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        assert srv.requests[0][1]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == ZIP  # not ZIP[:1000] + ZIP


def test_206_with_a_content_range_not_at_the_part_size_restarts(cfg, tmp_path):
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP, cut_after=50_000, cut_times=1, content_range_shift=-100)}) as srv:
        fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        ranges = [h.get("Range") for _, h in srv.requests]
    # The 206 claims bytes 49900-...: the attempt is dropped and the next one starts from byte 0, whose
    # answer (200, no Range asked) is whole.
    assert ranges == ["bytes=50000-" if i == 1 else None for i in range(3)]
    assert dest.read_bytes() == ZIP


def test_206_with_a_wrong_content_range_and_no_retry_left_records_nothing(cfg, tmp_path):
    c = dataclasses.replace(cfg, retries=1)
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP, cut_after=50_000, cut_times=1, content_range_shift=-100)}) as srv:
        with pytest.raises(DownloadError, match="does not start at byte 50000"):
            fetch(spec(srv.url("/z")), dest, c, dataset="300w_lp", lock=LockFile(c.lock_file))
    assert_nothing_recorded(c, dest)


# --------------------------------------------------------------------------------------------------
# archives must open before they are recorded


def _bad_crc_zip() -> bytes:
    """ZIP with one byte of the first member's stored data flipped (the local header is 30 + name bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", b"A" * 5000)
    data = bytearray(buf.getvalue())
    data[30 + len("a.bin") + 100] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("name,body,why", [
    ("300W-LP.zip", ZIP[: len(ZIP) // 2], "not a complete, readable archive"),    # truncated, served as whole
    ("300W-LP.zip", _bad_crc_zip(), "Bad CRC-32"),
    ("data.tar", TAR[:512 + 5120 + 100], "end-of-archive marker"),               # cut inside the 2nd header
    ("data.tar.gz", TGZ[: len(TGZ) // 2], "not a complete, readable archive"),
])
def test_unreadable_archive_is_not_recorded(cfg, tmp_path, name, body, why):
    dest = tmp_path / name
    with serve({"/a": Route(body)}) as srv:
        with pytest.raises(DownloadError) as ei:
            fetch(spec(srv.url("/a"), name=name), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
    msg = str(ei.value)
    assert "not a usable archive, so they are not recorded" in msg and why in msg
    assert_nothing_recorded(cfg, dest)
    assert list(tmp_path.iterdir()) == []  # the unusable bytes are deleted, nothing to resume


def test_plain_tar_cut_at_a_header_boundary_is_caught_by_the_end_marker(tmp_path):
    """tarfile itself reads TAR[:5632] (one whole member) without error; the end-of-archive check does not."""
    cut = tmp_path / "cut.tar"
    cut.write_bytes(TAR[:512 + 5120])
    with tarfile.open(cut) as tf:
        assert [m.name for m in tf.getmembers()] == ["a/one.bin"]   # the library alone misses the cut
    with pytest.raises(CorruptArchive, match="end-of-archive marker"):
        verify_archive(cut, max_bytes=1 << 30, max_files=100)
    whole = tmp_path / "whole.tar"
    whole.write_bytes(TAR)
    verify_archive(whole, max_bytes=1 << 30, max_files=100)


def test_archive_already_in_place_is_checked_before_it_is_recorded(cfg, tmp_path):
    """A truncated archive left by an older version of this code is replaced, not recorded."""
    dest = tmp_path / "300W-LP.zip"
    dest.write_bytes(ZIP[:20_000])
    with serve({"/z": Route(ZIP)}) as srv:
        rec = fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        assert len(srv.requests) == 1
    assert dest.read_bytes() == ZIP and rec["url"] == srv.url("/z")
    assert lock_entry(cfg, "300W-LP.zip")["sha256"] == sha(ZIP)


# --------------------------------------------------------------------------------------------------
# a bad recorded entry is recoverable


def _record_bad_entry(cfg, name="300W-LP.zip", bad=HTML):
    """A lock file as an older version wrote it: another dataset first, then the bad entry."""
    lock = LockFile(cfg.lock_file)
    lock.record("aflw2000", "AFLW2000-3D.zip", sha(b"good"), 4, "http://example.org/a.zip")
    lock.record("300w_lp", name, sha(bad), len(bad), "http://example.org/z.zip")
    return lock


def test_mismatch_against_a_bad_lock_entry_says_which_lines_to_delete(cfg, tmp_path):
    lock = _record_bad_entry(cfg)
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP)}) as srv:
        with pytest.raises(ChecksumMismatch) as ei:
            fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=lock)
        msg = str(ei.value)
        assert f"expected {sha(HTML)}, actual {sha(ZIP)}" in msg
        assert "pclbench acquire --dataset 300w_lp --forget-lock" in msg
        m = re.search(r"delete lines (\d+)-(\d+) of (\S+) \(the entry `300w_lp:` / `300W-LP.zip:`\)", msg)
        assert m and m.group(3) == cfg.lock_file
        assert not dest.exists()
        # Do exactly what the message says: the other entries survive, the download is recorded anew.
        lines = Path(cfg.lock_file).read_text().splitlines(keepends=True)
        first, last = int(m.group(1)), int(m.group(2))
        assert lines[first - 1].strip() == "300W-LP.zip:" and all(":" in x for x in lines[first - 1:last])
        Path(cfg.lock_file).write_text("".join(lines[: first - 1] + lines[last:]))
        assert lock.get("300w_lp", "300W-LP.zip") is None
        assert lock.get("aflw2000", "AFLW2000-3D.zip")["sha256"] == sha(b"good")
        fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=lock)
    assert dest.read_bytes() == ZIP and lock_entry(cfg, "300W-LP.zip")["sha256"] == sha(ZIP)


def test_forget_removes_only_that_datasets_entries(cfg):
    lock = _record_bad_entry(cfg)
    assert lock.forget("300w_lp") == ["300W-LP.zip"]
    assert lock.forget("300w_lp") == []
    data = yaml.safe_load(Path(cfg.lock_file).read_text())
    assert data == {"aflw2000": {"AFLW2000-3D.zip": data["aflw2000"]["AFLW2000-3D.zip"]}}
    assert Path(cfg.lock_file).read_text().startswith("#")


# --------------------------------------------------------------------------------------------------
# the overall deadline


def test_slow_server_hits_the_overall_deadline(cfg, tmp_path):
    """One byte every 20 ms never trips the 5 s read timeout; the 0.3 s deadline for the file does, inside
    the one attempt (retries=0: no later check could catch it instead)."""
    c = dataclasses.replace(cfg, deadline_s=0.3, retries=0)
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP, trickle_s=0.02)}) as srv:
        with pytest.raises(DeadlineExceeded) as ei:
            fetch(spec(srv.url("/z")), dest, c, dataset="300w_lp", lock=LockFile(c.lock_file))
    msg = str(ei.value)
    assert "download.deadline_s = 0.3 s" in msg and str(dest) in msg
    assert "resumed next time" in msg  # the trickled bytes came with a strong ETag
    assert_nothing_recorded(c, dest)
    part = tmp_path / "300W-LP.zip.part"
    assert 0 < part.stat().st_size < len(ZIP) and ZIP.startswith(part.read_bytes())
    sidecar = json.loads((tmp_path / "300W-LP.zip.part.json").read_text())
    assert sidecar["url"] == srv.url("/z") and sidecar["etag"] == Route(ZIP).etag  # the validator that started it


def test_sidecar_with_an_unchecked_last_modified_does_not_resume(cfg, tmp_path):
    """A sidecar without the response Date (older format, or edited): its Last-Modified is not known strong."""
    dest = tmp_path / "300W-LP.zip"
    lm = http_date(3600)
    with serve({"/z": Route(ZIP, etag_kind="none", last_modified=lm)}) as srv:
        (tmp_path / "300W-LP.zip.part").write_bytes(b"X" * 1000)
        (tmp_path / "300W-LP.zip.part.json").write_text(json.dumps({"url": srv.url("/z"), "last_modified": lm}))
        fetch(spec(srv.url("/z")), dest, cfg, dataset="300w_lp", lock=LockFile(cfg.lock_file))
        assert "Range" not in srv.requests[0][1]
    assert dest.read_bytes() == ZIP


def test_deadline_also_bounds_retries_and_backoff(cfg, tmp_path):
    c = dataclasses.replace(cfg, deadline_s=0.2, retries=1000, backoff_s=0.05, backoff_max_s=0.05)
    dest = tmp_path / "300W-LP.zip"
    with serve({"/z": Route(ZIP, fail_503_times=10**6)}) as srv:
        with pytest.raises(DeadlineExceeded, match="HTTP 503"):
            fetch(spec(srv.url("/z")), dest, c, dataset="300w_lp", lock=LockFile(c.lock_file))
        assert len(srv.requests) < 1000
    assert_nothing_recorded(c, dest)


# --------------------------------------------------------------------------------------------------
# `pclbench acquire`: one-line errors, --forget-lock


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pclbench", "acquire", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})


def _entry(url: str, name: str, sha256=None) -> dict:
    return {"source": "url", "parser": "w300lp", "tasks": ["pose"], "licence": "research", "splits": ["train"],
            "size": 256, "description": "test fixture",
            "download": [{"name": name, "urls": [url], "sha256": sha256, "md5": None, "size": None, "extract": True}]}


def _acquire_cli(tmp_path, download, entry, *extra):
    sources = tmp_path / "sources"
    params = json.dumps({"download": download, "datasets": {"300w_lp": entry}})
    return _cli("--params", params, "--dataset", "300w_lp", "--sources", str(sources),
                "--receipt", str(sources / "300w_lp.receipt.json"), *extra)


@pytest.mark.parametrize("name,body,why", [
    ("300W-LP.tar.gz", TGZ[: len(TGZ) - 200], "EOFError"),   # gzip stream cut short
    ("300W-LP.zip", _bad_crc_zip(), "BadZipFile"),
])
def test_cli_corrupt_archive_with_published_checksum_is_one_line_error(tmp_path, default_config, name, body, why):
    """The published checksum matches these (damaged) bytes; extraction fails: a message, no traceback."""
    download = dict(default_config["download"], retries=0, lock_file=str(tmp_path / "lock.yaml"))
    with serve({"/a": Route(body)}) as srv:
        proc = _acquire_cli(tmp_path, download, _entry(srv.url("/a"), name, sha(body)))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and why in proc.stderr and name in proc.stderr
    assert f"Delete {tmp_path / 'sources' / '300w_lp' / 'downloads' / name} and run again" in proc.stderr
    assert not (tmp_path / "sources" / "300w_lp.receipt.json").exists()


def test_cli_file_in_the_way_of_a_folder_is_one_line_error(tmp_path, default_config):
    download = dict(default_config["download"], retries=0, lock_file=str(tmp_path / "lock.yaml"))
    (tmp_path / "sources" / "300w_lp").mkdir(parents=True)
    (tmp_path / "sources" / "300w_lp" / "downloads").write_text("a file where the downloads folder belongs")
    with serve({"/z": Route(ZIP)}) as srv:
        proc = _acquire_cli(tmp_path, download, _entry(srv.url("/z"), "300W-LP.zip"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "a file is in the way" in proc.stderr
    assert not Path(download["lock_file"]).exists()


def test_cli_bad_lock_entry_and_bad_file_in_place_recovered_with_forget_lock(tmp_path, default_config):
    """An older version recorded a cut download and left it in place: extraction fails with instructions;
    `--forget-lock` re-checks the file, downloads the good one and records it."""
    download = dict(default_config["download"], retries=0, lock_file=str(tmp_path / "lock.yaml"))
    bad = ZIP[:20_000]
    downloads = tmp_path / "sources" / "300w_lp" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "300W-LP.zip").write_bytes(bad)
    LockFile(download["lock_file"]).record("300w_lp", "300W-LP.zip", sha(bad), len(bad), "http://example.org/z")
    with serve({"/z": Route(ZIP)}) as srv:
        entry = _entry(srv.url("/z"), "300W-LP.zip")
        proc = _acquire_cli(tmp_path, download, entry)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "matches its lock-file entry" in proc.stderr and "--forget-lock" in proc.stderr
        assert re.search(r"delete lines \d+-\d+ of ", proc.stderr)
        assert srv.requests == []  # the bad file matched its (bad) entry: nothing was downloaded
        proc = _acquire_cli(tmp_path, download, entry, "--forget-lock")
    assert proc.returncode == 0, proc.stderr
    assert (downloads / "300W-LP.zip").read_bytes() == ZIP
    assert yaml.safe_load(Path(download["lock_file"]).read_text())["300w_lp"]["300W-LP.zip"]["sha256"] == sha(ZIP)
    assert (tmp_path / "sources" / "300w_lp" / "300W_LP" / "AFW" / "AFW_1_0.jpg").is_file()
