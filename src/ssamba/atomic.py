"""Atomic file writes: the files a training run or a model save produces (checkpoints, models, config.yaml, logs,
results) are written through a temporary file in the same folder and renamed into place, so a crash or a kill never
leaves a torn file.

The temporary file gets the permissions a plain ``open`` would give (``0o666`` less the umask; ``mkstemp`` alone
makes it ``0o600`` and the rename keeps that, so others in a group folder could not read the models), and the
temporaries an earlier writer left behind when it was killed mid-write (a ``kill -9`` runs no clean-up; each can be
as large as a checkpoint) are removed before a new one is made.

The temporary file is flushed to disk (``fsync``) before the rename and the folder after it: without that, a power
loss shortly after the rename can leave the new name pointing at an empty or partly written file on filesystems that
reorder data and metadata writes (ext4's delayed allocation, XFS), which would defeat the rename.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for orphan in path.parent.glob(f"{prefix}*.tmp"):  # left by a writer killed mid-write
        orphan.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _fsync(path: str | Path) -> None:
    """Flush a file's or a folder's contents to disk. A folder that cannot be opened for it (Windows) or a
    filesystem that refuses the call for folders is left as it is: the rename is still atomic there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where /proc says it (os.umask can only read by setting)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
