"""Checksummed, resumable HTTP(S) downloads for the dataset registry.

Downloads are resumable (HTTP Range), retried with
exponential backoff, tried mirror after mirror, shown with a progress bar (bytes and rate), and
verified (sha256 / md5 and size) *before* the file is renamed into place; where the source publishes
no checksum, the first download records one in a lock file that the user commits, and every later
download must match it. In that lock-file mode (300W-LP, AFLW2000-3D) a first download must never
record an HTML error page, a body shorter than announced or a splice of two versions of the file,
and an archive must open before it is recorded.

How one file is fetched (:func:`fetch`):

1. ``<dest>.part`` receives the bytes; ``<dest>.part.json`` remembers the URL and the *strong
   validator* (ETag or Last-Modified) of the response that started them. A retry of the same URL
   resumes only when there is such a validator, with ``Range: bytes=<n>-`` and ``If-Range:
   <validator>``; otherwise it starts again from byte 0. HTTP facts relied on (RFC 9110, HTTP
   Semantics; MDN pages "If-Range", "Range", "Content-Range", "206 Partial Content"):

   - If-Range (RFC 9110 13.1.5): if the validator still matches, the server sends the requested range
     as 206, otherwise the *whole current representation* as 200. So a 200 answer to a resume always
     means "start over" and is never appended. A client MUST NOT send a weak entity tag (``W/"..."``)
     in If-Range, and sends a Last-Modified date only without an entity tag and only when the date is
     a strong validator. For a client that is a Last-Modified at least 60 seconds before the Date of
     the same response (RFC 7232 2.2.2, carried over as RFC 9110 8.8.2.2); a Last-Modified without a
     Date, or closer than that, is treated as no validator.
   - A server MAY ignore Range (RFC 9110 14.2) and answer 200 with the whole file; one that honours
     Range but ignores If-Range would send a 206 of a *changed* file, so a 206 whose ETag /
     Last-Modified differs from the recorded one also restarts from 0.
   - A 206 carries ``Content-Range: bytes <first>-<last>/<complete-length or *>`` (RFC 9110 14.4,
     15.3.7); ``<first>`` must equal the size of the ``.part``, else the bytes would land at the wrong
     offset: restart from 0. A 416 with ``Content-Range: bytes */<length>`` equal to the ``.part``
     size means the ``.part`` is already complete.
   - Content-Length (RFC 9110 8.6) announces the body size; :mod:`http.client` does *not* raise when
     the connection ends early during ``read(n)`` / ``read1(n)`` (CPython Lib/http/client.py,
     HTTPResponse.read: "Ideally, we would raise IncompleteRead if the content-length wasn't
     satisfied, but it might break compatibility"), so the byte count is checked here against
     Content-Length and against the Content-Range end / complete length. A short body is retried,
     never verified or recorded. Only chunked bodies raise ``IncompleteRead`` themselves; a body
     delimited by connection close cannot be checked at the HTTP level (the archive check of step 4
     covers archives).
2. Connection errors, timeouts, short bodies, HTTP 408/425/429 and 5xx are retried on the same mirror
   ``retries`` times, waiting ``backoff_s * 2**k`` seconds (capped at ``backoff_max_s``); any other
   HTTP error (404, 403, ...) and an HTML page (below) move on to the next mirror at once.
3. HTML instead of data: a body that begins ``<!DOCTYPE html`` or ``<html`` (after white space or a
   byte-order mark) is never a dataset file, and a ``Content-Type: text/html`` answer for a file whose
   name says archive or binary data (zip, tar, gz, mat, ...) is refused before a byte is written:
   mirrors answer 200 with login, error and "moved" pages.
4. The complete ``.part`` is hashed and compared with the published sha256 / md5 / size, else with the
   lock-file entry. Without either (first download), an archive (by name, or ``extract: true``) must
   read completely (:func:`pclbench.data.archive.verify_archive`) before its sha256 is recorded. A
   mismatch or an unreadable archive deletes the ``.part`` and moves on to the next mirror; the final
   error names the file, every mirror, the expected and actual digests, and, for a lock-file entry,
   the lines to delete (or ``pclbench acquire --dataset D --forget-lock``) if the entry itself was
   recorded from a bad download.
5. Only then is ``.part`` renamed (``os.replace``) onto ``dest``: ``dest`` is either absent or complete
   and verified, never partial.

Deadline: ``timeout_s`` bounds the connect and each single read (Python docs, urllib.request.urlopen:
"timeout ... for blocking operations like the connection attempt"), which a server trickling a byte
just before each timeout never trips. ``deadline_s`` bounds one file as a whole (all mirrors,
retries and waits); it is checked after every read, and reads use ``read1`` ("Read with at most one
underlying system call", CPython HTTPResponse.read1), so the overshoot is at most one read timeout.

Why :mod:`urllib.request` from the standard library and not ``requests``: ``requests`` is only a
transitive dependency here (of snakemake / dvc), not a pinned direct one, and this module needs
nothing it adds: urllib follows redirects (including http -> https), honours the ``*_proxy``
environment variables and applies the timeout to the connect and to every read; Range / If-Range are
plain request headers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import email.utils
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from pclbench.core.config import setting
from pclbench.core.io import atomic_write_text  # the lock file and the .part.json sidecars: never half-written
from pclbench.core.progress import Progress, fmt_bytes
from pclbench.data.archive import UnsafeArchive, archive_kind, verify_archive

log = logging.getLogger(__name__)

DIGESTS = ("sha256", "md5")


@dataclasses.dataclass
class DownloadConfig:
    """Acquisition of real datasets (pclbench.data.download / archive / acquire)."""

    retries: int = setting("extra attempts per mirror after a transient failure (0 = one attempt)", minimum=0)
    backoff_s: float = setting("wait before the first retry in seconds (doubled before each further retry)",
                               minimum=0)
    backoff_max_s: float = setting("upper bound of one wait in seconds", minimum=0)
    timeout_s: float = setting("socket timeout in seconds for connecting and for every single read",
                               exclusiveMinimum=0)
    deadline_s: float = setting("overall time limit for one file (all mirrors, retries and waits) in seconds",
                                exclusiveMinimum=0)
    chunk_bytes: int = setting("bytes per read/write step", minimum=1024)
    progress_every_s: float = setting("without a terminal: one progress log line every this many seconds",
                                      exclusiveMinimum=0)
    user_agent: str = setting("HTTP User-Agent header (some hosts refuse Python's default)", minLength=1)
    lock_file: str = setting("YAML file of checksums recorded on first download (relative to the working directory)",
                             minLength=1)
    max_extract_bytes: int = setting("refuse archives unpacking to more bytes than this", minimum=1)
    max_extract_files: int = setting("refuse archives with more entries than this", minimum=1)


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


class DeadlineExceeded(DownloadError):
    """One file took longer than ``download.deadline_s`` (all mirrors, retries and waits together)."""


class _DeadlineHit(Exception):
    """Raised inside a transfer when the deadline passes; :func:`fetch` turns it into DeadlineExceeded."""


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
        files = self.load().get(dataset) or {}
        if not isinstance(files, dict):
            raise DownloadError(f"lock file {self.path}: {dataset} must map file names to entries; got {files!r}")
        entry = files.get(name)
        if entry is not None and not (isinstance(entry, dict) and _is_hex(entry.get("sha256"), 64)
                                      and isinstance(entry.get("size"), int)):
            raise DownloadError(f"lock file {self.path}: entry {dataset}.{name} must have sha256 (64 hex "
                                f"digits) and size (bytes); got {entry!r}")
        return entry

    def record(self, dataset: str, name: str, sha256: str, size: int, url: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _dir_lock(self.path.parent):
            data = self.load()
            if not isinstance(data.get(dataset), dict):  # absent, or left empty by a hand-deleted entry
                data[dataset] = {}
            data[dataset][name] = {"sha256": sha256, "size": int(size), "url": url, "recorded_utc": _now_utc()}
            body = yaml.safe_dump(dict(sorted(data.items())), sort_keys=True, width=200)
            atomic_write_text(self.path, LOCK_HEADER + body)
        log.info("recorded %s/%s in %s (sha256 %s, %d bytes): commit this file", dataset, name, self.path,
                 sha256, size)

    def forget(self, dataset: str, names: Optional[list[str]] = None) -> list[str]:
        """Delete the entries of ``dataset`` (all, or only ``names``); return the names deleted.

        The way back from an entry recorded from a bad download (``pclbench acquire --forget-lock``):
        the next acquire checks the file again and records it anew.
        """
        if not self.path.is_file():
            return []
        with _dir_lock(self.path.parent):
            data = self.load()
            files = data.get(dataset) or {}
            if not isinstance(files, dict):
                files = {}
            gone = sorted(n for n in files if names is None or n in names)
            if not gone:
                return []
            for n in gone:
                del files[n]
            if files:
                data[dataset] = files
            else:
                data.pop(dataset, None)
            body = yaml.safe_dump(dict(sorted(data.items())), sort_keys=True, width=200) if data else ""
            atomic_write_text(self.path, LOCK_HEADER + body)
        log.warning("forgot %s in %s: %s (they are checked and recorded again on the next download)", dataset,
                    self.path, ", ".join(gone))
        return gone

    def entry_lines(self, dataset: str, name: str) -> Optional[tuple[int, int]]:
        """First and last line (1-based) of the entry ``dataset: name:`` in the file, or None."""
        try:
            root = yaml.compose(self.path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(root, yaml.MappingNode):
            return None
        for key, value in root.value:
            if key.value == dataset and isinstance(value, yaml.MappingNode):
                for k2, v2 in value.value:
                    if k2.value == name:
                        return k2.start_mark.line + 1, _last_line(v2)
        return None

    def how_to_forget(self, dataset: str, name: str) -> str:
        """What to do to drop one entry (e.g. one recorded from a bad download), as a sentence fragment."""
        lines = self.entry_lines(dataset, name)
        where = (f"delete lines {lines[0]}-{lines[1]} of {self.path} (the entry `{dataset}:` / `{name}:`)"
                 if lines else f"delete the entry `{dataset}:` / `{name}:` from {self.path}")
        return (f"{where}, or run `pclbench acquire --dataset {dataset} --forget-lock`; the next run then checks "
                f"the file again and records it anew")


def _last_line(node: yaml.Node) -> int:
    """Last line (1-based) holding text of a composed YAML node (block mappings end at the next key)."""
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style and node.value:
        last = node.value[-1]
        return _last_line(last[1] if isinstance(last, tuple) else last)
    mark = node.end_mark
    return mark.line + (1 if mark.column > 0 else 0)


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
# what a response / a body must not be


# File names whose content is binary data: a text/html answer for them is an error page.
_BINARY_SUFFIXES = (".mat", ".npy", ".npz", ".pkl", ".pth", ".bin", ".7z", ".rar", ".jpg", ".jpeg", ".png",
                    ".mp4", ".avi", ".h5", ".hdf5")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def _is_html_name(name: str) -> bool:
    return name.lower().endswith((".htm", ".html"))


def _expects_binary(name: str) -> bool:
    return archive_kind(name) is not None or name.lower().endswith(_BINARY_SUFFIXES)


def _looks_like_html(head: bytes) -> bool:
    """True if the first bytes of a body are an HTML document (``<!DOCTYPE html`` or ``<html``)."""
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()  # UTF-8 byte-order mark, leading white space
    return text.startswith(b"<!doctype html") or text.startswith(b"<html")


def _html_problem(path: Path, name: str, url: Optional[str]) -> Optional[str]:
    """The reason to refuse ``path`` because its bytes are an HTML page, or None."""
    if _is_html_name(name):
        return None
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if not _looks_like_html(head):
        return None
    src = f" from {url}" if url else ""
    return (f"the bytes{src} are an HTML page, not {name} (an error, login or 'moved' page of the mirror); "
            f"not verified, not recorded")


# ---------------------------------------------------------------------------------------------------
# validators and the .part.json sidecar


def _strong_etag(etag: Optional[str]) -> Optional[str]:
    """The ETag if it is strong; weak ones (``W/"..."``) must not go into If-Range (RFC 9110 13.1.5)."""
    if not etag or etag.strip().startswith("W/"):
        return None
    return etag.strip()


def _strong_last_modified(last_modified: Optional[str], date: Optional[str]) -> Optional[str]:
    """Last-Modified if a client may treat it as strong: >= 60 s before the response's Date (RFC 7232 2.2.2)."""
    if not last_modified or not date:
        return None
    try:
        lm, dt = email.utils.parsedate_to_datetime(last_modified), email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return None
    if lm.tzinfo is None or dt.tzinfo is None:
        return None
    return last_modified if (dt - lm).total_seconds() >= 60 else None


def _if_range(info: dict) -> Optional[str]:
    """The If-Range value for a resume: the strong ETag, else a strong Last-Modified, else None (no resume).

    Strength is re-checked from the sidecar's own fields (``date`` included), so a sidecar written by an
    older version of this module, or edited by hand, never enables a resume on a weak validator.
    """
    return _strong_etag(info.get("etag")) or _strong_last_modified(info.get("last_modified"), info.get("date"))


def _part_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def _read_meta(meta: Path) -> dict:
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _discard_part(part: Path, meta: Path) -> None:
    part.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Deadline:
    """``deadline_s`` seconds from construction, on the monotonic clock."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# ---------------------------------------------------------------------------------------------------
# one transfer attempt


def _transfer(url: str, name: str, part: Path, meta: Path, cfg: DownloadConfig, desc: str,
              deadline: _Deadline) -> None:
    """Bring ``part`` to the complete content of ``url`` (resuming only under a strong validator).

    Raises :class:`_Retry` (transient, includes a short body), :class:`_NextMirror` (this mirror cannot
    serve the file, includes an HTML page) or :class:`_DeadlineHit`.
    """
    info = _read_meta(meta)
    validator = _if_range(info) if info.get("url") == url else None
    offset = part.stat().st_size if validator and part.is_file() else 0
    if offset == 0:
        # No strong validator from the response that started these bytes: a resume could splice two
        # versions of the file, so they are dropped (module docstring, step 1).
        _discard_part(part, meta)
    # identity: a transparently gzip-encoded body would break byte ranges and Content-Length.
    headers = {"User-Agent": cfg.user_agent, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = validator
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=min(cfg.timeout_s, max(deadline.left(), 0.05)))
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            m = re.fullmatch(r"bytes\s+\*/(\d+)", e.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == offset:
                return  # the .part already holds the whole file (a crash between last byte and rename)
            _discard_part(part, meta)  # the partial bytes do not fit this resource: start over
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
        h = resp.headers
        ctype = (h.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype in _HTML_TYPES and _expects_binary(name):
            # Refused before a byte is written: the .part (if any) stays as it was.
            raise _NextMirror(f"served an HTML page (Content-Type {ctype}, HTTP {status}) instead of {name}: "
                              f"an error, login or 'moved' page; nothing saved")
        length = h.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        etag = _strong_etag(h.get("ETag"))
        last_modified = _strong_last_modified(h.get("Last-Modified"), h.get("Date"))
        # The sidecar of a new .part: where its bytes come from and the validator of that response.
        started = {"url": url, "etag": etag, "last_modified": None if etag else last_modified,
                   "date": h.get("Date"), "started_utc": _now_utc()}
        if status == 206:
            m = _CONTENT_RANGE.fullmatch((h.get("Content-Range") or "").strip())
            problem = None
            if m is None or int(m.group(1)) != offset:
                problem = f"Content-Range {h.get('Content-Range')!r} does not start at byte {offset}"
            elif int(m.group(2)) < int(m.group(1)):
                problem = f"Content-Range {h.get('Content-Range')!r} is empty or reversed"
            elif offset and (etag != validator if _strong_etag(info.get("etag")) else
                             h.get("Last-Modified") not in (None, validator)):
                # The server honoured Range but not If-Range: these bytes belong to another version.
                problem = (f"the 206 answer has validator {h.get('ETag') or h.get('Last-Modified')!r}, the partial "
                           f"file was started under {validator!r} (the file changed)")
            if problem is not None:
                _discard_part(part, meta)
                raise _Retry(f"{problem}; restarting from 0")
            end = int(m.group(2)) + 1                          # bytes the file holds after this body
            total = None if m.group(3) == "*" else int(m.group(3))
            if length is not None and length != end - offset:
                _discard_part(part, meta)
                raise _Retry(f"Content-Length {length} disagrees with Content-Range {h.get('Content-Range')!r}; "
                             f"restarting from 0")
            mode = "ab" if offset else "wb"
            if offset == 0:
                info = started
        elif status in (200, None):
            if offset:
                log.info("%s: the server sent the whole file (200) instead of the rest: starting over", url)
            # 200: the whole (possibly new) representation. Never appended to older bytes.
            offset, mode = 0, "wb"
            end = length                                       # None: length not announced
            total = length
            info = started
        else:
            raise _NextMirror(f"unexpected HTTP {status} for a download")
        atomic_write_text(meta, json.dumps(info))  # before the first byte: the .part's origin is known
        # tqdm on a terminal (bytes, rate, ETA), else a log line every download.progress_every_s
        progress = Progress(desc, total, unit="B", logger=log, every_s=cfg.progress_every_s, initial=offset)
        got = offset
        read = getattr(resp, "read1", resp.read)
        try:
            with open(part, mode) as fh:
                while True:
                    if deadline.left() <= 0:
                        raise _DeadlineHit(got)
                    block = read(cfg.chunk_bytes)
                    if not block:
                        break
                    fh.write(block)
                    got += len(block)
                    progress.update(len(block))
        except (http.client.HTTPException, OSError) as e:
            raise _Retry(f"connection lost after {got} bytes ({type(e).__name__}: {e})") from None
        finally:
            progress.close()
    if end is not None and got != end:
        # http.client returns b"" at an early end of the connection instead of raising (docstring).
        raise _Retry(f"the body ended after {got} of the {end} bytes announced (Content-Length / Content-Range); "
                     f"not verified, not recorded")
    if total is not None and got != total:
        raise _Retry(f"the server sent bytes up to {got} of {total}; resuming for the rest")


# ---------------------------------------------------------------------------------------------------
# the public entry point


def _unusable(path: Path, spec: FileSpec, cfg: DownloadConfig, url: Optional[str]) -> Optional[str]:
    """Why ``path`` must not be recorded as the first download of ``spec`` (HTML page, unreadable archive)."""
    problem = _html_problem(path, spec.name, url)
    if problem is not None:
        return problem
    kind = archive_kind(spec.name)
    if kind is None and not spec.extract:
        return None
    try:
        verify_archive(path, max_bytes=cfg.max_extract_bytes, max_files=cfg.max_extract_files, kind=kind)
    except UnsafeArchive as e:
        src = f" from {url}" if url else ""
        return f"the bytes{src} are not a usable archive, so they are not recorded: {e}"
    return None


def fetch(spec: FileSpec, dest: str | os.PathLike, cfg: DownloadConfig, *, dataset: str,
          lock: Optional[LockFile] = None, sleep=time.sleep) -> dict[str, Any]:
    """Download ``spec`` to ``dest`` (verified, atomically renamed) and return its record.

    The record (for the receipt): ``{name, path, url, size, sha256, md5, verified_by}``; ``url`` is the
    mirror that served it (None if ``dest`` was already in place and verified). ``verified_by`` says
    what the bytes were checked against: the published digests, the lock file, or ``recorded in
    <lock>`` on a first download without a published checksum (HTML pages and unreadable archives are
    never recorded). Raises :class:`ChecksumMismatch`, :class:`DeadlineExceeded` or
    :class:`DownloadError`; ``sleep`` is injectable so tests need not wait for real backoffs.
    """
    dest = Path(dest)
    deadline = _Deadline(cfg.deadline_s)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DownloadError(f"cannot create the folder {dest.parent} for {spec.name}: a file is in the way; "
                            f"move it away and run again") from None
    if dest.exists() and not dest.is_file():
        raise DownloadError(f"{dest} exists and is not a regular file (a folder?); move it away and run again")
    part, meta = _part_paths(dest)
    want = _expected(spec, dataset, lock)

    if dest.is_file():
        have = file_digests(dest, cfg.chunk_bytes)
        if want is None:
            problem = _unusable(dest, spec, cfg, None)
            if problem is None:
                lock.record(dataset, spec.name, have["sha256"], have["size"], url="(already present)")
                return _record(spec, dest, have, None, f"recorded in {lock.path}")
            log.warning("%s is already present but %s; downloading it again", dest, problem)
        else:
            problem = _mismatch(dest, have, want)
            if problem is None:
                log.info("%s/%s already present and verified (%s)", dataset, spec.name, want.source)
                return _record(spec, dest, have, None, want.source)
            log.warning("%s: %s; downloading it again", dest, problem)

    failures: list[str] = []
    mismatches: list[str] = []
    for url in spec.urls:
        ok = False
        for attempt in range(cfg.retries + 1):
            if deadline.left() <= 0:
                _deadline_error(spec, dest, cfg, dataset, failures)
            try:
                _transfer(url, spec.name, part, meta, cfg, f"{dataset}/{spec.name}", deadline)
                ok = True
                break
            except _DeadlineHit:
                _deadline_error(spec, dest, cfg, dataset, failures)
            except _NextMirror as e:
                failures.append(f"{url}: {e}")
                log.warning("%s/%s: %s: %s; trying the next mirror", dataset, spec.name, url, e)
                break
            except _Retry as e:
                failures.append(f"{url} (attempt {attempt + 1}): {e}")
                if attempt < cfg.retries:
                    wait = min(cfg.backoff_s * 2 ** attempt, cfg.backoff_max_s)
                    log.warning("%s/%s: %s: %s; retrying in %.1f s", dataset, spec.name, url, e, wait)
                    sleep(max(0.0, min(wait, deadline.left())))
                else:
                    log.warning("%s/%s: %s: %s; giving up on this mirror", dataset, spec.name, url, e)
        if not ok:
            continue
        problem = _html_problem(part, spec.name, url)
        if problem is None and want is None:
            problem = _unusable(part, spec, cfg, url)
        if problem is not None:
            _discard_part(part, meta)  # wrong bytes: resuming them can never give the right file
            failures.append(f"{url}: {problem}")
            log.error("%s/%s: %s", dataset, spec.name, problem)
            continue
        have = file_digests(part, cfg.chunk_bytes)
        if want is not None:
            problem = _mismatch(dest, have, want)
            if problem is not None:
                _discard_part(part, meta)
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
        if want.source.startswith("lock file"):
            advice = ("\nIf the source released a new version on purpose, or the lock entry was itself recorded "
                      "from a bad download (an HTML page, a cut transfer): " + lock.how_to_forget(dataset, spec.name)
                      + ". Otherwise the mirror is corrupt or tampered with.")
        else:
            advice = ("\nIf the source released a new version on purpose, update the checksum in "
                      "config/config.yaml (datasets.<name>.download); otherwise the mirror is corrupt or "
                      "tampered with.")
        raise ChecksumMismatch(
            f"{where}: no mirror served the expected bytes; nothing was renamed into place and the wrong "
            f"download was deleted.\n  " + "\n  ".join(mismatches) + advice)
    raise DownloadError(f"{where}: could not be downloaded from any of {len(spec.urls)} mirror(s):\n  " +
                        "\n  ".join(failures) + _partial_note(part, meta))


def _partial_note(part: Path, meta: Path) -> str:
    if not (part.is_file() and part.stat().st_size):
        return ""
    if _if_range(_read_meta(meta)):
        return f"\nPartial bytes are kept in {part} and resumed next time (the server gave a strong validator)."
    return (f"\nThe partial bytes in {part} cannot be resumed safely (the server gave no strong ETag / "
            f"Last-Modified): the next run starts from zero.")


def _deadline_error(spec: FileSpec, dest: Path, cfg: DownloadConfig, dataset: str, failures: list[str]):
    part, meta = _part_paths(dest)
    got = part.stat().st_size if part.is_file() else 0
    earlier = ("\n  earlier failures:\n  " + "\n  ".join(failures)) if failures else ""
    raise DeadlineExceeded(
        f"{dest} (dataset {dataset}): not complete after download.deadline_s = {cfg.deadline_s:g} s "
        f"({fmt_bytes(got)} received); nothing was verified, recorded or renamed into place. Raise "
        f"download.deadline_s for a slow mirror." + _partial_note(part, meta) + earlier)


def _record(spec: FileSpec, dest: Path, have: dict, url: Optional[str], verified_by: str) -> dict[str, Any]:
    return {"name": spec.name, "path": str(dest), "url": url, "size": have["size"],
            "sha256": have["sha256"], "md5": have["md5"], "verified_by": verified_by}
