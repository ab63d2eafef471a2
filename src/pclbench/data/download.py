"""Checksummed, resumable HTTP(S) downloads for the dataset registry.

Issue 5, "Dataset registry and acquisition": downloads are resumable (HTTP Range), retried with
exponential backoff, tried mirror after mirror, shown with a progress bar (bytes and rate), and
verified (sha256 / md5 and size) *before* the file is renamed into place; where the source publishes
no checksum, the first download records one in a lock file that the user commits, and every later
download must match it.

How one file is fetched (:func:`fetch`):

1. ``<dest>.part`` receives the bytes; ``<dest>.part.json`` remembers which URL (and which ETag /
   Last-Modified) the partial bytes came from. A retry of the *same* URL resumes with
   ``Range: bytes=<n>-`` plus ``If-Range``, so a server whose file changed answers with the whole new
   file (200) instead of a splice of two versions (RFC 9110, 14.2 and 13.1.5). Bytes from one mirror are
   never continued from another mirror.
2. Connection errors, timeouts, cut transfers, HTTP 408/425/429 and 5xx are retried on the same mirror
   ``retries`` times, waiting ``backoff_s * 2**k`` seconds (capped at ``backoff_max_s``); any other
   HTTP error (404, 403, ...) moves on to the next mirror at once.
3. The complete ``.part`` is hashed and compared with the published sha256 / md5 / size, else with the
   lock-file entry. A mismatch deletes the ``.part`` (its bytes are wrong; resuming them is pointless)
   and moves on to the next mirror; if no mirror gives the right bytes the error names the file, every
   mirror, and the expected and actual digests.
4. Only then is ``.part`` renamed (``os.replace``) onto ``dest``: ``dest`` is either absent or complete
   and verified, never partial.

Why :mod:`urllib.request` from the standard library and not ``requests``: ``requests`` is only a
transitive dependency here (of snakemake / dvc), not a pinned direct one, and this module needs
nothing it adds: urllib follows redirects (including http -> https), honours the ``*_proxy``
environment variables, applies the timeout to the connect and to every read, and ``http.client``
raises ``IncompleteRead`` when a connection is cut before ``Content-Length`` bytes arrived, which is
exactly the signal the resume logic needs. Range / If-Range are plain request headers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

log = logging.getLogger(__name__)

DIGESTS = ("sha256", "md5")


@dataclasses.dataclass
class DownloadConfig:
    """The ``download`` section of config/config.yaml (every field is set there)."""

    retries: int               # extra attempts per mirror after a transient failure (0 = one attempt)
    backoff_s: float           # wait before the first retry; doubled before each further retry
    backoff_max_s: float       # upper bound of one wait
    timeout_s: float           # socket timeout: connecting and every single read
    chunk_bytes: int           # bytes read and written per step
    progress_every_s: float    # without a terminal: one progress log line every this many seconds
    user_agent: str            # some hosts refuse Python's default User-Agent
    lock_file: str             # YAML lock file of recorded checksums (relative to the working directory)
    max_extract_bytes: int     # archive extraction: refuse an archive unpacking to more bytes than this
    max_extract_files: int     # archive extraction: refuse an archive with more entries than this


@dataclasses.dataclass
class FileSpec:
    """One entry of ``datasets.<name>.download`` (schema: workflow/schemas/config.schema.yaml)."""

    name: str                  # file name under paths.sources/<dataset>/downloads/
    urls: list[str]            # mirrors, tried in order
    sha256: Optional[str]      # published SHA-256 (hex) or None
    md5: Optional[str]         # published MD5 (hex) or None
    size: Optional[int]        # published size in bytes or None
    extract: bool              # unpack after download (see pclbench.data.archive)


class DownloadError(RuntimeError):
    """A file could not be obtained from any mirror; the message lists every mirror's failure."""


class ChecksumMismatch(DownloadError):
    """The bytes obtained do not match the published checksum / size or the lock-file record."""


class _Retry(Exception):
    """Transient failure: try the same mirror again after a backoff."""


class _NextMirror(Exception):
    """Permanent failure of this mirror (e.g. HTTP 404): go on to the next one."""


# ---------------------------------------------------------------------------------------------------
# digests and the lock file


def file_digests(path: Path, chunk_bytes: int = 1 << 20, algorithms=DIGESTS) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex, "md5": hex}`` of a file, read once in chunks."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    size = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            size += len(block)
            for h in hashers.values():
                h.update(block)
    return {"size": size, **{a: h.hexdigest() for a, h in hashers.items()}}


def _now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace``: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


LOCK_HEADER = """\
# pclbench dataset lock file: SHA-256 and size of every downloaded file whose source publishes no
# checksum. Written by `pclbench acquire` on a file's first download; commit it, so that every later
# download (yours or anyone's) must produce exactly these bytes. To accept a new release of a file,
# delete its entry and run the download again.
# Layout: <dataset>: {<file name>: {sha256, size, url, recorded_utc}}
"""


class LockFile:
    """Recorded checksums (YAML) for downloads without a published one.

    Reads are plain; :meth:`record` re-reads the file under an exclusive ``flock`` on its folder and
    rewrites it atomically, so two ``acquire`` jobs running at once cannot lose each other's entries.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> dict:
        if not self.path.is_file():
            return {}
        with open(self.path) as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise DownloadError(f"lock file {self.path} must hold a mapping <dataset>: {{<file>: ...}}; "
                                f"fix or delete it")
        return data

    def get(self, dataset: str, name: str) -> Optional[dict]:
        entry = (self.load().get(dataset) or {}).get(name)
        if entry is not None and not (isinstance(entry, dict) and _is_hex(entry.get("sha256"), 64)
                                      and isinstance(entry.get("size"), int)):
            raise DownloadError(f"lock file {self.path}: entry {dataset}.{name} must have sha256 (64 hex "
                                f"digits) and size (bytes); got {entry!r}")
        return entry

    def record(self, dataset: str, name: str, sha256: str, size: int, url: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _dir_lock(self.path.parent):
            data = self.load()
            data.setdefault(dataset, {})[name] = {"sha256": sha256, "size": int(size), "url": url,
                                                  "recorded_utc": _now_utc()}
            body = yaml.safe_dump(dict(sorted(data.items())), sort_keys=True, width=200)
            atomic_write_text(self.path, LOCK_HEADER + body)
        log.info("recorded %s/%s in %s (sha256 %s, %d bytes): commit this file", dataset, name, self.path,
                 sha256, size)


@contextlib.contextmanager
def _dir_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on a folder (the lock file itself is replaced, so it cannot hold one)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent-writer protection, atomic replace still holds
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _is_hex(value: Any, n: int) -> bool:
    return isinstance(value, str) and re.fullmatch(f"[0-9a-f]{{{n}}}", value) is not None


# ---------------------------------------------------------------------------------------------------
# verification


@dataclasses.dataclass
class _Expected:
    digests: dict[str, str]    # algorithm -> hex digest
    size: Optional[int]
    source: str                # where the expectation comes from, for messages and the receipt


def _expected(spec: FileSpec, dataset: str, lock: Optional[LockFile]) -> Optional[_Expected]:
    """What the bytes must be; None = nothing known yet (first download, to be recorded in the lock)."""
    published = {a: getattr(spec, a).lower() for a in DIGESTS if getattr(spec, a)}
    if published:
        return _Expected(published, spec.size, "published " + "/".join(published))
    if lock is None:
        raise DownloadError(f"{dataset}/{spec.name}: the registry publishes no sha256 or md5 and no lock file "
                            f"was given to record one; set download.lock_file")
    entry = lock.get(dataset, spec.name)
    if entry is None:
        return None
    if spec.size is not None and spec.size != entry["size"]:
        raise DownloadError(f"{dataset}/{spec.name}: the registry says size {spec.size} but the lock file "
                            f"{lock.path} recorded {entry['size']}; one of them is out of date")
    return _Expected({"sha256": entry["sha256"]}, entry["size"], f"lock file {lock.path}")


def _mismatch(path: Path, actual: dict, want: _Expected) -> Optional[str]:
    """None if ``actual`` (from :func:`file_digests`) satisfies ``want``, else the reason."""
    problems = []
    if want.size is not None and actual["size"] != want.size:
        problems.append(f"size: expected {want.size} bytes, actual {actual['size']} bytes")
    for algo, hexd in want.digests.items():
        if actual[algo] != hexd:
            problems.append(f"{algo}: expected {hexd}, actual {actual[algo]}")
    if not problems:
        return None
    return f"checksum mismatch for {path.name} ({want.source}): " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------------
# progress


class _Progress:
    """tqdm on a terminal (bytes, rate, ETA); otherwise a log line every ``every_s`` seconds."""

    def __init__(self, desc: str, every_s: float):
        self.desc, self.every_s = desc, every_s
        self.bar = None
        self.total: Optional[int] = None
        self.done = 0
        self.t0 = self.t_last = time.monotonic()
        self.start_bytes = 0

    def start(self, done: int, total: Optional[int]) -> None:
        self.close()
        self.done, self.total, self.start_bytes = done, total, done
        self.t0 = self.t_last = time.monotonic()
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="B", unit_scale=True,
                            unit_divisor=1024, dynamic_ncols=True)
        else:
            log.info("%s: %s%s", self.desc, "resuming at " + _fmt_bytes(done) if done else "starting",
                     f" of {_fmt_bytes(total)}" if total else "")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.t_last >= self.every_s:
            self.t_last = now
            rate = (self.done - self.start_bytes) / max(now - self.t0, 1e-9)
            pct = f" ({100.0 * self.done / self.total:.1f} %)" if self.total else ""
            log.info("%s: %s%s at %s/s", self.desc, _fmt_bytes(self.done), pct, _fmt_bytes(rate))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# ---------------------------------------------------------------------------------------------------
# one transfer attempt


def _part_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def _read_meta(meta: Path) -> dict:
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _transfer(url: str, part: Path, meta: Path, cfg: DownloadConfig, progress: _Progress) -> None:
    """Bring ``part`` to the complete content of ``url`` (resuming if ``part`` came from ``url``).

    Raises :class:`_Retry` (transient) or :class:`_NextMirror` (this mirror cannot serve the file).
    """
    info = _read_meta(meta)
    offset = part.stat().st_size if part.exists() and info.get("url") == url else 0
    if offset == 0:
        part.write_bytes(b"")
        info = {"url": url}
    # identity: a transparently gzip-encoded body would break byte ranges and Content-Length.
    headers = {"User-Agent": cfg.user_agent, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = info.get("etag") or info.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=cfg.timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            m = re.fullmatch(r"bytes\s+\*/(\d+)", e.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == offset:
                return  # the .part already holds the whole file
            part.write_bytes(b"")  # the partial bytes do not fit this resource: start over
            raise _Retry(f"HTTP 416 for a resume at byte {offset}; restarting from 0") from None
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise _NextMirror(f"HTTP {e.code} {e.reason}") from None
    except ValueError as e:  # malformed URL
        raise _NextMirror(str(e)) from None
    except (http.client.HTTPException, OSError) as e:  # URLError is an OSError
        reason = getattr(e, "reason", e)
        if isinstance(reason, str):  # e.g. "unknown url type": retrying cannot help
            raise _NextMirror(f"{type(e).__name__}: {reason}") from None
        # Refused / reset connections, timeouts, DNS hiccups: transient, retry after a backoff.
        raise _Retry(f"{type(e).__name__}: {reason}") from None

    with resp:
        status = getattr(resp, "status", None)  # None for ftp://
        if offset and status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "") or "")
            if not m or int(m.group(1)) != offset:
                part.write_bytes(b"")
                raise _Retry(f"server answered the resume at byte {offset} with Content-Range "
                             f"{resp.headers.get('Content-Range')!r}; restarting from 0")
            total = None if m.group(3) == "*" else int(m.group(3))
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # 200: the server sent the whole file (no Range support or changed file)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        info.update(etag=resp.headers.get("ETag"), last_modified=resp.headers.get("Last-Modified"))
        # If-Range needs a strong validator: a weak ETag (W/"...") must not be used for ranges.
        if info["etag"] and info["etag"].startswith("W/"):
            info["etag"] = None
        meta.write_text(json.dumps(info))
        progress.start(offset, total)
        got = offset
        try:
            with open(part, mode) as fh:
                while True:
                    block = resp.read(cfg.chunk_bytes)
                    if not block:
                        break
                    fh.write(block)
                    got += len(block)
                    progress.update(len(block))
        except (http.client.HTTPException, OSError) as e:
            raise _Retry(f"connection lost after {got} bytes ({type(e).__name__}: {e})") from None
        finally:
            progress.close()
    if total is not None and got != total:
        raise _Retry(f"transfer ended after {got} of {total} bytes")


# ---------------------------------------------------------------------------------------------------
# the public entry point


def fetch(spec: FileSpec, dest: str | os.PathLike, cfg: DownloadConfig, *, dataset: str,
          lock: Optional[LockFile] = None, sleep=time.sleep) -> dict[str, Any]:
    """Download ``spec`` to ``dest`` (verified, atomically renamed) and return its record.

    The record (for the receipt): ``{name, path, url, size, sha256, md5, verified_by}``; ``url`` is the
    mirror that served it (None if ``dest`` was already in place and verified). ``verified_by`` says
    what the bytes were checked against: the published digests, the lock file, or ``recorded in
    <lock>`` on a first download without a published checksum. Raises :class:`ChecksumMismatch` or
    :class:`DownloadError`; ``sleep`` is injectable so tests need not wait for real backoffs.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta = _part_paths(dest)
    want = _expected(spec, dataset, lock)

    if dest.is_file():
        have = file_digests(dest, cfg.chunk_bytes)
        if want is None:
            lock.record(dataset, spec.name, have["sha256"], have["size"], url="(already present)")
            return _record(spec, dest, have, None, f"recorded in {lock.path}")
        problem = _mismatch(dest, have, want)
        if problem is None:
            log.info("%s/%s already present and verified (%s)", dataset, spec.name, want.source)
            return _record(spec, dest, have, None, want.source)
        log.warning("%s: %s; downloading it again", dest, problem)

    failures: list[str] = []
    mismatches: list[str] = []
    progress = _Progress(f"{dataset}/{spec.name}", cfg.progress_every_s)
    for url in spec.urls:
        ok = False
        for attempt in range(cfg.retries + 1):
            try:
                _transfer(url, part, meta, cfg, progress)
                ok = True
                break
            except _NextMirror as e:
                failures.append(f"{url}: {e}")
                log.warning("%s/%s: %s: %s; trying the next mirror", dataset, spec.name, url, e)
                break
            except _Retry as e:
                failures.append(f"{url} (attempt {attempt + 1}): {e}")
                if attempt < cfg.retries:
                    wait = min(cfg.backoff_s * 2 ** attempt, cfg.backoff_max_s)
                    log.warning("%s/%s: %s: %s; retrying in %.1f s", dataset, spec.name, url, e, wait)
                    sleep(wait)
                else:
                    log.warning("%s/%s: %s: %s; giving up on this mirror", dataset, spec.name, url, e)
        if not ok:
            continue
        have = file_digests(part, cfg.chunk_bytes)
        if want is not None:
            problem = _mismatch(dest, have, want)
            if problem is not None:
                # Wrong bytes: resuming them can never give the right file, so delete them.
                part.unlink()
                meta.unlink(missing_ok=True)
                mismatches.append(f"{url}: {problem}")
                failures.append(f"{url}: {problem}")
                log.error("%s/%s: %s", dataset, spec.name, problem)
                continue
            verified_by = want.source
        else:
            lock.record(dataset, spec.name, have["sha256"], have["size"], url)
            verified_by = f"recorded in {lock.path}"
        os.replace(part, dest)
        meta.unlink(missing_ok=True)
        return _record(spec, dest, have, url, verified_by)

    where = f"{dest} (dataset {dataset})"
    if mismatches:
        raise ChecksumMismatch(
            f"{where}: no mirror served the expected bytes; nothing was renamed into place and the wrong "
            f"download was deleted.\n  " + "\n  ".join(mismatches) +
            "\nIf the source released a new version on purpose, update the checksum in config/config.yaml "
            "(datasets.<name>.download) or delete the file's entry in the lock file; otherwise the mirror "
            "is corrupt or tampered with.")
    raise DownloadError(f"{where}: could not be downloaded from any of {len(spec.urls)} mirror(s):\n  " +
                        "\n  ".join(failures) + (f"\nPartial bytes are kept in {part} and resumed next time."
                                                 if part.exists() and part.stat().st_size else ""))


def _record(spec: FileSpec, dest: Path, have: dict, url: Optional[str], verified_by: str) -> dict[str, Any]:
    return {"name": spec.name, "path": str(dest), "url": url, "size": have["size"],
            "sha256": have["sha256"], "md5": have["md5"], "verified_by": verified_by}

