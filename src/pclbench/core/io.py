"""Crash-safe outputs: every stage writes into a temporary sibling (folder or file) and renames it.

docs/architecture.md, Stage 2: "Written to a temporary folder and renamed, so a crash never leaves a
half shard." :func:`atomic_dir` is that rule for any stage that writes a folder of files,
:func:`atomic_file` / :func:`atomic_write_text` for a single file.

Temporary names carry the writer: ``.<name>.tmp-<host>-<pid>-<random>``. A writer that fails removes
its own (``finally``); one that was killed (SIGKILL, the out-of-memory killer, a node lost) cannot, so
every writer first removes the leftovers of dead writers of the same output on this host
(:func:`remove_stale_tmp`). A temporary of a live writer, or of a writer on another host sharing the
file system, is never touched: its pid cannot be checked from here.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename inside it is durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems cannot open folders; durability is best effort there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _tmp_prefix(name: str, kind: str = "tmp") -> str:
    """``.<name>.<kind>-<host>-<pid>-``: the writer's host and pid, so a later start can tell its leftovers."""
    return f".{name}.{kind}-{_host()}-{os.getpid()}-"


def tmp_prefix(name: str) -> str:
    """The temporary-name prefix of a writer of ``name`` in this process (for ``tempfile.mkdtemp``)."""
    return _tmp_prefix(name)


def _dead_writers(final: Path, kind: str) -> list[Path]:
    """Siblings ``.<name>.<kind>-<this host>-<pid>-*`` of ``final`` whose pid no longer runs."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.{kind}-{re.escape(_host())}-([0-9]+)-")
    try:
        entries = list(final.parent.iterdir())
    except OSError:  # gone, or not listable: nothing to clean
        return []
    return [p for p in entries if (m := pattern.match(p.name)) and not _pid_alive(int(m.group(1)))]


def recover_replaced(final_path: str | os.PathLike) -> None:
    """Finish what an :func:`atomic_dir` writer killed between its two renames left undone.

    It had renamed the previous output aside (``.<name>.old-<host>-<pid>-*``): if ``final_path`` is
    missing, that previous output is put back (nothing already produced is lost); if the new output
    is in place, the old one is deleted.
    """
    final = Path(final_path)
    for old in sorted(_dead_writers(final, "old"), key=lambda p: p.lstat().st_mtime_ns, reverse=True):
        try:
            if not (final.exists() or final.is_symlink()):
                os.rename(old, final)
            else:
                _remove(old)
        except OSError:
            pass  # read-only storage or a concurrent cleaner: harmless


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only (kill(2))
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp(final_path: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings of ``final_path`` that a killed writer on THIS host left.

    Only entries named ``.<name>.tmp-<this host>-<pid>-*`` whose pid no longer runs are removed (a
    folder with its contents, a file or a symlink itself, never what it points to): a writer on
    another host (shared file system) or still alive is never touched; a reused pid only keeps a
    leftover longer. Returns the removed paths. A folder that cannot be listed (gone, read-only
    storage without read permission) is left alone.
    """
    final = Path(final_path)
    removed: list[Path] = []
    for p in _dead_writers(final, "tmp"):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it first
        except OSError:
            continue  # read-only storage: a leftover is harmless, the write itself will report
        removed.append(p)
    return removed


@contextmanager
def atomic_file(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; on success it is renamed onto ``final_path``.

    The body writes the file at the yielded path (opening it for writing; it exists, empty). If the
    body raises (``ENOSPC`` included), the temporary file is removed and ``final_path`` is untouched;
    dead writers' leftovers are removed first (:func:`remove_stale_tmp`). The name does not end in
    the final suffix: writers that append one (``np.savez`` adds ``.npz`` to a name) must be given an
    open file instead.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(final)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(final.name), dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes it private (0600)
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def atomic_write_bytes(final_path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``final_path`` through :func:`atomic_file` (fsynced before the rename)."""
    with atomic_file(final_path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(final_path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``final_path`` through :func:`atomic_file`."""
    atomic_write_bytes(final_path, text.encode(encoding))


@contextmanager
def atomic_dir(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final_path``; on success it becomes ``final_path``.

    - The temporary folder is a sibling (same file system), so the final step is a rename.
    - If the ``with`` body raises, the temporary folder is deleted and ``final_path`` is untouched:
      a failed rerun never destroys the previous good output.
    - If ``final_path`` already exists (file or folder) it is replaced only after the body succeeded:
      the old one is first renamed aside, the new one renamed into place, then the old one deleted.
      Between those two renames (microseconds) ``final_path`` does not exist; it is never half-written.

    - Temporary siblings a killed writer on this host left (``.<name>.tmp-<host>-<pid>-*``, pid no
      longer running) are removed first (:func:`remove_stale_tmp`), and a previous output such a
      writer had renamed aside (``.<name>.old-<host>-<pid>-*``) is put back or deleted
      (:func:`recover_replaced`).

    Example::

        with atomic_dir(out) as tmp:
            np.save(tmp / "x.npy", x)
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced(final)
    remove_stale_tmp(final)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final.name), dir=final.parent))
    # mkdtemp makes the folder private (0700); the output should get the usual permissions.
    os.chmod(tmp, 0o777 & ~_current_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f"{_tmp_prefix(final.name, 'old')}{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    if old is not None:
        _remove(old)
