"""Content-addressed store of the original product images (for thumbnails and re-embedding)."""
from __future__ import annotations

import re
from pathlib import Path

from lookalike import atomic

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ImageStore:
    """Images saved under `root/<first two hex digits>/<sha256>`; writes are atomic and fsynced."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Path of an image by digest; anything but a hex SHA-256 is refused (no traversal)."""
        if not _DIGEST.match(digest):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / digest[:2] / digest

    def put(self, digest: str, data: bytes) -> Path:
        target = self.path(digest)
        if target.exists():
            return target
        target.parent.mkdir(exist_ok=True)
        # the photo's data is fsynced; not its folder (a folder fsync per photo would slow every ingest)
        return atomic.write_bytes(target, data, fsync=True, fsync_dir=False)

    def exists(self, digest: str) -> bool:
        try:
            return self.path(digest).is_file()
        except ValueError:
            return False

    def get(self, digest: str) -> bytes | None:
        try:
            return self.path(digest).read_bytes()
        except (FileNotFoundError, ValueError):
            return None
