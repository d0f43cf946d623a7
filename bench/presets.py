"""EfficientNet-Lite0 / Lite1 / Lite2 presets compared on this machine: speed and retrieval quality.

For each preset (`lookalike_embedder.presets`): the ONNX Runtime model as build_mar.py packs it (exported
from eager PyTorch; cosine to eager checked), model-only images/s at batch 16, the ceiling (decode +
preprocess + ORT in one process, both cores, batch 16) and P@1/5/10 / mAP@100 of clothing-small's
validation photos against a catalogue of training photos (category = relevance). Validation, not test:
this comparison picks a model. All presets in one run, interleaved per figure.

    python bench/presets.py [--catalogue 1000] [--json bench/results/presets.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import load_now, usable_cpus  # noqa: E402
from quality import DEFAULT_DATASET, list_split, retrieval_metrics  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--catalogue", type=int, default=1000, help="training photos in the catalogue")
    parser.add_argument("--presets", nargs="+", default=["lite0", "lite1", "lite2"])
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "presets.json")
    args = parser.parse_args()

    import embedder_suite

    from lookalike_embedder import model as lk
    from lookalike_embedder.preprocessing import prepare
    from lookalike_embedder.presets import preset
    from lookalike_embedder.runtime import OnnxRunner, TorchRunner

    cores = usable_cpus()
    train, train_labels = list_split(args.dataset, "train")
    step = max(1, len(train) // args.catalogue)
    catalogue, catalogue_labels = train[::step][:args.catalogue], train_labels[::step][:args.catalogue]
    queries, query_labels = list_split(args.dataset, "validation")
    cat_bytes = [p.read_bytes() for p in catalogue]
    query_bytes = [p.read_bytes() for p in queries]
    counts = {label: catalogue_labels.count(label) for label in set(catalogue_labels)}
    result: dict = {"cores": cores, "load_avg": [load_now()], "catalogue": len(catalogue), "queries": len(queries),
                    "presets": {}}
    peak = embedder_suite.matmul_gflops()
    with ThreadPoolExecutor(cores) as pool:
        for name in args.presets:
            chosen = preset(name)
            eager = lk.load_model("cpu", "final", arch=chosen.arch)
            flops = embedder_suite.flops_per_image_at(eager, chosen.spec.image_size)
            run = OnnxRunner(lk.export_onnx(eager, chosen.spec.image_size), threads=cores)

            def embed(photos: list[bytes], spec=chosen.spec, run=run) -> tuple[np.ndarray, float]:
                out, started = [], time.perf_counter()
                for i in range(0, len(photos), 16):
                    out.append(run(np.stack(list(pool.map(lambda d: prepare(d, spec), photos[i:i + 16])))))
                return np.concatenate(out), len(photos) / (time.perf_counter() - started)

            embed(query_bytes[:16])  # warm-up
            query_vecs, _ = embed(query_bytes)
            cat_vecs, ceiling_ips = embed(cat_bytes)
            batch = np.stack([prepare(d, chosen.spec) for d in query_bytes[:16]])
            cosine = float((TorchRunner(eager)(batch) * run(batch)).sum(axis=1).min())
            started = time.perf_counter()
            for _ in range(4):
                run(batch)
            model_ips = 64 / (time.perf_counter() - started)
            order = np.argsort(-(query_vecs @ cat_vecs.T), axis=1)[:, :100]
            ranked = [[catalogue_labels[j] for j in row] for row in order]
            quality = retrieval_metrics(ranked, query_labels, [counts.get(q, 0) for q in query_labels])
            result["presets"][name] = {
                "model_version": chosen.model_version, "image_size": chosen.spec.image_size,
                "gflops_per_image": round(flops / 1e9, 3), "onnx_vs_eager_min_cosine": round(cosine, 7),
                "model_only_batch16_images_per_s": round(model_ips, 1),
                "ceiling_images_per_s": round(ceiling_ips, 1),
                "model_only_of_flop_peak": round(model_ips * flops / 1e9 / peak, 3),
                **{k: round(v, 3) if isinstance(v, float) else v for k, v in quality.items()}}
            print(name, json.dumps(result["presets"][name]), f"(load {load_now()[0]})", flush=True)
            result["load_avg"].append(load_now())
    result["matmul_peak_gflops"] = round(peak, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
