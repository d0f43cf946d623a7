"""The search service as a real process: real gRPC over a socket, health, reflection, errors, SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lookalike.search.v1 import search_pb2, search_pb2_grpc
from lookalike.v1 import types_pb2
from lookalike.vectors import pack, unpack

from .search_fixtures import SearchProcess, channel

DIM = 8
SERVICE = "lookalike.search.v1.SearchService"


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def product(pid: str, category: str = "shoes", price: float | None = None, **attributes) -> types_pb2.Product:
    p = types_pb2.Product(id=pid, title=f"title {pid}", category=category, attributes=attributes,
                          image_sha256="ab" * 32)
    if price is not None:
        p.price = price
    return p


@pytest.fixture(scope="module", params=["qdrant-edge", "qdrant-local"])
def service(request, tmp_path_factory):
    with SearchProcess(tmp_path_factory.mktemp(request.param), engine=request.param, vector_size=DIM) as proc:
        ch = channel(proc.address)
        yield proc, ch
        ch.close()


@pytest.fixture(scope="module")
def stub(service):
    return search_pb2_grpc.SearchServiceStub(service[1])


@pytest.fixture(scope="module")
def catalogue(stub):
    rng = np.random.default_rng(11)
    vectors = {f"sku/{i}": unit(rng.standard_normal(DIM)) for i in range(30)}
    points = [search_pb2.Point(product=product(pid, ["shoes", "bags"][i % 2], float(i * 10) if i % 5 else None,
                                               colour="red"),
                               vector=pack(v)) for i, (pid, v) in enumerate(vectors.items())]
    response = stub.UpsertPoints(search_pb2.UpsertPointsRequest(points=points), timeout=30)
    assert response.upserted == len(points)
    return vectors


def expect_error(call, code: grpc.StatusCode, pattern: str):
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert re.search(pattern, err.value.details()), err.value.details()


def test_health_and_ready_line(service):
    proc, ch = service
    health = health_pb2_grpc.HealthStub(ch)
    for name in ("", SERVICE):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    port = proc.address.rsplit(":", 1)[1]
    assert re.search(rf"search service ready on 127\.0\.0\.1:{port}\b", proc.log())


def test_reflection_lists_the_service(service):
    stub = reflection_pb2_grpc.ServerReflectionStub(service[1])
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_search_by_vector(stub, catalogue):
    ids = list(catalogue)
    vectors = np.stack(list(catalogue.values()))
    query = vectors[4] + 0.1 * vectors[9]
    response = stub.SearchByVector(search_pb2.SearchByVectorRequest(vector=pack(query), top_k=5), timeout=10)
    expected = [ids[i] for i in np.argsort(-(vectors @ unit(query)))[:5]]
    assert [r.product.id for r in response.results] == expected
    best = response.results[0]
    assert best.score == pytest.approx(float(vectors[4] @ unit(query)), abs=1e-5)
    assert best.product.title == f"title {ids[4]}" and best.product.category == "shoes"
    assert best.product.price == 40.0 and dict(best.product.attributes) == {"colour": "red"}
    assert best.product.image_sha256 == "ab" * 32


def test_search_with_filters(stub, catalogue):
    query = pack(next(iter(catalogue.values())))
    flt = types_pb2.Filter(category="bags", min_price=50, max_price=200)
    response = stub.SearchByVector(search_pb2.SearchByVectorRequest(vector=query, top_k=50, filter=flt), timeout=10)
    got = {r.product.id for r in response.results}
    expected = {f"sku/{i}" for i in range(30) if i % 2 == 1 and i % 5 and 50 <= i * 10 <= 200}
    assert got == expected
    response = stub.SearchByVector(search_pb2.SearchByVectorRequest(
        vector=query, top_k=50, filter=types_pb2.Filter(max_price=30)), timeout=10)
    assert {r.product.id for r in response.results} == {"sku/1", "sku/2", "sku/3"}  # sku/0 has no price


def test_search_by_id_excludes_itself(stub, catalogue):
    response = stub.SearchById(search_pb2.SearchByIdRequest(product_id="sku/3", top_k=4), timeout=10)
    ids = [r.product.id for r in response.results]
    assert len(ids) == 4 and "sku/3" not in ids
    response = stub.SearchById(search_pb2.SearchByIdRequest(
        product_id="sku/3", top_k=29, filter=types_pb2.Filter(category="shoes")), timeout=10)
    assert {r.product.id for r in response.results} == {f"sku/{i}" for i in range(0, 30, 2)}


def test_get_points(stub, catalogue):
    response = stub.GetPoints(search_pb2.GetPointsRequest(product_ids=["sku/7", "nope", "sku/2"],
                                                          with_vectors=True), timeout=10)
    assert [p.product.id for p in response.points] == ["sku/7", "sku/2"]
    np.testing.assert_allclose(unpack(response.points[0].vector, DIM), catalogue["sku/7"], atol=1e-6)
    assert response.points[1].product.price == 20.0 and response.points[1].product.category == "shoes"
    response = stub.GetPoints(search_pb2.GetPointsRequest(product_ids=["sku/5"]), timeout=10)
    assert response.points[0].vector == b"" and not response.points[0].product.HasField("price")


def test_count_upsert_delete(stub, catalogue):
    count = lambda flt=None: stub.CountPoints(search_pb2.CountPointsRequest(filter=flt), timeout=10).count  # noqa: E731
    total = count()
    assert total >= len(catalogue)
    assert count(types_pb2.Filter(category="shoes")) >= 15
    extra = search_pb2.Point(product=product("tmp-1", "hats", 1.0), vector=pack(np.ones(DIM)))
    assert stub.UpsertPoints(search_pb2.UpsertPointsRequest(points=[extra, extra]), timeout=10).upserted == 1
    assert count() == total + 1 and count(types_pb2.Filter(category="hats")) == 1
    deleted = stub.DeletePoints(search_pb2.DeletePointsRequest(product_ids=["tmp-1", "tmp-1", "never"]), timeout=10)
    assert deleted.deleted == 1
    assert count() == total


def test_invalid_arguments(stub, catalogue):
    good = pack(np.ones(DIM))
    S, B, C = search_pb2, stub, grpc.StatusCode.INVALID_ARGUMENT
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(vector=pack(np.ones(DIM + 1)), top_k=3)),
                 C, r"9 dimensions, expected 8")
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(vector=b"abc", top_k=3)), C, "multiple of 4")
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(vector=b"", top_k=3)), C, "vector is empty")
    nan = np.ones(DIM, dtype=np.float32)
    nan[2] = np.nan
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(vector=pack(nan), top_k=3)), C, "non-finite")
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(vector=pack(np.zeros(DIM)), top_k=3)), C, "zeros")
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(vector=good, top_k=0)), C, "top_k must be between 1")
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(vector=good, top_k=1001)), C, "1000")
    expect_error(lambda: B.SearchById(S.SearchByIdRequest(product_id="sku/1", top_k=-1)), C, "top_k")
    expect_error(lambda: B.SearchById(S.SearchByIdRequest(product_id="", top_k=3)), C, "product_id is empty")
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(
        vector=good, top_k=3, filter=types_pb2.Filter(min_price=9, max_price=1))), C, "min_price")
    expect_error(lambda: B.SearchByVector(S.SearchByVectorRequest(
        vector=good, top_k=3, filter=types_pb2.Filter(min_price=float("nan")))), C, "finite")
    expect_error(lambda: B.GetPoints(S.GetPointsRequest()), C, "product_ids is empty")
    expect_error(lambda: B.DeletePoints(S.DeletePointsRequest()), C, "product_ids is empty")
    expect_error(lambda: B.DeletePoints(S.DeletePointsRequest(product_ids=["a", ""])), C, r"product_ids\[1\]")
    expect_error(lambda: B.UpsertPoints(S.UpsertPointsRequest()), C, "points is empty")
    expect_error(lambda: B.UpsertPoints(S.UpsertPointsRequest(points=[
        S.Point(product=product("ok"), vector=good), S.Point(product=product("bad"), vector=pack(np.ones(3)))])),
        C, r"points\[1\]\.vector")
    expect_error(lambda: B.UpsertPoints(S.UpsertPointsRequest(points=[S.Point(product=product(""), vector=good)])),
                 C, r"points\[0\]\.product\.id is empty")
    assert not stub.GetPoints(S.GetPointsRequest(product_ids=["ok"])).points  # a refused batch writes nothing


def test_not_found(stub, catalogue):
    expect_error(lambda: stub.SearchById(search_pb2.SearchByIdRequest(product_id="no-such-sku", top_k=3)),
                 grpc.StatusCode.NOT_FOUND, "no-such-sku")


def test_sigterm_exits_cleanly_and_data_persists(tmp_path):
    proc = SearchProcess(tmp_path, engine="qdrant-edge", vector_size=DIM)
    with proc:
        ch = channel(proc.address)
        stub = search_pb2_grpc.SearchServiceStub(ch)
        stub.UpsertPoints(search_pb2.UpsertPointsRequest(points=[
            search_pb2.Point(product=product("keep-me"), vector=pack(np.arange(1, DIM + 1)))]), timeout=10)
        health = health_pb2_grpc.HealthStub(ch)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        proc.proc.send_signal(signal.SIGTERM)
        # the drain reports NOT_SERVING before the server goes away
        statuses = []
        try:
            for update in watch:
                statuses.append(update.status)
        except grpc.RpcError:
            pass
        assert proc.proc.wait(timeout=20) == 0, proc.log()
        assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING]
        ch.close()
    assert "search service stopped" in proc.log()
    with SearchProcess(tmp_path, engine="qdrant-edge", vector_size=DIM) as again:  # reopens the same shard
        stub = search_pb2_grpc.SearchServiceStub(channel(again.address))
        got = stub.GetPoints(search_pb2.GetPointsRequest(product_ids=["keep-me"]), timeout=10)
        assert [p.product.id for p in got.points] == ["keep-me"]
    # a different vector size on the same data: refused with a clear message, non-zero exit
    wrong = SearchProcess(tmp_path, engine="qdrant-edge", vector_size=DIM * 2).start()
    assert wrong.proc.wait(timeout=60) != 0
    wrong.terminate()
    assert "vector size 8" in wrong.log() and "LOOKALIKE_SEARCH_VECTOR_SIZE" in wrong.log()


@pytest.mark.parametrize("env, name", [
    ({"LOOKALIKE_SEARCH_PORT": "notaport"}, "LOOKALIKE_SEARCH_PORT"),
    ({"LOOKALIKE_SEARCH_ENGINE": "qdrant-server"}, "LOOKALIKE_SEARCH_ENGINE"),
    ({"LOOKALIKE_SEARCH_QUANTIZATION": "int4"}, "LOOKALIKE_SEARCH_QUANTIZATION"),
    ({"LOOKALIKE_SEARCH_VECTOR_SIZE": "0"}, "LOOKALIKE_SEARCH_VECTOR_SIZE"),
])
def test_invalid_config_exits_nonzero_naming_the_setting(tmp_path, env, name):
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_SEARCH_")}
    result = subprocess.run([sys.executable, "-m", "lookalike_search"], capture_output=True, text=True, timeout=60,
                            env={**base, "LOOKALIKE_SEARCH_DATA_DIR": str(tmp_path), **env})
    assert result.returncode != 0
    assert name in result.stderr, result.stderr
    assert not (tmp_path / "qdrant-local").exists()  # nothing was opened


def test_port_file_is_written_only_when_ready(tmp_path):
    proc = SearchProcess(tmp_path, engine="qdrant-local", vector_size=DIM).start()
    try:
        started = time.monotonic()
        address = proc.wait_ready()
        assert time.monotonic() - started < 60
        assert proc.port_file.read_text().endswith("\n")
        health = health_pb2_grpc.HealthStub(channel(address))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert not list(tmp_path.glob(".search.port.*"))  # no temp file left behind
    finally:
        assert proc.terminate() == 0


def test_search_by_vectors_answers_each_vector_like_search_by_vector(stub, catalogue):
    rng = np.random.default_rng(11)
    queries = [pack(unit(rng.standard_normal(DIM))) for _ in range(5)]
    flt = types_pb2.Filter(category="shoes")
    batch = stub.SearchByVectors(search_pb2.SearchByVectorsRequest(vectors=queries, top_k=3, filter=flt), timeout=10)
    assert len(batch.searches) == len(queries)
    for query, search in zip(queries, batch.searches):
        one = stub.SearchByVector(search_pb2.SearchByVectorRequest(vector=query, top_k=3, filter=flt), timeout=10)
        assert [r.product.id for r in search.results] == [r.product.id for r in one.results]
        assert [r.score for r in search.results] == pytest.approx([r.score for r in one.results])
    C = grpc.StatusCode.INVALID_ARGUMENT
    expect_error(lambda: stub.SearchByVectors(search_pb2.SearchByVectorsRequest(top_k=3)), C, "no vectors")
    expect_error(lambda: stub.SearchByVectors(search_pb2.SearchByVectorsRequest(
        vectors=[queries[0], b"abc"], top_k=3)), C, r"vectors\[1\]")
    expect_error(lambda: stub.SearchByVectors(search_pb2.SearchByVectorsRequest(
        vectors=[queries[0]] * 1025, top_k=3)), C, "at most 1024")
