"""lookalike_search.aliases: where the alias is kept (a pointer file replaced whole; Qdrant's own aliases)."""
from __future__ import annotations

import json

import pytest

from lookalike_search.aliases import PointerFileAliases, QdrantAliases
from lookalike_search.store import StoreError

DIM = 4


def test_pointer_file_is_replaced_whole(tmp_path):
    aliases = PointerFileAliases(tmp_path / "aliases.json")
    assert aliases.get("products") == (None, None)
    assert aliases.set("products", "a") is None
    assert aliases.set("products", "b") == "a"
    assert aliases.get("products") == ("b", "a")
    assert aliases.set("products", "b") == "b"  # no-op keeps the previous
    assert aliases.get("products") == ("b", "a")
    assert [p.name for p in tmp_path.iterdir()] == ["aliases.json"]  # no temp file left
    assert json.loads((tmp_path / "aliases.json").read_text())["aliases"]["products"]["collection"] == "b"
    (tmp_path / "aliases.json").write_text("{torn")
    with pytest.raises(StoreError):
        aliases.get("products")


def test_qdrant_aliases_switch_in_one_request(tmp_path):
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "q"))
    for name in ("a", "b"):
        client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    aliases = QdrantAliases(client)
    assert aliases.get("products") == (None, None)
    assert aliases.set("products", "a") is None
    assert aliases.set("products", "b") == "a"
    assert aliases.get("products") == ("b", "a")
    assert client.count("products").count == 0  # Qdrant resolves it
    client.close()
