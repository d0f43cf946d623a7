"""Where adaptations live: ``<data_dir>/adaptations/<collection>/projection.{npz,json}`` and reports.

A collection with a projection directory is an adapted one: the gateway projects query embeddings and new
products into its space. The files are written before the collection is created, never changed after, and
read back when a collection becomes active (gateways sharing the volume follow each other). Every
adaptation's report (activated or refused) is ``reports/<time>.json``.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from pathlib import Path

from lookalike import atomic

from .projection import META, Projection, ProjectionError

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


class AdaptationStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[float | None, Projection | None]] = {}

    def directory(self, collection: str) -> Path:
        if not _SAFE.match(collection or "") or collection in (".", ".."):
            raise ValueError(f"{collection!r} is not a collection name")
        return self.root / collection

    def projection(self, collection: str) -> Projection | None:
        """The projection of an adapted collection, None for a plain one (or "", the alias before it is read).
        Cached; re-read when the file changes."""
        if not collection or not _SAFE.match(collection):
            return None
        meta = self.root / collection / META
        try:
            stamp = meta.stat().st_mtime
        except OSError:
            stamp = None
        with self._lock:
            cached = self._loaded.get(collection)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        projection = None
        if stamp is not None:
            try:
                projection = Projection.load(meta.parent)
            except ProjectionError as exc:
                # a collection we cannot project into must not be searched with raw vectors: say so loudly
                log.error("adapted collection %s: %s", collection, exc)
                raise
        with self._lock:
            self._loaded[collection] = (stamp, projection)
        return projection

    def save(self, collection: str, projection: Projection) -> None:
        projection.save(self.directory(collection))

    def save_report(self, report: dict) -> Path:
        reports = self.root / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = reports / f"{stamp}.json"
        return atomic.write_text(path, json.dumps(report, indent=2, sort_keys=True), fsync=False)

    def latest_report(self) -> dict | None:
        reports = sorted((self.root / "reports").glob("*.json")) if (self.root / "reports").is_dir() else []
        return json.loads(reports[-1].read_text()) if reports else None

    def adapted(self) -> list[str]:
        """Names of the collections that have a projection."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / META).is_file())
