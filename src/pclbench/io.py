"""Crash-safe output folders: every stage writes into a temporary sibling folder and renames it.

docs/architecture.md, Stage 2: "Written to a temporary folder and renamed, so a crash never leaves a
half shard." :func:`atomic_dir` is that rule for any stage that writes a folder of files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
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


@contextmanager
def atomic_dir(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final_path``; on success it becomes ``final_path``.

    - The temporary folder is a sibling (same file system), so the final step is a rename.
    - If the ``with`` body raises, the temporary folder is deleted and ``final_path`` is untouched:
      a failed rerun never destroys the previous good output.
    - If ``final_path`` already exists (file or folder) it is replaced only after the body succeeded:
      the old one is first renamed aside, the new one renamed into place, then the old one deleted.
      Between those two renames (microseconds) ``final_path`` does not exist; it is never half-written.

    Example::

        with atomic_dir(out) as tmp:
            np.save(tmp / "x.npy", x)
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
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
    _fsync_dir(final.parent)
    if old is not None:
        _remove(old)
