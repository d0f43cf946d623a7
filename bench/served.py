"""The embedder against its ceiling, all figures from ONE run (the machine is shared: compare ratios).

    python bench/served.py [--photos 900] [--load-seconds 30] [--json bench/results/served.json]

Yardstick -- the embedder's ceiling: one process decoding, preprocessing
(`lookalike_embedder.preprocessing.prepare`, on 2 decode threads) and running the ONNX Runtime model
(intra-op threads = the cores) on the same real photos at batch 16, the next batch decoded while the
current one runs. Everything the chain adds (TorchServe's frontend, gRPC, gateway, Qdrant, Redis, the
client) is overhead against it. Measured at the start and at the end of the run (their mean is the
ceiling; both are reported, with the load average).

Figures:
  * model only (ORT, preprocessed photos): batch-1 latency and batch-16 images/s; images/s and % of the
    matmul FLOP peak measured in the same run (bench/embedder_suite.py's counter);
  * ceiling: images/s, % of FLOP peak, decode + preprocess ms per photo;
  * served: TorchServe over gRPC, 32 concurrent clients, images/s (/ ceiling, % of peak);
  * ingest: `lookalike index` of the same photos (gRPC stream -> gateway -> TorchServe -> search), images/s;
  * uncached search over REST at concurrency 1 (test photos), each right after ORT batch-1 on the same
    photo in this process: p50 of both and of the difference (target: <= 15 ms);
  * cache hits over REST when idle (p50/p99), and bench/load.py's mixed load (32 clients, 20% new photos);
  * same model: served vectors vs eager PyTorch (lowest cosine over every test photo), and P@1/5/10 / mAP of
    the test photos against the ingested photos with served vs eager vectors (equal to 3 decimals?);
  * CPU milliseconds per image of every process (bench client, TorchServe java/worker, gateway, search,
    redis) during the ingest and the served run: where the time goes.
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
from common import cpu_delta, cpu_seconds, latency_stats, load_now, machine_info, usable_cpus  # noqa: E402
from quality import DEFAULT_DATASET, list_split  # noqa: E402

BATCH = 16


def log(msg: str) -> None:
    print(f"[served] {msg} (load {load_now()[0]})", flush=True)


def runner(threads: int):
    from lookalike_embedder import model as lk
    from lookalike_embedder.runtime import OnnxRunner

    eager = lk.load_model("cpu")
    return OnnxRunner(lk.export_onnx(eager), threads=threads), eager


def ceiling(run, photos: list[bytes], decode_threads: int, batch: int = BATCH) -> dict:
    """One process: decode + preprocess on `decode_threads` threads (the next batch while the current
    one runs through ORT), ORT at `batch`. Returns images/s and the decode+preprocess ms per photo."""
    from lookalike_embedder.preprocessing import prepare

    chunks = [photos[i:i + batch] for i in range(0, len(photos), batch)]
    with ThreadPoolExecutor(decode_threads) as pool:
        run(np.stack(list(pool.map(prepare, chunks[0]))))  # warm-up
        cpu_started = time.process_time()  # every thread of this process: decode pool + ORT's threads
        started = time.perf_counter()
        pending = pool.map(prepare, chunks[0])
        for i in range(len(chunks)):
            current = np.stack(list(pending))
            if i + 1 < len(chunks):
                pending = pool.map(prepare, chunks[i + 1])
            run(current)
        elapsed = time.perf_counter() - started
        cpu_ms = (time.process_time() - cpu_started) / len(photos) * 1000
    started = time.perf_counter()
    for data in photos[:200]:
        prepare(data)
    prep_ms = (time.perf_counter() - started) / min(200, len(photos)) * 1000
    return {"images_per_s": round(len(photos) / elapsed, 2), "cpu_ms_per_image": round(cpu_ms, 2),
            "decode_preprocess_ms_per_photo": round(prep_ms, 2),
            "photos": len(photos), "batch": batch, "decode_threads": decode_threads}


def model_only(run, photos: list[bytes]) -> dict:
    from lookalike_embedder.preprocessing import prepare

    arrays = [prepare(d) for d in photos[:64]]
    batch = np.stack(arrays[:BATCH])
    for _ in range(3):
        run(batch)
    rounds = 6
    started = time.perf_counter()
    for _ in range(rounds):
        run(batch)
    per_s = rounds * BATCH / (time.perf_counter() - started)
    lat = []
    for x in arrays[:32]:
        t = time.perf_counter()
        run(x[None])
        lat.append(time.perf_counter() - t)
    return {"batch16_images_per_s": round(per_s, 2), "batch1": latency_stats(lat)}


def served_throughput(client, photos: list[bytes], clients: int) -> tuple[dict, np.ndarray]:
    """TorchServe over gRPC with `clients` concurrent callers: figures and the served vectors."""
    with ThreadPoolExecutor(clients) as pool:  # warm-up: every caller's first request
        list(pool.map(lambda d: client.embed(d, timeout=120), photos[:clients]))
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        vectors = np.stack(list(pool.map(lambda d: client.embed(d, timeout=120), photos)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, "images": len(photos), "images_per_s": round(len(photos) / elapsed, 2)}, vectors


def same_model(served_catalogue: np.ndarray, served_queries: np.ndarray, catalogue: list[bytes],
               queries: list[bytes], catalogue_labels: list[str], query_labels: list[str]) -> dict:
    """Served (TorchServe + ORT) vectors vs eager PyTorch in this process: the lowest cosine over every
    photo, and P@1/5/10 / mAP of the test photos against the catalogue with either set of vectors."""
    import torch

    from lookalike_embedder import model as lk
    from lookalike_embedder.preprocessing import prepare
    from quality import retrieval_metrics

    fx = lk.FeatureExtractor("cpu")

    def eager(photos: list[bytes]) -> np.ndarray:
        return np.concatenate([fx.embed_batch(torch.from_numpy(np.stack([prepare(d) for d in photos[i:i + 32]])))
                               for i in range(0, len(photos), 32)])

    eager_catalogue, eager_queries = eager(catalogue), eager(queries)
    counts = {label: catalogue_labels.count(label) for label in set(catalogue_labels)}

    def metrics(cat: np.ndarray, qs: np.ndarray) -> dict:
        order = np.argsort(-(qs @ cat.T), axis=1)[:, :100]
        ranked = [[catalogue_labels[j] for j in row] for row in order]
        return {k: round(v, 3) if isinstance(v, float) else v
                for k, v in retrieval_metrics(ranked, query_labels, [counts.get(q, 0) for q in query_labels]).items()}

    served_m, eager_m = metrics(served_catalogue, served_queries), metrics(eager_catalogue, eager_queries)
    return {"min_cosine_test_photos": round(float((served_queries * eager_queries).sum(axis=1).min()), 7),
            "min_cosine_catalogue_photos": round(float((served_catalogue * eager_catalogue).sum(axis=1).min()), 7),
            "test_photos": len(queries), "served": served_m, "eager": eager_m,
            "p_at_k_identical_3_decimals": served_m == eager_m}


def rest_misses_vs_model(http_url: str, run, photos: list[Path]) -> dict:
    """Per photo: ORT batch 1 in this process, then POST /v1/search (a cache miss), one after the other."""
    import httpx
    from chain import rest_query

    from lookalike_embedder.preprocessing import prepare

    model_s, query_s, hit_s = [], [], []
    with httpx.Client(base_url=http_url, timeout=60) as http:
        def query(photo: Path, hit: bool) -> float:
            return rest_query(http, photo, hit)
        for photo in photos:
            x = prepare(photo.read_bytes())[None]
            started = time.perf_counter()
            run(x)
            model_s.append(time.perf_counter() - started)
            query_s.append(query(photo, False))
        for photo in photos:
            hit_s.append(query(photo, True))
    diff = np.subtract(query_s, model_s) * 1000
    return {"miss": latency_stats(query_s), "model_batch1": latency_stats(model_s),
            "p50_miss_minus_model_ms": round(float(np.percentile(diff, 50)), 2), "hit_idle": latency_stats(hit_s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--photos", type=int, default=900, help="training photos for the ceiling and the ingest")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load-seconds", type=float, default=30.0, help="bench/load.py's mixed load (0: skip)")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "served.json")
    args = parser.parse_args()

    import embedder_suite
    import load as load_bench

    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items
    from lookalike.stack import Stack, StackConfig

    cores = usable_cpus()
    result: dict = {"machine": machine_info(), "load_avg": {"start": load_now()}}
    log("model: export, FLOPs, matmul peak")
    run, eager = runner(cores)
    flops = embedder_suite.flops_per_image(eager)
    result["flops_per_image_g"] = round(flops / 1e9, 4)
    peaks = [embedder_suite.matmul_gflops()]

    with tempfile.TemporaryDirectory(prefix="lk-served-") as tmp:
        catalogue = Path(tmp) / "catalogue"
        train = sorted(p for p in (args.dataset / "train").glob("*/*") if p.is_file())
        step = max(1, len(train) // args.photos)
        picked = train[::step][:args.photos]
        for photo in picked:
            (catalogue / photo.parent.name).mkdir(parents=True, exist_ok=True)
            (catalogue / photo.parent.name / photo.name).symlink_to(photo)
        data = [p.read_bytes() for p in picked]

        log(f"ceiling (start): {len(data)} photos, batch {BATCH}")
        first = ceiling(run, data, cores)
        log(f"  {first['images_per_s']} img/s")
        result["model_only"] = model_only(run, data)
        log(f"model only: {result['model_only']['batch16_images_per_s']} img/s at batch 16, "
            f"batch 1 p50 {result['model_only']['batch1']['p50_ms']} ms")

        with Stack(StackConfig(data_dir=Path(tmp) / "stack", http_port=0, grpc_port=0)) as stack:
            warm = Path(tmp) / "warm"
            for photo in list_split(args.dataset, "validation")[0][:48]:
                (warm / photo.parent.name).mkdir(parents=True, exist_ok=True)
                (warm / photo.parent.name / photo.name).symlink_to(photo)
            index_items(stack.grpc_address, scan_folder(warm), progress=False)  # warm-up: a fresh stack is slow
            log("ingest: lookalike index of the same photos")
            before = cpu_seconds()
            report = index_items(stack.grpc_address, scan_folder(catalogue), progress=False)
            result["ingest"] = {"images": report.indexed, "failed": report.failed,
                                "seconds": round(report.seconds, 2), "images_per_s": round(report.rate, 2),
                                "cpu_ms_per_image": cpu_delta(before, cpu_seconds(), max(1, report.indexed))}
            log(f"  {report.rate:.1f} img/s")
            log(f"served: TorchServe over gRPC, {args.clients} clients")
            client = stack.torchserve.client()
            before = cpu_seconds()
            result["served"], served_catalogue = served_throughput(client, data, args.clients)
            result["served"]["cpu_ms_per_image"] = cpu_delta(before, cpu_seconds(), len(data) + args.clients)
            log(f"  {result['served']['images_per_s']} img/s")
            test_paths, test_labels = list_split(args.dataset, "test")
            test_bytes = [p.read_bytes() for p in test_paths]
            with ThreadPoolExecutor(8) as pool:
                served_queries = np.stack(list(pool.map(lambda d: client.embed(d, timeout=120), test_bytes)))
            client.close()
            test_photos = list_split(args.dataset, "test")[0][::6][:60]
            log(f"uncached REST search (concurrency 1) vs ORT batch 1: {len(test_photos)} test photos")
            result["rest"] = rest_misses_vs_model(stack.http_url, run, test_photos)
            log(f"  miss p50 {result['rest']['miss']['p50_ms']} ms, model b1 p50 "
                f"{result['rest']['model_batch1']['p50_ms']} ms, hit idle p50 {result['rest']['hit_idle']['p50_ms']}")
            if args.load_seconds > 0:
                log(f"mixed load: {args.clients} clients x {args.load_seconds:.0f} s, 20% new photos")
                hot = [p.read_bytes() for p in load_bench.photos(args.dataset, "test", 3)]
                cold = load_bench.unique_images(load_bench.photos(args.dataset, "validation", 5),
                                                int(args.load_seconds * 60 * 0.2) + 10, 7)
                import httpx
                with httpx.Client(base_url=stack.http_url, timeout=60) as http:
                    for image in hot:
                        http.post("/v1/search", files={"image": ("w.jpg", image, "image/jpeg")}).raise_for_status()
                mixed = load_bench.load_in_processes(stack.http_url, hot, cold, args.clients, 4, args.load_seconds,
                                                     0.2, 7, None, 30.0)
                result["mixed_load"] = {k: mixed[k] for k in ("clients", "client_processes", "seconds", "requests",
                                                              "errors", "shed_503", "statuses", "qps", "latency")}
                log(f"  cached {mixed['latency'].get('cached')}")
        log(f"same model: served vs eager PyTorch on {len(test_bytes)} test + {len(data)} catalogue photos")
        result["same_model"] = same_model(served_catalogue, served_queries, data, test_bytes,
                                          [p.parent.name for p in picked], test_labels)
        log(f"  {result['same_model']['min_cosine_test_photos']} P@k identical: "
            f"{result['same_model']['p_at_k_identical_3_decimals']}")
        peaks.append(embedder_suite.matmul_gflops())
        log("ceiling (end)")
        last = ceiling(run, data, cores)
    result["load_avg"]["end"] = load_now()

    ceiling_ips = (first["images_per_s"] + last["images_per_s"]) / 2
    peak = max(peaks)
    result["matmul_peak_gflops"] = [round(p, 1) for p in peaks]

    def share(ips: float) -> dict:
        return {"images_per_s": round(ips, 2), "of_ceiling": round(ips / ceiling_ips, 3),
                "of_flop_peak": round(ips * flops / 1e9 / peak, 3)}

    result["ceiling"] = {"start": first, "end": last, **share(ceiling_ips)}
    result["summary"] = {
        "model_only_batch16": share(result["model_only"]["batch16_images_per_s"]),
        "ceiling": share(ceiling_ips),
        "served_32_clients": share(result["served"]["images_per_s"]),
        "ingest": share(result["ingest"]["images_per_s"]),
        # CPU time per image (all threads, all processes of the chain): what the machine's other load does
        # not change much; the ceiling's over the chain's is the share of the CPU the model work keeps
        "cpu_ms_per_image": {
            "ceiling": round((first["cpu_ms_per_image"] + last["cpu_ms_per_image"]) / 2, 2),
            "ingest_all_processes": round(sum(result["ingest"]["cpu_ms_per_image"].values()), 2),
            "served_all_processes": round(sum(result["served"]["cpu_ms_per_image"].values()), 2)},
        "uncached_rest_p50_minus_ort_batch1_p50_ms": round(result["rest"]["miss"]["p50_ms"]
                                                            - result["rest"]["model_batch1"]["p50_ms"], 2),
        "cache_hit_idle_p50_ms": result["rest"]["hit_idle"]["p50_ms"],
        "served_vs_eager_min_cosine_test_photos": result["same_model"]["min_cosine_test_photos"],
        "p_at_k_identical_3_decimals": result["same_model"]["p_at_k_identical_3_decimals"],
        "cache_hit_p99_ms_under_load": (result.get("mixed_load", {}).get("latency", {}).get("cached") or {})
        .get("p99_ms"),
    }
    cpu = result["summary"]["cpu_ms_per_image"]
    cpu["ceiling_over_ingest"] = round(cpu["ceiling"] / cpu["ingest_all_processes"], 3)
    cpu["ceiling_over_served"] = round(cpu["ceiling"] / cpu["served_all_processes"], 3)
    print(json.dumps(result["summary"], indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
