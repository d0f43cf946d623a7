"""Which collection the gateway reads and writes, the model that embeds for it, and re-embedding.

The search service's alias names the active collection; collection names carry the model id
(lookalike/collections.py), so the gateway embeds queries and new products with the model of the
collection it searches. It re-reads the alias every ALIAS_REFRESH_S seconds (another gateway may have
switched it) and at once after switching it itself.

Reindex (zero-downtime re-embedding): products are read from the active collection page by page
(ScrollPoints), their originals from the ImageStore, and written to the target collection through the
ingest pipeline (so a product already in the target with the same image and metadata is skipped:
an interrupted reindex resumes). Writes keep going to the active collection meanwhile; catch-up passes
copy what changed and delete what was deleted, until a pass finds nothing to do. Activation runs a last
catch-up pass with this gateway's writes held, then switches the alias; searches never wait.
"""
from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from lookalike import collections as naming
from lookalike import request_id
from lookalike.torchserve import EmbedderClient
from lookalike.v1 import lookalike_pb2, search_pb2

from . import metrics
from .adaptation_store import AdaptationStore
from .cache import EmbeddingCache
from .ingest import CREATED, FAILED, UNCHANGED, UPDATED, IngestItem
from .projection import Projection
from .quality_gate import check_switch

log = logging.getLogger(__name__)

ALIAS_REFRESH_S = 2.0
SCROLL_PAGE = 256
MAX_CATCH_UP_PASSES = 5
PROGRESS_EVERY_S = 1.0


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


class Catalogue:
    """The gateway's view of the collections (see the module docstring)."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.settings = gateway.settings
        self.default_model = naming.model_id(self.settings.embedder_model, self.settings.embedder_model_version)
        self.alias = ""
        self.previous = ""
        self.gate = WriteGate()
        self._models: dict[str, tuple[EmbedderClient, EmbeddingCache]] = {}
        self._active: Target | None = None
        self._read_at = float("-inf")
        self._refreshing = threading.RLock()
        self._refresher: threading.Thread | None = None
        self._reindexing = threading.Lock()  # one reindex or adaptation at a time
        self.adaptations = AdaptationStore(self.settings.data_dir / "adaptations")

    # ---- models and targets -------------------------------------------------------------------------

    def _model(self, mid: str) -> tuple[EmbedderClient, EmbeddingCache]:
        if mid == self.default_model:
            return self.gateway.embedder, self.gateway.cache
        if mid not in self._models:
            base, s = self.gateway.embedder, self.settings
            name, version = naming.split_model_id(mid)
            embedder = EmbedderClient(base.target, token=getattr(base, "_token", None), model_name=name,
                                      model_version=version, token_file=base.token_file, channel=base.channel)
            cache = EmbeddingCache(s.redis_url, model_id=mid, ttl_s=s.cache_ttl_s, timeout_s=s.redis_timeout_s,
                                   retry_after_s=s.redis_retry_after_s)
            self._models[mid] = (embedder, cache)
        return self._models[mid]

    def target(self, collection: str) -> Target:
        mid = naming.model_of(collection, self.alias, self.default_model) if self.alias else self.default_model
        embedder, cache = self._model(mid)
        return Target(collection, mid, embedder, cache, self.adaptations.projection(collection))

    def writing(self):
        """Held by every write to the active collection (the alias does not move under it)."""
        return self.gate.shared()

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
                    catalogue = me()
                    if catalogue is None:
                        return
                    try:
                        catalogue.refresh(timeout=1.0)
                    except Exception as exc:  # noqa: BLE001 - keep the last known one; retry next time
                        log.debug("alias refresh failed: %s", exc)
                    del catalogue

            self._refresher = threading.Thread(target=loop, daemon=True, name="alias-refresh")
            self._refresher.start()

    def refresh(self, timeout: float = 2.0) -> Target:
        """Reads the alias now (one call, no retries); ApiError when the search service does not answer."""
        try:
            response = self.gateway.search.ListCollections(search_pb2.ListStoredCollectionsRequest(),
                                                           timeout=timeout, metadata=request_id.metadata())
        except grpc.RpcError as exc:
            raise self.gateway._dependency_error("search service", exc) from None
        self.alias, self.previous = response.alias, response.previous
        target = self.target(response.active)
        if self._active is None or self._active.collection != target.collection:
            log.info("active collection: %s (model %s)", target.collection, target.model_id)
        self._active = target
        self._read_at = time.monotonic()
        return target

    def list(self, deadline) -> lookalike_pb2.ListCollectionsResponse:
        response = self.gateway._call_search("ListCollections", search_pb2.ListStoredCollectionsRequest(
            with_counts=True), deadline)
        self.alias = response.alias
        return lookalike_pb2.ListCollectionsResponse(
            alias=response.alias, active=response.active, previous=response.previous,
            collections=[lookalike_pb2.CollectionInfo(
                name=c.name, model_id=naming.model_of(c.name, response.alias, self.default_model),
                vector_size=c.vector_size, points=c.points, active=c.active) for c in response.collections])

    def activate(self, collection: str, rollback: bool, deadline) -> tuple[str, str]:
        """Points the alias at `collection` (rollback: at the previous one) with this gateway's writes held."""
        from .core import ApiError

        if rollback and not collection:
            self.refresh()
            collection = self.previous
            if not collection:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "no previous collection to roll back to")
        if not collection:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "name the collection to activate")
        with self.gate.exclusive():
            return self._switch(collection, deadline)

    def _switch(self, collection: str, deadline) -> tuple[str, str]:
        response = self.gateway._call_search("SetAlias", search_pb2.SetAliasRequest(collection=collection), deadline)
        self.previous = response.previous
        self._active = self.target(response.active)
        self._read_at = time.monotonic()
        log.info("alias switched: %s -> %s", response.previous, response.active)
        return response.active, response.previous

    # ---- reindex ------------------------------------------------------------------------------------

    def reindex(self, request: lookalike_pb2.ReindexRequest, deadline_for_batch, cancelled=None) -> Iterator[
            lookalike_pb2.ReindexProgress]:
        """Builds (or brings up to date) a collection from the active one; see the module docstring.
        `cancelled()` true: the caller went away; the work stops (calling again resumes)."""
        from .core import ApiError, Deadline

        if not self._reindexing.acquire(blocking=False):
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "a reindex or an adaptation is already running on this gateway")
        try:
            source = self.refresh()
            target = self._reindex_target(request, source, Deadline(30.0))
            log.info("reindex %s -> %s (model %s)", source.collection, target.collection, target.model_id)
            run = _Run(source.collection, target.collection, target.model_id)
            run.cancelled = cancelled
            for number in range(1, MAX_CATCH_UP_PASSES + 2):
                run.pass_ = number
                changes = yield from self._pass(run, source, target, deadline_for_batch)
                if changes == 0 or number > MAX_CATCH_UP_PASSES:
                    break
            if request.activate:
                if run.failed and not request.force:
                    raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"{run.failed} products could not be re-embedded into {target.collection}; "
                                   "the alias still points at " f"{source.collection} (force activates anyway)")
                yield check_switch(self, run.progress(), source, target, request.force)  # the quality gate
                with self.gate.exclusive():  # this gateway's writes wait (searches do not)
                    run.pass_ += 1
                    yield from self._pass(run, source, target, deadline_for_batch)
                    _, previous = self._switch(target.collection, Deadline(30.0))
                run.activated, run.previous = True, previous
            run.finished = True
            yield run.progress()
        finally:
            self._reindexing.release()

    def _reindex_target(self, request, source: Target, deadline) -> Target:
        from .core import ApiError

        wanted = None
        if request.model_version or not request.collection:
            try:
                wanted = naming.model_id(self.settings.embedder_model,
                                         request.model_version or self.settings.embedder_model_version)
            except ValueError as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if request.collection:
            name = request.collection
            if not naming.NAME_PATTERN.match(name) or name == self.alias:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{name!r} is not a collection name")
            if name == source.collection:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is the active collection")
            carried = naming.model_of(name, self.alias, "")
            if wanted and carried and carried != wanted:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"collection {name} is for model {carried}, not {wanted}")
            if not carried and name not in self._names(deadline):  # only old collections lack the model
                example = naming.collection_name(self.alias, wanted or self.default_model)
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"new collection names carry the model id: {example} or {example}__<tag>")
        else:
            name = next(n for n in naming.candidate_names(self.alias, wanted) if n != source.collection)
        target = self.target(name)
        size = len(self._probe_vector(target, deadline))
        self.gateway._call_search("CreateCollection", search_pb2.CreateCollectionRequest(name=name, vector_size=size),
                                  deadline)
        return target

    def _names(self, deadline) -> set[str]:
        response = self.gateway._call_search("ListCollections", search_pb2.ListStoredCollectionsRequest(), deadline)
        return {c.name for c in response.collections}

    def _probe_vector(self, target: Target, deadline):
        """An embedding of a small generated image: the target model's vector size."""
        from PIL import Image

        from .core import ApiError

        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 96, 64)).save(buffer, "PNG")
        try:
            return target.embedder.embed(buffer.getvalue(), timeout=deadline.remaining("probing the model"))
        except grpc.RpcError as exc:
            details = exc.details() or ""
            # TorchServe 0.12 answers INTERNAL "Model version: X does not exist" (ModelVersionNotFoundException)
            if exc.code() == grpc.StatusCode.NOT_FOUND or "does not exist" in details or "NotFound" in details:
                first_line = details.splitlines()[0] if details else exc.code().name
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"the embedder does not serve model {target.model_id}: {first_line}") from None
            raise self.gateway._dependency_error("embedder (TorchServe)", exc) from None

    def _pass(self, run: _Run, source: Target, target: Target, deadline_for_batch):
        """One pass: every product of the source into the target, then deletions mirrored. Yields progress;
        returns the number of changes it made (written + removed)."""
        from .core import Deadline

        run.done = run.unchanged = run.failed = 0
        run.total = self.gateway._call_search("CountPoints", search_pb2.CountPointsRequest(
            collection=source.collection), Deadline(30.0)).count
        missing: dict[str, str] = {}
        changes = 0
        last = time.monotonic()
        items = self._source_items(source, missing)
        results = self.gateway.ingestor.run(items, deadline_for_batch, target=lambda: target,
                                            detect_duplicates=False, gated=False, cancelled=run.cancelled)
        for result in results:
            run.done += 1
            if result.outcome in (CREATED, UPDATED):
                run.embedded += 1
                changes += 1
                metrics.REINDEXED.inc()
            elif result.outcome == UNCHANGED:
                run.unchanged += 1
            elif result.outcome == FAILED:
                run.failed += 1
                proto = result.to_proto()
                if result.product_id in missing:
                    proto.error = missing[result.product_id]
                run.failures.append(proto)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                yield run.progress()
        removed = self._mirror_deletions(source, target)
        run.removed += removed
        changes += removed
        yield run.progress()
        return changes

    def _source_items(self, source: Target, missing: dict[str, str]) -> Iterator[IngestItem]:
        from .core import Deadline

        offset = ""
        while True:
            page = self.gateway._call_search("ScrollPoints", search_pb2.ScrollPointsRequest(
                collection=source.collection, limit=SCROLL_PAGE, offset=offset), Deadline(30.0))
            for point in page.points:
                product = point.product
                hashes = list(product.image_sha256s) or [product.image_sha256]
                originals = [self.gateway.images.get(h) if h else None for h in hashes]
                if any(image is None for image in originals):
                    lost = [i for i, image in enumerate(originals) if image is None]
                    missing[product.id] = (f"original image{'s' if len(lost) > 1 else ''} "
                                           f"{', '.join(map(str, lost))} of {product.id!r} not in the gateway's "
                                           "image store (index it again)")
                    originals = [b""]
                product.ClearField("image_sha256")
                product.ClearField("image_sha256s")
                yield IngestItem(product, originals[0], more_images=originals[1:])
            offset = page.next_offset
            if not offset:
                return

    def _mirror_deletions(self, source: Target, target: Target) -> int:
        from .core import Deadline

        removed, offset = 0, ""
        while True:
            page = self.gateway._call_search("ScrollPoints", search_pb2.ScrollPointsRequest(
                collection=target.collection, limit=SCROLL_PAGE, offset=offset), Deadline(30.0))
            ids = [p.product.id for p in page.points]
            if ids:
                present = self.gateway._call_search("GetPoints", search_pb2.GetPointsRequest(
                    product_ids=ids, collection=source.collection), Deadline(30.0))
                gone = sorted(set(ids) - {p.product.id for p in present.points})
                if gone:
                    removed += self.gateway._call_search("DeletePoints", search_pb2.DeletePointsRequest(
                        product_ids=gone, collection=target.collection), Deadline(30.0)).deleted
            offset = page.next_offset
            if not offset:
                return removed


class _Run:
    """Counters of one reindex, turned into progress messages."""

    def __init__(self, source: str, collection: str, model_id: str):
        self.source, self.collection, self.model_id = source, collection, model_id
        self.total = self.done = self.embedded = self.unchanged = self.failed = self.removed = 0
        self.pass_ = 1
        self.finished = self.activated = False
        self.previous = ""
        self.failures: list = []
        self.cancelled = None

    def progress(self) -> lookalike_pb2.ReindexProgress:
        message = lookalike_pb2.ReindexProgress(
            collection=self.collection, source=self.source, model_id=self.model_id, total=self.total,
            done=self.done, embedded=self.embedded, unchanged=self.unchanged, failed=self.failed,
            removed=self.removed, finished=self.finished, activated=self.activated, previous=self.previous,
            failures=self.failures)
        setattr(message, "pass", self.pass_)  # a Python keyword
        self.failures = []
        return message
