"""In-memory stand-ins for the search service and the embedder, to test the gateway's ingest and
catalogue logic without processes."""
from __future__ import annotations

import hashlib
import io
import threading
import time

import grpc
import numpy as np
from PIL import Image

from lookalike.images import ImageRejected, decode_image
from lookalike.embedder_client import EmbedderImageError
from lookalike.search.v1 import search_pb2
from lookalike.v1 import types_pb2
from lookalike.vectors import pack, unpack
from lookalike_gateway.cache import EmbeddingCache
from lookalike_gateway.core import Gateway
from lookalike_gateway.errors import Deadline
from lookalike_gateway.image_store import ImageStore
from lookalike_gateway.ingest_types import IngestItem
from lookalike_gateway.settings import GatewaySettings

DIM = 8


class FakeClock:
    """monotonic() and sleep() for errors.Deadline and retry.RetryPolicy: time moves only when the code under
    test sleeps (or the test calls advance), so a short deadline means the same on an idle or a loaded machine."""

    def __init__(self, now: float = 0.0):
        self.now = now
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_clock(monkeypatch) -> FakeClock:
    """Puts one FakeClock behind the gateway's deadlines and retry backoff for the test."""
    from lookalike_gateway import errors, retry

    clock = FakeClock()
    monkeypatch.setattr(errors, "time", clock)
    monkeypatch.setattr(retry, "time", clock)
    return clock


def png(seed: int, size: int = 16) -> bytes:
    """A small valid PNG, different for each seed."""
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


class FakeRpcError(grpc.RpcError):
    """A failed gRPC call as a stub raises it: code() and details() (default: the code's name)."""

    def __init__(self, code: grpc.StatusCode, details: str = ""):
        super().__init__(details)
        self._code, self._details = code, details or code.name

    def code(self):
        return self._code

    def details(self):
        return self._details


class NotFoundError(grpc.RpcError):
    def __init__(self, details):
        self._details = details

    def code(self):
        return grpc.StatusCode.NOT_FOUND

    def details(self):
        return self._details


class FakeEmbedder:
    """embed/embed_many: a vector per image, from `vectors` (by image bytes) or derived from a hash."""

    def __init__(self, vectors: dict[bytes, np.ndarray] | None = None, dim: int = DIM):
        self.vectors = vectors or {}
        self.dim = dim
        self.calls = 0  # images embedded
        self.crops: list[str | None] = []  # the crop of each embed() call
        self.lock = threading.Lock()
        self.channel = None  # the channel other models' clients share (CollectionManager)

    def vector(self, image: bytes) -> np.ndarray:
        if image in self.vectors:
            return unit(self.vectors[image])
        seed = int.from_bytes(hashlib.sha256(image).digest()[:8], "little")
        return unit(np.random.default_rng(seed).standard_normal(self.dim))

    def embed(self, image, timeout=10.0, request_id=None, crop=None):
        """`crop` (a CropBox key) gives another vector, as a region of the photo would."""
        self.crops.append(crop)
        result = self.embed_many([image + (crop or "").encode()])[0] if crop else self.embed_many([image])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def embed_many(self, images, timeout=30.0, request_ids=None, max_in_flight=64):
        """Like the real handler: an image that does not decode is a per-item EmbedderImageError."""
        with self.lock:
            self.calls += len(images)
        results = []
        for image in images:
            try:
                decode_image(image)
                results.append(self.vector(image))
            except ImageRejected as exc:
                results.append(EmbedderImageError(exc.reason, exc.message))
        return results

    def ping(self, timeout=1.0):
        return True

    def model_ready(self, timeout=1.0):
        return True


class FakeSearch:
    """The SearchService RPCs the gateway uses, over dicts (exact cosine search)."""

    def __init__(self, alias: str = "products", active: str = "products__lookalike-lite0"):
        self.alias = alias
        self.collections: dict[str, dict[str, search_pb2.Point]] = {active: {}}
        self.active = active
        self.previous = ""
        self.calls: dict[str, int] = {}
        self.lock = threading.RLock()

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def _col(self, name):
        name = name or self.active
        if name == self.alias:
            name = self.active
        if name not in self.collections:
            raise NotFoundError(f"collection {name!r} not found")
        return self.collections[name]

    def GetPoints(self, request, timeout=None, metadata=()):
        with self.lock:
            self._count("GetPoints")
            col = self._col(request.collection)
            points = []
            for pid in dict.fromkeys(request.product_ids):
                if pid in col:
                    p = search_pb2.Point()
                    p.CopyFrom(col[pid])
                    if not request.with_vectors:
                        p.vector = b""
                        p.ClearField("more_vectors")
                    points.append(p)
            return search_pb2.GetPointsResponse(points=points)

    def UpsertPoints(self, request, timeout=None, metadata=()):
        with self.lock:
            self._count("UpsertPoints")
            col = self._col(request.collection)
            for point in request.points:
                stored = search_pb2.Point()
                stored.CopyFrom(point)
                stored.vector = pack(unit(unpack(point.vector)))
                stored.ClearField("more_vectors")
                stored.more_vectors.extend(pack(unit(unpack(v))) for v in point.more_vectors)
                if not stored.product.image_sha256s:
                    stored.product.image_sha256s.append(stored.product.image_sha256)
                col[point.product.id] = stored
            return search_pb2.UpsertPointsResponse(upserted=len(request.points))

    def SearchByVector(self, request, timeout=None, metadata=()):
        with self.lock:
            self._count("SearchByVector")
            col = self._col(request.collection)
            query = unit(unpack(request.vector))
            scored = []  # each product at its best image
            for pid, p in col.items():
                sims = [float(unpack(v) @ query) for v in [p.vector, *p.more_vectors]]
                best = int(np.argmax(sims))
                scored.append((sims[best], pid, best))
            scored.sort(key=lambda row: (row[0], row[1]), reverse=True)
            return search_pb2.SearchByVectorResponse(results=[
                types_pb2.SearchResult(product=col[pid].product, score=score, matched_image=image,
                                       matched_image_sha256=col[pid].product.image_sha256s[image])
                for score, pid, image in scored[:request.top_k]])

    def SearchByVectors(self, request, timeout=None, metadata=()):
        with self.lock:
            self._count("SearchByVectors")
        searches = [self.SearchByVector(search_pb2.SearchByVectorRequest(
            vector=v, top_k=request.top_k, filter=request.filter, collection=request.collection), timeout, metadata)
            for v in request.vectors]
        return search_pb2.SearchByVectorsResponse(searches=searches)

    def DeletePoints(self, request, timeout=None, metadata=()):
        with self.lock:
            self._count("DeletePoints")
            col = self._col(request.collection)
            deleted = sum(col.pop(pid, None) is not None for pid in set(request.product_ids))
            return search_pb2.DeletePointsResponse(deleted=deleted)

    def CountPoints(self, request, timeout=None, metadata=()):
        with self.lock:
            return search_pb2.CountPointsResponse(count=len(self._col(request.collection)))

    def ScrollPoints(self, request, timeout=None, metadata=()):
        with self.lock:
            col = self._col(request.collection)
            ids = sorted(col)
            start = ids.index(request.offset) if request.offset else 0
            page = ids[start:start + (request.limit or 256)]
            following = ids[start + len(page)] if start + len(page) < len(ids) else ""
            points = []
            for pid in page:
                p = search_pb2.Point()
                p.CopyFrom(col[pid])
                if not request.with_vectors:
                    p.vector = b""
                    p.ClearField("more_vectors")
                points.append(p)
            return search_pb2.ScrollPointsResponse(points=points, next_offset=following)

    def ListCollections(self, request, timeout=None, metadata=()):
        with self.lock:
            return search_pb2.ListCollectionsResponse(
                alias=self.alias, active=self.active, previous=self.previous,
                collections=[search_pb2.Collection(
                    name=name, vector_size=DIM, points=len(col) if request.with_counts else 0,
                    active=name == self.active) for name, col in sorted(self.collections.items())])

    def CreateCollection(self, request, timeout=None, metadata=()):
        with self.lock:
            created = request.name not in self.collections
            self.collections.setdefault(request.name, {})
            return search_pb2.CreateCollectionResponse(created=created, collection=search_pb2.Collection(
                name=request.name, vector_size=request.vector_size))

    def SetAlias(self, request, timeout=None, metadata=()):
        with self.lock:
            self._col(request.collection)
            if request.collection != self.active:
                self.previous, self.active = self.active, request.collection
            return search_pb2.SetAliasResponse(active=self.active, previous=self.previous)


class DictCache:
    """The EmbeddingCache surface the gateway uses, over a dict (a cache that works without Redis)."""

    def __init__(self):
        self.data: dict[str, np.ndarray] = {}

    def get(self, digest):
        return self.data.get(digest)

    def put(self, digest, vector):
        self.data[digest] = vector

    def ping(self):
        return True


def make_gateway(tmp_path, embedder=None, search=None, cache=None, **settings) -> Gateway:
    """A Gateway over the fakes (`cache` default: the real EmbeddingCache without Redis, which caches nothing)."""
    settings = GatewaySettings(redis_url="", data_dir=tmp_path, **settings)
    gateway = Gateway(settings, embedder or FakeEmbedder(), grpc.insecure_channel("127.0.0.1:9"),
                      cache or EmbeddingCache("", "m", ttl_s=60, timeout_s=0.05, retry_after_s=1),
                      ImageStore(tmp_path / "images"))
    gateway.search.stub = search or FakeSearch()
    return gateway


def product(pid: str, **fields) -> types_pb2.Product:
    return types_pb2.Product(id=pid, title=fields.pop("title", f"title {pid}"), **fields)


def as_items(items):
    """IngestItems from (product, image[, skip_duplicates]) tuples or IngestItems, lazily (a stream stays one)."""
    for item in items:
        yield item if isinstance(item, IngestItem) else IngestItem(*item)


def ingest(gateway, items, deadline_s: float = 10.0, **kw) -> list:
    """Runs items (see as_items) through the gateway's ingest pipeline; the IngestResults in order."""
    return list(gateway.ingest_pipeline.run(as_items(items), lambda: Deadline(deadline_s), **kw))


class GatedSearch(FakeSearch):
    """The first UpsertPoints stores at once; later ones are held until `release`, then fail (they store
    nothing), until the test opens the gate (`opened`) for the next run."""

    def __init__(self):
        super().__init__()
        self.first_stored = threading.Event()
        self.opened = threading.Event()
        self.release = threading.Event()

    def UpsertPoints(self, request, timeout=None, metadata=()):
        if self.first_stored.is_set() and not self.opened.is_set():
            self.release.wait(120)
            raise NotFoundError("gate released at the end of the test")
        response = super().UpsertPoints(request, timeout, metadata)
        self.first_stored.set()
        return response


def upsert_streams_ended() -> float:
    """UpsertProducts streams the gateway has finished (counted when the handler ends, i.e. after every batch
    of the stream was committed or dropped)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("lookalike_gateway_requests_total",
                                     {"api": "grpc", "method": "UpsertProducts", "status": "OK"}) or 0.0


def wait_for_stream_end(before: float) -> None:
    deadline = time.monotonic() + 120
    while upsert_streams_ended() <= before:
        assert time.monotonic() < deadline, "the interrupted stream never ended in the gateway"
        time.sleep(0.01)
