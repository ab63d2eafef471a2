"""pclbench.data.acquire and `pclbench acquire`: url datasets served locally, licence-gated (manual) ones.

The entries below follow the registry contract (workflow/schemas/config.schema.yaml, datasets.<name>);
they are test fixtures, not the real registry entries.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from local_http import Route, serve
from pclbench.core.config import from_dict
from pclbench.data.acquire import DatasetNotFound, acquire, manual_instructions, missing_manual_files
from pclbench.data.download import DownloadConfig

ROOT = Path(__file__).resolve().parents[1]
LABELS = b"train_00001.jpg 5\ntest_0001.jpg 1\n"   # two lines in RAF-DB's list_patition_label.txt format
LABELS_SHA = hashlib.sha256(LABELS).hexdigest()

MANUAL = {
    "source": "manual",
    "parser": "raf_db",
    "tasks": ["expression"],
    "licence": "research only, request by e-mail (RAF-DB terms)",
    "splits": ["train", "test"],
    "size": 100,
    "description": "test fixture shaped like RAF-DB basic",
    "manual": {
        "obtain": "the RAF-DB 'basic' release (aligned images + EmoLabel)",
        "from": "the RAF-DB authors, http://www.whdeng.cn/raf/model1.html (licence agreement by e-mail)",
        "files": [
            {"path": "basic/EmoLabel/list_patition_label.txt", "kind": "file", "sha256": LABELS_SHA},
            {"path": "basic/Image/aligned", "kind": "dir", "sha256": None},
        ],
    },
}


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


TGZ = _tgz({"lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg": b"jpeg-1", "lfw/Abba_Eban/Abba_Eban_0001.jpg": b"jpeg-2"})
PAIRS = b"10\t300\nAaron_Eckhart\t1\t2\n"


def url_entry(srv) -> dict:
    return {
        "source": "url", "parser": "lfw", "tasks": ["verification"], "licence": "public (LFW terms)",
        "splits": ["all"], "size": 112, "description": "test fixture shaped like LFW",
        "download": [
            {"name": "lfw.tgz", "urls": [srv.url("/gone/lfw.tgz"), srv.url("/lfw.tgz")],
             "sha256": hashlib.sha256(TGZ).hexdigest(), "md5": None, "size": len(TGZ), "extract": True},
            {"name": "pairs.txt", "urls": [srv.url("/pairs.txt")], "sha256": None, "md5": None, "size": None,
             "extract": False},
        ],
    }


@pytest.fixture()
def cfg(default_config, tmp_path) -> DownloadConfig:
    c = from_dict(DownloadConfig, default_config["download"], "download")
    return dataclasses.replace(c, retries=1, backoff_s=0.0, timeout_s=5.0, lock_file=str(tmp_path / "lock.yaml"))


def _place(root: Path, labels: bytes = LABELS, images: bool = True) -> None:
    (root / "basic/EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "basic/EmoLabel/list_patition_label.txt").write_bytes(labels)
    if images:
        (root / "basic/Image/aligned").mkdir(parents=True, exist_ok=True)
        (root / "basic/Image/aligned/train_00001_aligned.jpg").write_bytes(b"jpeg")


def test_missing_licence_gated_dataset_says_what_where_and_from_whom(tmp_path, cfg):
    sources = tmp_path / "sources"
    receipt = sources / "raf_db.receipt.json"
    with pytest.raises(DatasetNotFound) as ei:
        acquire("raf_db", MANUAL, sources, receipt, cfg)
    msg = str(ei.value)
    root = (sources / "raf_db").absolute()
    assert "'raf_db' is licence-gated" in msg and "2 of its 2 required path(s)" in msg
    assert "What to obtain: the RAF-DB 'basic' release" in msg
    assert "From:           the RAF-DB authors, http://www.whdeng.cn/raf/model1.html" in msg
    assert "research only" in msg                                         # the licence line
    assert f"Put it under {root}/" in msg
    assert f"[MISSING] {root}/basic/EmoLabel/list_patition_label.txt  (file, sha256 {LABELS_SHA})" in msg
    assert f"[MISSING] {root}/basic/Image/aligned/  (folder)" in msg
    assert "workflow.missing_data: skip" in msg
    assert not receipt.exists()


def test_partly_placed_dataset_names_only_what_is_wrong(tmp_path, cfg):
    root = tmp_path / "sources" / "raf_db"
    _place(root, labels=b"an older label file\n")
    with pytest.raises(DatasetNotFound) as ei:
        acquire("raf_db", MANUAL, tmp_path / "sources", tmp_path / "r.json", cfg)
    msg = str(ei.value)
    wrong_sha = hashlib.sha256(b"an older label file\n").hexdigest()
    assert "1 of its 2 required path(s)" in msg
    assert f"[WRONG: has sha256 {wrong_sha}, expected {LABELS_SHA}" in msg
    assert f"[ok] {root.absolute()}/basic/Image/aligned/" in msg


def test_missing_manual_files_for_the_dag(tmp_path):
    root = tmp_path / "raf_db"
    assert missing_manual_files(MANUAL, root) == ["basic/EmoLabel/list_patition_label.txt", "basic/Image/aligned"]
    _place(root, labels=b"wrong bytes", images=False)
    (root / "basic/Image").mkdir(parents=True)
    (root / "basic/Image/aligned").write_bytes(b"a file where a folder belongs")
    assert missing_manual_files(MANUAL, root) == ["basic/Image/aligned"]     # cheap: no hashing by default
    assert missing_manual_files(MANUAL, root, check_sha256=True) == ["basic/EmoLabel/list_patition_label.txt",
                                                                     "basic/Image/aligned"]
    assert "is a file, expected a folder" in manual_instructions("raf_db", MANUAL, root)
    assert missing_manual_files({"source": "url"}, root) == []


def test_placed_dataset_gets_a_receipt(tmp_path, cfg):
    sources = tmp_path / "sources"
    _place(sources / "raf_db")
    out = acquire("raf_db", MANUAL, sources, sources / "raf_db.receipt.json", cfg)
    on_disk = json.loads((sources / "raf_db.receipt.json").read_text())
    assert on_disk == out and on_disk["dataset"] == "raf_db" and on_disk["source"] == "manual"
    label, images = on_disk["files"]
    assert label == {"path": "basic/EmoLabel/list_patition_label.txt", "kind": "file", "size": len(LABELS),
                     "sha256": LABELS_SHA, "verified_by": "registry sha256"}
    assert images["kind"] == "dir" and images["n_files"] == 1 and images["size"] == 4


def test_url_dataset_downloads_verifies_extracts_and_reruns_cheaply(tmp_path, cfg):
    routes = {"/lfw.tgz": Route(TGZ), "/pairs.txt": Route(PAIRS)}
    sources = tmp_path / "sources"
    with serve(routes) as srv:
        out = acquire("lfw", url_entry(srv), sources, sources / "lfw.receipt.json", cfg)
        n_requests = len(srv.requests)
        again = acquire("lfw", url_entry(srv), sources, sources / "lfw.receipt.json", cfg)
        assert len(srv.requests) == n_requests  # in place and verified: nothing downloaded again
    root = sources / "lfw"
    assert (root / "lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg").read_bytes() == b"jpeg-1"
    assert (root / "downloads/pairs.txt").read_bytes() == PAIRS
    tgz, pairs = out["files"]
    assert tgz["extracted"] == ["lfw"] and tgz["url"].endswith("/lfw.tgz") and tgz["size"] == len(TGZ)
    assert pairs["sha256"] == hashlib.sha256(PAIRS).hexdigest() and "extracted" not in pairs
    assert yaml.safe_load(Path(cfg.lock_file).read_text())["lfw"]["pairs.txt"]["sha256"] == pairs["sha256"]
    assert [f["sha256"] for f in again["files"]] == [f["sha256"] for f in out["files"]]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pclbench", "acquire", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})


def test_cli_end_to_end_url_and_manual(tmp_path, default_config):
    download = dict(default_config["download"], retries=0, lock_file=str(tmp_path / "lock.yaml"))
    sources = tmp_path / "sources"
    with serve({"/lfw.tgz": Route(TGZ), "/pairs.txt": Route(PAIRS)}) as srv:
        # As the workflow calls it: the dataset entry in --params, the transfer settings in --download.
        proc = _cli("--params", json.dumps({"datasets": {"lfw": url_entry(srv)}}), "--download", json.dumps(download),
                    "--dataset", "lfw", "--sources", str(sources), "--receipt", str(sources / "lfw.receipt.json"))
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads((sources / "lfw.receipt.json").read_text())
    assert [f["name"] for f in receipt["files"]] == ["lfw.tgz", "pairs.txt"]
    assert (sources / "lfw/lfw/Abba_Eban/Abba_Eban_0001.jpg").read_bytes() == b"jpeg-2"

    params = json.dumps({"download": download, "datasets": {"raf_db": MANUAL}})
    args = ("--params", params, "--dataset", "raf_db", "--sources", str(sources),
            "--receipt", str(sources / "raf_db.receipt.json"))
    proc = _cli(*args)
    assert proc.returncode == 1
    assert "What to obtain" in proc.stderr and str((sources / "raf_db/basic/Image/aligned").absolute()) in proc.stderr
    assert not (sources / "raf_db.receipt.json").exists()
    _place(sources / "raf_db")
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((sources / "raf_db.receipt.json").read_text())["files"][0]["sha256"] == LABELS_SHA


def test_cli_checksum_mismatch_fails_cleanly(tmp_path, default_config):
    download = dict(default_config["download"], retries=0, lock_file=str(tmp_path / "lock.yaml"))
    with serve({"/lfw.tgz": Route(b"an HTML error page"), "/pairs.txt": Route(PAIRS)}) as srv:
        entry = url_entry(srv)
        entry["download"][0]["urls"] = [srv.url("/lfw.tgz")]
        params = json.dumps({"download": download, "datasets": {"lfw": entry}})
        proc = _cli("--params", params, "--dataset", "lfw", "--sources", str(tmp_path / "s"),
                    "--receipt", str(tmp_path / "s" / "lfw.receipt.json"))
    assert proc.returncode == 1
    assert "checksum mismatch for lfw.tgz" in proc.stderr and hashlib.sha256(TGZ).hexdigest() in proc.stderr
    assert not (tmp_path / "s" / "lfw.receipt.json").exists()


def test_workflow_plans_acquire_then_prepare_for_a_real_dataset(tmp_path):
    """A url dataset in the registry: `snakemake -n RAW/<it>` plans acquire -> prepare (not generate)."""
    extra = tmp_path / "extra.yaml"
    entry = {"source": "url", "parser": "lfw", "tasks": ["verification"], "licence": "public", "splits": ["all"],
             "size": 112, "download": [{"name": "lfw.tgz", "urls": ["https://example.org/lfw.tgz"], "sha256": None,
                                        "md5": None, "size": None, "extract": True}]}
    extra.write_text(yaml.safe_dump({"datasets": {"lfw_test": entry}}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n",
           "--cores", "1", "--configfile", str(ROOT / "config/config.yaml"), str(extra), "--", "data/raw/lfw_test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule acquire:" in proc.stdout and "rule prepare:" in proc.stdout and "rule generate:" not in proc.stdout
    assert "results/receipts/lfw_test.receipt.json" in proc.stdout  # not under paths.sources (read-only storage)


def test_cli_without_download_section_names_it(tmp_path):
    proc = _cli("--params", json.dumps({"datasets": {"raf_db": MANUAL}}), "--dataset", "raf_db",
                "--sources", str(tmp_path))
    assert proc.returncode == 2 and "download" in proc.stderr


def test_every_registry_entry_is_readable_by_acquire(default_config, tmp_path):
    """The real entries of config.yaml: url downloads build FileSpecs, manual ones give instructions."""
    from pclbench.data.download import FileSpec

    for name, entry in default_config["datasets"].items():
        if entry["source"] == "url":
            for i, raw in enumerate(entry["download"]):
                from_dict(FileSpec, raw, f"datasets.{name}.download[{i}]")
        elif entry["source"] == "manual":
            msg = manual_instructions(name, entry, tmp_path / name)
            assert entry["manual"]["obtain"] in msg and entry["manual"]["from"] in msg
            assert len(missing_manual_files(entry, tmp_path / name)) == len(entry["manual"]["files"])
