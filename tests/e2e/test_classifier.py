"""End to end: classifiers trained on the stored embeddings of the session stack, served next to search
(REST and gRPC), reusing the cached query embedding."""
from __future__ import annotations

import shutil
import time

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lookalike import status
from lookalike.v1 import classifier_pb2, classifier_pb2_grpc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def http(indexed_stack):
    with httpx.Client(base_url=indexed_stack.http_url, timeout=120) as client:
        yield client
        # Leave the shared stack as we found it: no classifier (other tests expect none).
        shutil.rmtree(indexed_stack.data_dir / "gateway" / "classifiers", ignore_errors=True)
        deadline = time.monotonic() + 60
        while client.get("/v1/classifiers/current").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/v1/classifiers/current").status_code == 404, "the gateway still has a classifier"


@pytest.fixture(scope="module")
def channel(indexed_stack):
    with grpc.insecure_channel(indexed_stack.grpc_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return classifier_pb2_grpc.ClassificationStub(channel)


def classify(http, photo, **fields):
    with open(photo, "rb") as f:
        return http.post("/v1/classify", files={"image": (photo.name, f, "image/jpeg")},
                         data={k: str(v) for k, v in fields.items()})


def metric(http, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture(scope="module")
def trained(http, stub, clothing_test_photos):
    """Checks the state before any training, then trains over REST with an empty body."""
    response = classify(http, clothing_test_photos["shoes"][0])
    assert response.status_code == 404, response.text
    assert "train" in response.json()["error"]["message"]
    assert http.get("/v1/classifiers/current").status_code == 404
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(classifier_pb2.ClassifyRequest(image=clothing_test_photos["shoes"][0].read_bytes()), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    response = http.post("/v1/classifiers", json={})
    assert response.status_code == 202, response.text  # a job: the request is not held for the training
    job = response.json()
    assert response.headers["location"] == f"/v1/classifiers/jobs/{job['id']}"
    deadline = time.monotonic() + 300
    while job["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = http.get(response.headers["location"]).json()
        assert 0 <= job["progress"] <= 1
    assert job["state"] == "succeeded", job
    return job["report"]


def test_training_report(trained, http):
    assert len(trained["labels"]) >= 2 and "shoes" in trained["labels"]
    assert trained["label_field"] == "category" and trained["version"]
    assert trained["train_size"] >= 10 * 9 and trained["test_size"] >= 10
    assert 0 < trained["accuracy"] <= 1 and trained["c"] > 0 and trained["seconds"] > 0  # speed: bench/classify_eval.py
    assert {m["label"] for m in trained["per_class"]} == set(trained["labels"])
    current = http.get("/v1/classifiers/current").json()
    assert current["version"] == trained["version"] and current["model_id"]


def test_service_is_listed_by_health_and_reflection(indexed_stack, channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="lookalike.v1.Classification"), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    response = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"lookalike.v1.Lookalike", "lookalike.v1.Classification"} <= names


def test_classify_over_rest_and_grpc(trained, http, stub, clothing_test_photos):
    photo = clothing_test_photos["shoes"][1]
    response = classify(http, photo, top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classifier_version"] == trained["version"]
    predictions = body["predictions"]
    assert len(predictions) == 3 and predictions[0]["label"] == "shoes", predictions
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0 + 1e-6

    reply = stub.Classify(classifier_pb2.ClassifyRequest(image=clothing_test_photos["shoes"][2].read_bytes()),
                          timeout=30)
    assert reply.predictions[0].label == "shoes" and reply.classifier_version == trained["version"]
    assert len(reply.predictions) == min(5, len(trained["labels"]))


def test_classify_after_search_reuses_the_cached_embedding(indexed_stack, trained, http, clothing_test_photos):
    photo = clothing_test_photos["shoes"][3]
    with open(photo, "rb") as f:
        assert http.post("/v1/search", files={"image": (photo.name, f, "image/jpeg")}).status_code == 200
    before = indexed_stack.torchserve.inference_count()
    body = classify(http, photo).json()
    assert body["cache_hit"] is True
    assert indexed_stack.torchserve.inference_count() == before  # no second embedder call
    # the head (matrix-vector product + softmax) adds far less than 5 ms to a cached-embedding query
    count = metric(http, "lookalike_gateway_classifier_head_seconds_count")
    assert count >= 1 and metric(http, "lookalike_gateway_classifier_head_seconds_sum") / count < 0.005


def test_unknown_label_field_is_refused(trained, http, stub):
    response = http.post("/v1/classifiers", json={"label_field": "nope"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "nope" in error["message"]
    assert error["details"][0]["field_violations"][0]["field"] == "label_field"
    with pytest.raises(grpc.RpcError) as err:
        stub.TrainClassifier(classifier_pb2.TrainClassifierRequest(label_field="nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status.rpc_error_details(err.value)[0]["field_violations"][0]["field"] == "label_field"
    # the active classifier is untouched
    assert http.get("/v1/classifiers/current").json()["version"] == trained["version"]


def test_product_without_category_gets_the_predicted_one(trained, http, clothing_test_photos):
    photo = clothing_test_photos["shoes"][4]
    product_id = f"classifier-e2e-{time.time_ns()}"
    with open(photo, "rb") as f:
        response = http.put(f"/v1/products/{product_id}", files={"image": (photo.name, f, "image/jpeg")},
                            data={"title": "Unsorted"})
    assert response.status_code == 200, response.text
    try:
        product = http.get(f"/v1/products/{product_id}").json()
        assert product["category"] == "shoes"
        assert product["attributes"]["category_predicted"] == "true"
        assert 0 < float(product["attributes"]["category_probability"]) <= 1
    finally:
        assert http.delete(f"/v1/products/{product_id}").status_code == 200


def test_cli(indexed_stack, trained, clothing_test_photos, capsys):
    from lookalike.cli import main

    with pytest.raises(SystemExit) as done:
        main(["classify", str(clothing_test_photos["shoes"][0]), "--gateway", indexed_stack.grpc_address])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[-1] == "shoes", out
    with pytest.raises(SystemExit) as done:
        main(["train-classifier", "--label-field", "nope", "--gateway", indexed_stack.grpc_address])
    assert done.value.code == 1 and "INVALID_ARGUMENT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:  # a job followed with a progress bar (on stderr) to its report
        main(["train-classifier", "--gateway", indexed_stack.grpc_address])
    assert done.value.code == 0
    captured = capsys.readouterr()
    assert "training: 100%" in captured.err and "accuracy" in captured.out and "shoes" in captured.out


def test_search_is_reranked_by_the_category_classifier(trained, http, channel, clothing_test_photos):
    """With a category classifier trained, image search orders candidates by cosine + 0.2 * P(category)
    (lookalike_gateway.ranking); category_boost 0 gives the plain similarity order. Over photos of every
    category, the re-ranked top 5 hold at least as many products of the photo's category."""
    from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc

    def top5(photo, **fields):
        with open(photo, "rb") as f:
            response = http.post("/v1/search", files={"image": (photo.name, f, "image/jpeg")},
                                 data={"top_k": "5", **{k: str(v) for k, v in fields.items()}})
        assert response.status_code == 200, response.text
        return response.json()

    same_plain = same_boosted = 0
    for category, photos in clothing_test_photos.items():
        for photo in photos[5:8]:
            plain, boosted = top5(photo, category_boost=0), top5(photo)
            assert plain["category_boost"] == 0 and boosted["category_boost"] == pytest.approx(0.2)
            scores = [r["score"] for r in plain["results"]]
            assert scores == sorted(scores, reverse=True)
            same_plain += sum(r["category"] == category for r in plain["results"])
            same_boosted += sum(r["category"] == category for r in boosted["results"])
    assert same_boosted >= same_plain, (same_boosted, same_plain)

    stub = lookalike_pb2_grpc.LookalikeStub(channel)
    image = clothing_test_photos["shoes"][5].read_bytes()
    reply = stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=image, top_k=5), timeout=30)
    assert reply.category_boost == pytest.approx(0.2) and len(reply.results) == 5
    plain = stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=image, top_k=5, category_boost=0), timeout=30)
    assert plain.category_boost == 0
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=image, category_boost=-1), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
