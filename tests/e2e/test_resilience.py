"""Dependencies failing under a running gateway: Redis, the embedder (TorchServe) and the search service
stopped, stalled (SIGSTOP) or restarted; graceful shutdown; kill -9 of the gateway mid-stream.

One private stack for the module (the session stack is never broken), with a 2 s request deadline;
every test leaves every dependency running again (see support.heal).
"""
from __future__ import annotations

import os
import signal
import threading
import time
import urllib.parse

import grpc
import httpx
import psutil
import pytest

from lookalike.ports import free_port
from lookalike.stack import Stack, StackConfig
from lookalike.embedder_client import read_key_file
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2
from tests.conftest import clothing_split
from tests.e2e.support import (ExtraGateway, catalogue, grpc_health, heal, healthz, metric, torchserve_pids,
                               upsert, variant, wait_until)

FAILED = lookalike_pb2.UpsertProductsResponse.OUTCOME_FAILED  # an acknowledgement of a product not stored

pytestmark = pytest.mark.e2e

DEADLINE_S = 2.0  # LOOKALIKE_GATEWAY_REQUEST_TIMEOUT_S of this module's gateway
SLACK_S = 1.0  # a failure is reported within the deadline plus this (scheduling on a loaded machine: the
# point is that the 2 s deadline, not the 10 s default or a hang, ends the request)
CATEGORIES = ("shoes", "hat", "dress")


@pytest.fixture(scope="module")
def rstack(tmp_path_factory):
    train = clothing_split("train")
    stack = Stack(StackConfig(data_dir=tmp_path_factory.mktemp("resilience"), http_port=0, grpc_port=0,
                              extra_gateway_env={"LOOKALIKE_GATEWAY_REQUEST_TIMEOUT_S": DEADLINE_S,
                                                 "LOOKALIKE_GATEWAY_SHUTDOWN_DELAY_S": 1.0},
                              extra_search_env={"LOOKALIKE_SEARCH_METRICS_PORT": free_port()}))
    stack.start()
    try:
        with grpc.insecure_channel(stack.grpc_address) as channel:
            stub = lookalike_pb2_grpc.LookalikeStub(channel)
            for item in catalogue(train, CATEGORIES, 2):  # one per stream: each batch well inside 2 s
                acks = upsert(stub, [item])
                assert acks[0].outcome != FAILED, acks[0].error
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def healed(rstack):
    """Every test starts and ends with the whole chain healthy."""
    heal(rstack)
    yield
    heal(rstack)


@pytest.fixture
def http(rstack):
    with httpx.Client(base_url=rstack.http_url, timeout=30) as client:
        yield client


@pytest.fixture
def stub(rstack):
    with grpc.insecure_channel(rstack.grpc_address) as channel:
        yield lookalike_pb2_grpc.LookalikeStub(channel)


@pytest.fixture(scope="module")
def queries():
    test = clothing_split("test")
    return [sorted((test / c).iterdir())[i] for c in CATEGORIES for i in range(3)]


def first_id() -> str:
    photo = sorted((clothing_split("train") / CATEGORIES[0]).iterdir())[0]
    return f"{CATEGORIES[0]}/{photo.name}"


def rest_search(http: httpx.Client, image: bytes) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = http.post("/v1/search", files={"image": ("q.jpg", image, "image/jpeg")}, data={"top_k": "3"})
    return response, time.monotonic() - started


def rest_similar(http: httpx.Client) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = http.get(f"/v1/products/{urllib.parse.quote(first_id(), safe='')}/similar", params={"top_k": 3})
    return response, time.monotonic() - started


def grpc_call(fn, request) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    try:
        fn(request, timeout=30)  # the gateway's own 2 s deadline is what must cut the call short
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    return code, details, time.monotonic() - started


def cache_failures(http: httpx.Client) -> float:
    return (metric(http, "lookalike_gateway_cache_events_total", event="error")
            + metric(http, "lookalike_gateway_cache_events_total", event="skipped"))


# ---- Redis ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["stopped", "stalled"])
def test_redis_down_or_stalled_costs_no_query(rstack, http, stub, queries, how):
    cached = queries[0].read_bytes()
    assert rest_search(http, cached)[0].status_code == 200
    assert rest_search(http, cached)[0].json()["cache_hit"] is True
    failures_before = cache_failures(http)
    if how == "stopped":
        rstack.redis.stop()
    else:
        rstack.redis.signal(signal.SIGSTOP)  # accepts connections, never answers (like DEBUG SLEEP)
    try:
        statuses, latencies = [], []
        for i, photo in enumerate(queries * 2):
            image = photo.read_bytes() if i % 2 == 0 else variant(photo, 100 + i, 96)
            response, elapsed = rest_search(http, image)
            statuses.append(response.status_code)
            latencies.append(elapsed)
        code, details, elapsed = grpc_call(stub.SearchByImage, lookalike_pb2.SearchByImageRequest(
            image=variant(queries[1], 7, 96), top_k=3))
        assert code == grpc.StatusCode.OK, details
        assert statuses == [200] * len(statuses)
        assert max(latencies + [elapsed]) < DEADLINE_S, latencies
        # every query went around the cache, and that was counted
        assert cache_failures(http) - failures_before >= len(statuses)
        wait_until(lambda: http.get("/healthz").json()["cache"] is False, 10, "healthz reports cache down")
        assert http.get("/healthz").status_code == 200  # the cache is optional
    finally:
        rstack.redis.signal(signal.SIGCONT)
    if how == "stopped":
        rstack.restart_redis()
    # the cache comes back by itself once Redis answers again (after the skip window)
    fresh = variant(queries[2], 999, 96)
    rest_search(http, fresh)
    wait_until(lambda: rest_search(http, fresh)[0].json()["cache_hit"] is True, 15, "cache used again")


# ---- embedder ------------------------------------------------------------------------------------------

def test_embedder_down_is_503_naming_it_then_heals_with_the_new_token(rstack, http, stub, queries):
    cached = queries[3].read_bytes()
    assert rest_search(http, cached)[0].status_code == 200
    gateway_pid = rstack.gateway.proc.pid
    old_key = read_key_file(rstack.torchserve.key_file)["inference"]
    unavailable_before = metric(http, "lookalike_gateway_embedder_calls_total", outcome="unavailable")
    rstack.torchserve.stop()

    response, elapsed = rest_search(http, variant(queries[4], 1))
    assert response.status_code == 503, response.text
    assert "embedder" in response.json()["error"]["message"]
    assert elapsed <= DEADLINE_S + SLACK_S
    tries = metric(http, "lookalike_gateway_embedder_calls_total", outcome="unavailable") - unavailable_before
    assert 3 <= tries <= 10, f"{tries} tries: retried with backoff, not once and not in a busy loop"
    code, details, elapsed = grpc_call(stub.SearchByImage, lookalike_pb2.SearchByImageRequest(
        image=variant(queries[4], 2), top_k=3))
    assert code == grpc.StatusCode.UNAVAILABLE and "embedder" in details
    assert elapsed <= DEADLINE_S + SLACK_S
    # what needs no embedder still works
    assert rest_search(http, cached)[0].status_code == 200
    assert rest_similar(http)[0].status_code == 200
    wait_until(lambda: healthz(rstack.http_url) == 503, 10, "/healthz 503 while the embedder is down")
    assert http.get("/healthz").json()["embedder"] is False
    wait_until(lambda: grpc_health(rstack.grpc_address) == "NOT_SERVING", 10, "gRPC health NOT_SERVING")

    rstack.torchserve.restart()
    assert read_key_file(rstack.torchserve.key_file)["inference"] != old_key  # new token on restart
    wait_until(lambda: healthz(rstack.http_url) == 200, 30, "gateway healthy again by itself")
    assert grpc_health(rstack.grpc_address) == "SERVING"
    response, _ = rest_search(http, variant(queries[4], 3))
    assert response.status_code == 200, response.text
    assert rstack.gateway.proc.pid == gateway_pid  # not restarted


@pytest.mark.parametrize("target", ["worker", "java"])
def test_embedder_slower_than_the_deadline_is_504(rstack, http, stub, queries, target):
    pids = torchserve_pids(rstack, target)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        response, elapsed = rest_search(http, variant(queries[5], 11 + len(target)))
        assert response.status_code == 504, response.text
        assert "embedder" in response.json()["error"]["message"]
        assert DEADLINE_S - 0.2 <= elapsed <= DEADLINE_S + SLACK_S
        code, details, elapsed = grpc_call(stub.SearchByImage, lookalike_pb2.SearchByImageRequest(
            image=variant(queries[5], 21 + len(target)), top_k=3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
        assert elapsed <= DEADLINE_S + SLACK_S
        if target == "java":  # the frontend answers no Ping either: the embedder is down
            wait_until(lambda: healthz(rstack.http_url) == 503, 10, "/healthz 503 while TorchServe stalls")
        # A stalled *worker* is slow, not down: Ping still answers, so health stays 200 and each request
        # gets its 504 (TorchServe replaces a worker that stays silent for default_response_timeout).
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: healthz(rstack.http_url) == 200, 30, "healthy again after SIGCONT")
    assert rest_search(http, variant(queries[5], 31 + len(target)))[0].status_code == 200


# ---- search service ------------------------------------------------------------------------------------

def test_search_down_is_503_naming_it_then_heals(rstack, http, stub, queries):
    gateway_pid = rstack.gateway.proc.pid
    rstack.search.kill()
    response, elapsed = rest_similar(http)
    assert response.status_code == 503, response.text
    assert "search service" in response.json()["error"]["message"]
    assert elapsed <= DEADLINE_S + SLACK_S
    response, elapsed = rest_search(http, queries[0].read_bytes())
    assert response.status_code == 503 and "search service" in response.json()["error"]["message"]
    assert elapsed <= DEADLINE_S + SLACK_S
    code, details, elapsed = grpc_call(stub.SearchSimilar, lookalike_pb2.SearchSimilarRequest(product_id=first_id()))
    assert code == grpc.StatusCode.UNAVAILABLE and "search service" in details
    assert elapsed <= DEADLINE_S + SLACK_S
    wait_until(lambda: healthz(rstack.http_url) == 503, 10, "/healthz 503 while search is down")
    assert http.get("/healthz").json()["search"] is False
    wait_until(lambda: grpc_health(rstack.grpc_address) == "NOT_SERVING", 10, "gRPC health NOT_SERVING")

    rstack.restart_search()
    wait_until(lambda: healthz(rstack.http_url) == 200, 30, "gateway healthy again by itself")
    assert rest_similar(http)[0].status_code == 200
    assert rstack.gateway.proc.pid == gateway_pid


def test_search_stalled_is_504(rstack, http, stub):
    rstack.search.signal(signal.SIGSTOP)
    try:
        response, elapsed = rest_similar(http)
        assert response.status_code == 504, response.text
        assert "search service" in response.json()["error"]["message"]
        assert DEADLINE_S - 0.2 <= elapsed <= DEADLINE_S + SLACK_S
        code, details, elapsed = grpc_call(stub.SearchSimilar,
                                           lookalike_pb2.SearchSimilarRequest(product_id=first_id()))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
        assert elapsed <= DEADLINE_S + SLACK_S
        wait_until(lambda: healthz(rstack.http_url) == 503, 10, "/healthz 503 while search stalls")
        wait_until(lambda: grpc_health(rstack.grpc_address) == "NOT_SERVING", 10, "gRPC health NOT_SERVING")
    finally:
        rstack.search.signal(signal.SIGCONT)
    wait_until(lambda: healthz(rstack.http_url) == 200, 30, "healthy again after SIGCONT")
    assert rest_similar(http)[0].status_code == 200


def test_search_service_exports_prometheus_metrics_on_loopback(rstack, http):
    assert rest_similar(http)[0].status_code == 200
    port = int(rstack.search.env["LOOKALIKE_SEARCH_METRICS_PORT"])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("lookalike_search_")}
    assert samples['lookalike_search_requests_total{code="OK",method="SearchById"}'] >= 1
    assert 'lookalike_search_request_seconds_bucket{le="0.01",method="SearchById"}' in samples
    listening = {c.laddr for c in psutil.Process(rstack.search.proc.pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert {a.ip for a in listening} == {"127.0.0.1"}


# ---- the gateway itself --------------------------------------------------------------------------------

def test_sigterm_drains_in_flight_requests_then_exits_0(rstack, queries):
    """Two slow requests (the embedder stalled) are in flight on REST and on gRPC when SIGTERM arrives: both
    complete; meanwhile health says 503/NOT_SERVING and new requests are refused; the gateway exits 0.
    A gateway of its own, with a deadline long enough that nothing depends on the machine's speed, and
    its embedder-queue gauge as the handshake that both requests are in flight before the signal."""
    gateway = ExtraGateway(rstack, "draining", request_timeout_s=120, shutdown_delay_s=5).start()
    base, address = gateway.http_url, gateway.grpc_address
    outcome: dict = {}
    rest_client = httpx.Client(base_url=base, timeout=120)
    slow_channel, new_channel = grpc.insecure_channel(address), grpc.insecure_channel(address)
    slow_stub, new_stub = (lookalike_pb2_grpc.LookalikeStub(c) for c in (slow_channel, new_channel))
    java = torchserve_pids(rstack, "java")
    try:
        # connections up before the test starts (a client's first connect is slow on a busy machine)
        assert rest_search(rest_client, variant(queries[6], 400))[0].status_code == 200
        for stub in (slow_stub, new_stub):
            stub.SearchSimilar(lookalike_pb2.SearchSimilarRequest(product_id=first_id()), timeout=30)
        threads = [threading.Thread(target=lambda: outcome.update(rest=rest_search(
                       rest_client, variant(queries[6], 401))[0])),
                   threading.Thread(target=lambda: outcome.update(grpc=grpc_call(
                       slow_stub.SearchByImage, lookalike_pb2.SearchByImageRequest(
                           image=variant(queries[6], 402), top_k=3))))]
        for pid in java:
            os.kill(pid, signal.SIGSTOP)
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: metric(rest_client, "lookalike_gateway_embedder_queue_depth") >= 2, 60,
                       "both requests waiting on the stalled embedder")
            gateway.process.signal(signal.SIGTERM)
            wait_until(lambda: healthz(base) == 503, 4, "/healthz 503 once draining", interval=0.05)
            assert grpc_health(address) == "NOT_SERVING"
            refused = httpx.get(f"{base}/v1/products/{urllib.parse.quote(first_id(), safe='')}", timeout=5)
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
            code, details, _ = grpc_call(new_stub.SearchSimilar,
                                         lookalike_pb2.SearchSimilarRequest(product_id=first_id()))
            assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
        finally:
            for pid in java:
                os.kill(pid, signal.SIGCONT)
            for thread in threads:
                thread.join(120)
            exit_code = gateway.process.proc.wait(60)
        assert outcome["rest"].status_code == 200, outcome["rest"].text
        assert outcome["grpc"][0] == grpc.StatusCode.OK, outcome["grpc"]
        assert exit_code == 0
        with pytest.raises(httpx.HTTPError):  # the listeners are gone
            httpx.get(f"{base}/healthz", timeout=2)
    finally:
        rest_client.close()
        slow_channel.close()
        new_channel.close()
        gateway.stop()


def test_kill_9_of_the_gateway_mid_stream_loses_no_acknowledged_item(rstack):
    """The client streams two photos; the gateway is SIGKILLed after their acknowledgements. Every
    item it acknowledged is stored once the gateway is back; the client knows which ones those are."""
    photos = sorted((clothing_split("validation") / "pants").iterdir())[:8]
    products = [types_pb2.Product(id=f"stream/{i}", title=f"streamed {i}", category="stream", price=float(i))
                for i in range(len(photos))]
    acked: list[str] = []
    received = threading.Event()

    killed = threading.Event()

    def requests():  # the first two, then the rest only once the gateway was killed (never acknowledged)
        for i, (product, photo) in enumerate(zip(products, photos)):
            if i == 2:
                killed.wait(120)
            yield lookalike_pb2.UpsertProductsRequest(product=product, image=photo.read_bytes())

    with grpc.insecure_channel(rstack.grpc_address) as channel:
        stream = lookalike_pb2_grpc.LookalikeStub(channel).UpsertProducts(requests(), timeout=60)
        error: list[grpc.RpcError] = []
        failed: list[str] = []

        def consume():
            try:
                for ack in stream:
                    (acked if ack.outcome != FAILED else failed).append(ack.product_id)
                    if len(acked) >= 2:
                        received.set()
            except grpc.RpcError as exc:
                error.append(exc)
            received.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert received.wait(60), "no acknowledgement within 60 s"
        rstack.gateway.kill()
        killed.set()
        reader.join(30)
    assert error and error[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                         grpc.StatusCode.INTERNAL), error
    assert not failed
    assert 2 <= len(acked) < len(products), acked  # the client learnt exactly which items were stored
    rstack.start_gateway()
    rstack.wait_healthy(60)
    with grpc.insecure_channel(rstack.grpc_address) as channel:
        stub = lookalike_pb2_grpc.LookalikeStub(channel)
        for product_id in acked:
            got = stub.GetProduct(lookalike_pb2.GetProductRequest(product_id=product_id), timeout=10).product
            index = int(product_id.split("/")[1])
            assert got.title == products[index].title and got.price == products[index].price
            assert len(got.image_sha256) == 64
