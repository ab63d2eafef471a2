"""Read-only dataset storage: with a dataset in place, `acquire` and `prepare` write nothing under paths.sources.

The receipt goes to ``paths.receipts`` (default ``<paths.results>/receipts``), not ``SOURCES/``.
Every test makes the sources folder read-only (``chmod -R a-w``) AND compares a listing of it
(every entry's kind, mode, size, mtime and, for files, sha256) before and after: a process running
as root ignores the permission bits (CI runs as root), so the listing is what proves nothing was
created, removed or changed there; as an ordinary user the chmod alone would make any write fail.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

import official_fixtures as fx
from local_http import Route, serve
from test_acquire import LABELS_SHA, MANUAL, PAIRS, TGZ, _place, url_entry

ROOT = Path(__file__).resolve().parents[1]


def listing(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                                             st.st_mtime_ns, digest)
    return out


@contextmanager
def read_only(root: Path):
    """chmod -R a-w (restored afterwards so that pytest can delete the folder)."""
    modes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            p = Path(dirpath) / name
            if not p.is_symlink():
                modes[p] = stat.S_IMODE(p.stat().st_mode)
    for p, m in modes.items():
        os.chmod(p, m & ~0o222)
    try:
        yield
    finally:
        for p, m in sorted(modes.items(), key=lambda kv: len(kv[0].parts)):
            os.chmod(p, m)


def _pclbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pclbench", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def _paths(tmp_path: Path, sources: Path, **extra) -> dict:
    return {"sources": str(sources), "raw": str(tmp_path / "raw"), "aligned": str(tmp_path / "aligned"),
            "results": str(tmp_path / "results"), **extra}


def test_manual_dataset_on_read_only_storage(tmp_path, default_config):
    """As rule acquire runs it minus --receipt: the CLI's default receipt is outside SOURCES."""
    sources = tmp_path / "sources"
    _place(sources / "raf_db")
    download = dict(default_config["download"], lock_file=str(tmp_path / "lock.yaml"))
    params = json.dumps({"paths": _paths(tmp_path, sources), "download": download, "datasets": {"raf_db": MANUAL}})
    before = listing(sources)
    with read_only(sources):
        proc = _pclbench("acquire", "--params", params, "--dataset", "raf_db", "--sources", str(sources))
    after = listing(sources)  # modes restored: compared with the listing before
    assert proc.returncode == 0, proc.stderr
    assert after == before
    receipt = tmp_path / "results" / "receipts" / "raf_db.receipt.json"
    assert json.loads(receipt.read_text())["files"][0]["sha256"] == LABELS_SHA


def test_paths_receipts_setting_is_where_the_receipt_goes(tmp_path, default_config):
    sources = tmp_path / "sources"
    _place(sources / "raf_db")
    download = dict(default_config["download"], lock_file=str(tmp_path / "lock.yaml"))
    paths = _paths(tmp_path, sources, receipts=str(tmp_path / "state" / "receipts"))
    params = json.dumps({"paths": paths, "download": download, "datasets": {"raf_db": MANUAL}})
    proc = _pclbench("acquire", "--params", params, "--dataset", "raf_db", "--sources", str(sources))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "state" / "receipts" / "raf_db.receipt.json").is_file()
    assert not (tmp_path / "results").exists()


def test_url_dataset_already_in_place_on_read_only_storage(tmp_path, default_config):
    """Downloaded and unpacked once (writable); afterwards the storage is read-only and acquire re-verifies
    the files without a request, a lock, a marker or a temporary file under SOURCES."""
    sources = tmp_path / "sources"
    download = dict(default_config["download"], retries=0, lock_file=str(tmp_path / "lock.yaml"))
    with serve({"/lfw.tgz": Route(TGZ), "/pairs.txt": Route(PAIRS)}) as srv:
        params = json.dumps({"paths": _paths(tmp_path, sources), "download": download,
                             "datasets": {"lfw": url_entry(srv)}})
        first = _pclbench("acquire", "--params", params, "--dataset", "lfw", "--sources", str(sources))
        assert first.returncode == 0, first.stderr
        n_requests = len(srv.requests)
        lock_before = Path(download["lock_file"]).read_bytes()
        before = listing(sources)
        with read_only(sources):
            again = _pclbench("acquire", "--params", params, "--dataset", "lfw", "--sources", str(sources))
        after = listing(sources)  # modes restored: compared with the listing before
        assert len(srv.requests) == n_requests
    assert again.returncode == 0, again.stderr
    assert after == before
    assert Path(download["lock_file"]).read_bytes() == lock_before
    receipt = json.loads((tmp_path / "results" / "receipts" / "lfw.receipt.json").read_text())
    assert [f["name"] for f in receipt["files"]] == ["lfw.tgz", "pairs.txt"]


def test_prepare_reads_a_read_only_release(tmp_path):
    """prepare (the parser) only reads SOURCES/<dataset>; its output goes to RAW."""
    src = tmp_path / "sources" / "raf_db"
    fx.write_raf_db(src)
    entry = {"source": "manual", "parser": "raf_db", "tasks": [], "licence": "x", "splits": ["train", "test"],
             "size": 64, "manual": {"obtain": "x", "from": "y", "files": [{"path": "basic", "kind": "dir",
                                                                           "sha256": None}]}}
    before = listing(src)
    with read_only(src):
        proc = _pclbench("prepare", "--params", json.dumps({"datasets": {"raf_db": entry}}), "--dataset", "raf_db",
                         "--source", str(src), "--out", str(tmp_path / "raw" / "raf_db"))
    after = listing(src)  # modes restored: compared with the listing before
    assert proc.returncode == 0, proc.stderr
    assert after == before
    assert json.loads((tmp_path / "raw/raf_db/meta.json").read_text())["splits"] == {"train": 3, "test": 2}


def test_workflow_receipt_path_follows_paths_receipts(tmp_path):
    """The acquire rule's output (and prepare's input) is RECEIPTS/<dataset>.receipt.json."""
    extra = tmp_path / "extra.yaml"
    entry = {"source": "url", "parser": "lfw", "tasks": ["verification"], "licence": "public", "splits": ["all"],
             "size": 112, "download": [{"name": "lfw.tgz", "urls": ["https://example.org/lfw.tgz"], "sha256": None,
                                        "md5": None, "size": None, "extract": True}]}
    extra.write_text(yaml.safe_dump({"datasets": {"lfw_test": entry},
                                     "paths": {"receipts": "/archive/pclbench-receipts"}}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p",
           "--cores", "1", "--configfile", str(ROOT / "config/config.yaml"), str(extra), "--", "data/raw/lfw_test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "/archive/pclbench-receipts/lfw_test.receipt.json" in proc.stdout
    assert "data/sources/lfw_test.receipt.json" not in proc.stdout


def test_read_only_storage_without_the_dataset_in_place_says_what_to_do(tmp_path, default_config, monkeypatch):
    """A download into read-only storage fails with a message, not a traceback (EACCES / EROFS from the
    first write; simulated here, because root ignores permission bits)."""
    import errno

    from pclbench.core.config import from_dict
    from pclbench.data import acquire as acq
    from pclbench.data.download import DownloadConfig, DownloadError

    def refuse(spec, dest, *a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system", str(dest))

    monkeypatch.setattr(acq, "fetch", refuse)
    cfg = from_dict(DownloadConfig, dict(default_config["download"], lock_file=str(tmp_path / "l.yaml")), "download")
    with serve({"/lfw.tgz": Route(TGZ), "/pairs.txt": Route(PAIRS)}) as srv:
        with pytest.raises(DownloadError, match=r"lfw: cannot write .*lfw\.tgz \(Read-only file system\).*read-only"):
            acq.acquire("lfw", url_entry(srv), tmp_path / "sources", tmp_path / "r" / "lfw.receipt.json", cfg)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; the listing tests above cover root")
def test_unpacking_into_read_only_storage_fails_with_a_message(tmp_path, default_config):
    """As an ordinary user: the archive is in place but its extraction marker is not, so acquire would
    have to unpack into read-only storage: exit 1 and the message, sources unchanged."""
    sources = tmp_path / "sources"
    download = dict(default_config["download"], retries=0, lock_file=str(tmp_path / "lock.yaml"))
    with serve({"/lfw.tgz": Route(TGZ), "/pairs.txt": Route(PAIRS)}) as srv:
        params = json.dumps({"paths": _paths(tmp_path, sources), "download": download,
                             "datasets": {"lfw": url_entry(srv)}})
        assert _pclbench("acquire", "--params", params, "--dataset", "lfw", "--sources", str(sources)).returncode == 0
        (sources / "lfw" / "downloads" / "lfw.tgz.extracted.json").unlink()
        before = listing(sources)
        with read_only(sources):
            proc = _pclbench("acquire", "--params", params, "--dataset", "lfw", "--sources", str(sources))
        after = listing(sources)
    assert proc.returncode == 1 and "is read-only" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert after == before
