"""The engine behind the search service (LOOKALIKE_SEARCH_ENGINE), built from its settings.

An `Engine` is what the service's collections need from one: list the collections, read one's vector
size, open a collection's `VectorStore`, and the place its alias lives (lookalike_search.aliases).
`make_engine(settings)` picks it; `make_store(settings)` opens the one store of `settings.collection`
(the benchmark, tools). The settings -> store-options mapping lives here only: the store classes take
plain arguments and know nothing of SearchSettings.
"""
from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .aliases import ALIAS_REFRESH_S, ALIASES_FILE, PointerFileAliases, QdrantAliases
from .store import VectorStore
from .store_edge import EDGE_CONFIG_FILE, QdrantEdgeStore
from .store_qdrant import QdrantClientStore, open_client, qdrant_errors

if TYPE_CHECKING:
    from .settings import SearchSettings


def data_root(s: SearchSettings) -> Path:
    """Where an embedded engine keeps its collections (and the alias file): DATA_DIR/<engine>."""
    return Path(s.data_dir) / s.engine


def index_options(s: SearchSettings) -> dict:
    """The HNSW, quantization and segment settings every engine's store takes."""
    return dict(hnsw_m=s.hnsw_m, hnsw_ef_construct=s.hnsw_ef_construct, search_ef=s.search_ef,
                full_scan_threshold_kb=s.full_scan_threshold_kb, indexing_threshold_kb=s.indexing_threshold_kb,
                quantization=s.quantization, quantization_rescore=s.quantization_rescore,
                quantization_oversampling=s.quantization_oversampling)


def edge_options(s: SearchSettings) -> dict:
    """index_options plus qdrant-edge's own (optimizer, flush per write, index threshold)."""
    return dict(index_options(s), optimize_idle_s=s.edge_optimize_idle_s, flush_each_write=s.edge_flush_each_write,
                index_threshold_points=s.edge_index_threshold_points)


def client_options(s: SearchSettings) -> dict:
    """index_options plus, on a Qdrant server, the cluster settings (shards, replication, write consistency)."""
    options = index_options(s)
    if s.engine == "qdrant-server":
        options.update(shard_number=s.shard_number, replication_factor=s.replication_factor,
                       write_consistency_factor=s.write_consistency_factor)
    return options


def server_connection(s: SearchSettings) -> dict:
    """open_client's arguments for the Qdrant server at qdrant_url."""
    return dict(url=s.qdrant_url, api_key=s.qdrant_api_key.get_secret_value() if s.qdrant_api_key else None,
                prefer_grpc=s.qdrant_prefer_grpc, timeout_s=s.request_timeout_s)


class Engine:
    """What the collections need from an engine: list names, read a collection's vector size, open a store."""

    aliases: PointerFileAliases | QdrantAliases
    refresh_alias_s: float | None = None  # re-read the alias this often (shared aliases only)

    def names(self) -> list[str]: ...

    def vector_size(self, name: str) -> int | None: ...

    def store(self, name: str, vector_size: int) -> VectorStore: ...

    def close(self) -> None: ...


class EdgeEngine(Engine):
    """qdrant-edge: one shard folder per collection under DATA_DIR/qdrant-edge."""

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self.root = data_root(settings)
        self.aliases = PointerFileAliases(self.root / ALIASES_FILE)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if (d / EDGE_CONFIG_FILE).is_file())

    def vector_size(self, name: str) -> int | None:
        try:
            return int(json.loads((self.root / name / EDGE_CONFIG_FILE).read_text())["vectors"][""]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, name: str, vector_size: int) -> VectorStore:
        return QdrantEdgeStore(self.root / name, vector_size, **edge_options(self.settings))

    def close(self) -> None:
        pass


class ClientEngine(Engine):
    """qdrant-client: one client (local storage folder or server) shared by every collection's store."""

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self.local = settings.engine != "qdrant-server"
        # Local mode is one in-process engine and not thread-safe: its stores share one lock.
        self.lock = threading.RLock() if self.local else None
        if self.local:
            self.root = data_root(settings)
            self.client, self.where = open_client(path=self.root)
            self.aliases = PointerFileAliases(self.root / ALIASES_FILE)
        else:
            self.client, self.where = open_client(**server_connection(settings))
            self.aliases = QdrantAliases(self.client)
            self.refresh_alias_s = ALIAS_REFRESH_S

    @contextlib.contextmanager
    def _call(self, what: str):
        with self.lock or contextlib.nullcontext(), qdrant_errors(what, self.where):
            yield

    def names(self) -> list[str]:
        with self._call("list collections"):
            return sorted(c.name for c in self.client.get_collections().collections)

    def vector_size(self, name: str) -> int | None:
        from qdrant_client import models

        with self._call(f"describe collection {name}"):
            if not self.client.collection_exists(name):
                return None
            vectors = self.client.get_collection(name).config.params.vectors
        return vectors.size if isinstance(vectors, models.VectorParams) else None

    def store(self, name: str, vector_size: int) -> VectorStore:
        return QdrantClientStore(name, vector_size, client=self.client, client_lock=self.lock,
                                 local=self.local, where=self.where, **client_options(self.settings))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def make_engine(settings: SearchSettings) -> Engine:
    return EdgeEngine(settings) if settings.engine == "qdrant-edge" else ClientEngine(settings)


def make_store(settings: SearchSettings) -> VectorStore:
    """The store of settings.collection on settings.engine (not yet ensured), owning its own connection."""
    if settings.engine == "qdrant-edge":
        return QdrantEdgeStore(data_root(settings) / settings.collection, settings.vector_size,
                               **edge_options(settings))
    if settings.engine == "qdrant-server":
        return QdrantClientStore(settings.collection, settings.vector_size,
                                 **server_connection(settings), **client_options(settings))
    return QdrantClientStore(settings.collection, settings.vector_size,
                             path=data_root(settings), **client_options(settings))
