"""Which collection the gateway reads and writes (the alias), the model that embeds for it, and the alias
switch.

The search service's alias names the active collection; collection names carry the model id
(lookalike/naming.py), so the gateway embeds queries and new products with the model of the
collection it searches (a `Target`). It re-reads the alias every ALIAS_REFRESH_S seconds (another gateway
may have switched it) and at once after switching it itself. Writes to the active collection hold the
write gate shared; a switch holds it exclusive, so the alias never moves under a write. Building a new
collection (reindex, adaptation) is reindex.py / adaptation.py; they take `exclusive_job()` (one at a time).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from lookalike import naming
from lookalike.embedder_client import EmbedderClient
from lookalike.search.v1 import search_pb2
from lookalike.v1 import lookalike_pb2

from .adaptation_store import AdaptationStore
from .cache import EmbeddingCache
from .errors import ApiError, Deadline
from .projection import Projection
from .search_client import SearchClient

log = logging.getLogger(__name__)

ALIAS_REFRESH_S = 2.0


@dataclass(frozen=True)
class Target:
    """A collection and what writes to it: the model (embedder client and its embedding cache) and, for an
    adapted collection, the projection of raw embeddings into its space (lookalike adapt)."""
    collection: str  # "" = whatever the alias points at (only before the gateway could read the alias)
    model_id: str
    embedder: EmbedderClient
    cache: EmbeddingCache
    projection: Projection | None = None

    def project(self, raw: np.ndarray) -> np.ndarray:
        """A raw embedding (what the embedder and the cache give) as this collection stores it."""
        return raw if self.projection is None else self.projection.apply(raw)

    def raw(self, stored: np.ndarray) -> np.ndarray:
        """A stored vector of this collection back as the raw embedding (unit length)."""
        return stored if self.projection is None else self.projection.raw(stored)


def embedder_client(settings, name: str, version: str, channel: grpc.Channel | None = None,
                    interceptors: Sequence = ()) -> EmbedderClient:
    """A client of the configured embedder for one model (name, version), over `channel` when given."""
    token = settings.embedder_token.get_secret_value() if settings.embedder_token else None
    return EmbedderClient(settings.embedder_address, token=token, model_name=name, model_version=version,
                          token_file=settings.embedder_token_file, channel=channel, interceptors=list(interceptors))


def embedding_cache(settings, model_id: str) -> EmbeddingCache:
    """The configured embedding cache, keyed for `model_id`."""
    return EmbeddingCache(settings.redis_url, model_id=model_id, ttl_s=settings.cache_ttl_s,
                          timeout_s=settings.redis_timeout_s, retry_after_s=settings.redis_retry_after_s)


class WriteGate:
    """Shared for writes (many at once), exclusive for an alias switch (waits for the writes in flight)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._writers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._writers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class CollectionManager:
    """The gateway's view of the collections (see the module docstring). `embedder` and `cache` serve the
    configured model; other models' clients are made on demand."""

    def __init__(self, settings, search: SearchClient, embedder: EmbedderClient, cache: EmbeddingCache):
        self.settings = settings
        self.search = search
        self.embedder = embedder
        self.cache = cache
        self.default_model = naming.model_id(self.settings.embedder_model, self.settings.embedder_model_version)
        self.alias = ""
        self.previous = ""
        self.gate = WriteGate()
        self._models: dict[str, tuple[EmbedderClient, EmbeddingCache]] = {}
        self._active: Target | None = None
        self._refreshing = threading.RLock()
        self._refresher: threading.Thread | None = None
        self._job = threading.Lock()  # one reindex or adaptation at a time
        self.adaptations = AdaptationStore(self.settings.data_dir / "adaptations")

    # ---- models and targets -------------------------------------------------------------------------

    def _model(self, mid: str) -> tuple[EmbedderClient, EmbeddingCache]:
        if mid == self.default_model:
            return self.embedder, self.cache
        if mid not in self._models:  # another model: its own client over the same channel, its own cache keys
            name, version = naming.split_model_id(mid)
            self._models[mid] = (embedder_client(self.settings, name, version, channel=self.embedder.channel),
                                 embedding_cache(self.settings, mid))
        return self._models[mid]

    def target(self, collection: str) -> Target:
        mid = naming.model_of(collection, self.alias, self.default_model) if self.alias else self.default_model
        embedder, cache = self._model(mid)
        return Target(collection, mid, embedder, cache, self.adaptations.projection(collection))

    def writing(self):
        """Held by every write to the active collection (the alias does not move under it)."""
        return self.gate.shared()

    @contextlib.contextmanager
    def exclusive_job(self, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION):
        """Held by a reindex or an adaptation: one at a time on this gateway (else ApiError `code`)."""
        if not self._job.acquire(blocking=False):
            raise ApiError(code, "a reindex or an adaptation is already running on this gateway")
        try:
            yield
        finally:
            self._job.release()

    # ---- the active collection ----------------------------------------------------------------------

    def active(self) -> Target:
        """The active collection as last read. A background thread re-reads the alias every
        ALIAS_REFRESH_S, so requests never wait for it (only the first, once, for at most a second)."""
        active = self._active
        if active is None:
            with self._refreshing:
                if self._active is None:
                    try:
                        self.refresh(timeout=1.0)
                    except Exception as exc:  # noqa: BLE001 - the search service is not there yet
                        log.warning("cannot read the active collection yet (%s); using the alias", exc)
                        self._start_refresher()
                        return Target("", self.default_model, *self._model(self.default_model))
            active = self._active
        self._start_refresher()
        return active

    def _start_refresher(self) -> None:
        if self._refresher is not None:
            return
        with self._refreshing:
            if self._refresher is not None:
                return
            me = weakref.ref(self)

            def loop():
                while True:
                    time.sleep(ALIAS_REFRESH_S)
                    manager = me()
                    if manager is None:
                        return
                    try:
                        manager.refresh(timeout=1.0)
                    except Exception as exc:  # noqa: BLE001 - keep the last known one; retry next time
                        log.debug("alias refresh failed: %s", exc)
                    del manager

            self._refresher = threading.Thread(target=loop, daemon=True, name="alias-refresh")
            self._refresher.start()

    def refresh(self, timeout: float = 2.0) -> Target:
        """Reads the alias now (one call, no retries); ApiError when the search service does not answer."""
        response = self.search.call_once("ListCollections", search_pb2.ListCollectionsRequest(), timeout)
        self.alias, self.previous = response.alias, response.previous
        target = self.target(response.active)
        if self._active is None or self._active.collection != target.collection:
            log.info("active collection: %s (model %s)", target.collection, target.model_id)
        self._active = target
        return target

    def list(self, deadline: Deadline) -> lookalike_pb2.ListCollectionsResponse:
        response = self.search.call("ListCollections", search_pb2.ListCollectionsRequest(
            with_counts=True), deadline)
        self.alias = response.alias
        return lookalike_pb2.ListCollectionsResponse(
            alias=response.alias, active=response.active, previous=response.previous,
            collections=[lookalike_pb2.CollectionInfo(
                name=c.name, model_id=naming.model_of(c.name, response.alias, self.default_model),
                vector_size=c.vector_size, points=c.points, active=c.active) for c in response.collections])

    def activate(self, collection: str, rollback: bool, deadline: Deadline) -> tuple[str, str]:
        """Points the alias at `collection` (rollback: at the previous one) with this gateway's writes held."""
        if rollback and not collection:
            self.refresh()
            collection = self.previous
            if not collection:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "no previous collection to roll back to")
        if not collection:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "name the collection to activate")
        with self.gate.exclusive():
            return self.switch(collection, deadline)

    def switch(self, collection: str, deadline: Deadline) -> tuple[str, str]:
        """Points the alias at `collection` now: the caller holds `gate.exclusive()`. (active, previous)"""
        response = self.search.call("SetAlias", search_pb2.SetAliasRequest(collection=collection), deadline)
        self.previous = response.previous
        self._active = self.target(response.active)
        log.info("alias switched: %s -> %s", response.previous, response.active)
        return response.active, response.previous
