"""Product-level search quality, served chain against brute force ("each product at its best photo").

Two catalogues, each indexed on a fresh real stack (TorchServe, gateway, search service) and queried over REST
(/v1/search, category_boost 0 so the order is plain similarity, as brute force ranks):

* multi-photo: bench/multi_image.py's generated catalogue (clothing-small validation photos, 3 photos per
  product; a held-out shopper-like view per product; right answer = its product);
* clothing-small: the train split as the catalogue (one photo per product), test photos as queries; right
  answer = a product of the query's category.

P@1 = the first product is right; R@5 = a right product is in the first five. Brute force ranks products by
their best photo's cosine over offline features (eager PyTorch, the service's decoder). Also reported: how
often the served top 5 product ids equal brute force's (same order). Both sides come from one run.

    .venv/bin/python bench/product_suite.py [--catalogue N] [--queries N] [--products 80] \
        [--json bench/results/products.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import DEFAULT_DATASET, RESULTS, every_nth, list_split, load_now  # noqa: E402
from multi_image import measure, product_metrics  # noqa: E402

KEYS = ("p_at_1", "r_at_5")


def log(msg: str) -> None:
    print(f"[products] {msg} (load {load_now()[0]})", flush=True)


def clothing_small(dataset: Path, catalogue: int | None = None, queries: int | None = None) -> dict:
    """Train split (or an evenly spaced `catalogue` photos of it) indexed through gRPC, test photos (or
    `queries` of them) searched over REST; the same photos ranked by brute force."""
    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items
    from lookalike.stack import Stack, StackConfig
    from quality import embed_paths, search_rest

    cat_paths, cat_labels = list_split(dataset, "train")
    query_paths, query_labels = list_split(dataset, "test")
    keep = every_nth(cat_paths, catalogue or len(cat_paths))
    cat_paths, cat_labels = [cat_paths[i] for i in keep], [cat_labels[i] for i in keep]
    keep = every_nth(query_paths, queries or len(query_paths))
    query_paths, query_labels = [query_paths[i] for i in keep], [query_labels[i] for i in keep]
    wanted = {str(p) for p in cat_paths}
    items = [item for item in scan_folder(dataset / "train") if str(item.image_path) in wanted]
    pid_of = {str(item.image_path): item.product.id for item in items}
    cat_ids = [pid_of[str(p)] for p in cat_paths]
    category_of = dict(zip(cat_ids, cat_labels))

    started = time.perf_counter()
    # one photo per product: its best photo is the photo
    order = np.argsort(-(embed_paths(query_paths) @ embed_paths(cat_paths).T), axis=1, kind="stable")
    brute_ids = [[cat_ids[j] for j in row[:10]] for row in order]
    log(f"brute force over {len(cat_paths)} products, {len(query_paths)} queries "
        f"({time.perf_counter() - started:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="lk-products-") as tmp, \
            Stack(StackConfig(data_dir=Path(tmp), http_port=0, grpc_port=0)) as stack:
        started = time.perf_counter()
        report = index_items(stack.grpc_address, items, total=len(items), progress=False)
        assert report.failed == 0, report.failures[:3]
        log(f"indexed {report.indexed} products ({time.perf_counter() - started:.0f} s)")
        served_ids = [[r["id"] for r in results]
                      for results in search_rest(stack.http_url, query_paths, 10, category_boost="0")]
    brute = product_metrics([[category_of[i] for i in row] for row in brute_ids], query_labels)
    served = product_metrics([[category_of[i] for i in row] for row in served_ids], query_labels)
    same_top5 = sum(s[:5] == b[:5] for s, b in zip(served_ids, brute_ids)) / len(query_labels)
    return {"catalogue": f"clothing-small train, {len(cat_paths)} photos = products (one photo each)"
                         + ("" if catalogue is None else " (evenly spaced subset)"),
            "queries": f"clothing-small test, {len(query_paths)} photos"
                       + ("" if queries is None else " (evenly spaced subset)"),
            "products": len(cat_paths), "brute_force_best_image": brute, "served": served,
            "served_top5_ids_equal_brute_force": round(same_top5, 4),
            "equal_to_3_decimals": all(round(brute[k], 3) == round(served[k], 3) for k in KEYS)}


def run(dataset: Path, quick: bool, catalogue: int | None = None, queries: int | None = None,
        products: int | None = None) -> dict:
    """Both catalogues; --quick: 600 catalogue photos, 100 test queries, 40 multi-photo products."""
    if quick:
        catalogue, queries, products = catalogue or 600, queries or 100, products or 40
    result: dict = {"load_at_start": load_now()}
    started = time.perf_counter()
    result["multi_photo"] = measure(dataset, products or 80)
    log(f"multi-photo: served {result['multi_photo']['served']}, brute force "
        f"{result['multi_photo']['brute_force_best_image']}")
    result["clothing_small"] = clothing_small(dataset, catalogue, queries)
    log(f"clothing-small: served {result['clothing_small']['served']}, brute force "
        f"{result['clothing_small']['brute_force_best_image']}")
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(r: dict) -> list[str]:
    out = ["## Products: served chain vs brute force (best photo per product)", "",
           "Each catalogue indexed on a fresh real stack and searched over REST (category_boost 0); brute force "
           "ranks products by their best photo over offline features. P@1: the first product is right; R@5: a "
           "right product in the first five (bench/product_suite.py).", "",
           *([f"*{r['note']}*", ""] if r.get("note") else []),
           "| catalogue | queries | brute force P@1 | served P@1 | brute force R@5 | served R@5 | equal (3 dp) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, name in (("multi_photo", "multi-photo"), ("clothing_small", "clothing-small")):
        c = r.get(key)
        if not c:
            continue
        b, s = c["brute_force_best_image"], c["served"]
        what = (f"{c['products']} products x 3 photos ({name}; right = its product)" if key == "multi_photo"
                else f"{c['catalogue']} (right = same category)")
        out.append(f"| {what} | {s['queries']} | {b['p_at_1']:.4f} | {s['p_at_1']:.4f} | {b['r_at_5']:.4f} | "
                   f"{s['r_at_5']:.4f} | {'yes' if c['equal_to_3_decimals'] else '**no**'} |")
    out.append("")
    if r.get("multi_photo"):
        m = r["multi_photo"]["brute_force_main_photo_only"]
        out.append(f"* multi-photo, main photo only (brute force): P@1 {m['p_at_1']:.4f}, R@5 {m['r_at_5']:.4f}")
    if r.get("clothing_small"):
        out.append(f"* clothing-small: served top-5 product ids equal brute force's for "
                   f"{r['clothing_small']['served_top5_ids_equal_brute_force']:.1%} of queries")
    return out + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--catalogue", type=int, help="evenly spaced train photos (default: all)")
    parser.add_argument("--queries", type=int, help="evenly spaced test photos (default: all)")
    parser.add_argument("--products", type=int, default=80, help="multi-photo products")
    parser.add_argument("--json", type=Path, default=RESULTS / "products.json")
    args = parser.parse_args()
    result = run(args.dataset, False, args.catalogue, args.queries, args.products)
    print("\n".join(markdown(result)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = all(result[k]["equal_to_3_decimals"] for k in ("multi_photo", "clothing_small"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
