"""Lookalike search service: lookalike.search.v1.SearchService (gRPC) over Qdrant (embedded local, Edge or server)."""
from .engines import make_store
from .settings import SearchSettings
from .store import Hit, NotFound, Record, SearchFilter, StoreError, VectorStore, point_uuid

__all__ = ["SearchSettings", "VectorStore", "SearchFilter", "Hit", "Record", "NotFound", "StoreError",
           "make_store", "point_uuid"]
