"""The REST contract against a live gateway: the spec it serves is the committed openapi.json, and
Schemathesis (every route, PUT and DELETE included; all checks; a fixed seed; a bounded number of
examples) finds nothing to report, with no answer slower than 10 s.

A client generated from the spec by openapi-python-client (at test time, into a temporary folder) runs
search / put / get / delete / classify, and gRPC errors carry the same details as REST's.

Runs on its own small stack: Schemathesis writes and deletes products, trains classifiers and adapts,
which the shared session stack's tests must not see."""
from __future__ import annotations

import importlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, make_catalogue

pytestmark = pytest.mark.e2e

SEED = 1
MAX_EXAMPLES = 10  # per operation and phase: ~400 cases, well under a minute on a quiet machine
MAX_RESPONSE_S = 10
PER_CLASS = 4


@pytest.fixture(scope="module")
def contract_stack(tmp_path_factory):
    """A stack with PER_CLASS photos per category indexed (its own: Schemathesis changes it)."""
    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items
    from lookalike.stack import Stack, StackConfig

    catalogue = make_catalogue(tmp_path_factory.mktemp("contract-catalogue"), PER_CLASS)
    config = StackConfig(data_dir=tmp_path_factory.mktemp("contract-stack"), http_port=0, grpc_port=0,
                         extra_gateway_env={"LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S": "0.5"})
    with Stack(config) as running:
        report = index_items(running.grpc_address, scan_folder(catalogue), progress=False)
        assert report.failed == 0, report.failures
        yield running


def test_served_spec_is_the_committed_one(contract_stack):
    served = httpx.get(f"{contract_stack.http_url}/openapi.json", timeout=30).json()
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert served == committed, "the gateway serves another spec: run python scripts/gen_openapi.py"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A REST client generated from the committed spec by openapi-python-client, importable."""
    out = tmp_path_factory.mktemp("generated") / "lookalike_rest_client"
    bin_dir = Path(sys.executable).parent
    done = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", str(ROOT / "openapi.json"),
                           "--output-path", str(out), "--meta", "none"],
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (out / "client.py").exists(), done.stdout + done.stderr
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module("lookalike_rest_client")
    finally:
        sys.path.remove(str(out.parent))
        for name in [n for n in sys.modules if n.startswith("lookalike_rest_client")]:
            del sys.modules[name]


def test_generated_client_searches_writes_reads_deletes_and_classifies(contract_stack, generated,
                                                                        clothing_test_photos):
    """Runs before Schemathesis (which trains and adapts on this stack)."""
    from lookalike_rest_client import Client
    from lookalike_rest_client.api.classification import classify, train, training_job
    from lookalike_rest_client.api.products import delete_product, get_product, put_product
    from lookalike_rest_client.api.search import search
    from lookalike_rest_client.models import (BodyClassify, BodyPutProduct, BodyPutProductAttributes, BodySearch,
                                              ClassifierTrainingJob, ClassifierTrainingJobState, ClassifyResponse,
                                              DeleteProductResponse, ErrorBody, Product, PutProductResponse,
                                              ResourceInfoDetail, SearchResponse, TrainRequest)
    from lookalike_rest_client.types import File

    photo = clothing_test_photos["shoes"][0].read_bytes()

    def upload() -> File:
        return File(payload=io.BytesIO(photo), file_name="shoe.jpg", mime_type="image/jpeg")

    client = Client(base_url=contract_stack.http_url, timeout=httpx.Timeout(120), raise_on_unexpected_status=True)
    found = search.sync(client=client, body=BodySearch(image=upload(), top_k=3))
    assert isinstance(found, SearchResponse) and len(found.results) == 3, found
    assert found.results[0].category == "shoes" and 0 < found.results[0].score <= 1

    product_id = "generated/sku-1"
    stored = put_product.sync(product_id, client=client, body=BodyPutProduct(
        image=upload(), title="Generated", category="shoes", price=12.5,
        attributes=BodyPutProductAttributes.from_dict({"colour": "red"})))
    assert isinstance(stored, PutProductResponse) and stored.ok and stored.id == product_id
    product = get_product.sync(product_id, client=client)
    assert isinstance(product, Product) and (product.title, product.category, product.price) == \
        ("Generated", "shoes", 12.5)
    assert product.attributes.additional_properties == {"colour": "red"} and product.image_url

    started = train.sync_detailed(client=client, body=TrainRequest(label_field="category",
                                                                 min_examples_per_label=2))  # PER_CLASS photos each
    assert started.status_code == 202 and isinstance(started.parsed, ClassifierTrainingJob), started.content
    job = started.parsed
    deadline = time.monotonic() + 300
    while job.state not in (ClassifierTrainingJobState.SUCCEEDED, ClassifierTrainingJobState.FAILED):
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.2)
        job = training_job.sync(job.id, client=client)
    assert job.state == ClassifierTrainingJobState.SUCCEEDED and job.report.labels, job
    labels = classify.sync(client=client, body=BodyClassify(image=upload(), top_k=2))
    assert isinstance(labels, ClassifyResponse) and labels.predictions[0].label == "shoes"
    assert labels.classifier_version == job.report.version

    deleted = delete_product.sync(product_id, client=client)
    assert isinstance(deleted, DeleteProductResponse) and deleted.deleted
    gone = get_product.sync(product_id, client=client)
    assert isinstance(gone, ErrorBody) and gone.error.code == "NOT_FOUND"
    assert isinstance(gone.error.details[0], ResourceInfoDetail) and gone.error.details[0].resource_name == product_id


def test_python_grpc_client_round_trip(contract_stack, clothing_test_photos):
    """lookalike.client (what backend services and the CLI use): upsert, get, search, similar, delete."""
    from lookalike.client import LookalikeClient
    from lookalike.v1 import lookalike_pb2, types_pb2

    photo = clothing_test_photos["hat"][0].read_bytes()
    with LookalikeClient(contract_stack.grpc_address, timeout=60) as client:
        stored = client.upsert_product(types_pb2.Product(id="client/hat-1", title="Client hat", category="hat",
                                                         price=20.0), photo)
        assert stored.outcome == lookalike_pb2.UpsertProductsResponse.OUTCOME_CREATED
        assert stored.product_id == "client/hat-1"
        assert client.get_product("client/hat-1").title == "Client hat"
        found = client.search_by_image(photo, top_k=3, category="hat", max_price=100)
        assert found.results[0].product.id == "client/hat-1" and found.results[0].score > 0.99
        assert all(r.product.category == "hat" for r in client.search_similar("client/hat-1", top_k=3, category="hat"))
        assert client.delete_products(["client/hat-1"]) == 1


def test_grpc_errors_carry_details(contract_stack):
    """The same details as the REST error body, in google.rpc.Status (grpcio-status), read back by
    lookalike.client: BadRequest field violations, ResourceInfo for what is missing."""
    from lookalike.client import LookalikeClient, LookalikeError

    with LookalikeClient(contract_stack.grpc_address, timeout=30) as client:
        with pytest.raises(LookalikeError) as err:
            client.search_similar("shoes/whatever.jpg", top_k=0)
        assert err.value.code.name == "INVALID_ARGUMENT" and err.value.http_status == 400
        assert err.value.details == [{"type": "BadRequest", "field_violations": [
            {"field": "top_k", "description": "top_k must be between 1 and 1000, got 0"}]}]
        with pytest.raises(LookalikeError) as err:
            client.get_product("no/such-product")
        assert err.value.code.name == "NOT_FOUND"
        assert err.value.details == [{"type": "ResourceInfo", "resource_type": "product",
                                      "resource_name": "no/such-product",
                                      "description": "product 'no/such-product' not found"}]
    rest = httpx.get(f"{contract_stack.http_url}/v1/products/no%2Fsuch-product", timeout=30).json()["error"]
    assert rest["details"] == err.value.details  # one set of details, both transports


def test_schemathesis_finds_nothing(contract_stack, tmp_path):
    """`schemathesis run --checks all` against the live gateway: 0 failures, 0 errors, no answer over
    10 s (--max-response-time fails the case). The hooks (tests/contract/hooks.py) give it real photos
    for the image fields and the rules the spec cannot state."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.hooks", "PYTHONPATH": str(ROOT),
           "NO_COLOR": "1", "COLUMNS": "120"}
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{contract_stack.http_url}/openapi.json",
               "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
               "--max-response-time", str(MAX_RESPONSE_S), "--request-timeout", "30", "--workers", "1",
               "--report", "junit", "--report-dir", str(tmp_path)]  # cwd tmp_path: its .schemathesis cache too
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    summary = done.stdout[done.stdout.rfind("SUMMARY"):] if "SUMMARY" in done.stdout else done.stdout[-4000:]
    print(summary)  # the figures for the record (pytest -s)
    assert done.returncode == 0, f"{done.stdout[-12000:]}\n{done.stderr[-3000:]}"
    tested = re.search(r"Tested: (\d+)", summary)
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert tested and int(tested.group(1)) >= 14, summary  # every operation of the spec
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 200, summary
    assert not re.search(r"\b\d+ (failures?|errors?)\b", summary), summary  # warnings (e.g. 404s) are not failures
