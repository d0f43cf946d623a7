"""The public gRPC API (lookalike.v1.Lookalike) over the Gateway."""
from __future__ import annotations

import functools
import logging
import threading
import time

import grpc

from lookalike import request_id
from lookalike import status as status_table
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc

from . import metrics
from .adaptation_api import get_response
from .auth import ApiKeyCheck
from .core import Gateway
from .errors import SHUTTING_DOWN, ApiError, Deadline
from .ingest_types import IngestItem
from .jobs import job_proto
from .settings import GatewaySettings

log = logging.getLogger(__name__)


def unary_rpc(method):
    """Runs an RPC with a deadline, API-key check, metrics and ApiError -> status translation."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: "LookalikeServicer", request, context: grpc.ServicerContext):
        started = time.perf_counter()
        status = grpc.StatusCode.OK
        rid = request_id.from_grpc(context)
        context.set_trailing_metadata(((request_id.METADATA_KEY, rid),))
        try:
            self.refuse_when_draining()
            self.auth.check_grpc(context)
            return method(self, request, context, self.deadline(context))
        except ApiError as exc:
            status = exc.code
            log.info("%s failed: %s %s", name, exc.code.name, exc.message)
            abort(context, exc, rid)
        except Exception:
            status = grpc.StatusCode.UNKNOWN  # what gRPC answers for an unexpected exception; counted as such
            raise
        finally:
            metrics.REQUESTS.labels(api="grpc", method=name, status=status.name).inc()
            metrics.LATENCY.labels(api="grpc", method=name).observe(time.perf_counter() - started)
    return wrapper


def abort(context: grpc.ServicerContext, exc: ApiError, rid: str | None = None) -> None:
    """Ends the call with the error's code, message and details (google.rpc.Status: BadRequest,
    ResourceInfo, RetryInfo), the request id and, when there is one, `retry-after` in the trailers."""
    metadata = [(request_id.METADATA_KEY, rid or request_id.current.get())]
    if exc.retry_after_s:
        metadata.append(("retry-after", str(max(1, round(exc.retry_after_s)))))
    context.abort_with_status(status_table.to_rpc_status(exc.code, exc.message, exc.all_details(), tuple(metadata)))


def _top_k(request) -> int | None:
    return request.top_k if request.HasField("top_k") else None


def _min_score(request) -> float | None:
    return request.min_score if request.HasField("min_score") else None


class GatewayServicer:
    """What every gateway gRPC servicer shares: auth, drain refusal and the caller's deadline (see `unary_rpc`)."""

    def __init__(self, settings: GatewaySettings, auth: ApiKeyCheck, draining: threading.Event | None = None):
        self.settings = settings
        self.auth = auth
        self.draining = draining  # set on SIGTERM: new calls get UNAVAILABLE while in-flight ones finish

    def refuse_when_draining(self) -> None:
        if self.draining is not None and self.draining.is_set():
            raise ApiError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def deadline(self, context: grpc.ServicerContext) -> Deadline:
        """The caller's deadline (capped at the configured default), or the default when none was set."""
        default = self.settings.request_timeout_s
        remaining = context.time_remaining()
        return Deadline(default if remaining is None else min(remaining, default))


class LookalikeServicer(GatewayServicer, lookalike_pb2_grpc.LookalikeServicer):
    """Implements lookalike.v1.Lookalike over the Gateway."""

    def __init__(self, gateway: Gateway, auth: ApiKeyCheck, draining: threading.Event | None = None):
        super().__init__(gateway.settings, auth, draining)
        self.gateway = gateway

    @unary_rpc
    def SearchByImage(self, request, context, deadline):
        boost = request.category_boost if request.HasField("category_boost") else None
        found = self.gateway.search_by_image(request.image, _top_k(request), request.filter, deadline, boost,
                                             crop=request.crop if request.HasField("crop") else None,
                                             min_score=_min_score(request))
        return lookalike_pb2.SearchByImageResponse(results=found.results, cache_hit=found.cache_hit,
                                                   category_boost=found.category_boost,
                                                   weak_match_score=found.weak_match_score)

    @unary_rpc
    def SearchSimilar(self, request, context, deadline):
        results = self.gateway.search_similar(request.product_id, _top_k(request), request.filter, deadline,
                                              min_score=_min_score(request))
        return lookalike_pb2.SearchSimilarResponse(results=results)

    @unary_rpc
    def GetProduct(self, request, context, deadline):
        return lookalike_pb2.GetProductResponse(product=self.gateway.get_product(request.product_id, deadline))

    @unary_rpc
    def DeleteProducts(self, request, context, deadline):
        deleted = self.gateway.delete_products(list(request.product_ids), deadline)
        return lookalike_pb2.DeleteProductsResponse(deleted=deleted)

    def UpsertProducts(self, request_iterator, context):
        started = time.perf_counter()
        status = grpc.StatusCode.OK
        request_id.from_grpc(context)
        try:
            self.refuse_when_draining()
            self.auth.check_grpc(context)
        except ApiError as exc:
            metrics.REQUESTS.labels(api="grpc", method="UpsertProducts", status=exc.code.name).inc()
            abort(context, exc)
        batch_timeout = self.settings.ingest_batch_timeout_s
        items = (IngestItem(request.product, request.image, request.skip_duplicates, list(request.more_images))
                 for request in request_iterator)
        try:
            for result in self.gateway.ingest(items, lambda: Deadline(batch_timeout),
                                              cancelled=lambda: not context.is_active()):
                yield result.to_proto()  # outcome, error, duplicate_of
        except Exception:
            status = grpc.StatusCode.UNKNOWN  # a failing item is a FAILED result; this is a broken stream
            raise
        finally:
            metrics.REQUESTS.labels(api="grpc", method="UpsertProducts", status=status.name).inc()
            metrics.LATENCY.labels(api="grpc", method="UpsertProducts").observe(time.perf_counter() - started)

    @unary_rpc
    def ListCollections(self, request, context, deadline):
        return self.gateway.collections.list(deadline)

    @unary_rpc
    def ActivateCollection(self, request, context, deadline):
        active, previous = self.gateway.collections.activate(request.collection, request.rollback, deadline)
        return lookalike_pb2.ActivateCollectionResponse(active=active, previous=previous)

    @unary_rpc
    def StartAdaptation(self, request, context, deadline):
        return lookalike_pb2.StartAdaptationResponse(job=job_proto(self.gateway.adaptation.start(request)))

    @unary_rpc
    def GetAdaptation(self, request, context, deadline):
        return get_response(self.gateway.adaptation.job(request.job_id))

    def Reindex(self, request, context):
        """Server stream of progress; the work stops when the caller goes away (calling again resumes)."""
        started = time.perf_counter()
        status = grpc.StatusCode.OK
        request_id.from_grpc(context)
        try:
            self.refuse_when_draining()  # a shutting-down gateway starts no long work (as UpsertProducts)
            self.auth.check_grpc(context)
            batch_timeout = self.settings.ingest_batch_timeout_s
            yield from self.gateway.reindexer.reindex(request, lambda: Deadline(batch_timeout),
                                                      cancelled=lambda: not context.is_active())
        except ApiError as exc:
            status = exc.code
            log.info("Reindex failed: %s %s", exc.code.name, exc.message)
            abort(context, exc)
        except Exception:
            status = grpc.StatusCode.UNKNOWN
            raise
        finally:
            metrics.REQUESTS.labels(api="grpc", method="Reindex", status=status.name).inc()
            metrics.LATENCY.labels(api="grpc", method="Reindex").observe(time.perf_counter() - started)
