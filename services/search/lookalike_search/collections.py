"""The collections one search service holds, and the alias that names the active one.

Requests carry a collection name; an empty name (or the alias itself) means the collection the alias
points at. Switching the alias is atomic for the service: a request resolves its collection once, so
requests in flight finish on the collection they started on and every later one uses the new one. The
old collection stays open (rollback is one more switch).

Where the alias lives:
  * qdrant-local, qdrant-edge: a pointer file `<engine root>/aliases.json`, replaced atomically (temp
    file, fsync, rename, fsync of the folder), so a kill -9 leaves the old or the new pointer, never a
    torn one. qdrant-edge has no aliases of its own; qdrant-client's local mode has some, but one file for
    both embedded engines also serves catalogues created before aliases, whose collection is named like
    the alias (a Qdrant alias cannot take the name of a collection).
  * qdrant-server: Qdrant's own aliases (`update_collection_aliases`, delete + create in one atomic
    request), so every search replica sees the same switch; each replica re-reads it every
    ALIAS_REFRESH_S seconds.

At the first start the alias points at `initial_collection` (`<alias>__<default model id>`), created
with LOOKALIKE_SEARCH_VECTOR_SIZE; a catalogue from before aliases (a collection named like the alias)
becomes the alias's target instead.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lookalike import collections as naming

from .store import CollectionMismatch, NotFound, StoreError, VectorStore

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
ALIAS_REFRESH_S = 2.0  # qdrant-server: how stale a replica's view of the alias may be


class CollectionNotFound(NotFound):
    def __str__(self) -> str:
        return f"collection {self.product_id!r} not found"


# ---- where aliases are kept ---------------------------------------------------------------------------

class PointerFileAliases:
    """alias -> {collection, previous} in a JSON file that is only ever replaced whole."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"alias file {self.path} is unreadable: {exc}") from exc
        aliases = data.get("aliases") if isinstance(data, dict) else None
        if not isinstance(aliases, dict):
            raise StoreError(f"alias file {self.path} has no 'aliases' object")
        return aliases

    def get(self, alias: str) -> tuple[str | None, str | None]:
        """(collection, previous collection) the alias points at; (None, None) when unset."""
        entry = self._read().get(alias)
        if not isinstance(entry, dict) or not entry.get("collection"):
            return None, None
        return str(entry["collection"]), (str(entry["previous"]) if entry.get("previous") else None)

    def set(self, alias: str, collection: str) -> str | None:
        """Points the alias at `collection` durably; returns what it pointed at before."""
        with self._lock:
            aliases = self._read()
            current = aliases.get(alias, {}).get("collection") if isinstance(aliases.get(alias), dict) else None
            if current == collection:
                return current
            aliases[alias] = {"collection": collection, "previous": current, "switched_at": time.time()}
            self._write({"aliases": aliases})
            return current

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


class QdrantAliases:
    """Qdrant's own aliases (a server, or qdrant-client's local mode); `previous` is remembered in memory."""

    def __init__(self, client):
        self.client = client
        self._previous: dict[str, str] = {}

    def get(self, alias: str) -> tuple[str | None, str | None]:
        for description in self.client.get_aliases().aliases:
            if description.alias_name == alias:
                return description.collection_name, self._previous.get(alias)
        return None, None

    def set(self, alias: str, collection: str) -> str | None:
        from qdrant_client import models

        current, _ = self.get(alias)
        if current == collection:
            return current
        operations = []
        if current is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name=collection, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=operations)  # one atomic request
        if current is not None:
            self._previous[alias] = current
        return current


# ---- the engines' collections ---------------------------------------------------------------------------

class Engine:
    """What Collections needs from an engine: list names, read a collection's vector size, open a store."""

    aliases: PointerFileAliases | QdrantAliases
    refresh_alias_s: float | None = None  # re-read the alias this often (shared aliases only)

    def names(self) -> list[str]: ...

    def vector_size(self, name: str) -> int | None: ...

    def store(self, name: str, vector_size: int) -> VectorStore: ...

    def close(self) -> None: ...


class EdgeEngine(Engine):
    """qdrant-edge: one shard folder per collection under DATA_DIR/qdrant-edge."""

    def __init__(self, settings):
        from .store_edge import EDGE_CONFIG_FILE, QdrantEdgeStore

        self.settings = settings
        self.root = Path(settings.data_dir) / "qdrant-edge"
        self._config_file = EDGE_CONFIG_FILE
        self._store_class = QdrantEdgeStore
        self.aliases = PointerFileAliases(self.root / ALIASES_FILE)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if (d / self._config_file).is_file())

    def vector_size(self, name: str) -> int | None:
        try:
            return int(json.loads((self.root / name / self._config_file).read_text())["vectors"][""]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, name: str, vector_size: int) -> VectorStore:
        s = self.settings
        return self._store_class(self.root / name, vector_size, hnsw_m=s.hnsw_m,
                                 hnsw_ef_construct=s.hnsw_ef_construct, search_ef=s.search_ef,
                                 full_scan_threshold_kb=s.full_scan_threshold_kb,
                                 indexing_threshold_kb=s.indexing_threshold_kb, quantization=s.quantization,
                                 quantization_rescore=s.quantization_rescore,
                                 quantization_oversampling=s.quantization_oversampling,
                                 optimize_idle_s=s.edge_optimize_idle_s, flush_each_write=s.edge_flush_each_write,
                                 index_threshold_points=s.edge_index_threshold_points)

    def close(self) -> None:
        pass


class ClientEngine(Engine):
    """qdrant-client: one client (local storage folder or server) shared by every collection's store."""

    def __init__(self, settings):
        from .store_qdrant import QdrantClientStore, open_client

        self.settings = settings
        self._store_class = QdrantClientStore
        self.local = settings.engine != "qdrant-server"
        # Local mode is one in-process engine and not thread-safe: its stores share one lock.
        self.lock = threading.RLock() if self.local else None
        self.root = Path(settings.data_dir) / "qdrant-local"
        if self.local:
            self.client, self.where = open_client(path=self.root)
        else:
            key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
            self.client, self.where = open_client(url=settings.qdrant_url, api_key=key,
                                                  prefer_grpc=settings.qdrant_prefer_grpc,
                                                  timeout_s=settings.request_timeout_s)
        if self.local:
            self.aliases = PointerFileAliases(self.root / ALIASES_FILE)
        else:
            self.aliases = QdrantAliases(self.client)
            self.refresh_alias_s = ALIAS_REFRESH_S

    @contextlib.contextmanager
    def _call(self, what: str):
        try:
            with self.lock or contextlib.nullcontext():
                yield
        except StoreError:
            raise
        except Exception as exc:
            name = type(exc).__name__
            transient = any(t in name for t in ("Connect", "Timeout", "RpcError", "Network", "Transport",
                                                "ResponseHandling"))
            raise StoreError(f"{what} failed on {self.where}: {name}: {exc}", unavailable=transient) from exc

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
        s = self.settings
        common = dict(hnsw_m=s.hnsw_m, hnsw_ef_construct=s.hnsw_ef_construct, search_ef=s.search_ef,
                      full_scan_threshold_kb=s.full_scan_threshold_kb, indexing_threshold_kb=s.indexing_threshold_kb,
                      quantization=s.quantization, quantization_rescore=s.quantization_rescore,
                      quantization_oversampling=s.quantization_oversampling)
        if not self.local:
            common.update(shard_number=s.shard_number, replication_factor=s.replication_factor,
                          write_consistency_factor=s.write_consistency_factor)
        return self._store_class(name, vector_size, client=self.client, client_lock=self.lock,
                                 local=self.local, where=self.where, **common)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def make_engine(settings) -> Engine:
    return EdgeEngine(settings) if settings.engine == "qdrant-edge" else ClientEngine(settings)


# ---- the collections ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Active:
    name: str
    store: VectorStore


class Collections:
    """The collections of one service: opened lazily, one store each; the alias resolved in memory."""

    def __init__(self, engine: Engine, alias: str = naming.DEFAULT_ALIAS, initial: str | None = None,
                 vector_size: int = 1280, clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.alias = alias
        self.initial = initial or naming.collection_name(alias, naming.DEFAULT_MODEL_NAME)
        self.vector_size = vector_size
        self._clock = clock
        self._lock = threading.RLock()
        self._stores: dict[str, VectorStore] = {}
        self._active: Active | None = None
        self._previous: str | None = None
        self._read_at = 0.0
        self._closed = False

    @classmethod
    def from_settings(cls, settings) -> Collections:
        return cls(make_engine(settings), alias=settings.collection, initial=settings.initial_collection,
                   vector_size=settings.vector_size)

    # ---- opening --------------------------------------------------------------------------------

    def open(self) -> None:
        """Resolves the alias (setting it up at the first start) and opens the active collection.

        Raises CollectionMismatch when the collection this service creates itself (the initial one, or
        one from before aliases) exists with another vector size than LOOKALIKE_SEARCH_VECTOR_SIZE."""
        with self._lock:
            target, previous = self.engine.aliases.get(self.alias)
            if target is None:
                legacy = self.alias in self.engine.names()  # a catalogue from before aliases
                target = self.alias if legacy else self.initial
                self._open(target, self.vector_size, create=True)
                if not (legacy and isinstance(self.engine.aliases, QdrantAliases)):  # Qdrant: name taken
                    self.engine.aliases.set(self.alias, target)
                log.info("alias %r -> %r (first start)", self.alias, target)
            store = self._open(target, None, create=False)
            self._active = Active(target, store)
            self._previous = previous
            self._read_at = self._clock()

    ensure_collection = open  # what serve() calls (retried while a Qdrant server is unreachable)

    def _open(self, name: str, vector_size: int | None, create: bool) -> VectorStore:
        """The store of `name`: its own vector size when it exists (the configured one for the collection
        this service owns), else created with `vector_size` when `create`."""
        store = self._stores.get(name)
        if store is not None:
            return store
        with self._lock:
            if self._closed:
                raise StoreError("collections are closed", unavailable=True)
            if name in self._stores:
                return self._stores[name]
            existing = self.engine.vector_size(name)
            if existing is None and not create:
                raise CollectionNotFound(name)
            if name in (self.initial, self.alias):
                size = self.vector_size  # mismatch -> CollectionMismatch naming LOOKALIKE_SEARCH_VECTOR_SIZE
            else:
                size = existing if existing is not None else (vector_size or self.vector_size)
            store = self.engine.store(name, size)
            store.ensure_collection()
            self._stores[name] = store
            return store

    # ---- resolution -----------------------------------------------------------------------------

    def active(self) -> Active:
        active = self._active
        if active is None:
            raise StoreError("collections not opened yet", unavailable=True)
        refresh = self.engine.refresh_alias_s
        if refresh is not None and self._clock() - self._read_at > refresh:
            self._refresh()
            active = self._active
        return active

    def _refresh(self) -> None:
        with self._lock:
            self._read_at = self._clock()
            target, previous = self.engine.aliases.get(self.alias)
            if target and target != self._active.name:
                log.info("alias %r now points at %r (switched elsewhere)", self.alias, target)
                self._active = Active(target, self._open(target, None, create=False))
                self._previous = previous or self._previous

    def get(self, name: str | None) -> tuple[str, VectorStore]:
        """(collection name, store) for a request's collection field ("" or the alias: the active one)."""
        if not name or name == self.alias:
            active = self.active()
            return active.name, active.store
        if not naming.NAME_PATTERN.match(name):
            raise ValueError(f"collection name {name!r} is not valid (letters, digits, '.', '-', '_')")
        return name, self._open(name, None, create=False)

    # ---- management -----------------------------------------------------------------------------

    def create(self, name: str, vector_size: int | None = None) -> tuple[VectorStore, bool]:
        """Creates (or opens) a collection; (store, created). CollectionMismatch when it exists with
        another vector size."""
        if not naming.NAME_PATTERN.match(name or ""):
            raise ValueError(f"collection name {name!r} is not valid (letters, digits, '.', '-', '_'; <= 255)")
        if name == self.alias:
            raise ValueError(f"{name!r} is the alias; give the new collection another name")
        size = vector_size or self.vector_size
        with self._lock:
            existing = self.engine.vector_size(name)
            if existing is not None and existing != size:
                raise CollectionMismatch(f"collection {name!r} exists with vector size {existing}, not {size}")
            return self._open(name, size, create=True), existing is None

    def set_alias(self, name: str) -> tuple[str, str | None]:
        """Points the alias at `name` (durably, then in memory); (active, previous)."""
        if not name or name == self.alias:
            raise ValueError("give the collection the alias should point at")
        with self._lock:
            store = self._open(name, None, create=False)
            if isinstance(self.engine.aliases, QdrantAliases) and self.alias in self.engine.names():
                raise CollectionMismatch(
                    f"a collection is named like the alias {self.alias!r} (created before aliases); Qdrant "
                    "cannot create that alias: set LOOKALIKE_SEARCH_COLLECTION to another alias name")
            before = self._active.name if self._active else None
            if before == name:
                return name, self._previous
            previous = self.engine.aliases.set(self.alias, name) or before
            self._active = Active(name, store)
            self._previous = previous
            self._read_at = self._clock()
            log.info("alias %r switched: %r -> %r", self.alias, previous, name)
            return name, previous

    def describe(self, with_counts: bool = False) -> tuple[str, str | None, list[tuple[str, int, int | None]]]:
        """(active, previous, [(name, vector_size, points or None)]) for every collection."""
        active = self.active().name
        rows = []
        for name in self.engine.names():
            size = self.engine.vector_size(name) or 0
            points = None
            if with_counts:
                points = self._open(name, None, create=False).count()
            rows.append((name, size, points))
        return active, self._previous, rows

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for store in self._stores.values():
                try:
                    store.close()
                except Exception:  # closing must not raise during shutdown
                    log.exception("closing a store")
            self._stores.clear()
            self.engine.close()
