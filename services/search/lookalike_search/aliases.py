"""Where the alias that names the active collection is kept: the two places an engine can keep it.

  * `PointerFileAliases` (qdrant-local, qdrant-edge): a pointer file `<engine root>/aliases.json`, replaced
    atomically (temp file, fsync, rename, fsync of the folder), so a kill -9 leaves the old or the new
    pointer, never a torn one. qdrant-edge has no aliases of its own; qdrant-client's local mode has some,
    but one file for both embedded engines also serves catalogues created before aliases, whose collection
    is named like the alias (a Qdrant alias cannot take the name of a collection).
  * `QdrantAliases` (qdrant-server): Qdrant's own aliases (`update_collection_aliases`, delete + create in
    one atomic request), so every search replica sees the same switch; each replica re-reads it every
    ALIAS_REFRESH_S seconds (lookalike_search.registry).

Both answer `get(alias) -> (collection, previous)` and `set(alias, collection) -> previous`.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from lookalike import atomic

from .store import StoreError

ALIASES_FILE = "aliases.json"
ALIAS_REFRESH_S = 2.0  # qdrant-server: how stale a replica's view of the alias may be


class PointerFileAliases:
    """alias -> {collection, previous} in a JSON file that is only ever replaced whole."""

    may_name_a_collection = True  # an alias may share its name with a collection (one from before aliases)

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
        atomic.write_text(self.path, json.dumps(data, indent=1))  # fsync of the file, rename, fsync of the folder


class QdrantAliases:
    """Qdrant's own aliases: the qdrant-server engine's (any QdrantClient works, the unit test uses local mode);
    `previous` is remembered in memory."""

    may_name_a_collection = False  # Qdrant refuses an alias named like an existing collection

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
