"""VectorStore over qdrant-edge-py: Qdrant's Rust engine in-process (segments, WAL, HNSW, quantization).

Layout: one Edge shard per collection at DATA_DIR/qdrant-edge/<collection>/, guarded by an exclusive
lock file next to it (two processes must never open the same shard).

Durability: every update goes through the shard's write-ahead log before `update` returns, so an
acknowledged write survives kill -9 (the WAL is replayed on load); with `flush_each_write` the segments
are flushed too before the write is acknowledged (the documented "persisted to disk" point).

Indexing: Edge has no background optimizer. New points land in a plain segment, searched exactly (in
Rust: ~2 ms at 3k, ~5 ms at 10k, ~11 ms at 30k points of d=1280 on two cores), until `optimize()` builds
HNSW segments. That call is synchronous and the shard answers no query while it runs (8-12 s per 10k
points on two cores), so it only runs once at least `index_threshold_points` points are not indexed yet:
before the service reports SERVING, and afterwards from a background thread once writes have been quiet
for `optimize_idle_s` seconds (0 = only at start). Small catalogues are never stalled; a big one pays
the stall once per bulk load, after the load.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .points import (all_point_ids, check_scroll_limit, check_vector, dedupe_points, ef_for, grouped, hit,
                     image_points, merge_best, payload_product_id, read_products, scroll_offset, stale_point_ids,
                     unique)
from .store import (IMAGE_INDEX, PAYLOAD_INDEXES, CollectionMismatch, Hit, NotFound, PointIn, Record, SearchFilter,
                    StoreError)

log = logging.getLogger(__name__)

EDGE_CONFIG_FILE = "edge_config.json"


class QdrantEdgeStore:
    """One qdrant-edge shard as a VectorStore."""

    def __init__(self, path: str | Path, vector_size: int, *, hnsw_m: int = 16, hnsw_ef_construct: int = 100,
                 search_ef: int = 128, full_scan_threshold_kb: int = 10000, indexing_threshold_kb: int | None = None,
                 quantization: str = "none", quantization_rescore: bool = True,
                 quantization_oversampling: float = 2.0, optimize_idle_s: float = 5.0,
                 flush_each_write: bool = True,
                 index_threshold_points: int = 20_000):
        self.path = Path(path)
        self.vector_size = vector_size
        self.search_ef = search_ef
        self._hnsw = (hnsw_m, hnsw_ef_construct, full_scan_threshold_kb)
        self._indexing_threshold_kb = indexing_threshold_kb
        self._quantization = quantization
        self._rescore = quantization_rescore
        self._oversampling = quantization_oversampling
        self.optimize_idle_s = optimize_idle_s
        self.flush_each_write = flush_each_write
        self.index_threshold_points = index_threshold_points
        self._lock = threading.RLock()
        self._shard = None
        self._lock_file = None
        self._closed = False
        self._dirty_since: float | None = None  # monotonic time of the last write not yet optimized
        self._wake = threading.Event()
        self._optimizer: threading.Thread | None = None
        self.last_optimize_s: float | None = None

    # ---- helpers ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str):
        with self._lock:
            if self._closed:
                raise StoreError("store is closed", unavailable=True)
            if self._shard is None:
                raise StoreError("store not opened: call ensure_collection() first", unavailable=True)
            try:
                yield self._shard
            except (NotFound, StoreError):
                raise
            except Exception as exc:  # the binding raises plain Exception("Service runtime error: ...")
                raise StoreError(f"{what} failed on qdrant-edge shard {self.path}: {exc}") from exc

    def _config(self):
        import qdrant_edge as qe

        m, ef_construct, full_scan = self._hnsw
        quant = None
        if self._quantization == "int8":
            quant = qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99)
        elif self._quantization == "binary":
            quant = qe.BinaryQuantizationConfig()
        optimizers = None
        if self._indexing_threshold_kb is not None:
            optimizers = qe.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb)
        return qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=self.vector_size, distance=qe.Distance.Cosine),
                             hnsw_config=qe.HnswIndexConfig(m=m, ef_construct=ef_construct,
                                                            full_scan_threshold=full_scan),
                             quantization_config=quant, optimizers=optimizers)

    def _check_existing(self) -> None:
        try:
            stored = json.loads((self.path / EDGE_CONFIG_FILE).read_text())
            params = stored["vectors"][""]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionMismatch(f"qdrant-edge shard {self.path} has an unreadable or unexpected "
                                     f"{EDGE_CONFIG_FILE} (no unnamed vector): {exc}") from exc
        size, distance = params.get("size"), params.get("distance")
        if size != self.vector_size:
            raise CollectionMismatch(
                f"qdrant-edge shard {self.path} has vector size {size}, but LOOKALIKE_SEARCH_VECTOR_SIZE is "
                f"{self.vector_size}; use another collection name or data dir, or delete the shard")
        if str(distance).lower() != "cosine":
            raise CollectionMismatch(f"qdrant-edge shard {self.path} uses {distance} distance; expected Cosine")

    def _take_dir_lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.parent / f"{self.path.name}.lock"
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreError(f"qdrant-edge shard {self.path} is open in another process (lock {lock_path})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    # ---- collection ------------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        import qdrant_edge as qe

        with self._lock:
            if self._closed:
                raise StoreError("store is closed")
            if self._shard is not None:
                return
            self._take_dir_lock()
            try:
                config = self._config()
                if (self.path / EDGE_CONFIG_FILE).exists():
                    self._check_existing()
                    try:
                        self._shard = qe.EdgeShard.load(str(self.path), config)
                    except Exception as exc:
                        raise CollectionMismatch(f"cannot load qdrant-edge shard {self.path}: {exc}") from exc
                    log.info("loaded qdrant-edge shard %s", self.path)
                else:
                    try:
                        self._shard = qe.EdgeShard.create(str(self.path), config)
                    except Exception as exc:
                        raise StoreError(f"cannot create qdrant-edge shard {self.path}: {exc}") from exc
                    log.info("created qdrant-edge shard %s (size %d, cosine, quantization %s)",
                             self.path, self.vector_size, self._quantization)
                schema = {"keyword": qe.PayloadSchemaType.Keyword, "float": qe.PayloadSchemaType.Float,
                          "integer": qe.PayloadSchemaType.Integer}
                existing = self._shard.info().payload_schema
                for field, kind in PAYLOAD_INDEXES.items():
                    if field not in existing:
                        self._shard.update(qe.UpdateOperation.create_field_index(field, schema[kind]))
                self._shard.flush()
            except BaseException:
                self._release()
                raise
        self.optimize_if_needed()
        if self.optimize_idle_s > 0:
            self._optimizer = threading.Thread(target=self._optimize_loop, name="edge-optimizer", daemon=True)
            self._optimizer.start()

    def unindexed_points(self) -> int:
        """Points not yet in an HNSW segment (searched exactly)."""
        with self._errors("info") as shard:
            info = shard.info()
            return max(0, int(info.points_count) - int(info.indexed_vectors_count))

    def optimize_if_needed(self) -> bool:
        """optimize() when at least index_threshold_points points are not indexed yet."""
        if self.unindexed_points() < max(1, self.index_threshold_points):
            self._dirty_since = None
            return False
        return self.optimize()

    def optimize(self) -> bool:
        """Builds HNSW segments for what was written since; the shard answers nothing while it runs."""
        with self._errors("optimize") as shard:
            self._dirty_since = None
            info = shard.info()
            start = time.monotonic()
            changed = shard.optimize()
            if changed:
                shard.flush()
            self.last_optimize_s = time.monotonic() - start
            if changed:
                after = shard.info()
                log.info("qdrant-edge optimize: %.1fs, %d points, indexed vectors %d -> %d, segments %d",
                         self.last_optimize_s, after.points_count, info.indexed_vectors_count,
                         after.indexed_vectors_count, after.segments_count)
            return bool(changed)

    def _optimize_loop(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=max(0.05, self.optimize_idle_s / 2))
            self._wake.clear()
            since = self._dirty_since
            if self._closed or since is None or time.monotonic() - since < self.optimize_idle_s:
                continue
            try:
                self.optimize_if_needed()
            except StoreError as exc:
                if self._closed:
                    return
                log.error("background optimize failed: %s", exc)
                time.sleep(self.optimize_idle_s)

    def _written(self, shard) -> None:
        if self.flush_each_write:
            shard.flush()
        self._dirty_since = time.monotonic()

    # ---- translation -----------------------------------------------------------------------------

    @staticmethod
    def _filter(flt: SearchFilter | None, exclude: str | None = None, main_only: bool = False):
        """`exclude`: leave out every image of that product; `main_only`: products (their main points)."""
        import qdrant_edge as qe

        must, must_not = [], []
        if flt is not None:
            if flt.category:
                must.append(qe.FieldCondition("category", match=qe.MatchValue(flt.category)))
            if flt.min_price is not None or flt.max_price is not None:
                must.append(qe.FieldCondition("price", range=qe.RangeFloat(gte=flt.min_price, lte=flt.max_price)))
        if exclude is not None:
            must_not.append(qe.FieldCondition("product_id", match=qe.MatchValue(exclude)))
        if main_only:  # points stored before several images have no image_index: main ones
            must_not.append(qe.FieldCondition(IMAGE_INDEX, range=qe.RangeFloat(gte=1)))
        if not must and not must_not:
            return None
        return qe.Filter(must=must or None, must_not=must_not or None)

    def _params(self, top_k: int):
        import qdrant_edge as qe

        quant = None
        if self._quantization != "none":
            quant = qe.QuantizationSearchParams(rescore=self._rescore, oversampling=self._oversampling)
        return qe.SearchParams(hnsw_ef=ef_for(top_k, self.search_ef), quantization=quant)

    # ---- operations ------------------------------------------------------------------------------

    def upsert(self, points: Sequence[PointIn]) -> int:
        import qdrant_edge as qe

        clean = dedupe_points(points, self.vector_size)
        if not clean:
            return 0
        edge_points = [qe.Point(p.id, p.vector.tolist(), p.payload)
                       for pid, vecs, payload in clean for p in image_points(pid, vecs, payload)]
        with self._errors("upsert") as shard:
            stored = self._main_records(shard, [pid for pid, _, _ in clean], False)
            stale = stale_point_ids(stored, {pid: len(vecs) for pid, vecs, _ in clean})
            if stale:  # first, so a crash in between never leaves images past the new set searchable
                shard.update(qe.UpdateOperation.delete_points(stale))
            shard.update(qe.UpdateOperation.upsert_points(edge_points))
            self._written(shard)
        self._wake.set()
        return len(clean)

    def _query(self, vector: np.ndarray, top_k: int, flt, what: str) -> list[Hit]:
        import qdrant_edge as qe

        def query(limit: int) -> list[Hit]:
            request = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(vector.tolist()), filter=flt,
                                      params=self._params(limit), with_payload=True, with_vector=False)
            with self._errors(what) as shard:
                points = shard.query(request)
            return [hit(payload_product_id(p.payload), p.score, p.payload) for p in points]
        return grouped(query, top_k)  # Edge has no group-by: over-fetch and collapse

    def search(self, vector, top_k: int, filter: SearchFilter | None = None) -> list[Hit]:
        return self._query(check_vector(vector, self.vector_size), top_k, self._filter(filter), "search")

    def search_by_id(self, product_id: str, top_k: int, filter: SearchFilter | None = None) -> list[Hit]:
        with self._lock:
            records = self.get([product_id], with_vectors=True)
            if not records or records[0].vectors is None:
                raise NotFound(product_id)
            flt = self._filter(filter, exclude=product_id)
            return merge_best((self._query(v, top_k, flt, "search_by_id") for v in records[0].vectors), top_k)

    @staticmethod
    def _main_records(shard, ids: list[str], with_vectors: bool) -> list[Record]:
        """The stored products among ids (unique), in ids order."""
        def retrieve(point_ids, vectors: bool):
            return [(rec.id, rec.payload, rec.vector) for rec in shard.retrieve(point_ids, True, bool(vectors))]
        return read_products(ids, retrieve, with_vectors)

    def get(self, product_ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        ids = unique(product_ids)
        if not ids:
            return []
        with self._errors("get") as shard:
            return self._main_records(shard, ids, with_vectors)

    def delete(self, product_ids: Sequence[str]) -> int:
        import qdrant_edge as qe

        ids = unique(product_ids)
        if not ids:
            return 0
        with self._errors("delete") as shard:
            existing = self._main_records(shard, ids, False)
            if existing:
                shard.update(qe.UpdateOperation.delete_points(all_point_ids(existing)))
                self._written(shard)
        return len(existing)

    def count(self, filter: SearchFilter | None = None, images: bool = False) -> int:
        import qdrant_edge as qe

        with self._errors("count") as shard:
            return int(shard.count(qe.CountRequest(exact=True, filter=self._filter(filter, main_only=not images))))

    def scroll(self, limit: int, offset: str | None = None, filter: SearchFilter | None = None,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        import qdrant_edge as qe

        limit = check_scroll_limit(limit)
        start = scroll_offset(offset)
        request = qe.ScrollRequest(offset=start, limit=limit, filter=self._filter(filter, main_only=True),
                                   with_payload=True, with_vector=False)
        with self._errors("scroll") as shard:
            found, next_id = shard.scroll(request)
            ids = [payload_product_id(rec.payload) for rec in found]
            records = self._main_records(shard, ids, True) if with_vectors and ids else [
                Record(payload_product_id(rec.payload), dict(rec.payload or {}), None) for rec in found]
        return records, None if next_id is None else str(next_id)

    def info(self) -> dict:
        with self._errors("info") as shard:
            info = shard.info()
            return {"points": info.points_count, "indexed_vectors": info.indexed_vectors_count,
                    "segments": info.segments_count}

    def _release(self) -> None:
        if self._shard is not None:
            try:
                self._shard.close()
            except Exception:
                log.exception("closing qdrant-edge shard %s", self.path)
            self._shard = None
        if self._lock_file is not None:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            finally:
                self._lock_file.close()
                self._lock_file = None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.set()
            if self._shard is not None:
                try:
                    self._shard.flush()
                except Exception:
                    log.exception("flushing qdrant-edge shard %s", self.path)
            self._release()
        if self._optimizer is not None and self._optimizer is not threading.current_thread():
            self._optimizer.join(timeout=5)
