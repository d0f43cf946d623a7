"""Trained classifier heads on disk: ``<root>/<version>/`` (``head.npz``: coef, intercept, labels;
``meta.json``: the training report) -- no pickle -- and ``<root>/current`` naming the active version,
replaced atomically."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path

import numpy as np

from lookalike import atomic

from .classifier_head import LinearHead

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{4}$")


class ClassifierRepository:
    """Versions of trained heads under `root`, and the `current` pointer."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def pointer(self) -> Path:
        return self.root / "current"

    @staticmethod
    def new_version(now: dt.datetime | None = None) -> str:
        now = now or dt.datetime.now(dt.timezone.utc)
        return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"

    def versions(self) -> list[str]:
        """Stored versions, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name))

    def save(self, head: LinearHead, report: dict, activate: bool = True) -> str:
        """Writes a new version (head.npz + meta.json) and, by default, points `current` at it."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = report.get("version") or self.new_version()
        if not VERSION_RE.match(version):
            raise ValueError(f"bad version name {version!r}")
        report = {**report, "version": version}
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        try:
            # each file fsynced, then the staging folder once, then the rename that publishes the version
            atomic.write_with(staging / "head.npz", lambda out: np.savez(
                out, coef=head.coef, intercept=head.intercept, labels=np.array(head.labels, dtype=str)),
                fsync=True, fsync_dir=False)
            atomic.write_text(staging / "meta.json", json.dumps(report, indent=2, sort_keys=True),
                              fsync=True, fsync_dir=False)
            atomic.fsync_directory(staging)
            os.rename(staging, self.root / version)
        except BaseException:
            for leftover in staging.glob("*"):
                leftover.unlink(missing_ok=True)
            staging.rmdir()
            raise
        atomic.fsync_directory(self.root)
        if activate:
            self.activate(version)
        return version

    def activate(self, version: str) -> None:
        if version not in self.versions():
            raise KeyError(version)
        atomic.write_text(self.pointer, f"{version}\n")

    def current_version(self) -> str | None:
        """The version `current` names; the newest stored one when the pointer is missing or invalid."""
        try:
            named = self.pointer.read_text().strip()
        except OSError:
            named = ""
        if VERSION_RE.match(named) and (self.root / named).is_dir():
            return named
        versions = self.versions()
        if named:
            log.warning("classifier pointer %s names %r, which is not a stored version", self.pointer, named)
        return versions[-1] if versions else None

    def load(self, version: str) -> tuple[LinearHead, dict]:
        if not VERSION_RE.match(version):
            raise ValueError(f"bad version name {version!r}")
        folder = self.root / version
        with np.load(folder / "head.npz", allow_pickle=False) as data:
            head = LinearHead(tuple(str(label) for label in data["labels"]), np.asarray(data["coef"], dtype=np.float64),
                              np.asarray(data["intercept"], dtype=np.float64))
        meta = json.loads((folder / "meta.json").read_text())
        if list(head.labels) != list(meta.get("labels", head.labels)):
            raise ValueError(f"classifier {version}: head.npz and meta.json disagree on the labels")
        return head, meta

    def stamp(self) -> tuple | None:
        """Changes whenever `current` is replaced."""
        try:
            st = self.pointer.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

