"""Adapted embeddings (lookalike adapt): validation table, held-out figures, the gate, timing.

Rows (features from bench/adapt_data.py; nothing tuned on a test set):

1. dev catalogue, label = product: each of N clothing-small photos is a product with 6 generated views.
   The method and settings are chosen by `adapt_fit.adapt` on its own splits (selection split, seed 0);
   the figures are its report split (seed 1): held-out photos of seen products, products left out of the fit.
2. clothing-small (category P@1/5/10, mAP@100; train = catalogue, test = queries, as the quality suite):
   plain vs (a) the projection learned from dev products of the *train* split only, (b) adapting on the
   train split's categories.
3. collapse check: that category projection (2b) applied to the dev catalogue, measuring same-product
   retrieval (adapting on categories must not turn search into classification).
4. the gate: a deliberately bad adaptation (labels shuffled, forced to the learned space) is refused.
5. time of `adapt` on 100k photos (25k products x 4; real features plus noise), 2 cores.

    python bench/adapt_suite.py [--quick] [--products N]   # writes bench/results/adapt.json and adapt.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_data import VIEWS, clothing_photos, dev_products, ensure  # noqa: E402
from common import DEFAULT_DATASET, RESULTS, load_now  # noqa: E402
from quality import retrieval_metrics  # noqa: E402


def log(msg: str) -> None:
    print(f"[adapt] {msg}", flush=True)


def category_metrics(cat: np.ndarray, cat_labels, queries: np.ndarray, query_labels) -> dict:
    """The quality suite's figures (category P@k, mAP@100) of exact cosine search."""
    order = np.argsort(-(queries @ cat.T), axis=1, kind="stable")[:, :100]
    labels = np.asarray(cat_labels)
    counts = {label: int((labels == label).sum()) for label in set(cat_labels)}
    out = retrieval_metrics([list(labels[row]) for row in order], list(query_labels),
                            [counts[label] for label in query_labels])
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def run(dataset: Path = DEFAULT_DATASET, quick: bool = False, n_products: int = 1200) -> dict:
    from lookalike_gateway import adapt_fit
    from lookalike_gateway.adapt_eval import make_split, regressions, split_figures

    result: dict = {"load_at_start": load_now(), "views_per_product": VIEWS}
    paths, labels, splits = clothing_photos(dataset)
    products, _ = dev_products(n_products, dataset)
    items = [(p, v) for p in products for v in range(VIEWS)]
    cache = ensure([(p, 0) for p in paths] + items)
    x = cache.get(items)
    product_ids = np.repeat(np.arange(len(products)), VIEWS)
    result["dev_catalogue"] = {"products": len(products), "photos": int(len(x))}

    # 1. product labels: what the gateway runs (its default discriminant grid), then the metric-learning heads
    #    (linear, MLP; pytorch-metric-learning) measured on the same selection split for comparison
    log(f"1. dev catalogue: {len(products)} products x {VIEWS} views")
    trials = adapt_fit.candidates(dims=(128, 256)) if quick else None
    projection, report = adapt_fit.adapt(x, product_ids, trials=trials, progress=lambda m, f: log(f"  {m}"))
    result["products"] = report
    log(f"   chosen {report['chosen']} in {report['fit_seconds']} s; before {report['before']} after {report['after']}")
    if not quick and adapt_fit.metric_available():
        sample = adapt_fit.sample_labels(product_ids, adapt_fit.MAX_SELECTION_PHOTOS, 0)
        heads = [{"method": m, "dim": 128, "shrinkage": 0.3} for m in ("linear", "mlp")]
        _, table, _ = adapt_fit.select(x[sample], product_ids[sample], make_split(product_ids[sample], seed=0), heads,
                                      adapt_fit.alphas_for(product_ids))
        report["validation_table"] += table[1:]
    result["served_choice"] = report["chosen"]

    # 2. clothing-small: category search, train = catalogue, test = queries
    feats = cache.get([(p, 0) for p in paths])
    splits, labels = np.asarray(splits), np.asarray(labels)
    tr, te = splits == "train", splits == "test"
    rows = {"plain": category_metrics(feats[tr], labels[tr], feats[te], labels[te])}
    train_products = [i for i, p in enumerate(products) if p.parent.parent.name == "train"]
    keep = np.isin(product_ids, train_products)
    train_projection, _ = adapt_fit.adapt(x[keep], product_ids[keep], trials=[report["chosen"]]
                                          if report["chosen"]["method"] != "plain" else None)
    if train_projection is not None:
        rows["adapted_on_dev_products"] = category_metrics(train_projection.apply(feats[tr]), labels[tr],
                                                           train_projection.apply(feats[te]), labels[te])
        rows["adapted_on_dev_products"]["chosen"] = train_projection.meta.get("chosen")
    cs_projection, cs_report = adapt_fit.adapt(feats[tr], labels[tr])  # as served (coarse: FIELD_ALPHAS)
    if cs_projection is not None:
        rows["adapted_on_categories"] = category_metrics(cs_projection.apply(feats[tr]), labels[tr],
                                                         cs_projection.apply(feats[te]), labels[te])
        rows["adapted_on_categories"]["chosen"] = cs_report["chosen"]
    else:
        rows["adapted_on_categories"] = {"chosen": "plain (validation kept the plain space)"}
    result["clothing_small"] = rows
    log(f"2. clothing-small: {json.dumps(rows)}")

    # 3. collapse check: the projection adapted on clothing-small *categories* (train split, row 2b),
    #    applied to the dev catalogue: does same-product retrieval survive? (products not from train: unseen)
    split = make_split(product_ids, seed=1)
    collapse = {"chosen": cs_report["chosen"], "product_before": split_figures(x, product_ids, split)}
    if cs_projection is not None:
        collapse["product_after"] = split_figures(cs_projection.apply(x), product_ids, split)
        collapse["learned_space_only"] = split_figures(_alpha(cs_projection, 1.0).apply(x), product_ids, split)
        va = splits == "validation"
        collapse["alpha_sweep"] = []  # the evidence for FIELD_ALPHAS: category gain vs same-product loss
        for alpha in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7):
            p = _alpha(cs_projection, alpha)
            collapse["alpha_sweep"].append({
                "alpha": alpha, "product": split_figures(p.apply(x), product_ids, split),
                "category_validation_p@1": category_metrics(p.apply(feats[tr]), labels[tr], p.apply(feats[va]),
                                                            labels[va])["p@1"]})
    result["categories_collapse_check"] = collapse
    log(f"3. category projection, product retrieval: {collapse}")

    # 2c. Fashion-MNIST (Debian dataset-fashion-mnist), category search: plain, the dev-product projection
    #     (transfer), adapting on its own train categories
    fashion = fashion_mnist_rows(train_projection)
    if fashion:
        result["fashion_mnist"] = fashion
        log(f"2c. Fashion-MNIST: {json.dumps(fashion)}")

    # 4. the gate refuses a bad adaptation: shuffled labels, learned space only
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(product_ids)
    gate_split = make_split(product_ids, seed=1)
    bad = adapt_fit.fit(x[gate_split.fit], shuffled[gate_split.fit], {"method": "lda", "dim": 64, "alpha": 1.0})
    before = split_figures(x, product_ids, gate_split)
    after = split_figures(bad.apply(x), product_ids, gate_split)
    result["gate_demo"] = {"before": before, "after": after, "regressions": regressions(before, after),
                           "activated": not regressions(before, after)}
    log(f"4. gate on a bad adaptation: regressions {result['gate_demo']['regressions']}")

    # 5. time on 100k photos
    n_big = 20_000 if quick else 100_000
    base = x[rng.integers(0, len(x), n_big // 4)]
    big = np.repeat(base, 4, axis=0) + rng.normal(0, 0.02, (n_big, x.shape[1])).astype(np.float32)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, (os.cpu_count() or 2) - 1)):  # as the gateway runs it
        started = time.perf_counter()
        _, big_report = adapt_fit.adapt(big, np.repeat(np.arange(n_big // 4), 4))  # the service's defaults
        total = time.perf_counter() - started
        started = time.perf_counter()
        adapt_fit.fit(big, np.repeat(np.arange(n_big // 4), 4), {"method": "lda", "dim": 128, "shrinkage": 0.3})
    result["timing"] = {"photos": n_big, "adapt_default_selection_s": round(total, 1),
                        "chosen_on_100k": big_report["chosen"],
                        "one_lda_fit_s": round(time.perf_counter() - started, 1),
                        "dev_catalogue_full_selection_s": report["fit_seconds"],
                        "cores": len(os.sched_getaffinity(0)), "blas_threads": max(1, (os.cpu_count() or 2) - 1),
                        "load_at_end": load_now()}
    log(f"5. timing: {result['timing']}")
    return result


def fashion_mnist_rows(product_projection, train_per_class: int = 200, test_per_class: int = 50) -> dict | None:
    """Category retrieval on Fashion-MNIST (written as the sample catalogue writes it: upscaled, dark on
    white): train images = catalogue, t10k images = queries. None when the Debian package is missing."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import sample_catalogue
    from lookalike_gateway import adapt_fit

    if not (sample_catalogue.SOURCE / "t10k-images-idx3-ubyte.gz").exists():
        return None
    root = Path(tempfile.gettempdir()) / "lookalike-bench-fashion-mnist"  # generated, never in the repo
    splits = {}
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        folder = root / f"{split}-{per_class}"
        if not folder.is_dir():
            sample_catalogue.write_catalogue(folder, per_class, split)
        paths = sorted(folder.glob("*/*.png"))
        splits[split] = (paths, np.array([p.parent.name for p in paths]))
    cache = ensure([(p, 0) for paths, _ in splits.values() for p in paths])
    (tr, ytr), (te, yte) = [(cache.get([(p, 0) for p in paths]), y) for paths, y in splits.values()]
    rows = {"catalogue": len(ytr), "queries": len(yte), "plain": category_metrics(tr, ytr, te, yte)}
    if product_projection is not None:
        rows["adapted_on_dev_products"] = category_metrics(product_projection.apply(tr), ytr,
                                                           product_projection.apply(te), yte)
    projection, report = adapt_fit.adapt(tr, ytr)
    rows["adapted_on_categories"] = (category_metrics(projection.apply(tr), ytr, projection.apply(te), yte)
                                     if projection is not None else {})
    rows["adapted_on_categories"]["chosen"] = report["chosen"]
    return rows


def _alpha(projection, alpha: float):
    from lookalike_gateway.projection import Projection
    return Projection(projection.mean, projection.layers, alpha, projection.method)


def markdown(r: dict) -> list[str]:
    p = r["products"]
    out = ["## Adapted embeddings (`lookalike adapt`)", "",
           f"Dev catalogue: {r['dev_catalogue']['products']} clothing-small photos as products x "
           f"{r['views_per_product']} generated views ({r['dev_catalogue']['photos']} photos). Chosen by validation "
           f"(selection split, the gateway's grid): **{p['chosen']}**; figures on an independent report split. The "
           "validation table ends with the metric-learning heads (initialised from the discriminant) on the same "
           "split, for comparison.", "",
           "| queries | plain P@1 | adapted P@1 | plain R@5 | adapted R@5 | plain mAP | adapted mAP |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, name in (("seen", "held-out photos of seen products"), ("unseen", "products left out of the fit")):
        b, a = p["before"][kind], p["after"][kind]
        out.append(f"| {name} ({b['queries']}) | {b['p@1']} | {a['p@1']} | {b['r@5']} | {a['r@5']} | {b['map']} | "
                   f"{a['map']} |")
    out += ["", "Validation table (selection split; score = mean P@1 of seen and unseen):", "",
            "| method | dim | shrinkage | alpha | seen P@1 | unseen P@1 | seen mAP | unseen mAP | fit s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in p["validation_table"]:
        out.append(f"| {t['method']} | {t.get('dim', '')} | {t.get('shrinkage', '')} | {t['alpha']} | "
                   f"{t['seen_p@1']} | {t['unseen_p@1']} | {t['seen_map']} | {t['unseen_map']} | "
                   f"{t.get('fit_s', '')} |")
    c = r["categories_collapse_check"]
    out += ["", f"Collapse check: the projection adapted on clothing-small categories (chosen {c['chosen']}) applied "
            "to the dev catalogue, same-product retrieval:", "",
            "| queries | plain P@1 | adapted P@1 | learned space only P@1 | plain mAP | adapted mAP |",
            "| --- | --- | --- | --- | --- | --- |"]
    for kind in ("seen", "unseen"):
        after = c.get("product_after", c["product_before"])[kind]
        only = c["learned_space_only"][kind]["p@1"] if c.get("learned_space_only") else "–"
        out.append(f"| {kind} | {c['product_before'][kind]['p@1']} | {after['p@1']} | {only} | "
                   f"{c['product_before'][kind]['map']} | {after['map']} |")
    out += ["", "The alpha sweep behind `FIELD_ALPHAS` (same projection, dev catalogue products; category P@1 on "
            "clothing-small *validation*):", "",
            "| alpha | seen P@1 | seen mAP | unseen P@1 | unseen mAP | category validation P@1 |",
            "| --- | --- | --- | --- | --- | --- |"]
    for row in c.get("alpha_sweep", []):
        pr = row["product"]
        out.append(f"| {row['alpha']} | {pr['seen']['p@1']} | {pr['seen']['map']} | {pr['unseen']['p@1']} | "
                   f"{pr['unseen']['map']} | {row['category_validation_p@1']} |")
    out += ["", "clothing-small (category retrieval, train = catalogue, test = queries):", "",
            "| space | P@1 | P@5 | P@10 | mAP@100 |", "| --- | --- | --- | --- | --- |"]
    for name, row in r["clothing_small"].items():
        if "p@1" in row:
            out.append(f"| {name} {row.get('chosen', '')} | {row['p@1']} | {row['p@5']} | {row['p@10']} | "
                       f"{row['map@100']} |")
        else:
            out.append(f"| {name}: {row['chosen']} | | | | |")
    if r.get("fashion_mnist"):
        f = r["fashion_mnist"]
        out += ["", f"Fashion-MNIST (category retrieval; {f['catalogue']} train images = catalogue, {f['queries']} "
                "test images = queries):", "", "| space | P@1 | P@5 | P@10 | mAP@100 |", "| --- | --- | --- | --- | --- |"]
        for name in ("plain", "adapted_on_dev_products", "adapted_on_categories"):
            row = f.get(name)
            if row and "p@1" in row:
                out.append(f"| {name} {row.get('chosen', '')} | {row['p@1']} | {row['p@5']} | {row['p@10']} | "
                           f"{row['map@100']} |")
    g, t = r["gate_demo"], r["timing"]
    out += ["", f"Gate on a bad adaptation (shuffled labels, learned space only): activated = {g['activated']}; "
            f"regressions: {', '.join(g['regressions'])}.", "",
            f"Time: `adapt` (the service's default selection) on {t['photos']:,} photos: "
            f"{t['adapt_default_selection_s']} s (one LDA fit {t['one_lda_fit_s']} s) on {t['cores']} cores, load "
            f"{t['load_at_end']} at the end; the gateway's selection on the dev catalogue (7,200 photos) "
            f"{t['dev_catalogue_full_selection_s']} s.", ""]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--products", type=int, default=1200)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = run(args.dataset, args.quick, args.products)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "adapt.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "adapt.md").write_text("\n".join(markdown(result)))
    print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
