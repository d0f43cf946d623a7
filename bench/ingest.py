"""Ingest benchmark: `lookalike index` end to end against model-only throughput, the cost of a re-run, and
the ingest client's peak memory for catalogues of 3.1k, 3.8k and 50k products. All figures from one run
(the machine is shared and noisy: compare the ratios, which are measured side by side).

    python bench/ingest.py [--dataset DIR] [--limit N] [--synthetic 50000] [--engine qdrant-edge|qdrant-local]
                           [--json bench/results/ingest.json]

1. model-only images/s at the TorchServe batch size (16), lookalike_embedder.bench.benchmark_model,
   before the ingest;
2. a fresh stack; `lookalike index <dataset>/train` (3,068 photos) as a child process: products/s,
   CPU seconds of every process of the chain (what limits the ratio), the client's peak RSS;
3. the same command again: every product UNCHANGED, TorchServe's request counter unchanged (0 embeddings);
4. model-only again, right after (the chain idle); ratio = ingest products/s / mean(model-only before,
   after); and the same comparison in CPU time, which the machine's other loads do not distort:
   model-only CPU ms per image / the whole chain's CPU ms per product;
5. `lookalike index <dataset>` (train+validation+test = 3,781 products under other ids): the training
   photos' embeddings come from the Redis cache, the 713 others are embedded; the client's peak RSS;
6. a synthetic manifest of --synthetic rows (the 3,781 photos repeated under other ids) indexed with
   --skip-duplicates: every row is an exact duplicate, detected by the gateway and not stored, so the
   whole chain runs except the embedder (50k through the real embedder would take hours on two CPUs);
   the client reads, streams and reports every row, so its peak RSS is the figure to compare with step 5.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (children inherit it)

ROOT = Path(__file__).resolve().parent.parent
from common import DEFAULT_DATASET  # noqa: E402  (bench/ is on sys.path when a bench runs)
SUMMARY = re.compile(r"(\d+) of (\d+) products in ([\d.]+)s \(([\d.]+)/s\): (\d+) new, (\d+) updated, "
                     r"(\d+) unchanged, (\d+) failed(?:; (\d+) duplicates \((\d+) skipped\))?")


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a process: its peak resident set since it exec'd (rusage's ru_maxrss would also count the
    pages of this big parent, torch loaded, that the child shared between fork and exec)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def run_client(args: list[str], log: Path) -> dict:
    """Runs `lookalike index ...` as a child; its summary, wall time, CPU time and peak RSS."""
    command = [sys.executable, "-m", "lookalike.cli", "index", "-q", *args]
    started = time.perf_counter()
    peak = 0
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while True:
            waited, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if waited:
                break
            peak = max(peak, peak_rss_kib(proc.pid) or 0)  # monotonic: the last read is the peak so far
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    text = log.read_text()
    found = SUMMARY.search(text)
    if not found:
        raise RuntimeError(f"index failed (exit {proc.returncode}):\n{text[-3000:]}")
    done, total, seconds, rate, new, updated, unchanged, failed, dups, skipped = found.groups()
    return {"exit": proc.returncode, "products": int(total), "acknowledged": int(done), "new": int(new),
            "updated": int(updated), "unchanged": int(unchanged), "failed": int(failed),
            "duplicates": int(dups or 0), "skipped": int(skipped or 0), "seconds": float(seconds),
            "products_per_s": float(rate), "wall_s": round(wall, 2),
            "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "client_peak_rss_mib": round(peak / 1024, 1)}


def process_cpu(stack) -> dict[str, float]:
    """CPU seconds so far of each part of the chain."""
    import psutil

    groups = {"torchserve": stack.torchserve.group_pids(), "gateway": [stack.gateway.proc.pid],
              "search": [stack.search.proc.pid], "redis": [stack.redis.proc.pid]}
    out = {}
    for name, pids in groups.items():
        total = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        out[name] = total
    return out


def gateway_metrics(http_url: str) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"{http_url}/metrics", timeout=10).read().decode()
    wanted = {}
    for line in text.splitlines():
        if line.startswith("lookalike_gateway_search_seconds_sum") or \
                line.startswith("lookalike_gateway_embedder_calls_total"):
            name, value = line.rsplit(" ", 1)
            wanted[name] = float(value)
    return wanted


def write_manifest(path: Path, photos: list[Path], rows: int) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "image", "category", "price", "copy"])
        for i in range(rows):
            photo = photos[i % len(photos)]
            writer.writerow([f"syn-{i:06d}", str(photo), photo.parent.name, f"{(i % 200) + 0.99:.2f}",
                             str(i // len(photos))])


def model_only(batch: int, n_images: int, repeats: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) of the forward pass at `batch`, by benchmark_model.

    The CPU figure does not depend on what else the shared machine runs, unlike the wall-clock rate: it is
    the difference between a run of n_images x repeats and a run of one batch (model load and warm-up
    cancel out)."""
    import resource

    from lookalike_embedder.bench import benchmark_model

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    start = cpu()
    benchmark_model((batch,), n_images=batch, repeats=1, verbose=False)
    short = cpu() - start
    start = cpu()
    rate = benchmark_model((batch,), n_images=n_images, repeats=repeats, verbose=False)[batch]
    long = cpu() - start
    per_image_ms = 1000 * (long - short) / (n_images * repeats - batch)
    return rate, per_image_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--limit", type=int, default=0, help="index only the first N training photos (a quick run)")
    parser.add_argument("--synthetic", type=int, default=50_000, help="rows of the synthetic manifest (0: skip)")
    parser.add_argument("--engine", default="qdrant-edge", choices=["qdrant-edge", "qdrant-local"])
    parser.add_argument("--train-only", action="store_true", help="steps 1-4 only (no 3.8k, no synthetic run)")
    parser.add_argument("--batch", type=int, default=16, help="model-only batch size (TorchServe's batchSize)")
    parser.add_argument("--model-images", type=int, default=192)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()

    from lookalike.catalogue_reader import iter_folder
    from lookalike.stack import Stack, StackConfig

    figures: dict = {"machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
                                 "load_at_start": os.getloadavg()}, "engine": args.engine}
    print("model-only, before ...", flush=True)
    before, before_cpu = model_only(args.batch, args.model_images, repeats=2)
    with tempfile.TemporaryDirectory(prefix="lk-ingest-") as tmp:
        tmp = Path(tmp)
        train = args.dataset / "train"
        if args.limit:
            catalogue = tmp / "train"
            for item in list(iter_folder(train))[:args.limit]:
                (catalogue / item.product.category).mkdir(parents=True, exist_ok=True)
                (catalogue / item.product.id).symlink_to(item.image_path)
            train = catalogue
        with Stack(StackConfig(data_dir=tmp / "stack", http_port=0, grpc_port=0,
                               search_engine=args.engine)) as stack:
            common = ["--gateway", stack.grpc_address, "--failures", str(tmp / "failures.jsonl")]
            cpu0, metrics0, inferences0 = process_cpu(stack), gateway_metrics(stack.http_url), \
                stack.torchserve.inference_count()
            print(f"ingest: lookalike index {train} ...", flush=True)
            first = run_client([str(train), *common], tmp / "first.log")
            cpu1, metrics1 = process_cpu(stack), gateway_metrics(stack.http_url)
            first["embedder_requests"] = stack.torchserve.inference_count() - inferences0
            first["cpu_s"] = {k: round(cpu1[k] - cpu0[k], 1) for k in cpu1} | {"client": first["client_cpu_s"]}
            first["cpu_s_per_product_ms"] = {k: round(1000 * v / max(1, first["products"]), 1)
                                             for k, v in first["cpu_s"].items()}
            first["gateway_time_in_search_calls_s"] = {
                k.split('method="')[1].split('"')[0]: round(metrics1[k] - metrics0.get(k, 0.0), 2)
                for k in metrics1 if k.startswith("lookalike_gateway_search_seconds_sum")}
            figures["ingest_train"] = first
            print(json.dumps(first), flush=True)
            print("model-only, after (the chain idle) ...", flush=True)
            after, after_cpu = model_only(args.batch, args.model_images, repeats=2)

            print("re-run: the same command ...", flush=True)
            inferences = stack.torchserve.inference_count()
            again = run_client([str(train), *common], tmp / "again.log")
            again["embedder_requests"] = stack.torchserve.inference_count() - inferences
            figures["rerun_train"] = again
            print(json.dumps(again), flush=True)

            if not args.limit and not args.train_only:
                print(f"ingest: lookalike index {args.dataset} (train+validation+test) ...", flush=True)
                # one photo per product: <split>/<class>/<photo> would be a folder of photos per product
                flat = tmp / "all"
                for split in ("train", "validation", "test"):
                    for item in iter_folder(args.dataset / split):
                        (flat / item.product.category).mkdir(parents=True, exist_ok=True)
                        (flat / item.product.category / f"{split}-{item.image_path.name}").symlink_to(item.image_path)
                inferences = stack.torchserve.inference_count()
                full = run_client([str(flat), *common], tmp / "full.log")
                full["embedder_requests"] = stack.torchserve.inference_count() - inferences
                figures["ingest_3.8k"] = full
                print(json.dumps(full), flush=True)
            if args.synthetic and not args.train_only:
                photos = [path for item in iter_folder(tmp / "all" if not args.limit else train)
                          for path in item.image_paths]
                manifest = tmp / "synthetic.csv"
                write_manifest(manifest, photos, args.synthetic)
                print(f"ingest: synthetic manifest of {args.synthetic} rows, --skip-duplicates ...", flush=True)
                inferences = stack.torchserve.inference_count()
                synthetic = run_client([str(manifest), "--skip-duplicates", *common], tmp / "synthetic.log")
                synthetic["embedder_requests"] = stack.torchserve.inference_count() - inferences
                figures[f"ingest_synthetic_{args.synthetic}"] = synthetic
                print(json.dumps(synthetic), flush=True)
    model = (before + after) / 2
    figures["model_only_images_per_s"] = {"batch": args.batch, "before": round(before, 2), "after": round(after, 2),
                                          "mean": round(model, 2)}
    figures["ratio_ingest_to_model_only"] = round(figures["ingest_train"]["products_per_s"] / model, 3)
    # The same ratio in CPU time (robust to the other loads of a shared machine): model-only CPU per image
    # over the whole chain's CPU per product (TorchServe, gateway, search, Redis, client).
    model_cpu = (before_cpu + after_cpu) / 2
    chain_cpu = sum(figures["ingest_train"]["cpu_s_per_product_ms"].values())
    figures["model_only_cpu_ms_per_image"] = {"before": round(before_cpu, 1), "after": round(after_cpu, 1),
                                              "mean": round(model_cpu, 1)}
    figures["chain_cpu_ms_per_product"] = round(chain_cpu, 1)
    figures["cpu_ratio_model_only_to_chain"] = round(model_cpu / chain_cpu, 3)
    if "ingest_3.8k" in figures and f"ingest_synthetic_{args.synthetic}" in figures:
        small = figures["ingest_3.8k"]["client_peak_rss_mib"]
        large = figures[f"ingest_synthetic_{args.synthetic}"]["client_peak_rss_mib"]
        figures["client_peak_rss_ratio_synthetic_to_3.8k"] = round(large / small, 3)
    figures["machine"]["load_at_end"] = os.getloadavg()
    print(json.dumps(figures, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
