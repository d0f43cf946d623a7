"""End to end ingestion on the shared real stack: kill -9 of the `lookalike index` process mid-run and
resume, re-runs that embed nothing, duplicate reports, and an alias switch under query load."""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from lookalike import naming
from lookalike.stack import ManagedProcess, wait_for_port_file
from lookalike.search.v1 import search_pb2, search_pb2_grpc
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2

from tests.conftest import clothing_split
from tests.e2e.support import metric, wait_until

pytestmark = pytest.mark.e2e
Outcome = lookalike_pb2.UpsertProductsResponse
SUMMARY = re.compile(r"(\d+) new, (\d+) updated, (\d+) unchanged, (\d+) failed")


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.grpc_address) as channel:
        yield lookalike_pb2_grpc.LookalikeStub(channel)


@pytest.fixture(scope="module")
def search_stub(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.search_port}") as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


def validation_photos(per_class: int, skip: int = 0) -> list:
    """Photos outside the shared catalogue and the test queries (the validation split)."""
    root = clothing_split("validation")
    return [photo for category in sorted(p for p in root.iterdir() if p.is_dir())
            for photo in sorted(category.iterdir())[skip:skip + per_class]]


def write_manifest(path, photos, prefix: str):
    """A CSV manifest of the photos under ids `<prefix>/<category>/<file>`, image paths relative to it."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "image", "title", "category", "price", "source"])
        for i, photo in enumerate(photos):
            writer.writerow([f"{prefix}/{photo.parent.name}/{photo.name}", os.path.relpath(photo, path.parent),
                             photo.stem, photo.parent.name, f"{10 + i}.5", "e2e"])
    return path


def active_count(stub) -> int:
    listing = stub.ListCollections(lookalike_pb2.ListCollectionsRequest(), timeout=30)
    return next(c.points for c in listing.collections if c.name == listing.active)


def index_cli(address, manifest, tmp_path):
    command = [sys.executable, "-m", "lookalike.cli", "index", str(manifest), "--gateway", address, "-q",
               "--failures", str(tmp_path / "failures.jsonl")]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return command, env


def run_index(address, manifest, tmp_path) -> tuple[int, int, int, int]:
    command, env = index_cli(address, manifest, tmp_path)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    found = SUMMARY.search(done.stdout)
    assert found, done.stdout
    return tuple(int(x) for x in found.groups())


@contextmanager
def small_batch_gateway(stack, tmp_path, batch_size: int = 4):
    """A second gateway over the shared stack's backends that commits every `batch_size` products.

    With the default 32 a 40-photo catalogue is two batches, embedded at the same time and committed
    within milliseconds of each other: no moment to kill the client "mid-run" would remain."""
    port_file = tmp_path / "gateway.port"
    env = {**stack.gateway_env(), "LOOKALIKE_GATEWAY_GRPC_PORT": "0", "LOOKALIKE_GATEWAY_HTTP_PORT": "0",
           "LOOKALIKE_GATEWAY_PORT_FILE": str(port_file),
           "LOOKALIKE_GATEWAY_UPSERT_BATCH_SIZE": str(batch_size)}
    gateway = ManagedProcess("small-batch gateway", [sys.executable, "-m", "lookalike_gateway"],
                             tmp_path / "gateway.log", env=env)
    gateway.start()
    try:
        ports = wait_for_port_file(port_file, gateway, 60)
        address = f"127.0.0.1:{ports['grpc']}"
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                    health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "the extra gateway did not become ready"
                time.sleep(0.2)
        yield address, f"http://127.0.0.1:{ports['http']}"
    finally:
        gateway.stop()


@pytest.fixture
def leave_no_products(stub):
    """Ids the test indexed into the shared stack; deleted afterwards (other tests assume a price-free
    catalogue)."""
    ids: list[str] = []
    yield ids
    if ids:
        stub.DeleteProducts(lookalike_pb2.DeleteProductsRequest(product_ids=ids), timeout=60)


def test_kill9_mid_run_resumes_and_every_product_is_indexed_once(stack, stub, tmp_path, leave_no_products):
    with small_batch_gateway(stack, tmp_path / "gw") as (address, http_url):
        kill9_mid_run_then_resume(stack, address, http_url, stub, tmp_path, leave_no_products)


def kill9_mid_run_then_resume(stack, address, http_url, stub, tmp_path, created: list[str]):
    photos = validation_photos(4)  # 40 photos, ten categories
    assert len(photos) == 40
    prefix = f"kill9-{uuid.uuid4().hex[:8]}"
    manifest = write_manifest(tmp_path / "catalogue.csv", photos, prefix)
    ids = [f"{prefix}/{p.parent.name}/{p.name}" for p in photos]
    created.extend(ids)
    baseline = active_count(stub)

    command, env = index_cli(address, manifest, tmp_path)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while active_count(stub) == baseline:  # kill as soon as the first acknowledged batch is stored
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "nothing was stored within 300 s"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler runs, the stream just breaks
    assert proc.wait(30) == -9, "the ingest finished before it could be killed"
    proc.stdout.close()
    # The gateway finishes the batches it was committing and drops the others; its UpsertProducts handler
    # ends (and is counted) only once all of them are done: a handshake, not a wait for a quiet moment.
    with httpx.Client(base_url=http_url, timeout=30) as http:
        wait_until(lambda: metric(http, "lookalike_gateway_requests_total", method="UpsertProducts") >= 1, 120,
                   "the killed client's stream ended in the gateway")
    stored = active_count(stub) - baseline
    assert 0 < stored < 40, f"{stored} stored before the kill: not mid-run"
    print(f"kill -9 after {stored} of 40 products were stored")

    new, updated, unchanged, failed = run_index(address, manifest, tmp_path)  # the same command again
    assert (new, updated, unchanged, failed) == (40 - stored, 0, stored, 0)
    assert active_count(stub) == baseline + 40  # each product exactly once
    for pid, photo in zip(ids, photos):
        product = stub.GetProduct(lookalike_pb2.GetProductRequest(product_id=pid), timeout=30).product
        assert (product.title, product.category, product.attributes["source"]) == (photo.stem, photo.parent.name,
                                                                                 "e2e")
        assert len(product.image_sha256) == 64

    # A third run: everything unchanged, and TorchServe's own counter proves nothing was embedded.
    inferences = stack.torchserve.inference_count()
    assert run_index(address, manifest, tmp_path) == (0, 0, 40, 0)
    assert stack.torchserve.inference_count() == inferences
    assert active_count(stub) == baseline + 40


def test_changed_metadata_is_updated_in_place_without_embedding(stack, stub, tmp_path, leave_no_products):
    address = stack.grpc_address
    photos = validation_photos(1, skip=6)
    prefix = f"update-{uuid.uuid4().hex[:8]}"
    manifest = write_manifest(tmp_path / "catalogue.csv", photos, prefix)
    leave_no_products.extend(f"{prefix}/{p.parent.name}/{p.name}" for p in photos)
    assert run_index(address, manifest, tmp_path) == (10, 0, 0, 0)
    text = manifest.read_text().replace(",e2e\n", ",e2e-v2\n", 3)  # three products change an attribute
    manifest.write_text(text)
    inferences = stack.torchserve.inference_count()
    assert run_index(address, manifest, tmp_path) == (0, 3, 7, 0)
    assert stack.torchserve.inference_count() == inferences  # same images: the stored vectors are reused
    first = f"{prefix}/{photos[0].parent.name}/{photos[0].name}"
    assert stub.GetProduct(lookalike_pb2.GetProductRequest(product_id=first),
                           timeout=30).product.attributes["source"] == "e2e-v2"


def test_duplicates_are_reported_and_optionally_skipped(indexed_stack, stub, small_catalogue):
    original = sorted((small_catalogue / "shoes").iterdir())[0]
    original_id = f"shoes/{original.name}"
    data = original.read_bytes()
    buffer = io.BytesIO()
    Image.open(original).convert("RGB").save(buffer, "JPEG", quality=80)  # other bytes, same photo
    token = uuid.uuid4().hex[:8]
    requests = [
        lookalike_pb2.UpsertProductsRequest(product=types_pb2.Product(id=f"dup-exact-{token}", title="copy"),
                                            image=data),
        lookalike_pb2.UpsertProductsRequest(product=types_pb2.Product(id=f"dup-near-{token}", title="re-encoded"),
                                            image=buffer.getvalue()),
        lookalike_pb2.UpsertProductsRequest(product=types_pb2.Product(id=f"dup-skip-{token}", title="skipped"),
                                            image=data, skip_duplicates=True),
    ]
    exact, near, skipped = list(stub.UpsertProducts(iter(requests), timeout=120))
    try:
        assert (exact.outcome, exact.duplicate_of, exact.exact_duplicate) == (
            Outcome.OUTCOME_CREATED, original_id, True)
        assert near.outcome == Outcome.OUTCOME_CREATED and not near.exact_duplicate
        assert near.duplicate_of in (original_id, f"dup-exact-{token}") and near.duplicate_similarity > 0.97
        assert (skipped.outcome, skipped.exact_duplicate) == (Outcome.OUTCOME_SKIPPED_DUPLICATE, True)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetProduct(lookalike_pb2.GetProductRequest(product_id=f"dup-skip-{token}"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        stub.DeleteProducts(lookalike_pb2.DeleteProductsRequest(
            product_ids=[f"dup-exact-{token}", f"dup-near-{token}"]), timeout=30)


def reindex_cli(stack, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "lookalike.cli", "reindex", "--gateway", stack.grpc_address, "-q",
                           *args], env=env, capture_output=True, text=True, timeout=900)


def test_alias_switch_under_query_load(indexed_stack, stub, search_stub, clothing_test_photos):
    listing = stub.ListCollections(lookalike_pb2.ListCollectionsRequest(), timeout=30)
    old = listing.active
    model = next(c.model_id for c in listing.collections if c.name == old)
    new = naming.collection_name(listing.alias, model, f"e2e{uuid.uuid4().hex[:8]}")
    built = reindex_cli(indexed_stack, "--collection", new, "--no-activate")  # built in the background
    assert built.returncode == 0, built.stdout + built.stderr
    assert stub.ListCollections(lookalike_pb2.ListCollectionsRequest(), timeout=30).active == old

    query = clothing_test_photos["dress"][3].read_bytes()
    failures, answers = [], []  # answers: (time, top ids)
    stop = threading.Event()

    def queries():
        with grpc.insecure_channel(indexed_stack.grpc_address) as channel:
            client = lookalike_pb2_grpc.LookalikeStub(channel)
            while not stop.is_set():
                try:
                    response = client.SearchByImage(lookalike_pb2.SearchByImageRequest(image=query, top_k=3),
                                                    timeout=30)
                    answers.append((time.monotonic(), [r.product.id for r in response.results]))
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(0.01)

    thread = threading.Thread(target=queries, daemon=True)
    thread.start()
    marker = f"alias-marker-{uuid.uuid4().hex[:8]}"
    try:
        wait_until(lambda: len(answers) >= 3, 60, "queries answered before the switch")  # under query load
        switched = reindex_cli(indexed_stack, "--collection", new)  # catch-up pass, then the switch
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert f"searches now use {new}" in switched.stdout
        assert stub.ListCollections(lookalike_pb2.ListCollectionsRequest(), timeout=30).active == new
        # A product written now goes to the new collection only, and the very next searches find it.
        ack = next(stub.UpsertProducts(iter([lookalike_pb2.UpsertProductsRequest(
            product=types_pb2.Product(id=marker, title="marker", category="dress"), image=query)]), timeout=120))
        assert ack.outcome != Outcome.OUTCOME_FAILED, ack.error
        written = time.monotonic()
        deadline = written + 30
        while not any(t > written and marker in ids for t, ids in answers):
            assert time.monotonic() < deadline, "searches after the switch did not see the new collection"
            time.sleep(0.05)
        in_new = search_stub.GetPoints(search_pb2.GetPointsRequest(product_ids=[marker], collection=new), timeout=10)
        in_old = search_stub.GetPoints(search_pb2.GetPointsRequest(product_ids=[marker], collection=old), timeout=10)
        assert [p.product.id for p in in_new.points] == [marker] and not in_old.points
        seen = len(answers)
        wait_until(lambda: len(answers) >= seen + 3, 60, "more queries answered after the switch")
    finally:
        stop.set()
        thread.join(60)
        stub.DeleteProducts(lookalike_pb2.DeleteProductsRequest(product_ids=[marker]), timeout=30)
        rolled = stub.ActivateCollection(lookalike_pb2.ActivateCollectionRequest(rollback=True), timeout=30)
    assert failures == [], failures[:5]
    print(f"{len(answers)} queries during the reindex and the switch, 0 failed")
    assert len(answers) > 20
    assert (rolled.active, rolled.previous) == (old, new)  # rollback: the alias points back
    response = stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=query, top_k=3), timeout=30)
    assert marker not in [r.product.id for r in response.results]
