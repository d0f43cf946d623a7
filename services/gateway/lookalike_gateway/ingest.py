"""Catalogue ingestion in the gateway: idempotent upserts with per-item outcomes and duplicate reports.

For each micro-batch of products (one gRPC UpsertProducts stream, a REST PUT, or a reindex pass):

  1. prepare (batches run concurrently, so the embedder always has work queued):
     validate each item and hash its image; read the stored points of the batch's ids from the target
     collection; an item whose image hash AND metadata equal what is stored is UNCHANGED (neither
     embedded nor written); a metadata-only change reuses the stored vector; everything else is
     decoded, looked up in the embedding cache and, on a miss, embedded (one concurrent burst per
     batch, which TorchServe batches).
  2. commit (strictly in batch order, so each batch sees everything stored before it): duplicate
     detection (same SHA-256 as another product, or an embedding within `duplicate_max_distance` of
     another product's: the nearest stored neighbours, plus earlier items of the same stream), then the
     original images go to the ImageStore and the points to the search service; the acknowledgements
     follow only once the search service stored them durably.

A failure of one item (bad image, bad id, embedder error for that image) fails that item alone; a
failure of the search service fails the batch's items that were to be written.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np

from lookalike import images, request_id, vectors
from lookalike.torchserve import EmbedderImageError
from lookalike.v1 import lookalike_pb2, search_pb2, types_pb2

from . import metrics
from .cache import image_digest

if TYPE_CHECKING:
    from .catalogue import Target
    from .core import ApiError, Deadline, Gateway

log = logging.getLogger(__name__)

Outcome = lookalike_pb2.UpsertProductsResponse.Outcome
CREATED, UPDATED, UNCHANGED, FAILED, SKIPPED = (Outcome.Value(n) for n in (
    "CREATED", "UPDATED", "UNCHANGED", "FAILED", "SKIPPED_DUPLICATE"))
BATCHES_IN_FLIGHT = 3
# Embedding bursts queued at TorchServe at once: the next burst is there when the current one ends, so the
# worker never waits for the gateway between batches (and always finds full batches of 16).
BURSTS_IN_FLIGHT = 2
EMBED_BUDGET_PER_IMAGE_S = 1.0  # an embedding burst's deadline: at least this per image (a hung embedder)  # prepared concurrently (embedding overlaps the previous batch's commit)
SEEN_DIGESTS_MAX = 200_000  # per stream: exact duplicates among earlier items of the same stream
PREDICTED, PROBABILITY = "_predicted", "_probability"  # attribute suffixes of predicted fields
DUPLICATE_CANDIDATES = 3  # nearest stored neighbours looked at (the product itself may be one)


@dataclass
class IngestItem:
    product: types_pb2.Product
    image: bytes
    skip_duplicates: bool = False


@dataclass
class IngestResult:
    """The acknowledgement of one item."""
    product_id: str
    outcome: int
    error: ApiError | None = None
    duplicate_of: str = ""
    exact_duplicate: bool = False
    duplicate_similarity: float = 0.0
    embedded: bool = False  # a new embedding was computed for it (not reused, not from the cache)

    @property
    def ok(self) -> bool:
        return self.outcome != FAILED

    def to_proto(self) -> lookalike_pb2.UpsertProductsResponse:
        return lookalike_pb2.UpsertProductsResponse(
            product_id=self.product_id, ok=self.ok, error=self.error.message if self.error else "",
            outcome=self.outcome, duplicate_of=self.duplicate_of, exact_duplicate=self.exact_duplicate,
            duplicate_similarity=self.duplicate_similarity)


def same_metadata(stored: types_pb2.Product, incoming: types_pb2.Product) -> bool:
    """Title, category, price and attributes equal (the id and image hash are compared elsewhere).

    A category the gateway predicted for a product sent without one (attributes `category_predicted`
    = "true" and `category_probability`) counts as the empty category it was sent with."""
    category, attributes = stored.category, dict(stored.attributes)
    if not incoming.category and attributes.get("category" + PREDICTED) == "true":
        category = ""
        attributes.pop("category" + PREDICTED, None)
        attributes.pop("category" + PROBABILITY, None)
    if stored.title != incoming.title or category != incoming.category or attributes != dict(incoming.attributes):
        return False
    if stored.HasField("price") != incoming.HasField("price"):
        return False
    return not stored.HasField("price") or stored.price == incoming.price


@dataclass
class _Slot:
    """One item of a batch on its way through prepare and commit."""
    item: IngestItem
    digest: str = ""
    vector: np.ndarray | None = None
    existed: bool = False
    fresh_vector: bool = False  # the vector is new for this product (dedupe it); False for metadata-only
    embedded: bool = False
    duplicate: tuple[str, bool, float] | None = None  # (product id, exact, cosine similarity)
    result: IngestResult | None = None

    def finish(self, outcome: int, error: ApiError | None = None) -> None:
        self.result = IngestResult(self.item.product.id, outcome, error, embedded=self.embedded)


@dataclass
class _Batch:
    slots: list[_Slot]
    target: Target | None = None
    embedded: threading.Event = field(default_factory=threading.Event)
    committed: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Turns:
    """What a batch waits for: the end of the embedding burst BURSTS_IN_FLIGHT batches back, and the
    previous batch's commit."""
    embed_after: threading.Event
    commit_after: threading.Event


class Ingestor:
    """Runs the pipeline above for the Gateway; one `run` per stream."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.settings = gateway.settings

    # ---- the stream ---------------------------------------------------------------------------------

    def run(self, items: Iterable[IngestItem | tuple], deadline_for_batch: Callable[[], Deadline],
            target: Callable[[], Target] | None = None, detect_duplicates: bool | None = None,
            batch_size: int | None = None, gated: bool = True,
            cancelled: Callable[[], bool] | None = None) -> Iterator[IngestResult]:
        """Yields one IngestResult per item, in order. `target()` names the collection and model to write
        (default: the active collection, re-read for each batch). `gated`: commits hold the catalogue's
        write gate (an alias switch waits for them); a reindex, which holds the gate itself, passes False.
        `cancelled()` true: the caller went away (Ctrl-C, kill -9): batches not yet committed are dropped
        (nobody would receive their acknowledgements; the same items are UNCHANGED or new next time)."""
        target = target or self.gateway.catalogue.active
        detect = self.settings.detect_duplicates if detect_duplicates is None else detect_duplicates
        stream = _Stream(detect, cancelled)
        size = batch_size or self.settings.upsert_batch_size
        committed = threading.Event()
        committed.set()
        embedded: deque = deque([committed] * BURSTS_IN_FLIGHT, maxlen=BURSTS_IN_FLIGHT)  # all set
        with ThreadPoolExecutor(BATCHES_IN_FLIGHT, thread_name_prefix="ingest") as pool:
            in_flight: deque = deque()
            rid = request_id.current.get()
            for raw in _batches((_item(i) for i in items), size, max_wait_s=0.02):
                if raw is not None:
                    batch = _Batch([_Slot(item) for item in raw])
                    turns = _Turns(embed_after=embedded[0], commit_after=committed)
                    embedded.append(batch.embedded)
                    committed = batch.committed
                    in_flight.append(pool.submit(self._process, batch, turns, deadline_for_batch, target,
                                                 stream, rid, gated))
                # acknowledge finished batches also while the stream is quiet (a client may wait for them)
                while in_flight and (len(in_flight) >= BATCHES_IN_FLIGHT or in_flight[0].done()):
                    yield from in_flight.popleft().result()
            while in_flight:
                yield from in_flight.popleft().result()

    def _process(self, batch: _Batch, turns: _Turns, new_deadline: Callable[[], Deadline],
                 target: Callable[[], Target], stream: _Stream, rid: str | None,
                 gated: bool) -> list[IngestResult]:
        """Prepare (concurrently with the neighbouring batches), embed (at most BURSTS_IN_FLIGHT bursts at
        TorchServe at once, in order: each gets a deadline for its own images and the burst ahead, instead of
        queueing behind every batch of the stream), commit (after the previous batch's commit). Each step has
        its own deadline."""
        from .core import ApiError

        token = request_id.current.set(rid) if rid else None
        try:
            try:
                stream.check()
                batch.target = target()
                self._prepare(batch, new_deadline, turns.embed_after, stream)
            except ApiError as exc:
                for slot in batch.slots:
                    if slot.result is None:
                        slot.finish(FAILED, exc)
            finally:
                batch.embedded.set()
            turns.commit_after.wait()  # commits happen in stream order
            try:
                stream.check()
                with self.gateway.catalogue.writing() if gated else contextlib.nullcontext():
                    current = target()
                    if current.collection != batch.target.collection:  # the alias moved meanwhile
                        for slot in batch.slots:
                            if slot.result is None or slot.result.outcome == UNCHANGED:
                                slot.result, slot.vector, slot.existed, slot.fresh_vector = None, None, False, False
                        batch.target = current
                        self._prepare(batch, new_deadline, batch.embedded, stream)
                    self._commit(batch, new_deadline(), stream)
            except ApiError as exc:
                for slot in batch.slots:
                    if slot.result is None:
                        slot.finish(FAILED, exc)
            for slot in batch.slots:
                metrics.INGESTED.labels(outcome=Outcome.Name(slot.result.outcome).lower()).inc()
            return [slot.result for slot in batch.slots]
        finally:
            batch.committed.set()
            if token is not None:
                request_id.current.reset(token)

    # ---- prepare ------------------------------------------------------------------------------------

    def _prepare(self, batch: _Batch, new_deadline: Callable[[], Deadline], embed_after: threading.Event,
                 stream: _Stream) -> None:
        from .core import ApiError, validate_product_id

        gateway, target = self.gateway, batch.target
        deadline = new_deadline()
        pending: list[_Slot] = []
        for slot in batch.slots:
            if slot.result is not None:
                continue
            product, image = slot.item.product, slot.item.image
            try:
                validate_product_id(product.id)
                if product.HasField("price") and not np.isfinite(product.price):
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "price must be a finite number")
                if not image:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
                if len(image) > self.settings.max_upload_bytes:
                    gateway.check_image(image)  # the size error, without hashing a huge body
                slot.digest = image_digest(image)
                pending.append(slot)
            except ApiError as exc:
                slot.finish(FAILED, exc)
        if not pending:
            return
        existing = gateway._call_search("GetPoints", search_pb2.GetPointsRequest(
            product_ids=list(dict.fromkeys(s.item.product.id for s in pending)), with_vectors=True,
            collection=target.collection), deadline)
        stored = {p.product.id: p for p in existing.points}
        to_embed: list[_Slot] = []
        for slot in pending:
            point = stored.get(slot.item.product.id)
            slot.existed = point is not None
            if point is not None and point.product.image_sha256 == slot.digest and point.vector:
                if same_metadata(point.product, slot.item.product):
                    if not gateway.images.exists(slot.digest):  # keep the original for re-embedding
                        gateway.images.put(slot.digest, slot.item.image)
                    slot.finish(UNCHANGED)
                    continue
                # metadata-only change: same image, same vector (slots hold raw vectors: target.project on writes)
                slot.vector = target.raw(vectors.unpack(point.vector))
                continue
            slot.fresh_vector = True
            first = stream.digests.get(slot.digest) if stream.detect else None
            if slot.item.skip_duplicates and first is not None and first != slot.item.product.id:
                # the same image as an earlier product of this stream: skipped without an embedding
                metrics.DUPLICATES.labels(kind="exact").inc()
                slot.finish(SKIPPED)
                slot.result.duplicate_of, slot.result.exact_duplicate, slot.result.duplicate_similarity = \
                    first, True, 1.0
                continue
            cached = target.cache.get(slot.digest)
            if cached is not None:
                slot.vector = cached
                continue
            try:
                # Non-images, other formats and decompression bombs stop here, from the header alone; the
                # embedder decodes with the same rules and fails a corrupt or truncated body per item.
                images.probe_image(slot.item.image, max_pixels=self.settings.max_image_pixels)
            except images.ImageRejected as exc:
                slot.finish(FAILED, ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {exc}"))
                continue
            to_embed.append(slot)
        if to_embed:
            embed_after.wait()
            stream.check()
            from .core import Deadline

            # A burst waits in TorchServe's queue for its turn: a slow CPU needs more than a query's deadline.
            queued = len(to_embed) + (BURSTS_IN_FLIGHT - 1) * len(batch.slots)  # own + the burst ahead
            budget = max(new_deadline().remaining("embedding"), EMBED_BUDGET_PER_IMAGE_S * queued)
            distinct: dict[str, _Slot] = {}  # one embedding per distinct image of the batch
            for slot in to_embed:
                distinct.setdefault(slot.digest, slot)
            self._embed(list(distinct.values()), target, Deadline(budget))
            for slot in to_embed:
                first = distinct[slot.digest]
                if slot is first:
                    continue
                if first.result is not None:  # its embedding failed: so does this one's
                    slot.finish(first.result.outcome, first.result.error)
                else:
                    slot.vector = first.vector

    def _embed(self, slots: list[_Slot], target: Target, deadline: Deadline) -> None:
        """One concurrent burst for the batch (TorchServe batches it); UNAVAILABLE items are retried
        with backoff inside the deadline, per-image errors fail their item only."""
        import time

        from .core import EMBEDDER_NAME, RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S, ApiError

        gateway = self.gateway
        backoff = RETRY_BACKOFF_S
        todo = slots
        while todo:
            metrics.EMBEDDER_BATCH_SIZE.observe(len(todo))  # one burst (in flight: EMBEDDER_QUEUE_DEPTH)
            results = target.embedder.embed_many([s.item.image for s in todo],
                                                 timeout=deadline.remaining("calling the embedder"))
            retry = []
            for slot, result in zip(todo, results):
                if isinstance(result, EmbedderImageError):
                    metrics.EMBEDDER_CALLS.labels(outcome="bad_image").inc()
                    slot.finish(FAILED, ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {result}"))
                elif isinstance(result, grpc.RpcError):
                    metrics.EMBEDDER_CALLS.labels(outcome=result.code().name.lower()).inc()
                    if result.code() == grpc.StatusCode.UNAVAILABLE:
                        retry.append(slot)
                    slot.finish(FAILED, gateway._dependency_error(EMBEDDER_NAME, result))
                elif isinstance(result, Exception):
                    metrics.EMBEDDER_CALLS.labels(outcome="error").inc()
                    slot.finish(FAILED, ApiError(grpc.StatusCode.UNAVAILABLE, f"{EMBEDDER_NAME} failed: {result}"))
                else:
                    metrics.EMBEDDER_CALLS.labels(outcome="ok").inc()
                    slot.vector, slot.embedded = result, True
                    target.cache.put(slot.digest, result)
            if not retry or deadline.expires - time.monotonic() < backoff + 0.05:
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
            for slot in retry:
                slot.result = None
            todo = retry

    # ---- commit -------------------------------------------------------------------------------------

    def _commit(self, batch: _Batch, deadline: Deadline, stream: _Stream) -> None:
        gateway, target = self.gateway, batch.target
        writes = [s for s in batch.slots if s.result is None and s.vector is not None]
        if stream.detect:
            self._find_duplicates(writes, target, deadline, stream)
        points, written = [], []
        for slot in writes:
            if slot.result is not None:  # skipped as a duplicate
                continue
            product = types_pb2.Product()
            product.CopyFrom(slot.item.product)
            product.image_sha256 = slot.digest
            classifier = gateway.classifier
            if classifier is not None:  # a category predicted for products sent without one
                classifier.annotate(product, slot.vector)
            gateway.images.put(slot.digest, slot.item.image)
            points.append(search_pb2.Point(product=product, vector=vectors.pack(target.project(slot.vector))))
            written.append(slot)
        if points:
            gateway._call_search("UpsertPoints", search_pb2.UpsertPointsRequest(
                points=points, collection=target.collection), deadline)
            metrics.UPSERTED.inc(len(points))
        for slot in written:
            slot.finish(UPDATED if slot.existed else CREATED)
            if slot.duplicate is not None:
                result = slot.result
                result.duplicate_of, result.exact_duplicate, result.duplicate_similarity = slot.duplicate
        for slot in batch.slots:
            if slot.result is None:  # no vector (should not happen): say so rather than ack silently
                from .core import ApiError

                slot.finish(FAILED, ApiError(grpc.StatusCode.INTERNAL, "no embedding was computed"))
        for slot in writes:
            if slot.result.outcome in (CREATED, UPDATED, SKIPPED):
                stream.remember(slot)

    def _find_duplicates(self, slots: list[_Slot], target: Target, deadline: Deadline, stream: _Stream) -> None:
        """Sets slot.duplicate = (product id, exact, similarity) for fresh vectors that duplicate another
        product; marks SKIPPED those whose item asked to skip duplicates."""
        max_distance = self.settings.duplicate_max_distance
        fresh = [slot for slot in slots if slot.fresh_vector]
        stored_neighbours = {}  # id(slot) -> its nearest stored points: one search call for the whole batch
        if fresh:
            response = self.gateway._call_search("SearchByVectors", search_pb2.SearchByVectorsRequest(
                vectors=[vectors.pack(target.project(slot.vector)) for slot in fresh], top_k=DUPLICATE_CANDIDATES,
                collection=target.collection), deadline)
            stored_neighbours = {id(slot): search.results for slot, search in zip(fresh, response.searches)}
        earlier: list[_Slot] = []
        for slot in slots:
            slot.duplicate = None
            if not slot.fresh_vector:
                continue
            pid = slot.item.product.id
            found: tuple[str, bool, float] | None = None
            seen = stream.digests.get(slot.digest)
            if seen is not None and seen != pid:
                found = (seen, True, 1.0)
            if found is None:
                for hit in stored_neighbours.get(id(slot), ()):
                    if hit.product.id == pid:
                        continue
                    exact = hit.product.image_sha256 == slot.digest
                    if exact or 1.0 - hit.score <= max_distance:
                        found = (hit.product.id, exact, float(hit.score))
                    break
            if found is None and earlier:  # items of this batch are not stored yet
                others = [o for o in earlier if o.item.product.id != pid]
                if others:
                    sims = np.stack([o.vector for o in others]) @ slot.vector
                    best = int(np.argmax(sims))
                    exact = others[best].digest == slot.digest
                    if exact or 1.0 - float(sims[best]) <= max_distance:
                        found = (others[best].item.product.id, exact, min(1.0, float(sims[best])))
            slot.duplicate = found
            if found is not None:
                metrics.DUPLICATES.labels(kind="exact" if found[1] else "near").inc()
                if slot.item.skip_duplicates:
                    slot.finish(SKIPPED)
                    slot.result.duplicate_of, slot.result.exact_duplicate, slot.result.duplicate_similarity = found
                    stream.digests.setdefault(slot.digest, found[0])
                    continue
            earlier.append(slot)


class _Stream:
    """What one ingest stream remembers across its batches."""

    def __init__(self, detect: bool, cancelled: Callable[[], bool] | None = None):
        self.detect = detect
        self.cancelled = cancelled
        self.digests: OrderedDict[str, str] = OrderedDict()  # image hash -> first product id with it

    def check(self) -> None:
        from .core import ApiError

        if self.cancelled is not None and self.cancelled():
            raise ApiError(grpc.StatusCode.CANCELLED, "the client cancelled the stream before this was stored")

    def remember(self, slot: _Slot) -> None:
        if not self.detect or not slot.digest:
            return
        if slot.digest not in self.digests:
            self.digests[slot.digest] = slot.item.product.id
            if len(self.digests) > SEEN_DIGESTS_MAX:
                self.digests.popitem(last=False)


def _batches(items: Iterable, size: int, max_wait_s: float, idle_s: float = 0.05) -> Iterator[list | None]:
    """Groups a (possibly slow, blocking) stream into batches of at most `size`, without holding an item
    longer than `max_wait_s` once the stream pauses; yields None every `idle_s` while nothing arrives."""
    q: queue.Queue = queue.Queue(maxsize=size * 2)  # bounded: a fast client waits (gRPC flow control)
    done = object()
    failure: list[BaseException] = []

    def read():
        try:
            for item in items:
                q.put(item)
        except BaseException as exc:  # the client went away: end the stream, report after the items read
            failure.append(exc)
        finally:
            q.put(done)

    threading.Thread(target=read, daemon=True, name="ingest-reader").start()
    finished = False
    while not finished:
        try:
            first = q.get(timeout=idle_s)
        except queue.Empty:
            yield None
            continue
        if first is done:
            break
        batch = [first]
        while len(batch) < size:
            try:
                item = q.get(timeout=max_wait_s)
            except queue.Empty:
                break
            if item is done:
                finished = True
                break
            batch.append(item)
        yield batch
    if failure and not isinstance(failure[0], grpc.RpcError):
        raise failure[0]


def _item(raw) -> IngestItem:
    if isinstance(raw, IngestItem):
        return raw
    return IngestItem(*raw)
