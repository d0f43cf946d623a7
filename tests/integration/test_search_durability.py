"""Crash test of the search service: ingest 5,000 products with synthetic vectors through gRPC UpsertPoints
while the service is SIGKILLed at random moments (at least 10 times). After a final restart every product
whose upsert was acknowledged is there, with its payload, and its own vector finds it first: no
acknowledged write is lost. Run for the default engine (qdrant-local) and qdrant-edge."""
from __future__ import annotations

import collections
import hashlib
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from lookalike.search.v1 import search_pb2, search_pb2_grpc
from lookalike.v1 import types_pb2
from lookalike.vectors import pack, unpack
from tests.integration.search_fixtures import SearchProcess

N_PRODUCTS = 5000
BATCH = 25
DIM = 32
MIN_KILLS = 10
WRITERS = 2  # two upserts in flight, as the gateway does


def product(i: int) -> types_pb2.Product:
    return types_pb2.Product(id=f"sku-{i:05d}", title=f"product {i}", category=f"c{i % 7}", price=i * 0.25,
                             attributes={"n": str(i), "parity": "odd" if i % 2 else "even"},
                             image_sha256=hashlib.sha256(str(i).encode()).hexdigest())


def vectors() -> np.ndarray:
    data = np.random.default_rng(7).standard_normal((N_PRODUCTS, DIM)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


class CrashingIngest:
    """Writes batches from `pending` until the service dies; what was acknowledged goes to `acked`."""

    def __init__(self, vecs: np.ndarray):
        self.vecs = vecs
        self.batches = [list(range(i, min(i + BATCH, N_PRODUCTS))) for i in range(0, N_PRODUCTS, BATCH)]
        self.pending = collections.deque(range(len(self.batches)))
        self.acked: set[int] = set()
        self.acked_batches: list[int] = []
        self.lock = threading.Lock()
        self.unacknowledged_failures = 0
        self.final = False  # True: writers stop once every batch is acknowledged (no rewrites)

    def request(self, batch: int) -> search_pb2.UpsertPointsRequest:
        return search_pb2.UpsertPointsRequest(points=[
            search_pb2.Point(product=product(i), vector=pack(self.vecs[i])) for i in self.batches[batch]])

    def writer(self, stub, rng: random.Random) -> None:
        while True:
            with self.lock:
                if self.pending:
                    batch, fresh = self.pending.popleft(), True
                elif self.final:
                    return
                else:  # all stored: rewrite stored batches (same content) so the kill still hits a write
                    batch, fresh = rng.choice(self.acked_batches), False
            try:
                stub.UpsertPoints(self.request(batch), timeout=30)
            except grpc.RpcError:
                with self.lock:
                    self.unacknowledged_failures += 1
                    if fresh:
                        self.pending.appendleft(batch)
                return
            with self.lock:
                if fresh:
                    self.acked.update(self.batches[batch])
                    self.acked_batches.append(batch)


@pytest.mark.parametrize("engine", ["qdrant-local", "qdrant-edge"])
def test_no_acknowledged_upsert_is_lost_across_repeated_kill_9(tmp_path, engine):
    vecs = vectors()
    ingest = CrashingIngest(vecs)
    service = SearchProcess(tmp_path / "search", engine=engine, vector_size=DIM)
    rng = random.Random(1234)
    kills, alive_s = 0, 0.0
    started = time.monotonic()
    while ingest.pending or kills < MIN_KILLS:
        assert time.monotonic() - started < 900, f"ingest did not finish: {kills} kills, {len(ingest.acked)} acked"
        service.start()
        address = service.wait_ready(120)
        with grpc.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            writers = [threading.Thread(target=ingest.writer, args=(stub, random.Random(rng.random())))
                       for _ in range(WRITERS)]
            born = time.monotonic()
            ingest.final = kills >= MIN_KILLS
            for thread in writers:
                thread.start()
            if kills < MIN_KILLS:
                # a random moment, spread so that the kills fall all over the ingest (the write rate
                # differs a lot between engines and machines: estimate it from the lives so far)
                rate = len(ingest.acked) / alive_s if alive_s and ingest.acked else None
                left_s = (N_PRODUCTS - len(ingest.acked)) / rate if rate else 2.0 * (MIN_KILLS - kills)
                time.sleep(rng.uniform(0.05, max(0.5, 2 * left_s / (MIN_KILLS - kills))))
                os.kill(service.proc.pid, signal.SIGKILL)
                service.proc.wait(10)
                kills += 1
            for thread in writers:
                thread.join(600)  # after the last kill: until every batch is acknowledged
            alive_s += time.monotonic() - born
        if service.proc.poll() is None:
            os.kill(service.proc.pid, signal.SIGKILL)  # and one more at the very end, when all is written
            service.proc.wait(10)
            kills += 1
        service._log.close()

    service.start()
    address = service.wait_ready(120)
    try:
        with grpc.insecure_channel(address) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            lost, wrong_payload, wrong_vector, not_top = verify(stub, vecs, sorted(ingest.acked))
    finally:
        service.terminate()
    print(f"\n{engine}: {kills} kills, {len(ingest.acked)} acknowledged products, "
          f"{ingest.unacknowledged_failures} writes cut off unacknowledged, lost {len(lost)}, "
          f"wrong payload {len(wrong_payload)}, wrong vector {len(wrong_vector)}, not top hit {len(not_top)}, "
          f"{time.monotonic() - started:.0f}s")
    assert kills >= MIN_KILLS
    assert len(ingest.acked) == N_PRODUCTS
    assert not lost, f"{len(lost)} acknowledged products lost, e.g. {lost[:5]}"
    assert not wrong_payload, wrong_payload[:5]
    assert not wrong_vector, wrong_vector[:5]
    assert not not_top, not_top[:5]


def verify(stub, vecs: np.ndarray, acked: list[int]):
    lost, wrong_payload, wrong_vector = [], [], []
    for start in range(0, len(acked), 1000):
        chunk = acked[start:start + 1000]
        response = stub.GetPoints(search_pb2.GetPointsRequest(product_ids=[product(i).id for i in chunk],
                                                              with_vectors=True), timeout=60)
        found = {p.product.id: p for p in response.points}
        for i in chunk:
            point = found.get(product(i).id)
            if point is None:
                lost.append(i)
                continue
            want = product(i)
            want.image_sha256s.append(want.image_sha256)  # a one-photo product lists its one photo
            if point.product != want:
                wrong_payload.append((i, point.product))
            if not np.allclose(unpack(point.vector), vecs[i], atol=1e-5):
                wrong_vector.append(i)

    def top_hit(i: int) -> int | None:
        response = stub.SearchByVector(search_pb2.SearchByVectorRequest(vector=pack(vecs[i]), top_k=1), timeout=30)
        return i if response.results and response.results[0].product.id == product(i).id else None

    with ThreadPoolExecutor(4) as pool:
        hits = set(pool.map(top_hit, acked))
    not_top = [i for i in acked if i not in hits]
    return lost, wrong_payload, wrong_vector, not_top
