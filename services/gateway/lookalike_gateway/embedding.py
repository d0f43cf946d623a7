"""The gateway's calls to the embedder (TorchServe): each gets what remains of its deadline, UNAVAILABLE is
retried (retry.POLICY, the policy of every dependency call), a photo the embedder cannot decode is
INVALID_ARGUMENT, any other failure an ApiError naming the embedder, and every image is counted
(metrics.EMBEDDER_CALLS by outcome). `embed_one`: a query photo; `embed_burst`: an ingest batch's photos
at once (TorchServe batches them).
"""
from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from lookalike import crop as crops
from lookalike import request_id
from lookalike.embedder_client import EmbedderClient, EmbedderImageError, EmbedderNotReady

from . import metrics
from .errors import EMBEDDER_NAME, ApiError, Deadline, dependency_error
from .retry import POLICY, RetryPolicy


def embed_one(embedder: EmbedderClient, image: bytes, deadline: Deadline, ready: Callable[[], bool] = lambda: True,
              crop: crops.CropBox | None = None, policy: RetryPolicy = POLICY) -> np.ndarray:
    """The embedding of one image (or its region `crop`). While `ready()` is false (the readiness monitor
    has the embedder down) nothing is sent: the attempt fails like a refused connection, so it is retried
    within the deadline and then answered UNAVAILABLE naming the embedder."""
    region = {"crop": crop.key} if crop is not None else {}

    def call(timeout: float) -> np.ndarray:
        if not ready():
            raise EmbedderNotReady()
        try:
            vector = embedder.embed(image, timeout=timeout, request_id=request_id.current.get(), **region)
        except EmbedderImageError as exc:
            metrics.EMBEDDER_CALLS.labels(outcome="bad_image").inc()
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {exc}") from None
        metrics.EMBEDDER_CALLS.labels(outcome="ok").inc()
        return vector

    def count(exc: grpc.RpcError) -> None:
        metrics.EMBEDDER_CALLS.labels(outcome=exc.code().name.lower()).inc()
    return policy.call(EMBEDDER_NAME, "calling the embedder", call, deadline, on_error=count)


def embed_burst(embedder: EmbedderClient, images: list[bytes], deadline: Deadline,
                policy: RetryPolicy = POLICY) -> list[np.ndarray | ApiError]:
    """One concurrent burst for `images`: per image, its vector or the ApiError of that image. Images
    answered UNAVAILABLE are sent again (only they) with the policy's backoff while the deadline allows."""
    out: list[np.ndarray | ApiError | None] = [None] * len(images)
    todo = list(range(len(images)))
    attempt = 0
    while todo:
        metrics.EMBEDDER_BATCH_SIZE.observe(len(todo))  # one burst (in flight: EMBEDDER_QUEUE_DEPTH)
        results = embedder.embed_many([images[n] for n in todo], timeout=deadline.remaining("calling the embedder"))
        retry = []
        for n, result in zip(todo, results):
            if isinstance(result, EmbedderImageError):
                metrics.EMBEDDER_CALLS.labels(outcome="bad_image").inc()
                out[n] = ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {result}")
            elif isinstance(result, grpc.RpcError):
                metrics.EMBEDDER_CALLS.labels(outcome=result.code().name.lower()).inc()
                if result.code() in policy.retryable:
                    retry.append(n)
                out[n] = dependency_error(EMBEDDER_NAME, result)
            elif isinstance(result, Exception):
                metrics.EMBEDDER_CALLS.labels(outcome="error").inc()
                out[n] = ApiError(grpc.StatusCode.UNAVAILABLE, f"{EMBEDDER_NAME} failed: {result}")
            else:
                metrics.EMBEDDER_CALLS.labels(outcome="ok").inc()
                out[n] = result
        if not retry or not policy.pause(attempt, deadline):
            break
        attempt += 1
        todo = retry
    return out
