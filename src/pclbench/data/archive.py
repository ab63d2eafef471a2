"""Safe extraction of downloaded archives (tar, tar.gz/bz2/xz, zip).

Archives are extracted safely: entries with absolute paths, ``..``, or links pointing outside the
target are refused, and sizes are bounded (no zip bombs).

An archive is untrusted input: a mirror can be compromised and the checksum may only have been
recorded on first download. :func:`extract_archive` therefore

1. scans every entry *before writing anything* and refuses the whole archive if one entry has an
   absolute path (``/x``, ``C:x``, ``\\\\host``), a ``..`` component, a type other than file /
   folder / symlink / hardlink (character or block devices, FIFOs), a path below a symlink entry, a
   symlink whose target is absolute or leaves the target folder, a hardlink to anything but an
   earlier regular-file entry, or if the entries declare more than ``max_bytes`` in total or number
   more than ``max_files`` (the zip-bomb guard: a few KiB of deflated zeros can declare gigabytes);
2. writes into a fresh temporary folder *inside* the target, regular files first, with
   ``O_NOFOLLOW`` and a running byte count (the declared sizes are not trusted alone), and symlinks
   last, so no file is ever written through a link created by the archive;
3. resolves every created symlink with :func:`os.path.realpath` (which follows chains of links
   physically, catching ``a -> d/s/../x`` where ``d/s -> ..``) and refuses the archive if one lands
   outside the temporary folder;
4. only then moves the top-level entries into the target with ``os.rename``. Any failure deletes the
   temporary folder: nothing is half-extracted and nothing is ever written outside the target.

The standard library's ``tarfile`` ``data`` filter (Python 3.12) covers part of this for tar only and
is not available on 3.10/3.11, hence one implementation for both formats.

:func:`verify_archive` reads an archive completely without writing anything: pclbench.data.download
calls it before a first download without a published checksum is recorded in the lock file, so a cut
transfer or an error page is never recorded as "the" release. What "completely readable" means:

- zip: every member is decompressed and its CRC-32 compared, as ``ZipFile.testzip`` does ("Read all
  the files in the archive and check their CRC's", Python docs, zipfile); a bad CRC raises
  ``BadZipFile``.
- tar (plain or gzip/bz2/xz): every member's data is read. A compressed stream cut short raises
  ``EOFError`` from gzip/bz2/lzma. A *plain* tar cut exactly at a header boundary reads as a shorter
  valid archive in :mod:`tarfile` (it stops at end of file without error), so the end-of-archive
  marker is also required: "The end of the archive is indicated by two records consisting entirely of
  zero bytes" (tar(5), libarchive / FreeBSD File Formats Manual; the POSIX pax/ustar description says
  the same).
- a single gzip / bz2 / xz stream (``x.gz`` that is not a tar): decompressed to the end; gzip checks its
  CRC-32 and length trailer (RFC 1952, 2.3.1) and raises ``BadGzipFile`` / ``EOFError``.

Low-level errors (``EOFError``, ``zipfile.BadZipFile``, ``tarfile.TarError``, ``zlib.error``,
``lzma.LZMAError``, ``OSError`` from a decompressor) become :class:`CorruptArchive` naming the archive;
a file of the archive's that is both a file and a folder (``FileExistsError`` / ``NotADirectoryError``
while writing) becomes :class:`UnsafeArchive`. Callers never see a traceback from a bad download.
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator, Optional


class UnsafeArchive(ValueError):
    """The archive cannot be extracted safely: an entry could write outside the target, the size limits
    are exceeded, or (subclass :class:`CorruptArchive`) it cannot be read completely."""


class CorruptArchive(UnsafeArchive):
    """The archive is truncated or damaged (bad CRC, stream cut short, not an archive at all).

    A subclass of :class:`UnsafeArchive` so that every caller that refuses unsafe archives (the CLI
    turns them into a one-line error) refuses unreadable ones too.
    """


# What the standard library raises for damaged archive bytes (zipfile, tarfile, gzip, bz2, lzma, zlib).
_READ_ERRORS = (EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


@dataclasses.dataclass
class _Entry:
    path: str                       # normalised relative POSIX path ("a/b.txt")
    kind: str                       # file | dir | symlink | hardlink
    size: int                       # declared size in bytes (files; 0 otherwise)
    mode: int                       # permission bits from the archive
    link: Optional[str] = None      # symlink target (as stored) or hardlink source (normalised)
    open: Optional[Callable[[], BinaryIO]] = None  # file content reader


def _normalise(name: str, archive: Path) -> str:
    """Relative POSIX path of an entry name, or :class:`UnsafeArchive` for absolute / ``..`` names."""
    raw = name.replace("\\", "/")  # zip files written on Windows may use backslashes
    if raw.startswith("/") or (len(raw) >= 2 and raw[1] == ":"):
        raise UnsafeArchive(f"{archive}: entry {name!r} has an absolute path; refusing the archive")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: entry {name!r} contains '..' (path traversal); refusing the archive")
    return "/".join(parts)


def _tar_entries(tf: tarfile.TarFile, archive: Path) -> Iterator[_Entry]:
    for m in tf.getmembers():
        path = _normalise(m.name, archive)
        if m.isdir():
            yield _Entry(path, "dir", 0, m.mode)
        elif m.isreg():
            yield _Entry(path, "file", m.size, m.mode, open=lambda m=m: tf.extractfile(m))
        elif m.issym():
            yield _Entry(path, "symlink", 0, m.mode, link=m.linkname)
        elif m.islnk():
            yield _Entry(path, "hardlink", 0, m.mode, link=_normalise(m.linkname, archive))
        else:
            kind = ("character device" if m.ischr() else "block device" if m.isblk() else
                    "FIFO" if m.isfifo() else f"type {m.type!r}")
            raise UnsafeArchive(f"{archive}: entry {m.name!r} is a {kind}; refusing the archive")


def _zip_entries(zf: zipfile.ZipFile, archive: Path) -> Iterator[_Entry]:
    for info in zf.infolist():
        path = _normalise(info.filename, archive)
        unix_mode = info.external_attr >> 16  # set by Unix zip tools; 0 from others
        ftype = stat.S_IFMT(unix_mode)        # 0 = no type recorded: a regular file
        if info.is_dir():
            yield _Entry(path, "dir", 0, unix_mode or 0o755)
        elif stat.S_ISLNK(unix_mode):
            if info.file_size > 4096:
                raise UnsafeArchive(f"{archive}: symlink entry {info.filename!r} has an implausible "
                                    f"{info.file_size}-byte target; refusing the archive")
            yield _Entry(path, "symlink", 0, unix_mode, link=zf.read(info).decode("utf-8", "surrogateescape"))
        elif ftype and not stat.S_ISREG(unix_mode):
            raise UnsafeArchive(f"{archive}: entry {info.filename!r} is not a regular file "
                                f"(mode {oct(unix_mode)}); refusing the archive")
        else:
            yield _Entry(path, "file", info.file_size, stat.S_IMODE(unix_mode) or 0o644,
                         open=lambda info=info: zf.open(info))


def _check(entries: list[_Entry], archive: Path, max_bytes: int, max_files: int) -> None:
    """Every entry-level rule of step 1 (nothing has been written yet)."""
    if len(entries) > max_files:
        raise UnsafeArchive(f"{archive}: {len(entries)} entries exceed the limit of {max_files} "
                            f"(download.max_extract_files); refusing the archive")
    total = sum(e.size for e in entries)
    if total > max_bytes:
        raise UnsafeArchive(f"{archive}: the entries unpack to {total} bytes, over the limit of {max_bytes} "
                            f"(download.max_extract_bytes); refusing the archive (zip-bomb guard)")
    symlinks = {e.path for e in entries if e.kind == "symlink"}
    files_seen: set[str] = set()
    for e in entries:
        if not e.path:
            if e.kind == "dir":
                continue  # "./" entry of the archive root
            raise UnsafeArchive(f"{archive}: an entry of kind {e.kind} has an empty name")
        parents = PurePosixPath(e.path).parents
        for p in list(parents)[:-1]:
            if str(p) in symlinks:
                raise UnsafeArchive(f"{archive}: entry {e.path!r} lies below the symlink entry {str(p)!r} "
                                    f"(it would be written through the link); refusing the archive")
        if e.kind == "symlink":
            target = e.link.replace("\\", "/")
            if not target or target.startswith("/") or (len(target) >= 2 and target[1] == ":"):
                raise UnsafeArchive(f"{archive}: symlink {e.path!r} -> {e.link!r} has an absolute or empty "
                                    f"target; refusing the archive")
            depth = len(PurePosixPath(e.path).parts) - 1
            for part in target.split("/"):
                depth += -1 if part == ".." else 0 if part in ("", ".") else 1
                if depth < 0:
                    raise UnsafeArchive(f"{archive}: symlink {e.path!r} -> {e.link!r} points outside the "
                                        f"target folder; refusing the archive")
        elif e.kind == "hardlink":
            if e.link not in files_seen:
                raise UnsafeArchive(f"{archive}: hardlink {e.path!r} -> {e.link!r} does not point to an earlier "
                                    f"regular file of the archive; refusing the archive")
        if e.kind in ("file", "hardlink"):
            files_seen.add(e.path)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _open_archive(archive: Path):
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        try:
            return zf, list(_zip_entries(zf, archive))
        except BaseException:
            zf.close()
            raise
    if tarfile.is_tarfile(archive):
        tf = tarfile.open(archive, "r:*")
        try:
            return tf, list(_tar_entries(tf, archive))
        except BaseException:
            tf.close()
            raise
    raise CorruptArchive(f"{archive}: neither a zip nor a tar archive (by content); cannot extract it")


def _corrupt(archive: Path, e: BaseException) -> CorruptArchive:
    return CorruptArchive(f"{archive}: not a complete, readable archive ({type(e).__name__}: {e}); the download "
                          f"is truncated or damaged")


# Suffixes of single compressed streams (not tar) and their readers.
_STREAMS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tbz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")


def archive_kind(name: str) -> Optional[str]:
    """``zip`` | ``tar`` | ``stream`` (single .gz/.bz2/.xz) by file name, or None for other files."""
    low = name.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith(_TAR_SUFFIXES):
        return "tar"
    if any(low.endswith(s) for s in _STREAMS):
        return "stream"
    return None


def verify_archive(archive: str | os.PathLike, *, max_bytes: int, max_files: int, kind: Optional[str] = None) -> None:
    """Read ``archive`` completely (module docstring) without writing; :class:`CorruptArchive` if it cannot be.

    ``kind`` (``zip`` | ``tar`` | ``stream``) defaults to :func:`archive_kind` of the name, then to the
    content (zip or tar). The entry checks of :func:`extract_archive` (paths, limits) apply as well, and
    at most ``max_bytes`` are decompressed, so a zip bomb is refused here too.
    """
    archive = Path(archive)
    kind = kind or archive_kind(archive.name)
    try:
        if kind == "stream":
            opener = next(o for s, o in _STREAMS.items() if archive.name.lower().endswith(s))
            total = 0
            with opener(archive, "rb") as fh:
                while True:
                    block = fh.read(1 << 20)
                    if not block:
                        return
                    total += len(block)
                    if total > max_bytes:
                        raise UnsafeArchive(f"{archive}: decompresses to more than {max_bytes} bytes "
                                            f"(download.max_extract_bytes); refusing it (zip-bomb guard)")
        if kind == "zip" and not zipfile.is_zipfile(archive):
            # The central directory sits at the end of a zip (APPNOTE.TXT 4.3.6): a cut file has none.
            raise CorruptArchive(f"{archive}: not a complete, readable archive: no zip end-of-central-directory "
                                 f"record (truncated, or not a zip at all)")
        handle, entries = _open_archive(archive)
        with handle:
            _check(entries, archive, max_bytes, max_files)
            total = 0
            for e in entries:
                if e.kind != "file":
                    continue
                with e.open() as src:
                    while True:
                        block = src.read(1 << 20)  # zip: the CRC-32 is checked when the member ends
                        if not block:
                            break
                        total += len(block)
                        if total > max_bytes:
                            raise UnsafeArchive(f"{archive}: unpacking exceeds {max_bytes} bytes "
                                                f"(download.max_extract_bytes); refusing the archive")
            if isinstance(handle, tarfile.TarFile):
                _check_tar_end(handle, archive)
    except UnsafeArchive:
        raise
    except (*_READ_ERRORS, OSError) as e:
        raise _corrupt(archive, e) from None


def _check_tar_end(tf: tarfile.TarFile, archive: Path) -> None:
    """The two zero records that end every tar archive (tar(5)) must follow the last member."""
    tf.fileobj.seek(tf.offset)
    tail = tf.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0"):
        raise CorruptArchive(f"{archive}: the tar archive ends without its end-of-archive marker (two zero "
                             f"records) after {len(tf.getmembers())} member(s); the download is truncated")


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike, *, max_bytes: int,
                    max_files: int) -> list[str]:
    """Extract ``archive`` safely into ``target`` (created if absent); return its top-level entries.

    ``target`` may already hold other files (e.g. a ``downloads/`` folder or another archive's
    contents): existing folders are merged with the archive's, existing files with the same path are
    replaced. Raises :class:`UnsafeArchive` (see the module docstring) with nothing changed in
    ``target`` (a ``target`` this call created is removed again).
    """
    archive, target = Path(archive), Path(target)
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UnsafeArchive(f"cannot extract {archive} into {target}: a file is in the way of that folder; "
                            f"move it away and run again") from None
    # .extract-<archive>.tmp-<host>-<pid>-*: removed on error below; a killed extraction's by the next one
    from pclbench.core.io import remove_stale_tmp, tmp_prefix

    remove_stale_tmp(target / f"extract-{archive.name}")
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(f"extract-{archive.name}"), dir=target))
    try:
        try:
            handle, entries = _open_archive(archive)
            with handle:
                _check(entries, archive, max_bytes, max_files)
                _write(entries, tmp, archive, max_bytes)
        except (FileExistsError, NotADirectoryError) as e:
            raise UnsafeArchive(f"{archive}: an entry is both a file and a folder ({e.filename}); refusing the "
                                f"archive") from None
        except UnsafeArchive:
            raise
        except _READ_ERRORS as e:
            raise _corrupt(archive, e) from None
        tops = sorted({e.path.split("/")[0] for e in entries if e.path})
        for name in tops:
            _merge(tmp / name, target / name)
        return tops
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(entries: list[_Entry], root: Path, archive: Path, max_bytes: int) -> None:
    """Steps 2-3: folders and files, then symlinks, then the realpath check of every symlink."""
    root_real = os.path.realpath(root)
    umask = os.umask(0)
    os.umask(umask)
    written = 0
    for e in entries:
        if not e.path:
            continue
        dest = root / e.path
        if e.kind == "dir":
            dest.mkdir(parents=True, exist_ok=True)
            continue
        if e.kind not in ("file", "hardlink"):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        # No symlink exists yet, so this only guards against a bug in the checks above.
        if not _inside(root_real, os.path.realpath(dest.parent)):
            raise UnsafeArchive(f"{archive}: entry {e.path!r} resolves outside the target; refusing the archive")
        if dest.is_dir() and not dest.is_symlink():
            raise UnsafeArchive(f"{archive}: entry {e.path!r} is both a folder and a file; refusing the archive")
        if e.kind == "hardlink":
            # A copy rather than os.link: same bytes, and no inode shared with anything.
            src = root / e.link
            written += src.stat().st_size
            if written > max_bytes:
                raise UnsafeArchive(f"{archive}: unpacking exceeds {max_bytes} bytes "
                                    f"(download.max_extract_bytes); refusing the archive")
            shutil.copyfile(src, dest, follow_symlinks=False)
            continue
        mode = (e.mode & 0o777 | 0o600) & ~umask  # no setuid/setgid/sticky bits from an archive
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), mode)
        with os.fdopen(fd, "wb") as out, e.open() as src:
            while True:
                block = src.read(1 << 20)
                if not block:
                    break
                written += len(block)
                if written > max_bytes:
                    raise UnsafeArchive(f"{archive}: unpacking exceeds {max_bytes} bytes "
                                        f"(download.max_extract_bytes); refusing the archive (zip-bomb guard)")
                out.write(block)
    links = [e for e in entries if e.kind == "symlink"]
    for e in links:
        dest = root / e.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            raise UnsafeArchive(f"{archive}: symlink {e.path!r} collides with another entry; refusing the archive")
        os.symlink(e.link, dest)
    for e in links:
        resolved = os.path.realpath(root / e.path)
        if not _inside(root_real, resolved):
            raise UnsafeArchive(f"{archive}: symlink {e.path!r} -> {e.link!r} resolves to {resolved}, outside "
                                f"the target folder (through other links); refusing the archive")


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``: rename if free, merge folders, replace files and links."""
    if not (dst.exists() or dst.is_symlink()):
        os.rename(src, dst)
        return
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in sorted(src.iterdir()):
            _merge(child, dst / child.name)
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    else:
        dst.unlink()
    os.rename(src, dst)
