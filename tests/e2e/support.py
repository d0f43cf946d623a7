"""Helpers for the failure, hostile-input and security tests (their own stacks and extra gateways)."""
from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from lookalike.stack import ManagedProcess, Stack, wait_for_port_file
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2


def metric(http: httpx.Client, name: str, **labels) -> float:
    """Sum of the Prometheus samples `name` (with these label values) on the gateway's /metrics."""
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Polls `condition` until true; returns the seconds it took, fails the test after `timeout`."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (httpx.HTTPError, grpc.RpcError, OSError):
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


def healthz(base_url: str) -> int:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=3).status_code
    except httpx.HTTPError:
        return 0


def grpc_health(address: str, service: str = "lookalike.v1.Lookalike") -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                timeout=3).status
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def variant(photo: Path, seed: int, size: int | None = None) -> bytes:
    """A JPEG the cache has not seen: the photo rotated by a seed-dependent angle (optionally resized)."""
    image = Image.open(photo).convert("RGB").rotate(1 + seed % 350)
    if size:
        image = image.resize((size, size))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def upsert(stub: lookalike_pb2_grpc.LookalikeStub, items: Iterable[tuple[types_pb2.Product, bytes]],
           timeout: float = 120) -> list[lookalike_pb2.UpsertProductsResponse]:
    requests = (lookalike_pb2.UpsertProductsRequest(product=p, image=image) for p, image in items)
    return list(stub.UpsertProducts(requests, timeout=timeout))


def catalogue(root: Path, categories: tuple[str, ...], per_category: int) -> list[tuple[types_pb2.Product, bytes]]:
    items = []
    for category in categories:
        for photo in sorted((root / category).iterdir())[:per_category]:
            items.append((types_pb2.Product(id=f"{category}/{photo.name}", title=photo.stem, category=category,
                                            price=10.0 + len(items)), photo.read_bytes()))
    return items


def sigcont_all(stack: Stack) -> None:
    for process in (stack.redis, stack.search, stack.gateway):
        if process is not None:
            process.signal(signal.SIGCONT)
    if stack.torchserve is not None:
        for pid in stack.torchserve.group_pids():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def torchserve_pids(stack: Stack, kind: str) -> list[int]:
    """Pids of TorchServe's Python model workers (kind "worker") or its Java frontend (kind "java")."""
    marker = b"model_service_worker" if kind == "worker" else b"org.pytorch.serve.ModelServer"
    pids = []
    for pid in stack.torchserve.group_pids():
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return pids


def heal(stack: Stack, timeout: float = 120) -> None:
    """Brings every dependency back (SIGCONT, restart what died) and waits for /healthz 200."""
    sigcont_all(stack)
    if not stack.redis.alive():
        stack.restart_redis()
    if not stack.search.alive():
        stack.restart_search()
    if stack.torchserve.proc is None or stack.torchserve.proc.poll() is not None \
            or not torchserve_pids(stack, "java"):
        stack.torchserve.restart()
    if not stack.gateway.alive():
        stack.start_gateway()
    stack.wait_healthy(timeout)


class ExtraGateway:
    """A second gateway process against a stack's backends, with its own settings (e.g. API keys)."""

    def __init__(self, stack: Stack, name: str, **settings: object):
        self.stack = stack
        self.port_file = stack.data_dir / f"{name}.port"
        env = stack.gateway_env()
        env.update({"LOOKALIKE_GATEWAY_PORT_FILE": str(self.port_file), "LOOKALIKE_GATEWAY_HTTP_PORT": "0",
                    "LOOKALIKE_GATEWAY_GRPC_PORT": "0"})
        env.update({f"LOOKALIKE_GATEWAY_{k.upper()}": str(v) for k, v in settings.items()})
        self.process = ManagedProcess(name, [sys.executable, "-m", "lookalike_gateway"], stack.logs / f"{name}.log",
                                      env=env)
        self.http_url = ""
        self.grpc_address = ""

    def start(self, timeout: float = 90) -> "ExtraGateway":
        self.port_file.unlink(missing_ok=True)
        self.process.start()
        ports = wait_for_port_file(self.port_file, self.process, 60)
        self.http_url = f"http://127.0.0.1:{ports['http']}"
        self.grpc_address = f"127.0.0.1:{ports['grpc']}"
        wait_until(lambda: healthz(self.http_url) == 200, timeout, f"{self.process.name} healthy")
        return self

    def stop(self) -> None:
        self.process.stop()
