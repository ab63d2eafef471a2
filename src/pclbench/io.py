"""Crash-safe output folders: every stage writes into a temporary sibling folder and renames it.

docs/architecture.md, Stage 2: "Written to a temporary folder and renamed, so a crash never leaves a
half shard." :func:`atomic_dir` is that rule for any stage that writes a folder of files.
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


def _tmp_prefix(name: str) -> str:
    """``.<name>.tmp-<host>-<pid>-``: the writer's host and pid, so a later start can tell its leftovers."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return f".{name}.tmp-{host}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only (kill(2))
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp_dirs(final_path: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings of ``final_path`` that a killed writer on THIS host left.

    Only folders named ``.<name>.tmp-<this host>-<pid>-*`` whose pid no longer runs are removed: a
    writer on another host (shared file system) or still alive is never touched; a reused pid only
    keeps a leftover longer. Returns the removed paths.
    """
    final = Path(final_path)
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.tmp-{re.escape(host)}-([0-9]+)-")
    removed = []
    if not final.parent.is_dir():
        return removed
    for p in final.parent.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


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
      longer running) are removed first (:func:`remove_stale_tmp_dirs`).

    Example::

        with atomic_dir(out) as tmp:
            np.save(tmp / "x.npy", x)
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_dirs(final)
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
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
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
