"""Transfer learning on clothing-small: a linear classifier on deep features vs on raw pixels, and where to cut.

Train split -> fit, test split -> report. For each feature set:

  * deep features at several cuts of EfficientNet-Lite0 (FeatureExtractor(cut=...): "final" is what the
    service stores; earlier blocks keep more colour/texture and less semantics), and
  * raw pixels (the photo downscaled to 32x32 RGB, 3072 values) as the no-transfer baseline,

it reports the classifier the service trains (lookalike_gateway.classifier.fit_head: standardised features,
multinomial logistic regression, C chosen by 3-fold CV on the training split) -- test accuracy, per-class
precision/recall, confusion matrix -- and retrieval P@1/P@5 (cosine nearest neighbours, test photos as
queries, train photos as the catalogue). A plain LogisticRegression (C=1, raw features) is the reference.

It also times the service path: training through ClassifierService over an in-process search servicer
holding the 3,068 training embeddings (scroll + CV + fit), and the head's cost per Classify.

    python bench/classify_eval.py [--dataset DIR] [--cuts final,block14,block10] [--out bench/results]

Features are cached in bench/results/classify-features-<set>.npz (gitignored). Writes classify_eval.json,
classify_eval.md and classify_eval_confusion.png to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see lookalike/torchserve_process.py
import numpy as np  # noqa: E402

from lookalike import atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from quality import DEFAULT_DATASET, list_split, retrieval_metrics  # noqa: E402

DEFAULT_CUTS = ("final", "block14", "block10")
PIXELS = "pixels32"
CACHE_VERSION = 1


def log(msg: str) -> None:
    print(f"[classify-eval] {msg}", file=sys.stderr, flush=True)


# ---- features ---------------------------------------------------------------------------------------

def pixels32(img) -> np.ndarray:
    """The whole photo downscaled to 32x32 RGB (antialiased), values in [0, 1], flattened."""
    from PIL import Image

    return np.asarray(img.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32).ravel() / 255.0


def compute_features(paths: list[Path], cuts: list[str], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Features of `paths` for every cut (one forward pass: blocks are read with hooks on the deepest
    cut's FeatureExtractor, checked against FeatureExtractor(cut=block) on the first batch) and pixels."""
    import torch
    import torch.nn.functional as F

    from lookalike.images import decode_image
    from lookalike_embedder.model import CUTS, FeatureExtractor, preprocess_batch

    deep = [c for c in cuts if c != PIXELS]
    out: dict[str, list[np.ndarray]] = {c: [] for c in cuts}
    extractor = captured = None
    if deep:
        order = sorted(deep, key=CUTS.index)
        extractor = FeatureExtractor(cut="final" if "final" in deep else order[-1], device="cpu")
        captured = {}
        for cut in deep:
            if cut != extractor.cut:
                block = extractor.model.blocks[int(cut[5:])]
                block.register_forward_hook(lambda _m, _i, o, cut=cut: captured.__setitem__(
                    cut, F.normalize(o.float().mean((2, 3)), p=2, dim=1).cpu().numpy()))
    started = time.perf_counter()
    for lo in range(0, len(paths), batch_size):
        images = [decode_image(p.read_bytes()) for p in paths[lo:lo + batch_size]]
        if PIXELS in cuts:
            out[PIXELS].append(np.stack([pixels32(img) for img in images]))
        if extractor is not None:
            batch = preprocess_batch(images)
            captured.clear()
            out[extractor.cut].append(extractor.embed_batch(batch))
            for cut in deep:
                if cut != extractor.cut:
                    out[cut].append(captured[cut])
            if lo == 0:  # the hooks give exactly what the service's cut would
                for cut in deep:
                    if cut != extractor.cut:
                        reference = FeatureExtractor(cut=cut, device="cpu").embed_batch(batch[:4])
                        np.testing.assert_allclose(out[cut][0][:4], reference, atol=1e-4)
        done = lo + len(images)
        if done % (batch_size * 10) == 0 or done == len(paths):
            log(f"  features {done}/{len(paths)} ({done / (time.perf_counter() - started):.1f} images/s)")
    return {c: np.concatenate(v).astype(np.float32) for c, v in out.items()}


def features(dataset: Path, split: str, paths: list[Path], cuts: list[str], cache_dir: Path) -> dict[str, np.ndarray]:
    """Cached per (feature set, split): classify-features-<set>.npz holds the paths it was computed for."""
    result, missing = {}, []
    for cut in cuts:
        path = cache_dir / f"classify-features-{cut}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                key = f"{split}_paths"
                if key in data.files and list(data[key]) == [str(p) for p in paths] \
                        and int(data["version"]) == CACHE_VERSION:
                    result[cut] = data[split]
                    continue
        missing.append(cut)
    if missing:
        log(f"computing {', '.join(missing)} for {len(paths)} {split} photos (cached in {cache_dir})")
        computed = compute_features(paths, missing)
        for cut in missing:
            result[cut] = computed[cut]
            path = cache_dir / f"classify-features-{cut}.npz"
            stored = {}
            if path.exists():
                with np.load(path, allow_pickle=False) as data:
                    stored = {k: data[k] for k in data.files}
            stored.update({split: computed[cut], f"{split}_paths": np.array([str(p) for p in paths]),
                           "version": np.array(CACHE_VERSION)})
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_with(path, lambda out: np.savez(out, **stored), fsync=False)
    return result


# ---- evaluation -------------------------------------------------------------------------------------

def retrieval(catalogue: np.ndarray, cat_labels: list[str], queries: np.ndarray, query_labels: list[str]) -> dict:
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    scores = unit(queries) @ unit(catalogue).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    ranked = [[cat_labels[j] for j in row] for row in order]
    counts = {label: cat_labels.count(label) for label in set(cat_labels)}
    metrics = retrieval_metrics(ranked, query_labels, [counts[label] for label in query_labels])
    return {"p@1": round(metrics["p@1"], 4), "p@5": round(metrics["p@5"], 4)}


def classification(x_train, y_train, x_test, y_test) -> dict:
    """The service's recipe (fit_head: CV on the training split) scored on the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from lookalike_gateway.classifier_head import fit_head

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # as the service on two cores (one BLAS/OpenMP thread)
        started = time.perf_counter()
        head, report = fit_head(x_train, y_train, holdout_fraction=0.0)
        fit_s = time.perf_counter() - started
        plain = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, y_train)
    predicted = np.asarray(head.labels)[np.argmax(head.probabilities(x_test), axis=1)]
    truth = np.asarray(y_test)
    labels = list(head.labels)
    precision, recall, _, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(np.mean(predicted == truth)), 4),
        "c": report["c"], "cv_accuracy": round(report["cv_accuracy"], 4), "cv_scores": report["cv_scores"],
        "fit_seconds": round(fit_s, 2),
        "plain_lr_accuracy": round(float(plain.score(x_test, y_test)), 4),
        "labels": labels,
        "per_class": {label: {"precision": round(float(p), 4), "recall": round(float(r), 4), "support": int(s)}
                      for label, p, r, s in zip(labels, precision, recall, support)},
        "confusion": confusion_matrix(truth, predicted, labels=labels).tolist(),
    }


def service_training(x_train: np.ndarray, y_train: list[str]) -> dict:
    """ClassifierService.train over an in-process search servicer (qdrant-local) with the training
    embeddings: scroll, CV over the default C grid, fit, persist -- what POST /v1/classifiers does,
    without the network. Also the head's cost per Classify."""
    from types import SimpleNamespace

    from lookalike_gateway.classifier import ClassifierService
    from lookalike_gateway.errors import ApiError
    from lookalike_gateway.settings import GatewaySettings
    from lookalike_search.servicer import SearchServicer
    from lookalike_search.store_qdrant import QdrantClientStore

    class Context:
        def abort(self, code, details):
            raise ApiError(code, details)

    with tempfile.TemporaryDirectory() as tmp:
        store = QdrantClientStore("products", x_train.shape[1], path=Path(tmp) / "qdrant")
        store.ensure_collection()
        store.upsert([(f"p{i}", v, {"category": label}) for i, (v, label) in enumerate(zip(x_train, y_train))])
        servicer = SearchServicer(store, x_train.shape[1])
        target = SimpleNamespace(collection="", model_id="bench", raw=lambda v: v)  # a plain (unadapted) collection
        search = SimpleNamespace(call=lambda method, request, deadline: getattr(servicer, method)(request, Context()))

        def no_query_embedding(*_args, **_kwargs):
            raise RuntimeError("this bench trains on stored embeddings and classifies them itself: no photos")

        service = ClassifierService(GatewaySettings(data_dir=Path(tmp)), search,
                                    SimpleNamespace(active=lambda: target), no_query_embedding,
                                    Path(tmp) / "classifiers")
        try:
            report = service.train()
            head = service.active().head
        finally:
            service.close()
            store.close()
    vector = x_train[0]
    head.top(vector, 5)
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        head.top(vector, 5)
    head_us = (time.perf_counter() - started) / n * 1e6
    return {"points": len(y_train), "seconds": report["seconds"], "c": report["c"],
            "holdout_accuracy": round(report["accuracy"], 4), "train_size": report["train_size"],
            "test_size": report["test_size"], "train_threads": service.train_threads,
            "head_microseconds_per_classify": round(head_us, 1)}


# ---- output -----------------------------------------------------------------------------------------

def confusion_text(result: dict) -> str:
    labels = result["labels"]
    width = max(len(label) for label in labels)
    short = [label[:6] for label in labels]
    lines = [" " * (width + 2) + " ".join(f"{s:>6}" for s in short) + "   recall"]
    for label, row in zip(labels, result["confusion"]):
        lines.append(f"{label:>{width}}  " + " ".join(f"{v:>6}" for v in row)
                     + f"   {result['per_class'][label]['recall']:.2f}")
    lines.append(f"{'precision':>{width}}  " + " ".join(f"{result['per_class'][lb]['precision']:>6.2f}"
                                                          for lb in labels))
    return "\n".join(lines)


def plot_confusions(results: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(5.6 * len(names), 5.4))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        result = results[name]["classifier"]
        matrix = np.asarray(result["confusion"], dtype=float)
        rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        labels = result["labels"]
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.6 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        title = "raw pixels 32x32" if name == PIXELS else f"deep features, cut {name}"
        ax.set_title(f"{title}\naccuracy {result['accuracy']:.3f} (C={result['c']:g})", fontsize=10)
    fig.suptitle("clothing-small test split: logistic regression trained on the train split", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(figures: dict) -> str:
    rows = ["| features | dim | classifier accuracy (service recipe) | C (3-fold CV) | plain LR (C=1) | "
            "retrieval P@1 | P@5 |", "|---|---|---|---|---|---|---|"]
    for name, entry in figures["feature_sets"].items():
        c = entry["classifier"]
        rows.append(f"| {'raw pixels 32x32' if name == PIXELS else 'deep, ' + name} | {entry['dim']} | "
                    f"{c['accuracy']:.3f} | {c['c']:g} | {c['plain_lr_accuracy']:.3f} | "
                    f"{entry['retrieval']['p@1']:.3f} | {entry['retrieval']['p@5']:.3f} |")
    svc = figures.get("service_training", {})
    parts = [
        "# Classifier on deep features vs raw pixels (clothing-small)", "",
        f"Train split {figures['train_size']} photos, test split {figures['test_size']} photos, "
        f"{len(figures['labels'])} classes. Generated by `python bench/classify_eval.py`.", "",
        *rows, "",
    ]
    if svc:
        parts += [f"Service path (ClassifierService.train over {svc['points']} embeddings, scroll + 3-fold CV over "
                  f"the C grid + fit, {svc['train_threads']} BLAS thread(s)): {svc['seconds']:.1f} s, "
                  f"held-out accuracy {svc['holdout_accuracy']:.3f}; the head adds "
                  f"{svc['head_microseconds_per_classify']:.0f} us per Classify.", ""]
    for name in figures["feature_sets"]:
        parts += [f"## Confusion matrix, {'raw pixels' if name == PIXELS else 'cut ' + name} "
                  "(rows: true, columns: predicted)", "", "```",
                  confusion_text(figures["feature_sets"][name]["classifier"]), "```", ""]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--cuts", default=",".join(DEFAULT_CUTS), help="deep-feature cuts (final, block0..block15)")
    parser.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel baseline")
    parser.add_argument("--no-service", action="store_true", help="skip timing the service's training path")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from lookalike_embedder.model import normalize_cut

    cuts = [normalize_cut(c) for c in args.cuts.split(",") if c.strip()]
    sets = cuts + ([] if args.no_pixels else [PIXELS])
    train_paths, y_train = list_split(args.dataset, "train")
    test_paths, y_test = list_split(args.dataset, "test")
    train = features(args.dataset, "train", train_paths, sets, args.out)
    test = features(args.dataset, "test", test_paths, sets, args.out)

    figures = {"dataset": str(args.dataset), "train_size": len(y_train), "test_size": len(y_test),
               "labels": sorted(set(y_train)), "feature_sets": {}}
    for name in sets:
        log(f"evaluating {name} ({train[name].shape[1]}-d)")
        entry = {"dim": int(train[name].shape[1]),
                 "retrieval": retrieval(train[name], y_train, test[name], y_test),
                 "classifier": classification(train[name], y_train, test[name], y_test)}
        figures["feature_sets"][name] = entry
        c = entry["classifier"]
        print(f"{name:>9}: accuracy {c['accuracy']:.3f} (C={c['c']:g}, CV {c['cv_accuracy']:.3f}, "
              f"plain LR {c['plain_lr_accuracy']:.3f}, fit {c['fit_seconds']:.1f}s)  "
              f"retrieval P@1 {entry['retrieval']['p@1']:.3f} P@5 {entry['retrieval']['p@5']:.3f}", flush=True)
    if not args.no_service and "final" in train:
        log("timing the service's training path")
        figures["service_training"] = service_training(train["final"], y_train)
        print("service training:", json.dumps(figures["service_training"]), flush=True)

    for name in sets:
        print(f"\nconfusion matrix, {name} (rows true, columns predicted):\n"
              f"{confusion_text(figures['feature_sets'][name]['classifier'])}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classify_eval.json").write_text(json.dumps(figures, indent=1))
    (args.out / "classify_eval.md").write_text(markdown(figures))
    shown = [n for n in ("final", PIXELS) if n in sets] or sets[:2]
    best_block = max((n for n in cuts if n != "final"), default=None,
                     key=lambda n: figures["feature_sets"][n]["classifier"]["accuracy"])
    if best_block:
        shown.insert(1, best_block)
    plot_confusions(figures["feature_sets"], shown, args.out / "classify_eval_confusion.png")
    print(f"\nwrote {args.out / 'classify_eval.json'}, classify_eval.md and classify_eval_confusion.png")
    final = figures["feature_sets"].get("final", {}).get("classifier", {}).get("accuracy")
    if final is not None and final < 0.87:
        print(f"FAIL: deep-feature accuracy {final:.3f} < 0.87", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
