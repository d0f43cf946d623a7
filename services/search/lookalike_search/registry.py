"""The collection registry: the collections one search service holds, and the alias naming the active one.

Requests carry a collection name; an empty name (or the alias itself) means the collection the alias
points at. Switching the alias is atomic for the service: a request resolves its collection once, so
requests in flight finish on the collection they started on and every later one uses the new one. The
old collection stays open (rollback is one more switch).

Where the alias lives is the engine's business (lookalike_search.aliases, lookalike_search.engines).

At the first start the alias points at `initial_collection` (`<alias>__<default model id>`), created
with LOOKALIKE_SEARCH_VECTOR_SIZE; a catalogue from before aliases (a collection named like the alias)
becomes the alias's target instead.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lookalike import naming

from .engines import Engine, make_engine
from .store import CollectionMismatch, NotFound, StoreError, VectorStore

log = logging.getLogger(__name__)


def check_name(name: str | None) -> str:
    """A collection name a request may give (lookalike.naming.NAME_PATTERN), or ValueError."""
    if not naming.NAME_PATTERN.match(name or ""):
        raise ValueError(f"collection name {name!r} is not valid (letters, digits, '.', '-', '_'; <= 255)")
    return name


class CollectionNotFound(NotFound):
    def __str__(self) -> str:
        return f"collection {self.product_id!r} not found"


@dataclass(frozen=True)
class Active:
    name: str
    store: VectorStore


class CollectionRegistry:
    """The collections of one service: opened lazily, one store each; the alias resolved in memory (re-read
    every engine.refresh_alias_s where the alias is shared)."""

    def __init__(self, engine: Engine, vector_size: int, alias: str = naming.DEFAULT_ALIAS, initial: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
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
    def from_settings(cls, settings) -> CollectionRegistry:
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
                if not legacy or self.engine.aliases.may_name_a_collection:
                    self.engine.aliases.set(self.alias, target)
                log.info("alias %r -> %r (first start)", self.alias, target)
            store = self._open(target, None, create=False)
            self._active = Active(target, store)
            self._previous = previous
            self._read_at = self._clock()

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
        return check_name(name), self._open(name, None, create=False)

    # ---- management -----------------------------------------------------------------------------

    def create(self, name: str, vector_size: int | None = None) -> tuple[VectorStore, bool]:
        """Creates (or opens) a collection; (store, created). CollectionMismatch when it exists with
        another vector size."""
        check_name(name)
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
            if not self.engine.aliases.may_name_a_collection and self.alias in self.engine.names():
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


class SingleStore:
    """A registry of one store that answers every request (the servicer embedded elsewhere: the gateway's
    classifier tests, benches); a request naming a collection is refused."""

    alias = ""

    def __init__(self, store: VectorStore):
        self.store = store

    def get(self, name: str | None) -> tuple[str, VectorStore]:
        if name:
            raise CollectionNotFound(name)
        return "", self.store

    def active(self) -> Active:
        return Active("", self.store)

    def describe(self, with_counts: bool = False):
        return "", None, [("", self.store.vector_size, self.store.count() if with_counts else None)]

    def create(self, name, vector_size=None):
        raise ValueError("this service holds one collection")

    set_alias = create
