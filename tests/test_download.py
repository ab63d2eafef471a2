"""pclbench.data.download against a local HTTP server: resume, mirrors, retries, checksums, lock file."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random

import pytest
import yaml

from local_http import Route, serve
from pclbench.core.config import from_dict
from pclbench.data.download import (ChecksumMismatch, DownloadConfig, DownloadError, FileSpec, LockFile,
                                    fetch)

BODY = random.Random(0).randbytes(200_000)
SHA = hashlib.sha256(BODY).hexdigest()   # the independent reference: hashlib on the bytes served


@pytest.fixture()
def cfg(default_config, tmp_path) -> DownloadConfig:
    """The shipped `download` section, with test-sized waits and chunks."""
    c = from_dict(DownloadConfig, default_config["download"], "download")
    return dataclasses.replace(c, retries=2, backoff_s=0.0, backoff_max_s=0.0, timeout_s=5.0, chunk_bytes=4096,
                               progress_every_s=0.0, lock_file=str(tmp_path / "lock.yaml"))


def spec(urls, sha256=None, md5=None, size=None, name="data.bin"):
    return FileSpec(name=name, urls=list(urls), sha256=sha256, md5=md5, size=size, extract=False)


def test_default_config_fills_download_config_without_code_defaults(default_config):
    for f in dataclasses.fields(DownloadConfig):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    from_dict(DownloadConfig, default_config["download"], "download")


def test_resume_after_cut_connection_uses_range_and_gives_identical_bytes(cfg, tmp_path, caplog):
    routes = {"/f.bin": Route(BODY, cut_after=70_000, cut_times=1)}
    dest = tmp_path / "dl" / "data.bin"
    with serve(routes) as srv, caplog.at_level(logging.INFO, logger="pclbench.data.download"):
        rec = fetch(spec([srv.url("/f.bin")], sha256=SHA, size=len(BODY)), dest, cfg, dataset="ds")
    assert dest.read_bytes() == BODY
    assert rec["sha256"] == SHA and rec["size"] == len(BODY) and rec["url"] == srv.url("/f.bin")
    first, second = srv.requests
    assert "Range" not in first[1]
    assert second[1]["Range"] == "bytes=70000-"                  # exactly where the cut left the .part
    assert second[1]["If-Range"] == routes["/f.bin"].etag         # never splice two versions
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.bin"]  # no .part / .part.json left
    assert any("/s" in r.getMessage() and "%" in r.getMessage() for r in caplog.records)  # progress lines


def test_server_without_range_support_restarts_from_zero(cfg, tmp_path):
    routes = {"/f.bin": Route(BODY, cut_after=50_000, cut_times=1, ranges=False)}
    with serve(routes) as srv:
        fetch(spec([srv.url("/f.bin")], sha256=SHA), tmp_path / "data.bin", cfg, dataset="ds")
    assert (tmp_path / "data.bin").read_bytes() == BODY


def test_stale_partial_file_of_a_changed_resource_is_not_spliced(cfg, tmp_path):
    """A .part left by an older version: If-Range with the old ETag makes the server send it all."""
    dest = tmp_path / "data.bin"
    with serve({"/f.bin": Route(BODY)}) as srv:
        (tmp_path / "data.bin.part").write_bytes(b"X" * 1000)
        (tmp_path / "data.bin.part.json").write_text(json.dumps({"url": srv.url("/f.bin"), "etag": '"old"'}))
        fetch(spec([srv.url("/f.bin")], sha256=SHA), dest, cfg, dataset="ds")
        assert srv.requests[0][1]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize("algo", ["sha256", "md5"])
def test_checksum_mismatch_names_file_expected_and_actual(cfg, tmp_path, algo):
    wrong = b"not the published file" * 100
    expected = hashlib.new(algo, BODY).hexdigest()
    actual = hashlib.new(algo, wrong).hexdigest()
    dest = tmp_path / "lfw.tgz"
    with serve({"/lfw.tgz": Route(wrong)}) as srv:
        with pytest.raises(ChecksumMismatch) as ei:
            fetch(spec([srv.url("/lfw.tgz")], name="lfw.tgz", **{algo: expected}), dest, cfg, dataset="lfw")
    msg = str(ei.value)
    assert "lfw.tgz" in msg and str(dest) in msg
    assert f"{algo}: expected {expected}, actual {actual}" in msg
    assert list(tmp_path.iterdir()) == []  # nothing renamed into place, wrong bytes deleted


def test_size_mismatch_is_reported(cfg, tmp_path):
    with serve({"/f": Route(BODY)}) as srv:
        with pytest.raises(ChecksumMismatch, match=f"size: expected {len(BODY) + 1} bytes, actual {len(BODY)}"):
            fetch(spec([srv.url("/f")], sha256=SHA, size=len(BODY) + 1), tmp_path / "f", cfg, dataset="ds")


def test_404_on_first_mirror_then_working_mirror(cfg, tmp_path):
    with serve({"/dead/f.bin": Route(status=404), "/live/f.bin": Route(BODY)}) as srv:
        rec = fetch(spec([srv.url("/dead/f.bin"), srv.url("/live/f.bin")], sha256=SHA), tmp_path / "f.bin",
                    cfg, dataset="ds")
        paths = [p for p, _ in srv.requests]
    assert paths == ["/dead/f.bin", "/live/f.bin"]   # a 404 is not retried
    assert rec["url"].endswith("/live/f.bin") and (tmp_path / "f.bin").read_bytes() == BODY


def test_wrong_bytes_on_first_mirror_then_good_mirror(cfg, tmp_path):
    with serve({"/bad": Route(b"corrupt"), "/good": Route(BODY)}) as srv:
        rec = fetch(spec([srv.url("/bad"), srv.url("/good")], sha256=SHA), tmp_path / "f", cfg, dataset="ds")
    assert rec["url"].endswith("/good") and (tmp_path / "f").read_bytes() == BODY


def test_transient_errors_are_retried_with_exponential_backoff(cfg, tmp_path):
    waits = []
    c = dataclasses.replace(cfg, retries=4, backoff_s=1.5, backoff_max_s=5.0)
    with serve({"/f": Route(BODY, fail_503_times=3)}) as srv:
        fetch(spec([srv.url("/f")], sha256=SHA), tmp_path / "f", c, dataset="ds", sleep=waits.append)
    assert waits == [1.5, 3.0, 5.0]  # 1.5 * 2**k, capped at backoff_max_s


def test_all_mirrors_failing_lists_each(cfg, tmp_path):
    c = dataclasses.replace(cfg, retries=1)
    with serve({"/a": Route(status=404), "/b": Route(BODY, fail_503_times=10)}) as srv:
        with pytest.raises(DownloadError) as ei:
            fetch(spec([srv.url("/a"), srv.url("/b")], sha256=SHA), tmp_path / "f", c, dataset="ds",
                  sleep=lambda s: None)
    msg = str(ei.value)
    assert "HTTP 404" in msg and "HTTP 503" in msg and srv.url("/a") in msg and srv.url("/b") in msg
    assert not isinstance(ei.value, ChecksumMismatch)
    assert not (tmp_path / "f").exists()


def test_lock_file_records_first_download_then_enforces_it(cfg, tmp_path):
    route = Route(BODY)
    dest = tmp_path / "dl" / "pairs.txt"
    lock = LockFile(cfg.lock_file)
    with serve({"/pairs.txt": route}) as srv:
        s = spec([srv.url("/pairs.txt")], name="pairs.txt")  # no published checksum
        rec = fetch(s, dest, cfg, dataset="lfw", lock=lock)
        assert rec["verified_by"].startswith("recorded in")
        text = (tmp_path / "lock.yaml").read_text()
        assert text.startswith("#")  # the header tells the user to commit it
        entry = yaml.safe_load(text)["lfw"]["pairs.txt"]
        assert entry["sha256"] == SHA and entry["size"] == len(BODY)

        # The source changes its bytes: a fresh download must now fail against the lock.
        dest.unlink()
        route.body = b"silently changed" * 10
        with pytest.raises(ChecksumMismatch) as ei:
            fetch(s, dest, cfg, dataset="lfw", lock=lock)
        assert f"expected {SHA}" in str(ei.value) and "lock file" in str(ei.value)
        assert not dest.exists()

        route.body = BODY
        rec = fetch(s, dest, cfg, dataset="lfw", lock=lock)
    assert rec["verified_by"].startswith("lock file") and dest.read_bytes() == BODY
    assert yaml.safe_load((tmp_path / "lock.yaml").read_text())["lfw"]["pairs.txt"]["sha256"] == SHA


def test_file_already_in_place_is_verified_not_downloaded(cfg, tmp_path):
    dest = tmp_path / "f"
    dest.write_bytes(BODY)
    with serve({"/f": Route(BODY)}) as srv:
        rec = fetch(spec([srv.url("/f")], sha256=SHA), dest, cfg, dataset="ds")
        assert srv.requests == []
    assert rec["url"] is None and rec["sha256"] == SHA


def test_no_checksum_and_no_lock_file_is_an_error(cfg, tmp_path):
    with pytest.raises(DownloadError, match="lock"):
        fetch(spec(["http://127.0.0.1:9/x"]), tmp_path / "x", cfg, dataset="ds", lock=None)


def test_complete_partial_file_from_an_interrupted_run_is_finished_without_refetching(cfg, tmp_path):
    """A crash after the last byte but before the rename: the resume gets 416 (nothing left) and verifies."""
    dest = tmp_path / "f"
    with serve({"/f": Route(BODY)}) as srv:
        (tmp_path / "f.part").write_bytes(BODY)
        (tmp_path / "f.part.json").write_text(json.dumps({"url": srv.url("/f"), "etag": Route(BODY).etag}))
        rec = fetch(spec([srv.url("/f")], sha256=SHA), dest, cfg, dataset="ds")
        assert [h["Range"] for _, h in srv.requests] == [f"bytes={len(BODY)}-"]
    assert dest.read_bytes() == BODY and rec["url"] == srv.url("/f")
