"""Security properties of the running chain: TorchServe locked down (shipped config and the live server),
API keys, rate limits, upload limits and CORS on a second gateway process with those settings (same
backends as the session stack), product ids that cannot reach files, request ids in every service's log."""
from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse

import grpc
import httpx
import numpy as np
import pytest

from lookalike import status
from lookalike.torchserve_config import default_config_template, read_properties
from lookalike.torchserve_api import inference_pb2, inference_pb2_grpc
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2
from lookalike.vectors import unpack
from tests.conftest import clothing_split
from tests.e2e.support import ExtraGateway, wait_until

pytestmark = pytest.mark.e2e

KEYS = ("key-alpha-0123456789", "key-bravo-0123456789", "key-rate-0123456789")
ALLOWED_ORIGIN = "https://shop.example"
UPLOAD_LIMIT = 128 * 1024


@pytest.fixture(scope="module")
def photo() -> bytes:
    data = sorted((clothing_split("test") / "shoes").iterdir())[1].read_bytes()
    assert len(data) < UPLOAD_LIMIT
    return data


@pytest.fixture(scope="module")
def secure(stack):
    """A gateway with API keys, a rate limit, a small upload limit and one allowed CORS origin."""
    gateway = ExtraGateway(stack, "gateway-secure", api_keys=",".join(KEYS), rate_limit_per_s=5,
                           rate_limit_burst=5, cors_origins=ALLOWED_ORIGIN, max_upload_bytes=UPLOAD_LIMIT).start()
    yield gateway
    gateway.stop()


# ---- TorchServe ----------------------------------------------------------------------------------------

def java_regex(value: str) -> re.Pattern:
    """A properties-file regex value as Python sees it (properties escapes undone; the syntax used is common)."""
    return re.compile(value.replace("\\\\", "\\"))


def test_shipped_torchserve_config_is_locked_down():
    config = read_properties(default_config_template())
    for key in ("management_address", "metrics_address"):
        assert urllib.parse.urlsplit(config[key]).hostname == "127.0.0.1", (key, config[key])
    assert config["grpc_management_address"] == "127.0.0.1"
    assert "disable_token_authorization" not in config  # token authorisation stays on (the default)
    assert config["enable_model_api"] == "false"
    assert config.get("enable_envvars_config") == "false"
    allowed = java_regex(config["allowed_urls"])
    store = config["model_store"].rstrip("/")
    assert allowed.fullmatch(f"file://{store}/lookalike-lite0.mar")
    for outside in ("file:///tmp/evil.mar", f"file://{store}/../../tmp/evil.mar", f"file://{store}-x/a.mar",
                    f"file://{store}/sub/a.mar", "https://example.com/evil.mar", f"file://{store}/a.mar.sh"):
        assert not allowed.fullmatch(outside), outside


def test_running_torchserve_refuses_inference_without_the_token(stack, photo):
    ts = stack.torchserve
    request = inference_pb2.PredictionsRequest(model_name=ts.model_name, input={"data": photo})
    with grpc.insecure_channel(ts.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer not-the-key"),),
                         (("authorization", f"Bearer {ts.management_key}"),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Predictions(request, timeout=30, metadata=metadata)
            assert err.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), metadata
        ok = stub.Predictions(request, timeout=60, metadata=(("authorization", f"Bearer {ts.inference_key}"),))
        assert np.isclose(np.linalg.norm(unpack(ok.prediction)), 1.0, atol=1e-3)
    url = f"{ts.http_url}/predictions/{ts.model_name}"
    refusals = [httpx.post(url, content=photo, timeout=30, headers=headers)
                for headers in ({}, {"Authorization": "Bearer not-the-key"},
                                {"Authorization": f"Bearer {ts.management_key}"})]
    refusals.append(httpx.get(f"{ts.management_url}/models", timeout=10))
    for refused in refusals:  # TorchServe 0.12 answers 400 InvalidKeyException (not 401)
        assert refused.status_code in (400, 401), (refused.status_code, refused.text)
        assert "Token Authorization failed" in refused.text
    accepted = httpx.post(url, content=photo, timeout=60, headers={"Authorization": f"Bearer {ts.inference_key}"})
    assert accepted.status_code == 200


def test_running_torchserve_registers_no_model_over_the_api(stack):
    ts = stack.torchserve
    headers = {"Authorization": f"Bearer {ts.management_key}"}
    response = httpx.post(f"{ts.management_url}/models", params={"url": "file:///tmp/evil.mar"}, headers=headers,
                          timeout=10)
    assert 400 <= response.status_code < 500, response.text
    models = httpx.get(f"{ts.management_url}/models", headers=headers, timeout=10).json()["models"]
    assert [m["modelName"] for m in models] == [ts.model_name]


# ---- gateway: API keys, rate limits, size limits, CORS ---------------------------------------------------

def test_api_key_required_on_rest(secure, photo):
    with httpx.Client(base_url=secure.http_url, timeout=30) as http:
        files = {"image": ("p.jpg", photo, "image/jpeg")}
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEYS[0][:-1]}):
            response = http.post("/v1/search", files=files, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"]["code"] == "UNAUTHENTICATED"
        assert http.get("/v1/products/anything").status_code == 401
        assert http.post("/v1/search", files=files, headers={"X-API-Key": KEYS[0]}).status_code == 200
        assert http.post("/v1/search", files=files, headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
        assert http.get("/healthz").status_code == 200  # probes need no key
        # the metrics describe the traffic: a key, as Prometheus sends one (bearer or ?api_key=)
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scraped = http.get("/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"})
        assert scraped.status_code == 200 and "lookalike_gateway_requests_total" in scraped.text
        assert http.get("/metrics", params={"api_key": KEYS[0]}).status_code == 200


def test_api_key_required_on_grpc(secure, photo):
    with grpc.insecure_channel(secure.grpc_address) as channel:
        stub = lookalike_pb2_grpc.LookalikeStub(channel)
        request = lookalike_pb2.SearchByImageRequest(image=photo, top_k=3)
        for metadata in ((), (("x-api-key", "wrong"),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.SearchByImage(request, timeout=30, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.UpsertProducts(iter([lookalike_pb2.UpsertProductsRequest(
                product=types_pb2.Product(id="nope"), image=photo)]), timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.SearchByImage(request, timeout=30, metadata=(("x-api-key", KEYS[1]),))
        stub.SearchByImage(request, timeout=30, metadata=(("authorization", f"Bearer {KEYS[1]}"),))


def test_rate_limit_answers_429_with_retry_after(secure):
    with httpx.Client(base_url=secure.http_url, timeout=30, headers={"X-API-Key": KEYS[2]}) as http:
        statuses, limited = [], None
        while limited is None and len(statuses) < 500:  # until limited: however slow the machine, 5/s runs out
            response = http.get("/v1/products/no-such-product")
            statuses.append(response.status_code)
            if response.status_code == 429:
                limited = response
        assert statuses.count(404) >= 5 and limited is not None, statuses  # the burst, then 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        (retry,) = limited.json()["error"]["details"]  # google.rpc.RetryInfo, as on gRPC
        assert retry["type"] == "RetryInfo" and 0 < retry["retry_delay_s"] <= int(limited.headers["Retry-After"])
        with httpx.Client(base_url=secure.http_url, timeout=30, headers={"X-API-Key": KEYS[0]}) as other:
            assert other.get("/v1/products/no-such-product").status_code == 404  # per key
    with grpc.insecure_channel(secure.grpc_address) as channel:
        stub = lookalike_pb2_grpc.LookalikeStub(channel)
        codes, trailers, details = [], None, None
        while trailers is None and len(codes) < 500:
            try:
                stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="no-such-product"), timeout=10,
                                metadata=(("x-api-key", KEYS[2]),))
            except grpc.RpcError as exc:
                codes.append(exc.code())
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    trailers = dict(exc.trailing_metadata() or ())
                    details = status.rpc_error_details(exc)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert int(trailers["retry-after"]) >= 1 and trailers["x-request-id"]
        assert [d["type"] for d in details] == ["RetryInfo"] and details[0]["retry_delay_s"] > 0
    time.sleep(1.5)  # the bucket refills: the key works again
    with httpx.Client(base_url=secure.http_url, timeout=30, headers={"X-API-Key": KEYS[2]}) as http:
        assert http.get("/v1/products/no-such-product").status_code == 404


def test_upload_size_limit(secure, photo):
    big = photo + bytes(3 * UPLOAD_LIMIT)  # a JPEG with trailing junk, far above the limit
    headers = {"X-API-Key": KEYS[1]}
    response = httpx.post(f"{secure.http_url}/v1/search", files={"image": ("b.jpg", big, "image/jpeg")},
                          headers=headers, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    slightly = photo + bytes(UPLOAD_LIMIT - len(photo) + 10)  # just above: passes the framing allowance
    response = httpx.post(f"{secure.http_url}/v1/search", files={"image": ("b.jpg", slightly, "image/jpeg")},
                          headers=headers, timeout=30)
    assert response.status_code == 413, response.text
    with grpc.insecure_channel(secure.grpc_address) as channel:
        stub = lookalike_pb2_grpc.LookalikeStub(channel)
        for image in (slightly, big):
            with pytest.raises(grpc.RpcError) as err:
                stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=image), timeout=30,
                                   metadata=(("x-api-key", KEYS[1]),))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cors_only_for_configured_origins(secure, stack):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    allowed = httpx.options(f"{secure.http_url}/v1/search", headers={"Origin": ALLOWED_ORIGIN, **preflight},
                            timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    for base in (secure.http_url, stack.http_url):  # the default gateway allows no origin at all
        for origin in ("https://evil.example", "null", ALLOWED_ORIGIN + ".evil.example"):
            if base == stack.http_url and origin == "null":
                continue
            refused = httpx.options(f"{base}/v1/search", headers={"Origin": origin, **preflight}, timeout=10)
            assert "access-control-allow-origin" not in refused.headers, (base, origin, refused.headers)
            simple = httpx.get(f"{base}/healthz", headers={"Origin": origin}, timeout=10)
            assert "access-control-allow-origin" not in simple.headers, (base, origin)
    simple = httpx.get(f"{stack.http_url}/healthz", headers={"Origin": ALLOWED_ORIGIN}, timeout=10)
    assert "access-control-allow-origin" not in simple.headers


# ---- product ids and the image store -------------------------------------------------------------------

def raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (clients normalise ../ away)."""
    host, port = urllib.parse.urlsplit(base_url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize("path", [
    "/v1/products/..%2F..%2Fetc%2Fpasswd/image",
    "/v1/products/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd/image",
    "/v1/products/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
    "/v1/products/../../../../etc/passwd/image",
    "/v1/products/%2Fetc%2Fpasswd/image",
    "/v1/products/..%5C..%5Cetc%5Cpasswd/image",
])
def test_product_ids_never_reach_files(stack, path):
    status, body = raw_get(stack.http_url, path)
    assert status in (400, 404), (path, status, body[:200])
    assert b"root:" not in body
    assert json.loads(body)["error"]["code"] in ("NOT_FOUND", "INVALID_ARGUMENT")


def test_a_traversal_shaped_id_is_just_a_name(stack, photo):
    """Ids are opaque: a product *called* ../../etc/passwd serves its own stored photo, nothing else."""
    product_id = "../../../../etc/passwd"
    quoted = urllib.parse.quote(product_id, safe="")
    with httpx.Client(base_url=stack.http_url, timeout=60) as http:
        response = http.put(f"/v1/products/{quoted}", files={"image": ("p.jpg", photo, "image/jpeg")},
                            data={"title": "sneaky"})
        assert response.status_code == 200, response.text
        try:
            image = http.get(f"/v1/products/{quoted}/image")
            assert image.status_code == 200 and image.content == photo
            assert image.headers["content-type"] == "image/jpeg"
        finally:
            assert http.delete(f"/v1/products/{quoted}").status_code == 200
        assert http.get("/v1/products/a%00b").status_code == 400  # control characters are refused


# ---- observability -------------------------------------------------------------------------------------

def test_request_id_reaches_the_gateway_and_search_logs(stack, photo):
    response = httpx.post(f"{stack.http_url}/v1/search", files={"image": ("p.jpg", photo, "image/jpeg")},
                          headers={"X-Request-ID": "test-abc"}, timeout=60)
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "test-abc"

    def logged(name: str) -> list[str]:
        lines = []
        for line in (stack.logs / name).read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("request_id") == "test-abc":
                    lines.append(entry["msg"])
        return lines

    wait_until(lambda: logged("gateway.log") and logged("search.log"), 10, "request id in both logs")
    assert any(msg.startswith("POST /v1/search 200") for msg in logged("gateway.log")), logged("gateway.log")
    assert any(msg.startswith("SearchByVector OK") for msg in logged("search.log")), logged("search.log")
