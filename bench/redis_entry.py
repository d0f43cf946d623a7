"""Measures what one cached query embedding costs in Redis (input of deploy/CAPACITY.md).

    python bench/redis_entry.py [--keys 20000] [--out bench/results/redis_entry.json]

Starts a throw-away redis-server (no persistence, on a free loopback port), writes KEYS entries exactly as the
gateway's cache does (lookalike_gateway.cache: key `lookalike:emb:<model id>:<sha256 hex>`, value = the
1280-d float32 vector packed by lookalike.vectors.pack, SET with EX ttl) and reports used_memory per entry
(INFO memory delta / KEYS) and MEMORY USAGE of one key. Needs redis-server on PATH.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike.ports import free_port


def measure(keys: int, dim: int = 1280, model_id: str = "lookalike-lite0", ttl_s: int = 7 * 24 * 3600) -> dict:
    import redis

    from lookalike import vectors

    server = shutil.which("redis-server")
    if not server:
        raise SystemExit("redis-server not found on PATH")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="lk-redis-entry-")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        version = client.info("server")["redis_version"]
        before = client.info("memory")["used_memory"]
        rng = np.random.default_rng(0)
        pipe = client.pipeline(transaction=False)
        sample_key = None
        for i in range(keys):
            vec = rng.standard_normal(dim).astype(np.float32)
            key = f"lookalike:emb:{model_id}:{hashlib.sha256(i.to_bytes(8, 'little')).hexdigest()}"
            sample_key = sample_key or key
            pipe.set(key, vectors.pack(vec), ex=ttl_s)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        after = client.info("memory")["used_memory"]
        value_bytes = dim * 4
        per_entry = (after - before) / keys
        return {
            "redis_version": version, "keys": keys, "dim": dim, "value_bytes": value_bytes,
            "key_example": sample_key, "key_bytes": len(sample_key), "ttl_s": ttl_s,
            "used_memory_delta_bytes": after - before,
            "bytes_per_entry": round(per_entry, 1),
            "overhead_bytes_per_entry": round(per_entry - value_bytes, 1),
            "memory_usage_one_key": client.memory_usage(sample_key),
            "method": "redis-server (no persistence), SET key value EX ttl as lookalike_gateway.cache does; "
                      "INFO memory used_memory delta / keys",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "redis_entry.json"))
    args = parser.parse_args()
    result = measure(args.keys)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
