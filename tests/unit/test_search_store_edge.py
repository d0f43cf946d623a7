"""lookalike_search.store_edge beyond the congruence suite: the WAL alone survives kill -9, the shard lock,
HNSW segments built by optimize() only past the index threshold."""
from __future__ import annotations

import numpy as np
import pytest

from lookalike_search.store import SearchFilter, StoreError

from .test_search_store import CATEGORIES, DIM, exact, kill9_writer_then_check, open_store, unit


def test_kill9_edge_wal_alone_is_enough(tmp_path):
    """Without the per-write flush, the edge WAL still carries every acknowledged write across kill -9."""
    kill9_writer_then_check("qdrant-edge", tmp_path, {"flush_each_write": False})


def test_edge_shard_is_locked_against_a_second_opener(tmp_path):
    first = open_store("qdrant-edge", tmp_path)
    try:
        with pytest.raises(StoreError, match="another process"):
            open_store("qdrant-edge", tmp_path)
    finally:
        first.close()
    open_store("qdrant-edge", tmp_path).close()  # free again after close


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_edge_hnsw_segments_after_optimize(tmp_path, quantization):
    """Past the indexing threshold, optimize() builds HNSW (+ int8) segments; results stay right."""
    rng = np.random.default_rng(3)
    n = 600
    vectors = unit(rng.standard_normal((n, DIM))).astype(np.float32)
    ids = [f"p{i}" for i in range(n)]
    payloads = [{"category": CATEGORIES[i % 4], "price": float(i)} for i in range(n)]
    store = open_store("qdrant-edge", tmp_path, indexing_threshold_kb=1, full_scan_threshold_kb=1,
                       quantization=quantization)
    try:
        store.upsert(list(zip(ids, vectors, payloads)))
        assert store.optimize() is True
        info = store.info()
        assert info["points"] == n and info["indexed_vectors"] > 0
        data = (ids, vectors, payloads)
        recall = []
        for q in range(20):
            query = vectors[q * 7]
            for flt in (None, SearchFilter(category="bags", max_price=400)):
                expected, _ = exact(data, query, 10, flt)
                got = [h.product_id for h in store.search(query, 10, flt)]
                recall.append(len(set(got) & set(expected)) / 10)
                assert got[0] == expected[0]
        assert np.mean(recall) >= 0.95
        assert store.count(SearchFilter(category="bags")) == n // 4
    finally:
        store.close()


def test_edge_builds_hnsw_only_past_the_index_threshold(tmp_path):
    """Below edge_index_threshold_points the shard stays exact (no stalling optimize); at or above it,
    the next quiet period (here: an explicit optimize_if_needed) builds the HNSW segments."""
    rng = np.random.default_rng(5)
    n = 600
    vectors = unit(rng.standard_normal((n, DIM))).astype(np.float32)
    points = [(f"p{i}", vectors[i], {"category": CATEGORIES[i % 4], "price": float(i)}) for i in range(n)]
    store = open_store("qdrant-edge", tmp_path, indexing_threshold_kb=1, full_scan_threshold_kb=1,
                       index_threshold_points=n + 1)
    try:
        store.upsert(points)
        assert store.unindexed_points() == n
        assert store.optimize_if_needed() is False and store.info()["indexed_vectors"] == 0
        assert store.search(vectors[3], 1)[0].product_id == "p3"  # exact search meanwhile
        store.index_threshold_points = n
        assert store.optimize_if_needed() is True and store.info()["indexed_vectors"] > 0
        assert store.unindexed_points() < n
    finally:
        store.close()
