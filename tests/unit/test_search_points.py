"""lookalike_search.points, the products <-> image points mapping every engine shares (the congruence suite,
test_search_store*.py, checks the engines' answers; these pin the pieces)."""
from __future__ import annotations

import numpy as np
import pytest

from lookalike_search.points import GROUP_OVERFETCH, dedupe_points, grouped, image_points, merge_best
from lookalike_search.store import IMAGE_COUNT, IMAGE_DIGEST, IMAGE_INDEX, IMAGE_LIST, Hit, point_uuid


def test_dedupe_normalises_and_keeps_the_last_occurrence():
    points = dedupe_points([("a", np.array([3.0, 4.0]), {"title": "old"}),
                            ("b", np.array([[1.0, 0.0], [0.0, 2.0]]), {"price": 5}),
                            ("a", np.array([0.0, 2.0]), {"title": "new"})], dim=2)
    assert [p[0] for p in points] == ["b", "a"]
    (_, b_vectors, b_payload), (_, a_vectors, a_payload) = points
    np.testing.assert_allclose(b_vectors, [[1, 0], [0, 1]])
    np.testing.assert_allclose(a_vectors, [[0, 1]])
    assert a_payload == {"title": "new", "product_id": "a"} and b_payload["price"] == 5.0
    with pytest.raises(ValueError, match="NUL"):
        dedupe_points([("a\x00b", np.ones(2), {})], dim=2)


def test_image_points_carry_the_product_and_their_image():
    [(_, vectors, payload)] = dedupe_points([("p", np.eye(3)[:2], {IMAGE_LIST: ["h0", "h1"]})], dim=3)
    main, second = image_points("p", vectors, payload)
    assert (main.id, second.id) == (point_uuid("p"), point_uuid("p", 1))
    assert main.payload[IMAGE_LIST] == ["h0", "h1"] and IMAGE_LIST not in second.payload
    assert [(p.payload[IMAGE_INDEX], p.payload[IMAGE_COUNT], p.payload[IMAGE_DIGEST]) for p in (main, second)] == [
        (0, 2, "h0"), (1, 2, "h1")]


def test_grouped_over_fetches_until_enough_distinct_products():
    images = [Hit(pid, 1.0 - i / 100, {}, i % 3) for i, pid in enumerate("aaabbbcccddd")]
    limits = []

    def query(limit):
        limits.append(limit)
        return images[:limit]

    assert [h.product_id for h in grouped(query, 3)] == ["a", "b", "c"]
    assert limits == [3, 3 * GROUP_OVERFETCH]
    limits.clear()
    assert [h.product_id for h in grouped(query, 10)] == ["a", "b", "c", "d"]  # the store ran out
    assert limits == [10, 10 * GROUP_OVERFETCH]


def test_merge_best_keeps_each_products_best_score():
    merged = merge_best([[Hit("a", 0.5, {}), Hit("b", 0.4, {})], [Hit("b", 0.9, {}, 2), Hit("c", 0.1, {})]], 2)
    assert [(h.product_id, h.score, h.image) for h in merged] == [("b", 0.9, 2), ("a", 0.5, 0)]
