"""Durable file writes, shared by datasets, replay snapshots, weights files and checkpoints.

A rename is atomic but not durable on its own: after a power cut the new name can exist
while the data it points to never reached the disk. So data is fsynced before the rename
and the directory after it.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

_IOV_MAX = 512  # buffers per writev call (Linux allows 1024)

# Everything np.load / zipfile / zlib can raise on a damaged or hostile .npz file.
NPZ_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    ValueError,
    OSError,
    KeyError,
    struct.error,
    NotImplementedError,
    RuntimeError,  # zipfile: a flipped flag bit marks a member "encrypted"
    tokenize.TokenError,  # numpy's .npy header parser on a damaged header
)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so renames/creations inside it survive a crash (no-op where
    directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fileobj)`` on a temp file in the same directory, fsync it, ``os.replace``
    it over ``path``, fsync the directory: readers see the old file or the new one, never a
    partial write. Streaming, so large snapshots never sit in memory as one bytes object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_all(fd: int, buffers: Sequence[Any]) -> int:
    """Write every bytes-like buffer to ``fd`` in order with writev, resuming after short
    writes; returns the number of bytes written."""
    views = [v for v in (memoryview(b).cast("B") for b in buffers) if len(v)]
    total = sum(len(v) for v in views)
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        if n <= 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        while n and i < len(views):
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0
    return total
