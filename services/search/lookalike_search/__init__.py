"""Lookalike search service: lookalike.v1.SearchService (gRPC) over Qdrant (embedded local, Edge or server)."""
from .settings import SearchSettings
from .store import Hit, NotFound, Record, SearchFilter, StoreError, VectorStore, make_store, point_uuid

__all__ = ["SearchSettings", "VectorStore", "SearchFilter", "Hit", "Record", "NotFound", "StoreError",
           "make_store", "point_uuid"]
