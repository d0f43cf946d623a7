"""image_store.py: originals by content hash, never outside the store."""
from __future__ import annotations

import pytest

from lookalike_gateway.image_store import ImageStore


def test_image_store_refuses_traversal(tmp_path):
    store = ImageStore(tmp_path)
    digest = "a" * 64
    store.put(digest, b"data")
    assert store.get(digest) == b"data"
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, "/abs"):
        assert store.get(bad) is None
        with pytest.raises(ValueError):
            store.path(bad)
