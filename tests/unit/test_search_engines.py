"""lookalike_search.engines: the settings reach the stores. Distributed Qdrant: LOOKALIKE_SEARCH_SHARD_NUMBER /
REPLICATION_FACTOR / WRITE_CONSISTENCY_FACTOR reach create_collection (issue 8), through both construction paths
the service uses (engines.make_store and the per-collection ClientEngine.store), checked against a fake qdrant
client: no server needed."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("qdrant_client")

from lookalike_search import engines, store_qdrant  # noqa: E402
from lookalike_search.settings import SearchSettings  # noqa: E402


class FakeClient:
    """Records create_collection; every collection is new."""

    def __init__(self):
        self.created: list[tuple[str, dict]] = []
        self.payload_indexes: list[str] = []

    def collection_exists(self, name):
        return any(n == name for n, _ in self.created)

    def create_collection(self, name, **kwargs):
        self.created.append((name, kwargs))
        return True

    def get_collection(self, name):
        return SimpleNamespace(payload_schema={})

    def create_payload_index(self, name, field, field_schema=None, wait=True):
        self.payload_indexes.append(field)

    def close(self):
        pass


@pytest.fixture
def server_env(monkeypatch):
    for key, value in {"LOOKALIKE_SEARCH_QDRANT_URL": "http://qdrant:6333",
                       "LOOKALIKE_SEARCH_SHARD_NUMBER": "6",
                       "LOOKALIKE_SEARCH_REPLICATION_FACTOR": "2",
                       "LOOKALIKE_SEARCH_WRITE_CONSISTENCY_FACTOR": "2",
                       "LOOKALIKE_SEARCH_QUANTIZATION": "int8"}.items():
        monkeypatch.setenv(key, value)
    fake = FakeClient()
    monkeypatch.setattr(store_qdrant, "open_client", lambda **kw: (fake, "fake qdrant"))
    monkeypatch.setattr(engines, "open_client", lambda **kw: (fake, "fake qdrant"))
    return fake


def _assert_cluster(kwargs):
    assert kwargs["shard_number"] == 6
    assert kwargs["replication_factor"] == 2
    assert kwargs["write_consistency_factor"] == 2
    assert kwargs["vectors_config"].size == 1280
    assert kwargs["quantization_config"] is not None  # int8 from the same environment
    assert kwargs["vectors_config"].on_disk is True  # quantized copy in RAM, originals on disk


def test_make_store_passes_cluster_settings_to_create_collection(server_env):
    settings = SearchSettings()
    assert settings.engine == "qdrant-server"
    store = engines.make_store(settings)
    store.ensure_collection()
    [(name, kwargs)] = server_env.created
    assert name == "products"
    _assert_cluster(kwargs)
    assert server_env.payload_indexes  # category/price indexes are created on a server too


def test_collection_engine_passes_cluster_settings_to_create_collection(server_env):
    engine = engines.ClientEngine(SearchSettings())
    store = engine.store("products__lookalike-lite0", 1280)
    store.ensure_collection()
    [(name, kwargs)] = server_env.created
    assert name == "products__lookalike-lite0"
    _assert_cluster(kwargs)


def test_defaults_are_single_node(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_SEARCH_QDRANT_URL", "http://qdrant:6333")
    fake = FakeClient()
    monkeypatch.setattr(store_qdrant, "open_client", lambda **kw: (fake, "fake qdrant"))
    engines.make_store(SearchSettings()).ensure_collection()
    [(_, kwargs)] = fake.created
    assert (kwargs["shard_number"], kwargs["replication_factor"], kwargs["write_consistency_factor"]) == (1, 1, 1)


def test_write_consistency_cannot_exceed_replication(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_SEARCH_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("LOOKALIKE_SEARCH_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("LOOKALIKE_SEARCH_WRITE_CONSISTENCY_FACTOR", "3")
    with pytest.raises(ValueError):
        SearchSettings()
