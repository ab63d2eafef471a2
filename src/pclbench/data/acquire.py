"""Getting a real dataset into ``paths.sources/<name>/`` in its official release layout.

One registry entry (config ``datasets.<name>``, contract
in docs/architecture.md and workflow/schemas/config.schema.yaml) says how:

- ``source: url`` (public sets: LFW with its pairs, AFLW2000-3D, 300W-LP): every ``download`` file is
  fetched into ``<name>/downloads/`` by :func:`pclbench.data.download.fetch` (resumable, retried,
  mirrors in order, checksum or lock-file verified) and archives with ``extract: true`` are unpacked
  into ``<name>/`` by :func:`pclbench.data.archive.extract_archive` (safe, bounded).
- ``source: manual`` (licence-gated sets: VoxCeleb1/2, RAF-DB, AffectNet, DISFA, BP4D, CPLFW): nothing
  can be downloaded on the user's behalf; every ``manual.files`` path must be in place with the right
  kind (file / dir) and, where given, sha256. Otherwise :class:`DatasetNotFound` says exactly what to
  obtain, from whom, which files go where (absolute paths) and which are missing or wrong.

Either way a receipt JSON (files, sizes, digests, time) is written atomically; it is the workflow's
output of rule ``acquire`` and the input of rule ``prepare`` (the parser). It lives outside
``paths.sources`` (:func:`receipts_dir`), so a dataset already in place may sit on read-only storage.

Errors are messages: everything that can go wrong with downloaded bytes or the folders
they go to is raised as :class:`pclbench.data.download.DownloadError`,
:class:`pclbench.data.archive.UnsafeArchive` (``CorruptArchive`` for truncated / damaged archives:
``EOFError``, ``BadZipFile``) or :class:`DatasetNotFound`, which the CLI prints as one line; a file in
the way of a folder (``FileExistsError``) says which. An archive that matches its lock-file entry but
does not open says how to drop that entry (``forget_lock`` / ``pclbench acquire --forget-lock``).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from pclbench.core.config import ConfigError, from_dict
from pclbench.core.io import atomic_write_text
from pclbench.data.archive import CorruptArchive, extract_archive
from pclbench.data.download import DownloadConfig, DownloadError, FileSpec, LockFile, fetch, file_digests

log = logging.getLogger(__name__)

RECEIPT_VERSION = 1


class DatasetNotFound(FileNotFoundError):
    """A licence-gated dataset is not (completely, correctly) in place; the message says what to do."""


def _layouts(entry: Mapping[str, Any]) -> list[tuple[str, list[dict]]]:
    """``[(name, files)]``: ``manual.files`` (the main release layout) then each ``manual.alternatives``
    entry (another official release of the same dataset, e.g. AffectNet's newer npy release)."""
    m = entry["manual"]
    return [("main", list(m["files"]))] + [(a["name"], list(a["files"])) for a in m.get("alternatives") or []]


def _placed_files(entry: Mapping[str, Any], dataset_dir: Path, check_sha256: bool) -> list[dict]:
    """The ``files`` list of the first release layout completely in place, else ``manual.files``."""
    for _, files in _layouts(entry):
        if not _manual_problems(entry, dataset_dir, check_sha256, files):
            return files
    return list(entry["manual"]["files"])


def _manual_problems(entry: Mapping[str, Any], dataset_dir: Path, check_sha256: bool,
                     files: Optional[list[dict]] = None) -> list[tuple[dict, str]]:
    """``[(files entry, problem)]`` for every entry of ``files`` that is missing or wrong. Without
    ``files``: none when any release layout (``manual.files`` or an alternative) is completely in
    place, else the problems of ``manual.files``."""
    if files is None:
        layouts = _layouts(entry)
        found = [_manual_problems(entry, dataset_dir, check_sha256, fl) for _, fl in layouts]
        return [] if any(not pr for pr in found) else found[0]
    problems = []
    for f in files:
        p = dataset_dir / f["path"]
        kind = f["kind"]
        if not (p.exists() or p.is_symlink()):
            problems.append((f, "missing"))
        elif not p.exists():
            problems.append((f, f"a broken symlink (-> {os.readlink(p)})"))
        elif kind == "file" and not p.is_file():
            problems.append((f, "is a folder, expected a file"))
        elif kind == "dir" and not p.is_dir():
            problems.append((f, "is a file, expected a folder"))
        elif kind == "dir" and not any(p.iterdir()):
            problems.append((f, "is an empty folder"))
        elif check_sha256 and kind == "file" and f.get("sha256"):
            actual = file_digests(p, algorithms=("sha256",))["sha256"]
            if actual != f["sha256"].lower():
                problems.append((f, f"has sha256 {actual}, expected {f['sha256'].lower()} (a different or "
                                    f"corrupted release)"))
    return problems


def missing_manual_files(entry: Mapping[str, Any], dataset_dir: str | os.PathLike, *,
                         check_sha256: bool = False) -> list[str]:
    """The ``manual.files`` paths (relative, as in the registry) not correctly in place in ``dataset_dir``.

    ``dataset_dir`` is the dataset's own folder, ``paths.sources/<name>`` (the entry does not know its
    name). An empty list means the dataset can be acquired. Meant for the workflow at DAG time, where
    it must be cheap: by default only existence and kind are checked; ``check_sha256=True`` also hashes
    the files that have a registered sha256 (rule ``acquire`` always does).
    """
    if entry.get("source") != "manual":
        return []
    return [f["path"] for f, _ in _manual_problems(entry, Path(dataset_dir), check_sha256)]


def manual_instructions(name: str, entry: Mapping[str, Any], dataset_dir: str | os.PathLike,
                        problems: Optional[list[tuple[dict, str]]] = None) -> str:
    """The message of :class:`DatasetNotFound`: what to obtain, from whom, what goes where."""
    dataset_dir = Path(dataset_dir).absolute()
    if problems is None:
        problems = _manual_problems(entry, dataset_dir, check_sha256=True)
    bad = {f["path"]: why for f, why in problems}
    m = entry["manual"]
    lines = [
        f"dataset {name!r} is licence-gated and must be obtained by you; "
        f"{len(bad)} of its {len(m['files'])} required path(s) are missing or wrong.",
        f"  What to obtain: {m['obtain']}",
        f"  From:           {m['from']}",
        f"  Licence:        {entry.get('licence', '(see the dataset page)')}",
        f"  Put it under {dataset_dir}/ in the official release layout, so that these exist:",
    ]
    for f in m["files"]:
        lines.append(_instruction_line(dataset_dir, f, bad))
    for alt in m.get("alternatives") or []:
        lines.append(f"  or, for the {alt['name']} release, these:")
        alt_bad = {f["path"]: why for f, why in _manual_problems(entry, dataset_dir, False, list(alt["files"]))}
        lines += [_instruction_line(dataset_dir, f, alt_bad) for f in alt["files"]]
    lines += [
        "  Then run the workflow (or `pclbench acquire`) again. To run everything else without this dataset,",
        "  keep `workflow.missing_data: skip`: the benchmarks that need it are reported as not run.",
    ]
    return "\n".join(lines)


def _instruction_line(dataset_dir: Path, f: Mapping[str, Any], bad: Mapping[str, str]) -> str:
    what = "folder" if f["kind"] == "dir" else "file"
    target = dataset_dir / f["path"]
    shown = f"{target}/" if f["kind"] == "dir" else str(target)
    sha = f", sha256 {f['sha256']}" if f.get("sha256") else ""
    why = bad.get(f["path"])
    status = "ok" if why is None else "MISSING" if why == "missing" else f"WRONG: {why}"
    return f"    [{status}] {shown}  ({what}{sha})"


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _extract_once(archive: Path, dataset_dir: Path, record: dict, cfg: DownloadConfig, *, dataset: str,
                  lock: LockFile) -> list[str]:
    """Unpack ``archive`` into ``dataset_dir`` unless the same bytes were already unpacked there.

    A marker ``downloads/<name>.extracted.json`` (sha256 + top-level entries) makes a rerun cheap; it is
    written after the extraction, so a crash in between only means one more (idempotent) extraction.
    """
    marker = archive.with_name(archive.name + ".extracted.json")
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        if done.get("sha256") == record["sha256"] and all((dataset_dir / t).exists() for t in done.get("entries", [])):
            log.info("%s already extracted (%s)", archive.name, ", ".join(done["entries"]))
            return done["entries"]
    log.info("extracting %s into %s", archive.name, dataset_dir)
    try:
        tops = extract_archive(archive, dataset_dir, max_bytes=cfg.max_extract_bytes,
                               max_files=cfg.max_extract_files)
    except CorruptArchive as e:
        if str(record.get("verified_by", "")).startswith(("lock file", "recorded in")):
            how = ("It matches its lock-file entry, so that entry was recorded from a bad download: "
                   + lock.how_to_forget(dataset, archive.name) + f" (a bad {archive.name} in place is then "
                   f"downloaded again).")
        else:
            how = f"Delete {archive} and run again to download it afresh."
        raise CorruptArchive(f"{e}\n{how}") from None
    _atomic_json(marker, {"sha256": record["sha256"], "entries": tops})
    return tops


def acquire(name: str, entry: Mapping[str, Any], sources_dir: str | os.PathLike, receipt: str | os.PathLike,
            cfg: DownloadConfig, *, forget_lock: bool = False) -> dict[str, Any]:
    """Bring dataset ``name`` (registry ``entry``) into ``sources_dir/name`` and write ``receipt``.

    Returns the receipt: ``{dataset, source, dir, files: [{path, kind, size, sha256, ...}], time_utc,
    seconds}``. ``forget_lock`` first deletes the dataset's lock-file entries (``--forget-lock``: the
    way back from an entry recorded from a bad download); the files are then checked and recorded
    anew. Raises :class:`DatasetNotFound` (manual data not in place),
    :class:`pclbench.data.download.DownloadError` / ``ChecksumMismatch`` / ``DeadlineExceeded`` (url)
    or :class:`pclbench.data.archive.UnsafeArchive` / ``CorruptArchive``.
    """
    t0 = time.perf_counter()
    source = entry.get("source")
    dataset_dir = Path(sources_dir) / name
    if forget_lock:
        LockFile(cfg.lock_file).forget(name)
    if source == "url":
        try:
            files = _acquire_url(name, entry, dataset_dir, cfg)
        except (FileExistsError, NotADirectoryError) as e:
            raise DownloadError(f"dataset {name}: {e.filename or dataset_dir} is in the way (a file where a "
                                f"folder is needed, or the reverse); move it away and run again") from None
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            # Read-only storage is fine once a dataset is in place (nothing is written then), but a
            # download, an unpacking or its marker file is a write.
            raise DownloadError(f"dataset {name}: cannot write {e.filename or dataset_dir} ({e.strerror}): "
                                f"{dataset_dir} is read-only, but the dataset is not completely downloaded and "
                                f"unpacked there yet (downloads/, <archive>.extracted.json markers); run acquire "
                                f"once with write access, after which it writes nothing under "
                                f"{Path(sources_dir)}") from None
    elif source == "manual":
        files = _acquire_manual(name, entry, dataset_dir)
    elif source == "synthetic":
        raise ConfigError(f"dataset {name!r} is synthetic: it is generated (`pclbench generate`), not acquired")
    else:
        raise ConfigError(f"datasets.{name}.source: {source!r} is not one of synthetic, url, manual")
    out = {
        "receipt_version": RECEIPT_VERSION,
        "dataset": name,
        "source": source,
        "dir": str(dataset_dir.absolute()),
        "licence": entry.get("licence"),
        "files": files,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - t0, 3),
        "host": platform.node(),
    }
    try:
        _atomic_json(Path(receipt), out)
    except (FileExistsError, NotADirectoryError):
        raise DownloadError(f"cannot write the receipt {receipt}: a file is in the way of its folder; move it away "
                            f"and run again") from None
    log.info("acquired %s (%d file records) -> %s", name, len(files), receipt)
    return out


def _acquire_url(name: str, entry: Mapping[str, Any], dataset_dir: Path, cfg: DownloadConfig) -> list[dict]:
    if not entry.get("download"):
        raise ConfigError(f"datasets.{name}: source url needs a non-empty `download` list")
    lock = LockFile(cfg.lock_file)
    files = []
    for i, raw in enumerate(entry["download"]):
        spec = from_dict(FileSpec, raw, f"datasets.{name}.download[{i}]")
        record = fetch(spec, dataset_dir / "downloads" / spec.name, cfg, dataset=name, lock=lock)
        record["kind"] = "file"
        if spec.extract:
            record["extracted"] = _extract_once(Path(record["path"]), dataset_dir, record, cfg, dataset=name,
                                                lock=lock)
        files.append(record)
    return files


def _acquire_manual(name: str, entry: Mapping[str, Any], dataset_dir: Path) -> list[dict]:
    if not entry.get("manual"):
        raise ConfigError(f"datasets.{name}: source manual needs a `manual` section (obtain, from, files)")
    problems = _manual_problems(entry, dataset_dir, check_sha256=True)
    if problems:
        raise DatasetNotFound(manual_instructions(name, entry, dataset_dir, problems))
    files = []
    for f in _placed_files(entry, dataset_dir, check_sha256=True):
        p = dataset_dir / f["path"]
        if f["kind"] == "file":
            d = file_digests(p, algorithms=("sha256",))
            files.append({"path": f["path"], "kind": "file", "size": d["size"], "sha256": d["sha256"],
                          "verified_by": "registry sha256" if f.get("sha256") else "exists"})
        else:
            # A folder of a licence-gated set can hold ~10^6 images: count and sum, do not hash.
            n, total = 0, 0
            for dirpath, _, names in os.walk(p):
                for fn in names:
                    n += 1
                    total += os.lstat(os.path.join(dirpath, fn)).st_size
            files.append({"path": f["path"], "kind": "dir", "n_files": n, "size": total, "sha256": None,
                          "verified_by": "exists"})
    return files


def receipts_dir(paths: Mapping[str, Any]) -> str:
    """Where receipts go: ``paths.receipts``, else ``<paths.results>/receipts``.

    Never ``paths.sources`` by default: licence-gated data is often kept on read-only (shared,
    archival) storage, and with the files already in place :func:`acquire` writes nothing under
    ``sources`` (the receipt is its only write; url datasets write there only while downloading or
    unpacking: ``downloads/``, ``.part`` files, extraction markers).
    """
    return paths.get("receipts") or f"{paths['results']}/receipts"


def download_config(cfg: Mapping[str, Any]) -> DownloadConfig:
    """The ``download`` section of a loaded config as :class:`DownloadConfig`."""
    if "download" not in cfg:
        raise ConfigError("missing config section `download` (retries, timeouts, lock file, extraction limits)")
    return from_dict(DownloadConfig, cfg["download"], "download")
