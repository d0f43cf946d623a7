"""Atomic file writes, one way everywhere: the data goes to a temporary file beside the target, which then
replaces the target with one rename, so a reader (or a process started after a kill -9) sees the old
content or the new, never a part.

Durability on top of that is the caller's choice, per file:
  * ``fsync=True`` (default): the file's data is flushed to disk before the rename, and the folder after
    it, so the new content also survives a power cut (pointers, trained models, stored photos);
  * ``fsync=False``: atomic only (status and port files rewritten often, or recomputed on loss);
  * ``fsync_dir=False`` with ``fsync=True``: the data is durable once the rename is; for the photo store,
    where a missing photo is re-uploaded and a folder fsync per photo would slow every ingest.

A leaf module: it imports nothing of the project.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_directory(path: str | os.PathLike) -> None:
    """Flushes a folder's entries (a rename or a new file in it) to disk; best effort (a folder that
    cannot be opened, e.g. on a filesystem without folder fsync, is skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_with(path: str | os.PathLike, writer: Callable[[BinaryIO], object], *, fsync: bool = True,
               fsync_dir: bool | None = None) -> Path:
    """Writes `path` atomically with `writer(binary file)` (e.g. ``lambda f: np.savez(f, **arrays)``).

    `fsync_dir` defaults to `fsync`. On any error the target is untouched and the temporary file removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync if fsync_dir is None else fsync_dir:
        fsync_directory(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True, fsync_dir: bool | None = None) -> Path:
    """Writes `data` to `path` atomically (see the module's docstring for `fsync` / `fsync_dir`)."""
    return write_with(path, lambda handle: handle.write(data), fsync=fsync, fsync_dir=fsync_dir)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = True, fsync_dir: bool | None = None) -> Path:
    """Writes `text` (UTF-8) to `path` atomically (see the module's docstring for `fsync` / `fsync_dir`)."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync, fsync_dir=fsync_dir)


__all__ = ["fsync_directory", "write_with", "write_bytes", "write_text"]
