"""The classifier service (`lookalike_gateway.classifier`) over a real search servicer (qdrant-local,
in-process), its errors, and its gRPC servicer and REST routes (`classifier_api`) -- synthetic embeddings, no model."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from lookalike import status
from lookalike.search.v1 import search_pb2
from lookalike.v1 import classifier_pb2, types_pb2
from lookalike.vectors import pack
from lookalike_gateway.auth import ApiKeyCheck
from lookalike_gateway.classifier import ClassifierService
from lookalike_gateway.classifier_api import report_proto
from lookalike_gateway.errors import ApiError, Deadline
from lookalike_gateway.settings import GatewaySettings
from lookalike_search.servicer import SearchServicer
from lookalike_search.store_qdrant import QdrantClientStore

from .classifier_data import DIM, LABELS, clusters, unit


# ---- the service over a real search servicer ----------------------------------------------------------

class FakeContext:
    def abort(self, code, details):
        raise ApiError(code, details)

    def time_remaining(self):
        return None


class Fakes:
    """The collaborators ClassifierService is built with: settings, collections.active, search.call (into a real
    SearchServicer) and a query_embedding that counts embeds and caches."""

    def __init__(self, store, data_dir):
        self.settings = GatewaySettings(data_dir=data_dir)
        self.target = SimpleNamespace(collection="", model_id="test-model", raw=lambda v: v)
        self.collections = SimpleNamespace(active=lambda: self.target)
        self.servicer = SearchServicer(store, DIM)
        self.search = SimpleNamespace(call=self._call_the_servicer)
        self.known: dict[bytes, np.ndarray] = {}
        self.cached: set[bytes] = set()
        self.embed_calls = 0

    def _call_the_servicer(self, method, request, deadline):
        return getattr(self.servicer, method)(request, FakeContext())

    def check_image(self, image):
        if image not in self.known:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "invalid image")

    def query_embedding(self, image, deadline, target=None, crop=None):
        assert target is self.target
        if image in self.cached:
            return self.known[image], True
        self.check_image(image)
        self.embed_calls += 1
        self.cached.add(image)
        return self.known[image], False


def open_store(path):
    opened = QdrantClientStore("products", DIM, path=path)
    opened.ensure_collection()
    return opened


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A store with 5 labelled clusters of 30, colours on two of them, a few unlabelled points, one whose
    category was itself predicted, one rare label. Loaded once: tests must not write to it."""
    store = open_store(tmp_path_factory.mktemp("qdrant"))
    x, y, centers = clusters()
    points = []
    for i, (vector, label) in enumerate(zip(x, y)):
        attributes = {"colour": "red" if i % 2 else "blue"} if label in ("bags", "hats") else {}
        points.append((f"p{i}", vector, {"title": f"t{i}", "category": label, "attributes": attributes}))
    points.append(("nolabel", x[0], {"title": "x", "category": ""}))
    points.append(("guessed", x[1], {"title": "g", "category": "bags",
                                     "attributes": {"category_predicted": "true"}}))
    points.append(("rare", x[2], {"title": "r", "category": "rare-thing"}))
    store.upsert(points)
    yield store, (x, y, centers)
    store.close()


@pytest.fixture
def catalogue(loaded):
    return loaded[1]


def make_service(fakes: Fakes, root=None) -> ClassifierService:
    return ClassifierService(fakes.settings, fakes.search, fakes.collections, fakes.query_embedding,
                             root or fakes.settings.data_dir / "classifiers", train_threads=1)


@pytest.fixture
def fakes(loaded, tmp_path):
    return Fakes(loaded[0], tmp_path / "gateway")


@pytest.fixture
def service(fakes):
    svc = make_service(fakes)
    yield svc
    svc.close()


def code_of(call):
    with pytest.raises(ApiError) as err:
        call()
    return err.value.code, err.value.message


def test_classify_before_training_is_not_found_and_embeds_nothing(service, fakes):
    fakes.known[b"img"] = np.ones(DIM, dtype=np.float32)
    code, message = code_of(lambda: service.classify(b"img", None, Deadline(5)))
    assert code == grpc.StatusCode.NOT_FOUND and "train" in message
    assert fakes.embed_calls == 0
    assert code_of(service.current_report)[0] == grpc.StatusCode.NOT_FOUND


def test_train_then_classify(service, fakes, catalogue):
    x, y, centers = catalogue
    report = service.train()  # label field "category", defaults
    assert report["labels"] == LABELS and report["skipped_labels"] == {"rare-thing": 1}
    assert report["unlabeled"] == 2  # no category, and a predicted one
    assert report["train_size"] + report["test_size"] == len(y) and report["accuracy"] >= 0.9
    assert report["model_id"] == "test-model" and report["label_field"] == "category" and report["c"] > 0
    assert service.current_report()["version"] == report["version"]
    proto = report_proto(report)
    assert list(proto.labels) == LABELS and len(proto.confusion) == len(LABELS) ** 2

    fakes.known[b"shoe"] = unit(centers[3]).astype(np.float32)
    predictions, cache_hit, version = service.classify(b"shoe", None, Deadline(5))
    assert predictions[0][0] == "shoes" and predictions[0][1] > 0.5 and version == report["version"]
    assert len(predictions) == 5 and sum(p for _, p in predictions) == pytest.approx(1.0)
    assert [p for _, p in predictions] == sorted((p for _, p in predictions), reverse=True)
    assert cache_hit is False and fakes.embed_calls == 1
    again, cache_hit, _ = service.classify(b"shoe", 2, Deadline(5))
    assert cache_hit is True and fakes.embed_calls == 1 and again == predictions[:2]
    assert code_of(lambda: service.classify(b"shoe", 0, Deadline(5)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: service.classify(b"", None, Deadline(5)))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_training_reads_a_sample_of_a_large_catalogue(service, catalogue, monkeypatch):
    import lookalike_gateway.classifier as module

    monkeypatch.setattr(module, "SCROLL_PAGE", 50)
    monkeypatch.setattr(module, "MAX_TRAIN_POINTS", 100)
    report = service.train(c_values=[1.0])
    assert report["sampled"] is True and report["train_size"] + report["test_size"] <= 150
    assert len(report["labels"]) == 5  # point-id order is a uniform sample: every label is in it


def test_train_on_an_attribute(service, catalogue):
    report = service.train("attributes.colour", holdout_fraction=0.0, c_values=[1.0])
    assert report["labels"] == ["blue", "red"] and report["label_field"] == "attributes.colour"
    assert report["train_size"] == 60 and report["test_size"] == 0


@pytest.mark.parametrize("field, expected, words", [
    ("nope", grpc.StatusCode.INVALID_ARGUMENT, ["unknown label field", "nope"]),
    ("attributes.", grpc.StatusCode.INVALID_ARGUMENT, ["unknown label field"]),
    ("attributes.size", grpc.StatusCode.FAILED_PRECONDITION, ["no stored product has attribute 'size'"]),
])
def test_bad_label_fields_are_refused(service, catalogue, field, expected, words):
    code, message = code_of(lambda: service.train(field))
    assert code == expected
    assert all(w in message for w in words), message


def test_fewer_than_two_labels_is_failed_precondition(tmp_path):
    store = open_store(tmp_path / "qdrant")
    service = make_service(Fakes(store, tmp_path / "gateway"))
    x, _, _ = clusters(n_per_label=10, labels=["only"])
    store.upsert([(f"o{i}", v, {"category": "only"}) for i, v in enumerate(x)] +
                 [("other", x[0], {"category": "other"})])
    code, message = code_of(service.train)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "1 label(s) with at least 5 examples (only; 2 labels in all)" in message
    assert code_of(lambda: service.train(holdout_fraction=0.7))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: service.train(c_values=[-1.0]))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_one_training_at_a_time(service, catalogue, monkeypatch):
    release = threading.Event()
    started = threading.Event()
    real = service._train

    def slow(*args):
        started.set()
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(service, "_train", slow)
    results = []
    first = threading.Thread(target=lambda: results.append(service.train()))
    first.start()
    assert started.wait(60)
    assert code_of(service.train)[0] == grpc.StatusCode.ABORTED
    release.set()
    first.join(120)
    assert results and results[0]["labels"] == LABELS
    assert service.train(c_values=[1.0])["version"] != results[0]["version"]  # free again
    assert len(service.repo.versions()) == 2


def test_deadline_while_training_goes_on(service, catalogue, monkeypatch):
    real = service._train
    release = threading.Event()
    monkeypatch.setattr(service, "_train", lambda *a: (release.wait(60), real(*a))[1])
    code, message = code_of(lambda: service.train(wait_s=0.05))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "goes on as job" in message
    job = service.jobs.running()
    assert job is not None and job.id in message
    release.set()
    assert service.jobs.wait(job.id, 60).state.value == "succeeded"  # the training finishes on its own
    assert service.current_report()["labels"] == LABELS


def test_new_service_loads_the_current_version_and_follows_the_pointer(service, fakes, catalogue):
    report = service.train(c_values=[1.0])
    other = make_service(fakes, service.repo.root)
    try:
        assert other.current_report()["version"] == report["version"]
        newer = service.train(c_values=[0.1])
        other._next_check = 0  # skip the once-a-second throttle
        assert other.current_report()["version"] == newer["version"]
    finally:
        other.close()


def test_annotate_predicts_missing_categories(service, catalogue):
    _, _, centers = catalogue
    product = types_pb2.Product(id="new", title="new")
    service.annotate(product, unit(centers[0]))
    assert product.category == "" and not product.attributes  # no classifier yet
    service.train(c_values=[1.0])
    service.annotate(product, unit(centers[0]).astype(np.float32))
    assert product.category == "bags" and product.attributes["category_predicted"] == "true"
    assert 0.2 < float(product.attributes["category_probability"]) <= 1.0
    given = types_pb2.Product(id="given", category="hats")
    service.annotate(given, unit(centers[0]))
    assert given.category == "hats" and not given.attributes


def test_model_mismatch_is_failed_precondition(service, fakes, catalogue):
    service.train(c_values=[1.0])
    fakes.target = SimpleNamespace(collection="", model_id="another-model")
    fakes.known[b"img"] = np.ones(DIM, dtype=np.float32)
    code, message = code_of(lambda: service.classify(b"img", None, Deadline(5)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "another-model" in message
    product = types_pb2.Product(id="new")
    service.annotate(product, np.ones(DIM, dtype=np.float32))
    assert product.category == ""  # no prediction from a head of another model


def test_scroll_through_the_servicer_pages(service, fakes, catalogue):
    request = search_pb2.ScrollPointsRequest(limit=40, with_vectors=True)
    seen, pages = [], 0
    while True:
        page = fakes.search.call("ScrollPoints", request, Deadline(5))
        seen += [p.product.id for p in page.points]
        pages += 1
        assert all(len(p.vector) == DIM * 4 for p in page.points)
        if not page.next_offset:
            break
        request.offset = page.next_offset
    assert pages == 4 and len(seen) == len(set(seen)) == 153


# ---- gRPC servicer and REST ---------------------------------------------------------------------------

def test_grpc_service_over_a_real_server(service, fakes, catalogue):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from lookalike.grpc_server import ServiceHost
    from lookalike.v1 import classifier_pb2_grpc
    from lookalike_gateway.classifier_api import add_to_host

    host = ServiceHost("127.0.0.1:0", max_workers=4, grace=1)
    draining = threading.Event()
    add_to_host(host, service, ApiKeyCheck(frozenset()), draining)
    port = host.start()
    host.set_serving(True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = classifier_pb2_grpc.ClassificationStub(channel)
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="lookalike.v1.Classification"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                stub.Classify(classifier_pb2.ClassifyRequest(image=b"x"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                stub.TrainClassifier(classifier_pb2.TrainClassifierRequest(label_field="nope"), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in err.value.details()
            assert status.rpc_error_details(err.value) == [status.bad_request(
                "label_field", "unknown label field 'nope': use 'category' or 'attributes.<name>'")]
            report = stub.TrainClassifier(classifier_pb2.TrainClassifierRequest(c_values=[1.0]), timeout=60).report
            assert list(report.labels) == LABELS and report.train_size == 120 and report.test_size == 30
            assert report.c == 1.0 and report.accuracy >= 0.9 and len(report.per_class) == 5
            fakes.known[b"hat"] = unit(catalogue[2][1]).astype(np.float32)
            response = stub.Classify(classifier_pb2.ClassifyRequest(image=b"hat", top_k=1), timeout=5)
            assert [p.label for p in response.predictions] == ["hats"]
            assert response.classifier_version == report.version and not response.cache_hit
            current = stub.GetClassifier(classifier_pb2.GetClassifierRequest(), timeout=5)
            assert current.classifier.version == report.version

            started = stub.StartClassifierTraining(classifier_pb2.StartClassifierTrainingRequest(
                training=classifier_pb2.TrainClassifierRequest(c_values=[0.1])), timeout=5)
            assert started.job.id and started.job.kind == "classifier-training"
            assert started.job.state == types_pb2.JOB_STATE_RUNNING and started.job.started_at
            service.jobs.wait(started.job.id, 60)
            read = stub.GetClassifierTraining(classifier_pb2.GetClassifierTrainingRequest(job_id=started.job.id),
                                              timeout=5)
            assert read.job.state == types_pb2.JOB_STATE_SUCCEEDED and read.job.progress == 1.0
            assert read.report.c == 0.1 and read.report.version != report.version and read.job.finished_at
            with pytest.raises(grpc.RpcError) as err:
                stub.StartClassifierTraining(classifier_pb2.StartClassifierTrainingRequest(
                    training=classifier_pb2.TrainClassifierRequest(label_field="nope")), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # checked before a job starts
            with pytest.raises(grpc.RpcError) as err:
                stub.GetClassifierTraining(classifier_pb2.GetClassifierTrainingRequest(job_id="nope"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            draining.set()
            with pytest.raises(grpc.RpcError) as err:
                stub.Classify(classifier_pb2.ClassifyRequest(image=b"hat"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert status.rpc_error_details(err.value) == [status.retry_info(1.0)]  # RetryInfo on UNAVAILABLE
    finally:
        host.stop()


@pytest.fixture
def http(service, fakes):
    from fastapi.testclient import TestClient

    from lookalike_gateway.core import Dependencies
    from lookalike_gateway.rest import create_app

    gateway = SimpleNamespace(settings=fakes.settings, classifier=service)  # what create_app reads
    app = create_app(gateway, ApiKeyCheck(frozenset()), lambda: Dependencies(True, True, True))
    with TestClient(app) as client:
        yield client


def test_rest_routes(service, fakes, catalogue, http):
    fakes.known[pack(catalogue[2][3])] = unit(catalogue[2][3]).astype(np.float32)
    photo = pack(catalogue[2][3])
    response = http.post("/v1/classify", files={"image": ("s.jpg", photo, "image/jpeg")})
    assert response.status_code == 404 and response.json()["error"]["code"] == "NOT_FOUND"
    assert http.get("/v1/classifiers/current").status_code == 404
    bad = http.post("/v1/classifiers", json={"label_field": "nope"})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
    assert http.post("/v1/classifiers", json={"holdout": 0.1}).status_code == 400  # unknown key

    started = http.post("/v1/classifiers")  # no body at all: the defaults
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["location"] == f"/v1/classifiers/jobs/{job['id']}"
    assert job["state"] in ("queued", "running", "succeeded") and job["kind"] == "classifier-training"
    service.jobs.wait(job["id"], 60)
    done = http.get(started.headers["location"]).json()
    assert done["state"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    body = done["report"]
    assert body["labels"] == LABELS and body["label_field"] == "category" and body["accuracy"] >= 0.9
    again = http.post("/v1/classifiers", json={})
    assert again.status_code == 202
    service.jobs.wait(again.json()["id"], 60)
    failing = http.post("/v1/classifiers", json={"label_field": "attributes.size"})  # found out by the job
    assert failing.status_code == 202
    service.jobs.wait(failing.json()["id"], 60)
    failed = http.get(failing.headers["location"]).json()
    assert failed["state"] == "failed" and failed["report"] is None
    assert failed["error"]["code"] == "FAILED_PRECONDITION" and "size" in failed["error"]["message"]
    assert http.get("/v1/classifiers/jobs/classifier-training-000000000000").status_code == 404
    current = http.get("/v1/classifiers/current").json()
    assert current["version"] != body["version"] and current["labels"] == LABELS
    assert http.get("/v1/classifiers").json()["current"] == current["version"]

    response = http.post("/v1/classify", files={"image": ("s.jpg", photo, "image/jpeg")}, data={"top_k": "2"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert [p["label"] for p in result["predictions"]][0] == "shoes" and len(result["predictions"]) == 2
    assert result["classifier_version"] == current["version"] and result["cache_hit"] is False
    assert http.post("/v1/classify", files={"image": ("s.jpg", photo, "image/jpeg")}).json()["cache_hit"] is True
    assert http.post("/v1/classify", data={"top_k": "2"}).status_code == 400
    assert "/v1/classify" in http.get("/openapi.json").json()["paths"]
