"""The gateway's client of the embedder: TorchServe's gRPC inference API.

    client = EmbedderClient("127.0.0.1:7070", token_file="<data-dir>/key_file.json")
    vec = client.embed(jpeg_bytes, timeout=10)               # float32 [1280], L2 norm 1
    results = client.embed_many([a, b, c], timeout=30)      # ndarray or Exception per item

TorchServe 0.12 facts this client relies on (checked against its jar):

* Token authorization is on by default. TorchServe writes ``key_file.json`` into its working
  directory. gRPC inference expects metadata ``authorization: Bearer <inference key>``; without it
  every RPC, Ping included, fails with PERMISSION_DENIED ("Token Authorization failed..."). A restart
  writes new keys: a client given `token_file` re-reads it on PERMISSION_DENIED.
* Per-item errors inside a batch cannot be signalled with a gRPC status (the gRPC frontend drops
  per-item status codes; an exception in the handler fails the whole batch), so the handler returns
  a JSON error document as that item's ``prediction``; see lookalike_embedder.handler.
* gRPC metadata is not forwarded to the handler; the request id travels as the input "request_id".

Starting and stopping TorchServe itself (dev, tests, `lookalike serve`) is lookalike.torchserve_process.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np
from google.protobuf import empty_pb2

from lookalike.grpc_channel import service_channel_options
from lookalike.naming import DEFAULT_MODEL_NAME as MODEL_NAME
from lookalike.torchserve_api import inference_pb2, inference_pb2_grpc
from lookalike.vectors import unpack
from lookalike_embedder.contract import ERROR_PREFIX  # a leaf: no torch

MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # the largest answer read from TorchServe (a batch of embeddings)


def read_key_file(path: str | os.PathLike) -> dict[str, str]:
    """{"inference": key, "management": key, "API": key} from TorchServe's key_file.json."""
    data = json.loads(Path(path).read_text())
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}


class EmbedderImageError(ValueError):
    """The embedder rejected this image (map to gRPC INVALID_ARGUMENT / HTTP 400).

    `reason` is one of lookalike.images.REASONS (or "missing_input"); `message` is safe to show.
    """

    def __init__(self, reason: str, message: str, request_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.request_id = request_id
        self.grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class EmbedderProtocolError(RuntimeError):
    """The embedder answered something that is neither a vector nor an error document
    (wrong dimension, garbage): a deployment bug, map to INTERNAL."""


class EmbedderNotReady(grpc.RpcError):
    """Not sent: the embedder is known not to be ready (its health Ping is not "Healthy": TorchServe down,
    restarting, or loading its model, when a request would only wait in its queue until the deadline).
    Looks like the grpc.RpcError of a refused connection: code() is UNAVAILABLE, so callers retry it."""

    def details(self) -> str:
        return "not ready (restarting, or loading its model)"

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class EmbedderDeadlineExceeded(grpc.RpcError):
    """An item of `embed_many` that was never sent because the call's deadline had passed.
    Looks like the grpc.RpcError of an expired call: code() is DEADLINE_EXCEEDED."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details


def parse_prediction(data: bytes, dim: int | None = None, request_id: str | None = None) -> np.ndarray:
    """Decodes one `prediction` from the embedder: a float32 vector, or raises EmbedderImageError."""
    if data.startswith(ERROR_PREFIX):
        try:
            error = json.loads(data.decode("utf-8"))["error"]
            reason, message = str(error.get("reason", "invalid_image")), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EmbedderProtocolError(f"unparseable error payload from the embedder: {data[:200]!r}") from None
        raise EmbedderImageError(reason, message or reason, request_id)
    try:
        vector = unpack(data, dim)
    except ValueError as exc:
        raise EmbedderProtocolError(f"bad vector from the embedder ({len(data)} bytes): {exc}") from None
    if vector.shape[0] == 0:
        raise EmbedderProtocolError("empty vector from the embedder")
    return vector


class EmbedderClient:
    """gRPC client of the embedder behind TorchServe's inference API.

    Errors: EmbedderImageError (a ValueError) for a bad image; grpc.RpcError for transport/server
    failures (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED for a wrong token, ...), passed
    through unchanged so callers map them with lookalike.status; EmbedderProtocolError for an
    answer of the wrong shape.

    `token`: the inference key; or `token_file`: TorchServe's key_file.json, re-read once when the
    server answers PERMISSION_DENIED/UNAUTHENTICATED (key rotation by restart).
    `model_version`: "" = the model's default version.
    `dim`: expected dimension (checked when given).
    `interceptors`: gRPC client interceptors wrapped around the channel (e.g. to count requests in
    flight); `self.channel` is then the intercepted channel, so clients sharing it are intercepted too.
    Thread-safe; one channel shared by all calls.
    """

    def __init__(self, target: str, token: str | None = None, *, model_name: str = MODEL_NAME,
                 model_version: str = "", token_file: str | os.PathLike | None = None, dim: int | None = None,
                 channel: grpc.Channel | None = None, options: Sequence[tuple[str, object]] | None = None,
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = ()):
        self.target = target
        self.model_name = model_name
        self.model_version = model_version or ""
        self.dim = dim
        self.token_file = Path(token_file) if token_file else None
        if token is None and self.token_file is not None:
            try:
                token = read_key_file(self.token_file)["inference"]
            except (OSError, ValueError, KeyError):
                token = None  # not written yet (TorchServe starting): read again on PERMISSION_DENIED
        self._token = token
        self._lock = threading.Lock()
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            target, options=list(options or service_channel_options(receive=MAX_RESPONSE_BYTES)))
        if interceptors:
            self.channel = grpc.intercept_channel(self.channel, *interceptors)
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)

    # ------------------------------------------------------------------ plumbing
    def _metadata(self, request_id: str | None = None) -> list[tuple[str, str]]:
        md = []
        if self._token:
            md.append(("authorization", f"Bearer {self._token}"))
        if request_id:
            md.append(("x-request-id", request_id))
        return md

    def _request(self, image_bytes: bytes, request_id: str | None,
                 crop: str | None = None) -> inference_pb2.PredictionsRequest:
        inputs = {"data": bytes(image_bytes)}
        if request_id:
            inputs["request_id"] = request_id.encode("utf-8")
        if crop:  # lookalike.crop.CropBox.key: the handler crops the decoded photo before resizing
            inputs["crop"] = crop.encode("ascii")
        return inference_pb2.PredictionsRequest(model_name=self.model_name, model_version=self.model_version,
                                                 input=inputs)

    def _refresh_token(self, exc: grpc.RpcError) -> bool:
        if self.token_file is None or exc.code() not in (grpc.StatusCode.PERMISSION_DENIED,
                                                       grpc.StatusCode.UNAUTHENTICATED):
            return False
        with self._lock:
            try:
                token = read_key_file(self.token_file)["inference"]
            except (OSError, ValueError, KeyError):
                return False
            changed, self._token = token != self._token, token
            return changed

    # ------------------------------------------------------------------ API
    def embed(self, image_bytes: bytes, timeout: float = 10.0, request_id: str | None = None,
              crop: str | None = None) -> np.ndarray:
        """Embeds one image (raw file bytes), or the region `crop` of it (a lookalike.crop.CropBox key
        "x,y,w,h"); returns float32 [dim] with L2 norm 1."""
        request = self._request(image_bytes, request_id, crop)
        try:
            response = self.stub.Predictions(request, timeout=timeout, metadata=self._metadata(request_id))
        except grpc.RpcError as exc:
            if not self._refresh_token(exc):
                raise
            response = self.stub.Predictions(request, timeout=timeout, metadata=self._metadata(request_id))
        return parse_prediction(response.prediction, self.dim, request_id)

    def embed_many(self, images: Sequence[bytes], timeout: float = 30.0,
                   request_ids: Sequence[str | None] | None = None,
                   max_in_flight: int = 64) -> list[np.ndarray | Exception]:
        """Embeds many images with concurrent RPCs (so TorchServe batches them).

        Returns, in order, a float32 vector or the exception for that item (EmbedderImageError,
        grpc.RpcError, EmbedderProtocolError); never raises for a single item's failure.
        `timeout` bounds the whole call: every RPC gets what is left of it. At most `max_in_flight`
        RPCs are outstanding at once (TorchServe's job queue is bounded: job_queue_size).
        """
        ids = list(request_ids) if request_ids is not None else [None] * len(images)
        if len(ids) != len(images):
            raise ValueError("request_ids must have one entry per image")
        deadline = time.monotonic() + timeout
        window = threading.BoundedSemaphore(max(1, int(max_in_flight)))
        futures: list = []
        for img, rid in zip(images, ids):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not window.acquire(timeout=remaining):
                futures.append(None)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                window.release()
                futures.append(None)
                continue
            future = self.stub.Predictions.future(self._request(img, rid), timeout=remaining,
                                                  metadata=self._metadata(rid))
            future.add_done_callback(lambda _f: window.release())
            futures.append(future)
        results: list[np.ndarray | Exception] = []
        retry = []
        for i, (future, rid) in enumerate(zip(futures, ids)):
            if future is None:
                results.append(EmbedderDeadlineExceeded(
                    f"deadline of {timeout:.3g}s passed before the request was sent"))
                continue
            try:
                results.append(parse_prediction(future.result().prediction, self.dim, rid))
            except grpc.RpcError as exc:
                results.append(exc)
                retry.append(i)
            except (EmbedderImageError, EmbedderProtocolError) as exc:
                results.append(exc)
        remaining = deadline - time.monotonic()
        if retry and remaining > 0 and self._refresh_token(results[retry[0]]):
            again = self.embed_many([images[i] for i in retry], remaining, [ids[i] for i in retry], max_in_flight)
            for i, result in zip(retry, again):
                results[i] = result
        return results

    def ping(self, timeout: float = 2.0) -> bool:
        """True when TorchServe answers Ping with "Healthy" (every model has its minimum workers)."""
        try:
            try:
                response = self.stub.Ping(empty_pb2.Empty(), timeout=timeout, metadata=self._metadata())
            except grpc.RpcError as exc:
                if not self._refresh_token(exc):  # a restarted TorchServe has new keys
                    raise
                response = self.stub.Ping(empty_pb2.Empty(), timeout=timeout, metadata=self._metadata())
        except grpc.RpcError:
            return False
        try:
            return json.loads(response.health).get("status") == "Healthy"
        except (ValueError, AttributeError):
            return "Healthy" in response.health and "Unhealthy" not in response.health

    def model_ready(self, timeout: float = 5.0) -> bool:
        """True when the model's worker answers a request end to end.

        Sends an empty image, which the handler rejects without running the model, so it is cheap
        and proves the token, the model registration and a loaded worker.
        """
        try:
            response = self.stub.Predictions(
                inference_pb2.PredictionsRequest(model_name=self.model_name, model_version=self.model_version,
                                                 input={"data": b""}),
                timeout=timeout, metadata=self._metadata())
        except grpc.RpcError:
            return False
        return response.prediction.startswith(ERROR_PREFIX)

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> "EmbedderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "MODEL_NAME", "ERROR_PREFIX", "MAX_RESPONSE_BYTES", "read_key_file",
    "EmbedderImageError", "EmbedderProtocolError", "EmbedderDeadlineExceeded", "EmbedderNotReady",
    "parse_prediction", "EmbedderClient",
]
