"""lookalike.embedder_client without TorchServe: EmbedderClient against an in-process fake of TorchServe's
gRPC inference API, and its pure helpers (key file, prediction parsing)."""
from __future__ import annotations

import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from lookalike.embedder_client import (ERROR_PREFIX, EmbedderClient, EmbedderImageError, EmbedderProtocolError,
                                       parse_prediction, read_key_file)
from lookalike.torchserve_api import inference_pb2, inference_pb2_grpc
from lookalike.vectors import pack


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeTorchServe(inference_pb2_grpc.InferenceAPIsServiceServicer):
    """Token check like TorchServe 0.12 (PERMISSION_DENIED), JSON error for b'bad', vector otherwise."""

    def __init__(self, token: str):
        self.token = token
        self.requests: list[tuple[dict, dict]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.lock = threading.Lock()
        self.together = 1  # requests wait (up to 30 s) until this many have been in flight at once
        self.reached = threading.Event()
        self.hold = threading.Event()  # requests for b"hold" wait for it (released at teardown)

    def _check(self, context):
        md = dict(context.invocation_metadata())
        if md.get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "Token Authorization failed")
        return md

    def Ping(self, request, context):
        self._check(context)
        return inference_pb2.TorchServeHealthResponse(health=json.dumps({"status": "Healthy"}))

    def Predictions(self, request, context):
        md = self._check(context)
        with self.lock:
            self.requests.append((dict(request.input), md))
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            if self.max_concurrent >= self.together:
                self.reached.set()
        try:
            self.reached.wait(30)  # a handshake, not a sleep: proves requests overlap on a loaded machine
            if request.input["data"] == b"hold":
                self.hold.wait(60)
            time.sleep(0.05)
            if request.model_name != "lookalike-lite0":
                context.abort(grpc.StatusCode.NOT_FOUND, "Model not found")
            data = request.input["data"]
            if data in (b"", b"bad"):
                reason = "empty" if not data else "not_an_image"
                return inference_pb2.PredictionResponse(prediction=json.dumps(
                    {"error": {"code": "INVALID_ARGUMENT", "reason": reason, "message": f"{reason}!"}}).encode())
            if data == b"short":
                return inference_pb2.PredictionResponse(prediction=b"\x00\x00\x80")
            return inference_pb2.PredictionResponse(prediction=pack(unit(len(data))))
        finally:
            with self.lock:
                self.concurrent -= 1


@pytest.fixture()
def fake():
    servicer = FakeTorchServe("s3cret")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    servicer.hold.set()
    server.stop(0)


def test_embed_sends_token_and_request_id(fake):
    servicer, target = fake
    with EmbedderClient(target, token="s3cret") as client:
        vector = client.embed(b"abc", timeout=5, request_id="req-1")
    np.testing.assert_array_equal(vector, unit(3))
    inputs, md = servicer.requests[-1]
    assert inputs == {"data": b"abc", "request_id": b"req-1"}
    assert md["x-request-id"] == "req-1"


def test_bad_image_is_embedder_image_error(fake):
    _, target = fake
    client = EmbedderClient(target, token="s3cret")
    with pytest.raises(EmbedderImageError) as info:
        client.embed(b"bad", timeout=5)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == "not_an_image" and str(info.value) == "not_an_image!"
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(EmbedderProtocolError):
        client.embed(b"short", timeout=5)


def test_wrong_token_is_rpc_error(fake):
    _, target = fake
    client = EmbedderClient(target, token="wrong")
    with pytest.raises(grpc.RpcError) as info:
        client.embed(b"abc", timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert client.ping() is False and client.model_ready() is False
    assert EmbedderClient(target, token="s3cret").ping() is True
    assert EmbedderClient(target, token="s3cret").model_ready() is True
    assert EmbedderClient(target, token="s3cret", model_name="nope").model_ready() is False


def test_token_file_is_reread_on_permission_denied(fake, tmp_path):
    _, target = fake
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "old"}, "management": {"key": "m"}, "API": {"key": "a"}}))
    client = EmbedderClient(target, token_file=key_file)
    key_file.write_text(json.dumps({"inference": {"key": "s3cret"}, "management": {"key": "m"}}))
    assert client.embed(b"abcd", timeout=5).shape == (8,)  # retried once with the new key
    client2 = EmbedderClient(target, token_file=key_file)
    key_file.write_text(json.dumps({"inference": {"key": "old"}}))
    client2._token = "old"
    results = client2.embed_many([b"a", b"b"], timeout=5)
    assert all(isinstance(r, grpc.RpcError) for r in results)


def test_embed_many_concurrent_and_isolated(fake):
    servicer, target = fake
    servicer.together = 2
    client = EmbedderClient(target, token="s3cret")
    images = [b"a" * n for n in range(1, 11)] + [b"bad", b""]
    results = client.embed_many(images, timeout=5, request_ids=[f"r{i}" for i in range(12)])
    assert len(results) == 12
    for n, result in enumerate(results[:10], start=1):
        np.testing.assert_array_equal(result, unit(n))
    assert isinstance(results[10], EmbedderImageError) and results[10].request_id == "r10"
    assert isinstance(results[11], EmbedderImageError) and results[11].reason == "empty"
    assert servicer.max_concurrent > 1  # in flight together, so TorchServe can batch them
    assert client.embed_many([], timeout=1) == []


def test_unavailable_propagates():
    client = EmbedderClient("127.0.0.1:1", token="x")
    with pytest.raises(grpc.RpcError) as info:
        client.embed(b"abc", timeout=2)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    result = client.embed_many([b"abc"], timeout=2)[0]
    assert isinstance(result, grpc.RpcError)
    assert client.ping(timeout=1) is False


def test_parse_prediction_reads_a_vector_and_refuses_wrong_sizes_error_documents_and_empty_bytes():
    v = unit(1, 1280)
    np.testing.assert_array_equal(parse_prediction(pack(v), 1280), v)
    with pytest.raises(EmbedderProtocolError):
        parse_prediction(pack(v), 512)
    with pytest.raises(EmbedderProtocolError):
        parse_prediction(ERROR_PREFIX + b" garbage")
    with pytest.raises(EmbedderProtocolError):
        parse_prediction(b"")


def test_read_key_file_maps_each_api_to_its_key(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"management": {"key": "m", "expiration time": "2030"},
                                "inference": {"key": "i", "expiration time": "2030"}, "API": {"key": "a"}}))
    assert read_key_file(path) == {"management": "m", "inference": "i", "API": "a"}


def test_embed_many_window_and_overall_deadline(fake):
    servicer, target = fake
    client = EmbedderClient(target, token="s3cret")
    results = client.embed_many([b"x" * n for n in range(1, 9)], timeout=10, max_in_flight=2)
    assert all(isinstance(r, np.ndarray) for r in results)
    assert servicer.max_concurrent <= 2
    # one at a time: the first is answered, the second is held by the server past the call's deadline, the
    # others are never sent: all late ones fail as DEADLINE_EXCEEDED, and the call returns at its deadline
    results = client.embed_many([b"y", b"hold"] + [b"y" * n for n in range(2, 12)], timeout=3, max_in_flight=1)
    assert isinstance(results[0], np.ndarray)
    assert all(isinstance(r, grpc.RpcError) and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED for r in results[1:])
    assert [r[0]["data"] for r in servicer.requests][-2:] == [b"y", b"hold"]  # the rest were never sent


def test_ping_rereads_the_token_file_after_a_restart(fake):
    """A restarted TorchServe has new keys: the readiness Ping must pick them up, or the gateway would
    report the embedder down forever (only a real query used to re-read the key file)."""
    servicer, target = fake
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "key_file.json"
        key_file.write_text(json.dumps({"inference": {"key": "s3cret"}}))
        client = EmbedderClient(target, token_file=key_file)
        assert client.ping(timeout=5) is True
        servicer.token = "rotated"  # TorchServe restarted ...
        assert client.ping(timeout=5) is False  # ... and has not written its new key file yet
        key_file.write_text(json.dumps({"inference": {"key": "rotated"}}))
        assert client.ping(timeout=5) is True
        assert client.embed(b"abcd", timeout=5).shape == (8,)
        client.close()
