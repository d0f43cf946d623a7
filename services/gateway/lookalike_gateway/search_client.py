"""The gateway's calls to the search service: each gets what remains of the request's deadline,
UNAVAILABLE is retried (retry.POLICY), failures come back as ApiError naming the search service, and
latency is recorded per method. Requests scoped to a collection get the active one when they name none
(`default_collection`, given by the gateway: a query embeds with the model of the collection it searches).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc

from lookalike import request_id
from lookalike.search.v1 import search_pb2

from . import metrics
from .errors import SEARCH_NAME, Deadline, dependency_error
from .retry import POLICY, RetryPolicy

SCROLL_PAGE = 256  # points per page of a whole-collection read (reindex, adaptation, the quality gate)
COLLECTION_SCOPED = frozenset({"UpsertPoints", "SearchByVector", "SearchByVectors", "SearchById", "GetPoints",
                               "DeletePoints", "CountPoints", "ScrollPoints"})


class SearchClient:
    """`call(method, request, deadline)` over a SearchService stub (see the module docstring)."""

    def __init__(self, stub, default_collection: Callable[[], str] = lambda: "", policy: RetryPolicy = POLICY):
        self.stub = stub
        self.default_collection = default_collection
        self.policy = policy

    def call(self, method: str, request, deadline: Deadline):
        """Calls the search service with what remains of the deadline, retrying UNAVAILABLE with backoff."""
        rpc: Callable = getattr(self.stub, method)
        if method in COLLECTION_SCOPED and not request.collection:
            request.collection = self.default_collection()

        def call(timeout: float):
            started = time.perf_counter()
            try:
                return rpc(request, timeout=timeout, metadata=request_id.metadata())
            finally:
                metrics.SEARCH_LATENCY.labels(method=method).observe(time.perf_counter() - started)
        return self.policy.call(SEARCH_NAME, f"calling search service {method}", call, deadline)

    def call_once(self, method: str, request, timeout: float):
        """One call, no retries (the alias refresh: the next refresh is the retry)."""
        try:
            return getattr(self.stub, method)(request, timeout=timeout, metadata=request_id.metadata())
        except grpc.RpcError as exc:
            raise dependency_error(SEARCH_NAME, exc) from None


def pages(search: SearchClient, collection: str, with_vectors: bool = True,
          deadline_s: float = 60.0) -> Iterator[list[search_pb2.Point]]:
    """The stored points of `collection`, page by page (ScrollPoints, SCROLL_PAGE a page); each page gets
    `deadline_s`."""
    offset = ""
    while True:
        page = search.call("ScrollPoints", search_pb2.ScrollPointsRequest(
            collection=collection, limit=SCROLL_PAGE, offset=offset, with_vectors=with_vectors), Deadline(deadline_s))
        yield page.points
        offset = page.next_offset
        if not offset:
            return
