"""Workers x threads and batch size / max batch delay of the served embedder, measured (not guessed).

For each configuration: a TorchServe with that archive (build_mar.py options) and
LOOKALIKE_EMBEDDER_THREADS = cores / workers (intra-op threads x workers = cores), then images/s and
per-request latency p50/p99 over gRPC with 1, 8 and 32 concurrent clients on real photos. The
configurations run one after the other, twice in alternating order (ABC...CBA), so the machine's
drifting load hits them alike; the report keeps each figure's mean of the two passes.

    python bench/embedder_tuning.py [--json bench/results/embedder_tuning.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import load_now, usable_cpus  # noqa: E402
from quality import DEFAULT_DATASET, list_split  # noqa: E402

#: (workers, batch size, max batch delay ms)
CONFIGS = [(1, 16, 1), (1, 4, 1), (1, 32, 1), (1, 16, 5), (2, 16, 1), (2, 8, 1)]
CLIENTS = (1, 8, 32)


def measure(client, photos: list[bytes], clients: int, n: int) -> dict:
    work = [photos[i % len(photos)] for i in range(n)]
    latencies: list[float] = []

    def one(data: bytes) -> None:
        started = time.perf_counter()
        client.embed(data, timeout=120)
        latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(clients) as pool:  # warm-up: every client's first call
        list(pool.map(lambda d: client.embed(d, timeout=120), work[:clients]))
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, work))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"images_per_s": n / elapsed, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def run_config(config, photos: list[bytes], cores: int, store_root: Path) -> dict:
    from lookalike.torchserve_config import build_embedder_mar
    from lookalike.torchserve_process import TorchServeProcess

    workers, batch, delay = config
    threads = max(1, cores // workers)
    # one store: the archive is rebuilt per configuration, the checked ONNX export is reused
    build_embedder_mar(store_root, workers=workers, batch_size=batch, max_batch_delay=delay)
    with tempfile.TemporaryDirectory(prefix="lk-tune-") as tmp, TorchServeProcess(
            tmp, model_store=store_root, env={"LOOKALIKE_EMBEDDER_THREADS": str(threads)}) as ts:
        client = ts.client()
        deadline = time.monotonic() + 60
        while not client.model_ready(timeout=5):  # a loaded machine: the channel may need a few tries
            if time.monotonic() > deadline:
                raise RuntimeError("TorchServe did not answer within 60 s")
            time.sleep(0.5)
        out = {f"c{c}": measure(client, photos, c, {1: 30, 8: 120, 32: 256}[c]) for c in CLIENTS}
        client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "embedder_tuning.json")
    args = parser.parse_args()
    cores = usable_cpus()
    photos = [p.read_bytes() for p in list_split(args.dataset, "validation")[0][::3][:160]]
    runs: dict[tuple, list[dict]] = {c: [] for c in CONFIGS}
    loads = [load_now()]
    with tempfile.TemporaryDirectory() as store_root:
        for order in (CONFIGS, CONFIGS[::-1]):
            for config in order:
                figures = run_config(config, photos, cores, Path(store_root))
                runs[config].append(figures)
                print(f"workers={config[0]} batch={config[1]} delay={config[2]}ms: " + "  ".join(
                    f"{k}: {v['images_per_s']:.1f} img/s p50 {v['p50_ms']:.0f} ms" for k, v in figures.items())
                    + f"  (load {load_now()[0]})", flush=True)
                loads.append(load_now())
    table = []
    for config, passes in runs.items():
        row = {"workers": config[0], "threads": max(1, cores // config[0]), "batch_size": config[1],
               "max_batch_delay_ms": config[2]}
        for key in passes[0]:
            row[key] = {m: round(float(np.mean([p[key][m] for p in passes])), 1) for m in passes[0][key]}
        table.append(row)
    best = max(table, key=lambda r: r["c32"]["images_per_s"])
    result = {"cores": cores, "load_avg": loads, "configs": table,
              "best_at_32_clients": {k: best[k] for k in ("workers", "threads", "batch_size", "max_batch_delay_ms")}}
    print(json.dumps(result["best_at_32_clients"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
