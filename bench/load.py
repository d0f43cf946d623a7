"""Load test of the gateway's REST search: N concurrent clients for a fixed time, a mix of cached queries
(photos seen before: embedding from Redis) and uncached ones (unique images: TorchServe runs), loopback only.

The clients are spread over --processes client processes, each client with its own keep-alive connection: one
Python process driving 32 clients through one httpx pool added seconds of its own to the tail (p99 ~4 s
client-side while the gateway's own time stayed under 0.3 s). A 503 is an uncached query shed by the gateway's
embed gate (counted apart from errors).

Prints (and writes as JSON) requests, errors by status, QPS and latency p50/p90/p99, overall and per kind, and
(with its own stack) the CPU milliseconds per request of every process: the load client, gateway, search,
Redis, TorchServe.

    python bench/load.py                         # starts its own stack with a small catalogue
    python bench/load.py --url http://127.0.0.1:8080 --clients 32 --seconds 60 --uncached 0.2

Bounded by design: it stops after --seconds (plus at most one request timeout), never retries, and refuses
any target that is not a loopback address.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import ipaddress
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lookalike import api_keys  # noqa: E402

from common import DEFAULT_DATASET  # noqa: E402  (bench/ is on sys.path when a bench runs)


def require_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"refusing to load {url}: not a loopback address ({', '.join(sorted(addresses))})")


def photos(dataset: Path, split: str, per_class: int) -> list[Path]:
    root = dataset / split
    if not root.is_dir():
        raise SystemExit(f"no photos at {root} (use --dataset)")
    return [p for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.iterdir())[:per_class]]


def unique_images(sources: list[Path], count: int, seed: int, side: int = 160) -> list[bytes]:
    """`count` JPEGs no cache has seen: random crops of the sources, resized (made before the clock starts)."""
    from PIL import Image

    rng = random.Random(seed)
    decoded = [Image.open(p).convert("RGB") for p in sources]
    out = []
    for i in range(count):
        image = decoded[i % len(decoded)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
        x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
        buffer = io.BytesIO()
        image.crop((x, y, x + cw, y + ch)).resize((side, side)).save(buffer, "JPEG", quality=rng.randint(70, 92))
        out.append(buffer.getvalue())
    return out


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
    return {"n": len(ordered), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1] * 1000, 1)}


async def run_load(url: str, hot: list[bytes], cold: list[bytes], clients: int, seconds: float,
                   uncached: float, seed: int, api_key: str | None, timeout_s: float,
                   start_at: float | None = None, rate: float = 0.0, clients_total: int | None = None) -> dict:
    """`clients` closed-loop clients in this process, each with its own keep-alive connection, from
    `start_at` (time.time(); default now) for `seconds`. Returns the raw samples (see `merge`)."""
    import httpx

    clients_total = clients_total or clients
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    rng = random.Random(seed)
    cold_iter = iter(cold)
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    server: dict[str, list[float]] = collections.defaultdict(list)  # the gateway's own took_ms
    statuses: collections.Counter = collections.Counter()
    cache_hits = collections.Counter()
    errors: list[str] = []
    headers = api_keys.headers(api_key)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    stop_at = time.monotonic() + seconds

    async with contextlib.AsyncExitStack() as stack:
        async def client(index: int) -> None:
            # one connection per client, not one shared pool: httpx's pool hands connections out unfairly
            # under many concurrent requests
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, headers=headers))
            local = random.Random(rng.random())
            interval = clients_total / rate if rate else 0.0  # this client's share of the offered rate
            next_at = time.perf_counter() + local.random() * interval
            while time.monotonic() < stop_at:
                if rate:  # paced: wait for the scheduled send; latency counts from the schedule (no
                    # coordinated omission: a late send is charged to the server's backlog)
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                kind = "uncached" if local.random() < uncached else "cached"
                image = next(cold_iter, None) if kind == "uncached" else local.choice(hot)
                if image is None:  # the unique images ran out: count it, keep the clients busy with hot ones
                    kind, image = "cached", local.choice(hot)
                started = next_at if rate else time.perf_counter()
                next_at += interval
                try:
                    response = await http.post("/v1/search", files={"image": ("q.jpg", image, "image/jpeg")},
                                               data={"top_k": "10"})
                    status = str(response.status_code)
                    if response.status_code == 200:
                        body = response.json()
                        cache_hits[(kind, body["cache_hit"])] += 1
                        server[kind].append(body["took_ms"] / 1000)
                    elif len(errors) < 20:
                        errors.append(f"{status} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                    if len(errors) < 20:
                        errors.append(f"{status} {exc}")
                elapsed = time.perf_counter() - started
                statuses[status] += 1
                if status == "200":
                    latencies[kind].append(elapsed)
                    latencies["all"].append(elapsed)

        began = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.monotonic() - began
    return {"wall": wall, "latencies": dict(latencies), "server": dict(server), "statuses": dict(statuses),
            "cache_hits": dict(cache_hits), "errors": errors}


def _process(args: tuple) -> dict:
    return asyncio.run(run_load(*args))


def merge(url: str, clients: int, uncached: float, parts: list[dict]) -> dict:
    """One report from the raw samples of every client process."""
    latencies, server = collections.defaultdict(list), collections.defaultdict(list)
    statuses, cache_hits, errors = collections.Counter(), collections.Counter(), []
    for part in parts:
        for k, v in part["latencies"].items():
            latencies[k].extend(v)
        for k, v in part["server"].items():
            server[k].extend(v)
        statuses.update(part["statuses"])
        cache_hits.update(part["cache_hits"])
        errors.extend(part["errors"])
    wall = max(part["wall"] for part in parts)
    ok, shed = statuses.get("200", 0), statuses.get("503", 0)
    total = sum(statuses.values())
    return {"url": url, "clients": clients, "client_processes": len(parts), "seconds": round(wall, 1),
            "uncached_fraction": uncached, "requests": total, "ok": ok, "shed_503": shed,
            "errors": total - ok - shed, "statuses": dict(statuses), "qps": round(ok / wall, 1),
            "latency": {k: summary(v) for k, v in latencies.items()},
            "server_took": {k: summary(v) for k, v in server.items()},
            "cache_hit_by_kind": {f"{k}:{'hit' if hit else 'miss'}": n for (k, hit), n in cache_hits.items()},
            "error_samples": errors[:20]}


def load_in_processes(url: str, hot: list[bytes], cold: list[bytes], clients: int, processes: int,
                      seconds: float, uncached: float, seed: int, api_key: str | None, timeout_s: float,
                      rate: float = 0.0) -> dict:
    """The clients spread over `processes` client processes (one Python process cannot drive 32 clients
    on a busy machine without its own event loop adding seconds to the tail), all starting together."""
    import multiprocessing

    processes = max(1, min(processes, clients))
    start_at = time.time() + 2.0 + 0.5 * processes  # after every process has imported httpx
    jobs = [(url, hot, cold[i::processes], clients // processes + (i < clients % processes), seconds, uncached,
             seed + i, api_key, timeout_s, start_at, rate, clients) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_process, jobs)
    merged = merge(url, clients, uncached, parts)
    merged["offered_rate_qps"] = rate or None  # None: closed loop (each client sends as soon as answered)
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="gateway base URL (loopback only); default: start a stack here")
    parser.add_argument("--api-key")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--processes", type=int, default=4, help="client processes the clients are spread over")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offered requests/s over all clients (paced, latency from the schedule); "
                             "0 = closed loop, each client sends as soon as it is answered")
    parser.add_argument("--uncached", type=float, default=0.2, help="fraction of queries with a never-seen image")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request client timeout (s)")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "load.json")
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 1 <= args.seconds <= 600 and 0 <= args.uncached <= 1):
        raise SystemExit("--clients 1..256, --seconds 1..600, --uncached 0..1")

    hot_photos = photos(args.dataset, "test", 3)
    hot = [p.read_bytes() for p in hot_photos]
    # enough unique images for the embedder at ~3x what it can do on a small CPU machine
    cold = unique_images(photos(args.dataset, "validation", 5), int(args.seconds * max(60.0, args.rate) * args.uncached) + 10,
                         args.seed)

    stack = None
    url = args.url
    if url is None:
        from lookalike.catalogue_reader import scan_folder
        from lookalike.ingest import index_items
        from lookalike.stack import Stack, StackConfig

        data_dir = Path(tempfile.mkdtemp(prefix="lk-load-"))
        catalogue = data_dir / "catalogue"
        for photo in photos(args.dataset, "train", 10):
            (catalogue / photo.parent.name).mkdir(parents=True, exist_ok=True)
            (catalogue / photo.parent.name / photo.name).symlink_to(photo)
        print(f"starting a stack in {data_dir} ...", file=sys.stderr)
        stack = Stack(StackConfig(data_dir=data_dir, http_port=0, grpc_port=0)).start()
        report = index_items(stack.grpc_address, scan_folder(catalogue), progress=False)
        print(f"indexed {report.indexed} products", file=sys.stderr)
        url = stack.http_url
    try:
        require_loopback(url)
        import httpx

        with httpx.Client(base_url=url, timeout=60, headers=api_keys.headers(args.api_key)) \
                as http:
            for image in hot:  # warm the cache: these are the "cached" queries
                http.post("/v1/search", files={"image": ("w.jpg", image, "image/jpeg")}).raise_for_status()
        print(f"load: {args.clients} clients x {args.seconds:.0f}s against {url}, "
              f"{args.uncached:.0%} uncached ({len(hot)} cached images, {len(cold)} unique ones ready)",
              file=sys.stderr)
        from common import cpu_delta, cpu_seconds

        before = cpu_seconds() if stack is not None else None
        result = load_in_processes(url, hot, cold, args.clients, args.processes, args.seconds, args.uncached,
                                   args.seed, args.api_key, args.timeout, args.rate)
        if before is not None:  # its own stack: where the CPU went, per request (load client included)
            result["cpu_ms_per_request"] = cpu_delta(before, cpu_seconds(), max(1, result["requests"]))
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.data_dir, ignore_errors=True)
    all_ = result["latency"].get("all", {})
    print(f"offered {args.rate or 'closed loop'} QPS  requests {result['requests']}  ok {result['ok']}  errors {result['errors']}  "
          f"QPS {result['qps']}  p50 {all_.get('p50_ms')} ms  p99 {all_.get('p99_ms')} ms")
    for kind in ("cached", "uncached"):
        stats = result["latency"].get(kind, {})
        print(f"  {kind:9s} n={stats.get('n', 0):6d}  p50 {stats.get('p50_ms')} ms  p90 {stats.get('p90_ms')} ms  "
              f"p99 {stats.get('p99_ms')} ms  max {stats.get('max_ms')} ms")
        took = result["server_took"].get(kind, {})
        print(f"  {'':9s} gateway took_ms p50 {took.get('p50_ms')} p99 {took.get('p99_ms')}")
    print(f"  statuses {result['statuses']} (503 = uncached queries shed by the embed gate)  "
          f"cache {result['cache_hit_by_kind']}")
    if "cpu_ms_per_request" in result:
        print(f"  CPU ms per request: {result['cpu_ms_per_request']}")
    for sample in result["error_samples"][:5]:
        print("  error:", sample)
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
