"""A/B of the embedder's CPU priority in one run: does running TorchServe (java + its Python workers) at a
lower priority keep cache hits fast under the 32-client mixed load of bench/load.py?

One stack, one catalogue, one warm cache. The configurations alternate in ABBA order (`--rounds` rounds of
each), switching the live TorchServe processes' priority between rounds: the nice value of every process of
its session and the nice value of its autogroup (/proc/<pid>/autogroup: with the kernel's autogroup
scheduling on, CPU is shared between sessions first, so a process nice alone changes nothing against the
gateway, which runs in its own session). Each round measures:

- idle: cache hits at concurrency 1, nothing else running from the bench (`--idle` requests);
- loaded: `--clients` clients over `--processes` processes (closed loop, or paced at `--rate` QPS in all),
  `--uncached` new photos, `--seconds`.

`--redis-timeout` adds the gateway's Redis timeout as a second factor (the gateway restarts when it changes).

Writes bench/results/hit_priority.json (per round and per configuration: latencies, QPS, shed 503s, hot photos
that missed the cache, the gateway's CPU ms per request, the load average).

    python bench/hit_priority.py --nice 0 5 10 --rounds 3 --seconds 20
    python bench/hit_priority.py --nice 0 10 --redis-timeout 0.05 0.25 --rate 100
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import DEFAULT_DATASET, load_in_processes, photos, summary, unique_images  # noqa: E402


def set_priority(pids: list[int], nice: int) -> None:
    """Every pid at `nice`, and their autogroup(s) too."""
    from lookalike import priority

    for pid in pids:
        priority.renice(pid, nice)
    for pid in pids:
        priority.set_autogroup_nice(pid, nice)


def idle_hits(url: str, hot: list[bytes], n: int) -> dict:
    import httpx

    samples = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(n):
            image = hot[i % len(hot)]
            started = time.perf_counter()
            response = http.post("/v1/search", files={"image": ("q.jpg", image, "image/jpeg")}, data={"top_k": "10"})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if response.json()["cache_hit"]:
                samples.append(elapsed)
    return summary(samples)


def label(nice: int, redis_timeout: float) -> str:
    return f"nice={nice} redis_timeout_s={redis_timeout:g}"


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nice", type=int, nargs="+", default=[0, 10],
                        help="the embedder nice values compared (0 = same priority as the rest)")
    parser.add_argument("--redis-timeout", type=float, nargs="+", default=[0.05],
                        help="gateway Redis timeouts compared (LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S; the gateway "
                             "restarts between rounds when it changes)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of each configuration (alternating order: forward, then reversed)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offered QPS over all clients (paced, as bench/load.py --rate); 0 = closed loop")
    parser.add_argument("--uncached", type=float, default=0.2)
    parser.add_argument("--idle", type=int, default=150, help="sequential cache hits per round (idle p50)")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "hit_priority.json")
    args = parser.parse_args()

    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items
    from lookalike.stack import Stack, StackConfig
    import httpx

    configs = [(n, t) for n in args.nice for t in args.redis_timeout]
    order = [c for r in range(args.rounds) for c in (configs if r % 2 == 0 else configs[::-1])]
    hot = [p.read_bytes() for p in photos(args.dataset, "test", 3)]
    # enough new photos for ~400 QPS: a client that runs out sends hot ones instead
    cold_all = unique_images(photos(args.dataset, "validation", 5),
                             int(args.seconds * max(400, args.rate) * args.uncached) * len(order) + 10, 7)
    per_round = len(cold_all) // len(order)

    data_dir = Path(tempfile.mkdtemp(prefix="lk-prio-"))
    catalogue = data_dir / "catalogue"
    for photo in photos(args.dataset, "train", 10):
        (catalogue / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (catalogue / photo.parent.name / photo.name).symlink_to(photo)

    def gateway_env(redis_timeout: float) -> dict:
        return {"LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S": str(redis_timeout)}
    stack = Stack(StackConfig(data_dir=data_dir, http_port=0, grpc_port=0, embedder_nice=0,
                              extra_gateway_env=gateway_env(*order[0][1:]))).start()
    rounds = []
    try:
        index_items(stack.grpc_address, scan_folder(catalogue), progress=False)
        url = stack.http_url
        with httpx.Client(base_url=url, timeout=60) as http:
            for image in hot:
                http.post("/v1/search", files={"image": ("w.jpg", image, "image/jpeg")}).raise_for_status()
        for i, (nice, redis_timeout) in enumerate(order):
            wanted = gateway_env(redis_timeout)
            if any(stack.gateway.env.get(k) != v for k, v in wanted.items()):
                stack.gateway.stop()
                stack.gateway.env.update(wanted)
                stack.restart_gateway()
                stack.wait_healthy(60)
            set_priority(stack.torchserve.group_pids(), nice)
            load_before = os.getloadavg()[0]
            gateway_pid = stack.gateway.proc.pid
            cpu_before = process_cpu_s(gateway_pid)
            idle = idle_hits(url, hot, args.idle)
            idle_cpu_ms = (process_cpu_s(gateway_pid) - cpu_before) / max(1, idle["n"]) * 1000
            cpu_before = process_cpu_s(gateway_pid)
            loaded = load_in_processes(url, hot, cold_all[i * per_round:(i + 1) * per_round], args.clients,
                                       args.processes, args.seconds, args.uncached, 100 + i, None, 30.0,
                                       args.rate)
            loaded_cpu_ms = (process_cpu_s(gateway_pid) - cpu_before) / max(1, loaded["requests"]) * 1000
            row = {"round": i, "config": label(nice, redis_timeout), "embedder_nice": nice,
                   "redis_timeout_s": redis_timeout, "loadavg_1m_before": round(load_before, 2),
                   "gateway_cpu_ms_per_idle_hit": round(idle_cpu_ms, 2),
                   "gateway_cpu_ms_per_loaded_request": round(loaded_cpu_ms, 2),
                   "loadavg_1m_after": round(os.getloadavg()[0], 2), "idle_hit": idle,
                   "qps": loaded["qps"], "shed_503": loaded["shed_503"], "errors": loaded["errors"],
                   "latency": loaded["latency"], "server_took": loaded["server_took"],
                   "cache_hit_by_kind": loaded["cache_hit_by_kind"]}
            rounds.append(row)
            hit, miss = loaded["latency"].get("cached", {}), loaded["latency"].get("uncached", {})
            print(f"round {i} {row['config']} load {load_before:.1f}: idle hit p50 {idle.get('p50_ms')} ms "
                  f"gw cpu {idle_cpu_ms:.2f}/{loaded_cpu_ms:.2f} ms | "
                  f"{loaded['qps']} QPS hit p50 {hit.get('p50_ms')} p99 {hit.get('p99_ms')} ms "
                  f"miss p50 {miss.get('p50_ms')} p99 {miss.get('p99_ms')} shed {loaded['shed_503']} "
                  f"cache {loaded['cache_hit_by_kind']}", flush=True)
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    def median(rows, kind, key):
        values = [r["latency"].get(kind, {}).get(key) for r in rows]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    by_config = {}
    for config in configs:
        mine = [r for r in rounds if r["config"] == label(*config)]
        by_config[label(*config)] = {
            "rounds": len(mine),
            "gateway_cpu_ms_per_idle_hit": statistics.median(r["gateway_cpu_ms_per_idle_hit"] for r in mine),
            "gateway_cpu_ms_per_loaded_request": statistics.median(r["gateway_cpu_ms_per_loaded_request"]
                                                                   for r in mine),
            "idle_hit_p50_ms": statistics.median(r["idle_hit"]["p50_ms"] for r in mine),
            "loaded_hit_p50_ms": median(mine, "cached", "p50_ms"),
            "loaded_hit_p99_ms": median(mine, "cached", "p99_ms"),
            "loaded_hit_p99_ms_each": [r["latency"].get("cached", {}).get("p99_ms") for r in mine],
            "loaded_miss_p50_ms": median(mine, "uncached", "p50_ms"),
            "loaded_miss_p99_ms": median(mine, "uncached", "p99_ms"),
            "qps": statistics.median(r["qps"] for r in mine),
            "shed_503": sum(r["shed_503"] for r in mine),
            "hot_photos_missed": sum(r["cache_hit_by_kind"].get("cached:miss", 0) for r in mine),
            "loadavg_1m": [r["loadavg_1m_before"] for r in mine]}
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "cpus": os.cpu_count(), "rounds": rounds, "by_config": by_config}
    print(json.dumps(by_config, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
