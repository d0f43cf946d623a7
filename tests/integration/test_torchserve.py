"""A real TorchServe (Java frontend + Python worker) serving the embedder, called over gRPC.

One server for the module (about 10 s to start on 2 cores); the last test stops it and checks that
no process is left behind.
"""
from __future__ import annotations

import io
import json
import socket
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from lookalike.images import decode_image
from lookalike.embedder_client import EmbedderClient, EmbedderImageError
from lookalike.torchserve_config import read_properties
from lookalike.torchserve_process import TorchServeProcess
from tests.conftest import CLOTHING

CLOTHING_TEST = CLOTHING / "test"


def synthetic_jpeg(seed: int, size=(320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Real photos (one per category) when the dataset is there; synthetic ones otherwise."""
    if CLOTHING_TEST.is_dir():
        return [sorted(d.glob("*.jpg"))[0].read_bytes() for d in sorted(CLOTHING_TEST.iterdir()) if d.is_dir()][:8]
    return [synthetic_jpeg(i) for i in range(8)]


NICE = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ts")
    # builds the .mar into data_dir/model-store; at a lower CPU priority (LOOKALIKE_EMBEDDER_NICE's mechanism)
    ts = TorchServeProcess(data_dir, startup_timeout=120, nice=NICE)
    started = time.monotonic()
    ts.start()
    print(f"\nTorchServe cold start: {time.monotonic() - started:.1f}s (model READY)")
    yield ts
    ts.stop()
    assert ts.group_pids() == []


@pytest.fixture(scope="module")
def client(server):
    with server.client(dim=1280) as c:
        yield c


@pytest.fixture(scope="module")
def reference():
    from lookalike_embedder.model import FeatureExtractor

    return FeatureExtractor("cpu")


def test_model_registered_with_batching(server, client):
    info = server.describe_model()
    assert info["batchSize"] == 16 and info["maxBatchDelay"] == 1
    assert [w["status"] for w in info["workers"]] == ["READY"]
    # a loaded machine can make one Ping outlast its own 2 s timeout: ask again until a deadline
    deadline = time.monotonic() + 60
    while not client.ping(timeout=10) and time.monotonic() < deadline:
        pass
    assert client.ping(timeout=10) is True
    assert client.model_ready() is True


def test_vectors_equal_feature_extractor(client, reference, photos):
    expected = reference.embed_images([decode_image(p) for p in photos[:4]])
    for data, want in zip(photos[:4], expected):
        got = client.embed(data, timeout=30)
        assert got.shape == (1280,) and got.dtype == np.float32
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-4
        assert float(got @ want) >= 0.9999


def test_concurrent_burst_is_batched_and_bad_items_are_isolated(server, client, reference, photos):
    truncated = photos[0][: len(photos[0]) // 2]
    burst = list(photos) + [b"this is not an image", truncated] + list(photos[:4])
    results = client.embed_many(burst, timeout=60, request_ids=[f"burst-{i}" for i in range(len(burst))])
    assert len(results) == len(burst)
    bad = {i: r for i, r in enumerate(results) if isinstance(r, Exception)}
    assert set(bad) == {len(photos), len(photos) + 1}, bad
    assert isinstance(bad[len(photos)], EmbedderImageError) and bad[len(photos)].reason == "not_an_image"
    assert bad[len(photos) + 1].reason == "truncated"
    assert bad[len(photos)].request_id == f"burst-{len(photos)}"
    expected = reference.embed_images([decode_image(p) for p in photos])
    for i, data in enumerate(burst):
        if i in bad:
            continue
        j = i if i < len(photos) else i - len(photos) - 2
        assert float(results[i] @ expected[j]) >= 0.9999
    # TorchServe merged concurrent requests: some handler call embedded more than one image.
    log = (server.log_dir / "model_log.log").read_text()
    sizes = [int(s) for s in __import__("re").findall(r"lookalike-embedded-batch n_ok=(\d+)", log)]
    assert max(sizes) > 1, sizes
    assert server.inference_count() == sum(sizes)


def test_token_is_required(server, photos):
    for token in (None, "wrong-token"):
        anonymous = EmbedderClient(server.grpc_target, token=token)
        with pytest.raises(grpc.RpcError) as info:
            anonymous.embed(photos[0], timeout=10)
        assert info.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        assert anonymous.ping() is False
        anonymous.close()
    request = urllib.request.Request(f"{server.http_url}/predictions/lookalike-lite0", data=photos[0],
                                     headers={"Content-Type": "application/octet-stream"})
    with pytest.raises(urllib.error.HTTPError) as http_info:
        urllib.request.urlopen(request, timeout=10)
    # TorchServe 0.12 answers a missing token on REST with 400 InvalidKeyException (not 401)
    assert http_info.value.code in (400, 401, 403)
    assert "Token Authorization failed" in http_info.value.read().decode()


def test_http_inference_per_item_status(server, photos):
    headers = {"Authorization": f"Bearer {server.inference_key}", "Content-Type": "application/octet-stream"}
    url = f"{server.http_url}/predictions/lookalike-lite0"
    with urllib.request.urlopen(urllib.request.Request(url, data=photos[1], headers=headers), timeout=30) as ok:
        assert ok.status == 200 and len(ok.read()) == 4 * 1280
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, data=b"nope", headers=headers), timeout=30)
    assert info.value.code == 400
    assert json.loads(info.value.read())["error"]["reason"] == "not_an_image"


def test_unknown_model_is_not_ready(server):
    other = server.client(model_name="no-such-model")
    assert other.model_ready() is False
    other.close()


def test_management_and_metrics_on_loopback_only(server):
    config = read_properties(server.config_path)
    assert config["management_address"] == f"http://127.0.0.1:{server.management_port}"
    assert config["grpc_management_address"] == "127.0.0.1"
    assert config["metrics_address"] == f"http://127.0.0.1:{server.ports['metrics']}"
    assert (config["enable_metrics_api"], config["metrics_mode"]) == ("true", "prometheus")
    assert config["enable_model_api"] == "false"
    assert "disable_token_authorization" not in config
    listening = {}
    for pid in server.group_pids():
        try:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[conn.laddr.port] = conn.laddr.ip.removeprefix("::ffff:")  # Java dual-stack
        except psutil.Error:
            continue
    assert listening.get(server.management_port) == "127.0.0.1", listening
    assert listening.get(server.ports["grpc_management"]) == "127.0.0.1", listening
    assert listening.get(server.ports["metrics"]) == "127.0.0.1", listening  # the metrics API is on, on loopback
    assert server.ports["grpc"] in listening and server.ports["http"] in listening
    # nothing else of ours listens on a non-loopback address except the two inference endpoints
    public = {port for port, ip in listening.items() if not ip.startswith("127.")}
    assert public <= {server.ports["grpc"], server.ports["http"]}, listening
    # and the metrics port answers on loopback only: not on any other address of this machine
    assert "# TYPE QueueTime gauge" in server.metrics_text()
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with pytest.raises(OSError), socket.create_connection((address, server.ports["metrics"]), timeout=2):
            pass


def prometheus_samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_batch_size_and_queue_metrics_on_the_loopback_metrics_api(server, client, photos):
    """A concurrent burst shows up in the handler's batch-size histogram (served by TorchServe's
    Prometheus metrics API from services/embedder/metrics.yaml) with plausible counts, next to
    TorchServe's queue metrics; the gateway's re-export reads the same page."""
    model = {"ModelName": "lookalike-lite0", "Level": "Model"}

    def batch_histogram(samples) -> dict[str, float]:
        found = {}
        for (name, labels), value in samples.items():
            labels = dict(labels)
            if name.startswith("lookalike_embedder_batch_size") and labels.items() >= model.items():
                found[name.removeprefix("lookalike_embedder_batch_size") + labels.get("le", "")] = value
        return found

    before = batch_histogram(prometheus_samples(server.metrics_text()))
    burst = list(photos) + list(photos[:4]) + [b"not an image"]  # 13 concurrent requests
    results = client.embed_many(burst, timeout=120, max_in_flight=len(burst))
    assert sum(isinstance(r, np.ndarray) for r in results) == len(burst) - 1
    headers = {"Authorization": f"Bearer {server.inference_key}", "Content-Type": "application/octet-stream"}
    rest = urllib.request.Request(f"{server.http_url}/predictions/lookalike-lite0", data=photos[2], headers=headers)
    with urllib.request.urlopen(rest, timeout=60) as answer:
        assert answer.status == 200
    sent = len(burst) + 1

    def delta() -> dict[str, float]:
        after = batch_histogram(prometheus_samples(server.metrics_text()))
        return {k: v - before.get(k, 0.0) for k, v in after.items()}

    deadline = time.monotonic() + 15  # worker metric lines reach the frontend a little after the answers
    while delta().get("_sum", 0.0) < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    d = delta()
    assert d["_sum"] == sent, d  # every request went through exactly one batch (the rejected one too)
    # the REST request is a batch of its own; the burst (batchSize 16) was merged into fewer batches than requests
    assert 2 <= d["_count"] < sent, d
    assert d["_bucket+Inf"] == d["_count"] and d["_bucket1.0"] < d["_count"], d  # some batch had several

    samples = prometheus_samples(server.metrics_text())
    names = {name for name, _ in samples}
    queue_time = [v for (name, _), v in samples.items() if name == "QueueTime"]
    assert queue_time and all(v >= 0 for v in queue_time)  # updated by gRPC and REST jobs
    assert {"ts_queue_latency_microseconds_total", "ts_inference_requests_total"} <= names, names
    requests = sum(v for (name, _), v in samples.items() if name == "ts_inference_requests_total")
    assert requests >= sent

    from lookalike_gateway.embedder_metrics import TorchServeMetrics

    reexported = {f.name: f for f in TorchServeMetrics(server.metrics_url).collect()}
    assert {"lookalike_embedder_batch_size", "lookalike_embedder_queue_time_ms",
            "lookalike_embedder_queue_latency_microseconds", "lookalike_embedder_requests"} <= set(reexported)
    count = sum(s.value for s in reexported["lookalike_embedder_batch_size"].samples
                if s.name == "lookalike_embedder_batch_size_count")
    assert count >= before.get("_count", 0.0) + d["_count"]


def test_java_and_every_worker_run_at_the_lower_priority_in_their_own_autogroup(server):
    """TorchServeProcess(nice=N), as `lookalike serve` starts it with LOOKALIKE_EMBEDDER_NICE: java and each
    Python worker it starts inherit nice N (lookalike.priority), and share one autogroup of nice N."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    pids = server.group_pids()
    cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids}
    workers = [pid for pid, cmd in cmdlines.items() if b"model_service_worker" in cmd]
    java = [pid for pid, cmd in cmdlines.items() if b"org.pytorch.serve.ModelServer" in cmd]
    assert workers and java, cmdlines
    assert {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == {pid: min(19, base + NICE) for pid in pids}
    if Path("/proc/self/autogroup").exists():
        groups = {Path(f"/proc/{pid}/autogroup").read_text().strip() for pid in pids}
        assert len(groups) == 1 and groups.pop().endswith(f"nice {NICE}")


def test_stop_leaves_no_process(server):
    """Runs last: stops the module's server."""
    pids = server.group_pids()
    java = [p for p in pids if "java" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode()]
    assert java and len(pids) >= 3  # launcher, java, one worker
    server.stop()
    assert server.group_pids() == []
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    leftovers = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                 if any(str(server.data_dir) in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []
