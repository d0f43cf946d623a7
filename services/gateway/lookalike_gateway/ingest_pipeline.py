"""The gateway's ingest pipeline (server side; the client that streams a catalogue is lookalike/ingest.py):
idempotent upserts with per-item outcomes and duplicate reports.

For each micro-batch of products (one gRPC UpsertProducts stream, a REST PUT, or a reindex pass):

  1. prepare (batches run concurrently, so the embedder always has work queued):
     validate each item and hash its images (a product has 1..max_images_per_product, the first the main
     one); read the stored products of the batch's ids from the target collection; an item whose image
     hashes (in order) AND metadata equal what is stored is UNCHANGED (neither embedded nor written);
     every image already stored for the product reuses its stored vector (a metadata-only change embeds
     nothing); every other image is looked up in the embedding cache and, on a miss, embedded (one
     concurrent burst per batch, which TorchServe batches).
  2. commit (strictly in batch order, so each batch sees everything stored before it): duplicate
     detection per new image (lookalike_gateway.duplicates), then the original images go to the
     ImageStore and the products to the search service (which replaces each product's image set); the
     acknowledgements follow only once the search service stored them durably.

A failure of one item (bad image, bad id, embedder error for one of its images) fails that item alone; a
failure of the search service fails the batch's items that were to be written.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np

from lookalike import images, request_id, vectors
from lookalike.search.v1 import search_pb2
from lookalike.v1 import types_pb2

from . import metrics
from .cache import image_digest
from .collection_manager import CollectionManager, Target
from .duplicates import Stream, find_duplicates
from .embedding import embed_burst
from .errors import ApiError, Deadline
from .image_store import ImageStore
from .ingest_types import (CREATED, FAILED, SKIPPED, UNCHANGED, UPDATED, IngestItem, IngestResult,
                           image_hashes, outcome_name, same_metadata)
from .microbatch import batches
from .retry import POLICY, RetryPolicy
from .search_client import SearchClient
from .validation import check_size, validate_product_id

log = logging.getLogger(__name__)

BATCHES_IN_FLIGHT = 3
# Embedding bursts queued at TorchServe at once: the next burst is there when the current one ends, so the
# worker never waits for the gateway between batches (and always finds full batches of 16).
BURSTS_IN_FLIGHT = 2
EMBED_BUDGET_PER_IMAGE_S = 1.0  # an embedding burst's deadline: at least this per image (a hung embedder)


@dataclass
class _Slot:
    """One item of a batch on its way through prepare and commit; lists hold one entry per image."""
    item: IngestItem
    digests: list[str] = field(default_factory=list)
    vectors: list[np.ndarray | None] = field(default_factory=list)
    fresh: list[bool] = field(default_factory=list)  # the image is new for this product (dedupe it)
    existed: bool = False
    embedded: bool = False
    result: IngestResult | None = None

    @property
    def product_id(self) -> str:
        return self.item.product.id

    @property
    def skip_duplicates(self) -> bool:
        return self.item.skip_duplicates

    def finish(self, outcome: int, error: ApiError | None = None) -> None:
        self.result = IngestResult(self.item.product.id, outcome, error, embedded=self.embedded,
                                   images=len(self.digests) if outcome in (CREATED, UPDATED, UNCHANGED) else 0)

    def reset(self) -> None:
        self.result, self.vectors, self.fresh, self.existed = None, [None] * len(self.digests), [], False


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


class IngestPipeline:
    """Runs the pipeline above; one `run` per stream. `classifier()`: the category classifier that
    annotates products sent without a category (None: none trained)."""

    def __init__(self, settings, search: SearchClient, collections: CollectionManager, image_store: ImageStore,
                 classifier: Callable[[], object] = lambda: None, policy: RetryPolicy = POLICY):
        self.settings = settings
        self.search = search
        self.collections = collections
        self.image_store = image_store
        self.classifier = classifier
        self.policy = policy

    # ---- the stream ---------------------------------------------------------------------------------

    def run(self, items: Iterable[IngestItem], deadline_for_batch: Callable[[], Deadline],
            target: Callable[[], Target] | None = None, detect_duplicates: bool | None = None, gated: bool = True,
            cancelled: Callable[[], bool] | None = None) -> Iterator[IngestResult]:
        """Yields one IngestResult per item, in order. `target()` names the collection and model to write
        (default: the active collection, re-read for each batch). `gated`: commits hold the collection
        manager's write gate (an alias switch waits for them); a reindex, which holds the gate itself, passes False.
        `cancelled()` true: the caller went away (Ctrl-C, kill -9): batches not yet committed are dropped
        (nobody would receive their acknowledgements; the same items are UNCHANGED or new next time)."""
        target = target or self.collections.active
        detect = self.settings.detect_duplicates if detect_duplicates is None else detect_duplicates
        stream = Stream(detect, cancelled)
        size = self.settings.upsert_batch_size
        committed = threading.Event()
        committed.set()
        embedded: deque = deque([committed] * BURSTS_IN_FLIGHT, maxlen=BURSTS_IN_FLIGHT)  # all set
        with ThreadPoolExecutor(BATCHES_IN_FLIGHT, thread_name_prefix="ingest") as pool:
            in_flight: deque = deque()
            rid = request_id.current.get()
            for raw in batches(items, size, max_wait_s=0.02):
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
                 target: Callable[[], Target], stream: Stream, rid: str | None,
                 gated: bool) -> list[IngestResult]:
        """Prepare (concurrently with the neighbouring batches), embed (at most BURSTS_IN_FLIGHT bursts at
        TorchServe at once, in order: each gets a deadline for its own images and the burst ahead, instead of
        queueing behind every batch of the stream), commit (after the previous batch's commit). Each step has
        its own deadline."""
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
                with self.collections.writing() if gated else contextlib.nullcontext():
                    current = target()
                    if current.collection != batch.target.collection:  # the alias moved meanwhile
                        for slot in batch.slots:
                            if slot.result is None or slot.result.outcome == UNCHANGED:
                                slot.reset()
                        batch.target = current
                        self._prepare(batch, new_deadline, batch.embedded, stream)
                    self._commit(batch, new_deadline(), stream)
            except ApiError as exc:
                for slot in batch.slots:
                    if slot.result is None:
                        slot.finish(FAILED, exc)
            for slot in batch.slots:
                metrics.INGESTED.labels(outcome=outcome_name(slot.result.outcome).lower()).inc()
            return [slot.result for slot in batch.slots]
        finally:
            batch.committed.set()
            if token is not None:
                request_id.current.reset(token)

    # ---- prepare ------------------------------------------------------------------------------------

    def _prepare(self, batch: _Batch, new_deadline: Callable[[], Deadline], embed_after: threading.Event,
                 stream: Stream) -> None:
        target = batch.target
        deadline = new_deadline()
        pending = [slot for slot in batch.slots if slot.result is None and self._validate(slot)]
        if not pending:
            return
        existing = self.search.call("GetPoints", search_pb2.GetPointsRequest(
            product_ids=list(dict.fromkeys(s.item.product.id for s in pending)), with_vectors=True,
            collection=target.collection), deadline)
        stored = {p.product.id: p for p in existing.points}
        to_embed: list[tuple[_Slot, int]] = []
        for slot in pending:
            point = stored.get(slot.item.product.id)
            slot.existed = point is not None
            # slots hold raw vectors (what the embedder and the cache give): target.project on writes
            reusable = {d: target.raw(v) for d, v in _stored_vectors(point).items()} if point is not None else {}
            slot.vectors = [reusable.get(d) for d in slot.digests]
            if point is not None and list(point.product.image_sha256s) == slot.digests and all(
                    v is not None for v in slot.vectors) and same_metadata(point.product, slot.item.product):
                for digest, image in zip(slot.digests, slot.item.images):
                    if not self.image_store.exists(digest):  # keep the originals for re-embedding
                        self.image_store.put(digest, image)
                slot.finish(UNCHANGED)
                continue
            slot.fresh = [v is None for v in slot.vectors]  # images already stored keep their vectors
            jobs = []
            for i, digest in enumerate(slot.digests):
                if not slot.fresh[i]:
                    continue
                first = stream.seen(digest, slot.product_id)
                if slot.item.skip_duplicates and first is not None:
                    # the same image as an earlier product of this stream: skipped without an embedding
                    metrics.DUPLICATES.labels(kind="exact").inc()
                    self._skip(slot, first, True, 1.0, i)
                    break
                cached = target.cache.get(digest)
                if cached is not None:
                    slot.vectors[i] = cached
                    continue
                try:
                    # Non-images, other formats and decompression bombs stop here, from the header alone; the
                    # embedder decodes with the same rules and fails a corrupt or truncated body per item.
                    images.probe_image(slot.item.images[i], max_pixels=self.settings.max_image_pixels)
                except images.ImageRejected as exc:
                    slot.finish(FAILED, ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                                                 f"{_which(slot, i)}invalid image: {exc}"))
                    break
                jobs.append((slot, i))
            if slot.result is None:
                to_embed.extend(jobs)
        if to_embed:
            embed_after.wait()
            stream.check()
            # A burst waits in TorchServe's queue for its turn: a slow CPU needs more than a query's deadline.
            queued = len(to_embed) + (BURSTS_IN_FLIGHT - 1) * len(batch.slots)  # own + the burst ahead
            budget = max(new_deadline().remaining("embedding"), EMBED_BUDGET_PER_IMAGE_S * queued)
            distinct: dict[str, tuple[_Slot, int]] = {}  # one embedding per distinct image of the batch
            for slot, i in to_embed:
                distinct.setdefault(slot.digests[i], (slot, i))
            vectors_by_digest = self._embed(list(distinct.values()), target, Deadline(budget))
            for slot, i in to_embed:
                if slot.result is not None:
                    continue
                found = vectors_by_digest.get(slot.digests[i])
                if isinstance(found, Exception):  # its embedding failed: so does the product
                    slot.finish(FAILED, found.prefixed(_which(slot, i)))
                else:
                    slot.vectors[i] = found
                    slot.embedded = slot.embedded or distinct[slot.digests[i]][0] is slot

    def _validate(self, slot: _Slot) -> bool:
        """Checks the item's id, price and images and hashes them; fails the slot and returns False if bad."""
        product, all_images = slot.item.product, slot.item.images
        try:
            validate_product_id(product.id)
            if product.HasField("price") and not np.isfinite(product.price):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "price must be a finite number")
            if len(all_images) > self.settings.max_images_per_product:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{len(all_images)} images; at most {self.settings.max_images_per_product} per "
                               "product (LOOKALIKE_GATEWAY_MAX_IMAGES_PER_PRODUCT)")
            total = sum(len(image) for image in all_images)
            if total > self.settings.max_product_bytes:
                raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the product's images are {total} bytes together, above the limit of "
                               f"{self.settings.max_product_bytes}", http_status=413)
            for i, image in enumerate(all_images):
                try:
                    check_size(image, self.settings)  # before hashing a huge body
                except ApiError as exc:
                    raise exc.prefixed(_which(slot, i)) from None
            slot.digests = [image_digest(image) for image in all_images]
            slot.vectors = [None] * len(slot.digests)
            return True
        except ApiError as exc:
            slot.finish(FAILED, exc)
            return False

    @staticmethod
    def _skip(slot: _Slot, other: str, exact: bool, similarity: float, image: int) -> None:
        slot.finish(SKIPPED)
        result = slot.result
        result.duplicate_of, result.exact_duplicate, result.duplicate_similarity = other, exact, similarity
        result.duplicate_image = image

    def _embed(self, jobs: list[tuple[_Slot, int]], target: Target, deadline: Deadline) -> dict:
        """One concurrent burst for the batch's images (embedding.embed_burst): digest -> vector (cached), or
        the ApiError of that image."""
        results = embed_burst(target.embedder, [slot.item.images[i] for slot, i in jobs], deadline, self.policy)
        out: dict[str, np.ndarray | ApiError] = {}
        for (slot, i), result in zip(jobs, results):
            out[slot.digests[i]] = result
            if not isinstance(result, ApiError):
                target.cache.put(slot.digests[i], result)
        return out

    # ---- commit -------------------------------------------------------------------------------------

    def _commit(self, batch: _Batch, deadline: Deadline, stream: Stream) -> None:
        target = batch.target
        writes = [s for s in batch.slots if s.result is None and s.vectors and all(v is not None for v in s.vectors)]
        duplicates = {}
        if stream.detect:
            duplicates = find_duplicates(self.search, writes, target.collection, deadline, stream,
                                         self.settings.duplicate_max_distance, target.project)
        points, written = [], []
        for n, slot in enumerate(writes):
            duplicate = duplicates.get(n)
            if duplicate is not None and slot.item.skip_duplicates:
                self._skip(slot, duplicate.product_id, duplicate.exact, duplicate.similarity, duplicate.image)
                for digest in slot.digests:
                    stream.digests.setdefault(digest, duplicate.product_id)
                continue
            product = types_pb2.Product()
            product.CopyFrom(slot.item.product)
            product.image_sha256 = slot.digests[0]
            product.ClearField("image_sha256s")
            product.image_sha256s.extend(slot.digests)
            classifier = self.classifier()
            if classifier is not None:  # a category predicted for products sent without one
                classifier.annotate(product, slot.vectors[0])
            for digest, image in zip(slot.digests, slot.item.images):
                self.image_store.put(digest, image)
            points.append(search_pb2.Point(product=product, vector=vectors.pack(target.project(slot.vectors[0])),
                                           more_vectors=[vectors.pack(target.project(v)) for v in slot.vectors[1:]]))
            written.append((slot, duplicate))
        if points:
            self.search.call("UpsertPoints", search_pb2.UpsertPointsRequest(
                points=points, collection=target.collection), deadline)
            metrics.UPSERTED.inc(len(points))
        for slot, duplicate in written:
            slot.finish(UPDATED if slot.existed else CREATED)
            if duplicate is not None:
                result = slot.result
                result.duplicate_of, result.exact_duplicate, result.duplicate_similarity = duplicate[:3]
                result.duplicate_image = duplicate.image
            stream.remember(slot.product_id, slot.digests)
        for slot in batch.slots:
            if slot.result is None:  # no vector (should not happen): say so rather than ack silently
                slot.finish(FAILED, ApiError(grpc.StatusCode.INTERNAL, "no embedding was computed"))


def _stored_vectors(point: search_pb2.Point) -> dict[str, np.ndarray]:
    """image hash -> stored vector of a stored product (empty when its vectors do not line up with its hashes,
    e.g. an image lost mid-upsert: then every image is embedded again)."""
    raw = [point.vector, *point.more_vectors] if point.vector else []
    hashes = image_hashes(point.product)
    if not raw or len(raw) != len(hashes):
        return {}
    return {digest: vectors.unpack(v) for digest, v in zip(hashes, raw)}


def _which(slot: _Slot, index: int) -> str:
    """A message prefix naming the image, for products with several."""
    return f"image {index}: " if len(slot.item.more_images) else ""
