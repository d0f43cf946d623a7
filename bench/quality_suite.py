"""Quality suite on clothing-small: train = catalogue; validation photos select improvements, test photos report.

Features are decoded with lookalike.images.decode_image (the service's decoder: EXIF orientation applied)
and cached per image in bench/results/features-*.npz, keyed by backend, view and cut, so repeated runs
only embed what is new.

Views: "plain" (the service's preprocessing: short side 256, centre crop 224), "flip" (the plain crop
mirrored), "full" (short side 224, centre crop 224: more of the photo). Cuts: final (1280-d, served) and
the pooled outputs of blocks 15/14/12/10, all from one forward pass. The plain view is embedded with eager
PyTorch (the served path, the reference); extra views with ONNX Runtime (a multi-output export of the same
model; cosine to eager > 0.99999, see the embedder suite), which is ~3x faster here.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads
import numpy as np  # noqa: E402

from lookalike import atomic  # noqa: E402

from common import RESULTS, every_nth, list_split, load_now  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import RANK_DEPTH, retrieval_metrics  # noqa: E402

CUTS = ("final", "block15", "block14", "block12", "block10")


def _extra_backend() -> str:
    """Backend of the extra views: ONNX Runtime when installed (extra `bench`), else eager torch."""
    try:
        import onnxruntime  # noqa: F401
        return "ort"
    except ImportError:
        return "torch"


EXTRA = _extra_backend()
CACHE_VERSION = "v1"


def log(msg: str) -> None:
    print(f"[quality] {msg}", flush=True)


# ----------------------------------------------------------------------------- model with several outputs

def multi_cut_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from lookalike_embedder.model import load_model

    base = load_model("cpu", "final")
    wanted = {int(c[5:]): c for c in CUTS if c.startswith("block")}

    class MultiCut(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, x):
            x = x.contiguous(memory_format=torch.channels_last)
            x = self.base.stem(x)
            outs = {}
            for i, block in enumerate(self.base.blocks):
                x = block(x)
                if i in wanted:
                    outs[wanted[i]] = F.normalize(x.mean((2, 3)), p=2, dim=1)
            x = self.base.head(x)
            outs["final"] = F.normalize(x.mean((2, 3)), p=2, dim=1)
            return tuple(outs[c] for c in CUTS)

    return MultiCut().eval()


class Embedder:
    """embed(tensor [n,3,224,224]) -> {cut: float32 [n, d]} with eager torch or ONNX Runtime."""

    def __init__(self, backend: str):
        import io
        import warnings

        import torch

        self.backend = backend
        self.module = multi_cut_module()
        self.session = None
        if backend == "ort":
            import onnxruntime as ort
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(self.module, torch.zeros((1, 3, 224, 224)), buf, input_names=["image"],
                                  output_names=list(CUTS), dynamic_axes={"image": {0: "n"},
                                                                         **{c: {0: "n"} for c in CUTS}},
                                  dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def embed(self, batch) -> dict[str, np.ndarray]:
        import torch

        if self.session is not None:
            outs = self.session.run(None, {"image": batch.numpy()})
        else:
            with torch.inference_mode():
                outs = [o.numpy() for o in self.module(batch)]
        return {c: np.asarray(o, dtype=np.float32) for c, o in zip(CUTS, outs)}


# ----------------------------------------------------------------------------- views

def to_tensor(img):
    import torch

    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0).sub_(0.5).div_(0.5)


def make_view(img, view: str):
    from PIL import Image, ImageOps

    from lookalike_embedder.model import IMAGE_SIZE, preprocess_image

    if view == "plain":
        return preprocess_image(img)
    if view == "flip":
        return ImageOps.mirror(preprocess_image(img))
    if view == "full":
        w, h = img.size
        scale = IMAGE_SIZE / min(w, h)
        new = (max(IMAGE_SIZE, int(w * scale)), max(IMAGE_SIZE, int(h * scale)))
        img = img.resize(new, Image.BICUBIC)
        left, top = (new[0] - IMAGE_SIZE) // 2, (new[1] - IMAGE_SIZE) // 2
        return img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    raise ValueError(view)


def pixels32(img) -> np.ndarray:
    from PIL import Image

    arr = np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32).ravel()
    arr -= arr.mean()
    return arr / (np.linalg.norm(arr) + 1e-6)


# ----------------------------------------------------------------------------- cache

class FeatureCache:
    """Per-image features of one (backend, view), stored as bench/results/features-<key>.npz."""

    def __init__(self, key: str, directory: Path = RESULTS):
        self.path = directory / f"features-{CACHE_VERSION}-{key}.npz"
        self.rows: dict[str, int] = {}
        self.arrays: dict[str, np.ndarray] = {}
        if self.path.exists():
            data = np.load(self.path, allow_pickle=False)
            self.rows = {str(p): i for i, p in enumerate(data["paths"])}
            self.arrays = {k: data[k] for k in data.files if k != "paths"}

    def missing(self, paths: list[Path]) -> list[Path]:
        return [p for p in paths if str(p) not in self.rows]

    def add(self, paths: list[Path], feats: dict[str, np.ndarray]) -> None:
        base = len(self.rows)
        for i, p in enumerate(paths):
            self.rows[str(p)] = base + i
        for k, v in feats.items():
            self.arrays[k] = np.concatenate([self.arrays[k], v]) if k in self.arrays else v

    def get(self, paths: list[Path], key: str) -> np.ndarray:
        return self.arrays[key][[self.rows[str(p)] for p in paths]]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_with(self.path, lambda out: np.savez(out, paths=np.array(list(self.rows), dtype=str),
                                                          **self.arrays), fsync=False)


def ensure_features(paths: list[Path], wanted: list[tuple[str, str]], batch: int = 32) -> dict:
    """Fills the caches for (backend, view) pairs ("torch"/"ort", "plain"/"flip"/"full"/"pixels")."""
    import torch

    from lookalike.images import decode_image

    caches = {w: FeatureCache(f"{w[0]}-{w[1]}" if w[1] != "pixels" else "pixels32") for w in wanted}
    todo = sorted({p for c in caches.values() for p in c.missing(paths)}, key=str)
    if not todo:
        return caches
    log(f"embedding {len(todo)} images for {[f'{b}-{v}' for b, v in wanted]} (cached in {RESULTS})")
    embedders = {b: Embedder(b) for b, v in wanted if v != "pixels"}
    started = time.perf_counter()
    for lo in range(0, len(todo), batch):
        chunk = todo[lo:lo + batch]
        images = [decode_image(p.read_bytes()) for p in chunk]
        for (backend, view), cache in caches.items():
            need = [i for i, p in enumerate(chunk) if str(p) not in cache.rows]
            if not need:
                continue
            if view == "pixels":
                cache.add([chunk[i] for i in need], {"pixels": np.stack([pixels32(images[i]) for i in need])})
                continue
            tensor = torch.stack([to_tensor(make_view(images[i], view)) for i in need])
            cache.add([chunk[i] for i in need], embedders[backend].embed(tensor))
        done = lo + len(chunk)
        if done % (batch * 10) == 0 or done == len(todo):
            rate = done / (time.perf_counter() - started)
            log(f"  {done}/{len(todo)} images ({rate:.1f} images/s)")
            for cache in caches.values():
                cache.save()
    return caches


# ----------------------------------------------------------------------------- retrieval

def evaluate(cat: np.ndarray, cat_labels: list[str], queries: np.ndarray, query_labels: list[str],
             qe: int = 0) -> dict:
    """P@1/5/10 and mAP@100 of exact cosine search; qe > 0: average each query with its top-qe results
    (query expansion) and search again."""
    order = evaluate_order(cat, queries, qe)
    labels = np.array(cat_labels)
    ranked = [list(labels[row]) for row in order]
    counts = {label: cat_labels.count(label) for label in set(cat_labels)}
    return retrieval_metrics(ranked, query_labels, [counts[label] for label in query_labels])


def evaluate_order(cat: np.ndarray, queries: np.ndarray, qe: int = 0) -> np.ndarray:
    """Catalogue indices by decreasing cosine (with query expansion as in `evaluate`)."""
    cat = cat / np.linalg.norm(cat, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ cat.T
    if qe:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :qe]
        expanded = queries + cat[top].sum(axis=1)
        scores = (expanded / np.linalg.norm(expanded, axis=1, keepdims=True)) @ cat.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :RANK_DEPTH]


def ranking(cat: np.ndarray, queries: np.ndarray, depth: int = RANK_DEPTH) -> np.ndarray:
    scores = queries @ cat.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def pca_whitening(cat: np.ndarray, dim: int, power: float):
    """Fits PCA on the catalogue; returns f(x) = normalise((x - mean) @ V[:, :dim] / eigval^power)."""
    mean = cat.mean(axis=0)
    cov = np.cov((cat - mean).T)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dim]
    vals, vecs = np.maximum(vals[order], 1e-12), vecs[:, order]
    proj = vecs / vals ** power

    def apply(x: np.ndarray) -> np.ndarray:
        y = (x - mean) @ proj
        return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    return apply


def combine(caches: dict, paths: list[Path], views: tuple[str, ...], cut: str) -> np.ndarray:
    """Sum of the views' (unit) features, renormalised; "plain" comes from torch, others from ONNX Runtime."""
    total = None
    for view in views:
        cache = caches[("torch", "plain")] if view == "plain" else caches[(EXTRA, view)]
        f = cache.get(paths, cut)
        total = f if total is None else total + f
    return total / np.linalg.norm(total, axis=1, keepdims=True)


def run(dataset: Path, quick: bool) -> dict:
    result: dict = {"load_at_start": load_now(), "dataset": str(dataset)}
    cat_paths, cat_labels = list_split(dataset, "train")
    val_paths, val_labels = list_split(dataset, "validation")
    test_paths, test_labels = list_split(dataset, "test")
    full_views = not quick
    if quick and FeatureCache("torch-plain").missing(cat_paths + val_paths + test_paths):
        # no complete cache: a stratified quarter of the catalogue keeps --quick short
        keep = every_nth(cat_paths, len(cat_paths) // 4)
        cat_paths, cat_labels = [cat_paths[i] for i in keep], [cat_labels[i] for i in keep]
        result["note"] = f"quick mode without a feature cache: catalogue = {len(cat_paths)} train photos (every 4th)"
    elif quick and not FeatureCache(f"{EXTRA}-flip").missing(cat_paths + val_paths + test_paths):
        full_views = True  # everything cached: the full selection is cheap
    result["catalogue"], result["validation_queries"], result["test_queries"] = (
        len(cat_paths), len(val_paths), len(test_paths))
    wanted = [("torch", "plain"), ("pixels", "pixels")]
    if full_views:
        wanted += [("torch", "flip"), ("torch", "full")] if EXTRA == "torch" else [
            ("ort", "plain"), ("ort", "flip"), ("ort", "full")]
    all_paths = cat_paths + val_paths + test_paths
    started = time.perf_counter()
    caches = ensure_features(all_paths, wanted)
    result["feature_seconds"] = round(time.perf_counter() - started, 1)

    # ---- brute force, served-equivalent path (eager torch, decode_image, final cut)
    plain = {s: caches[("torch", "plain")].get(p, "final") for s, p in
             (("cat", cat_paths), ("val", val_paths), ("test", test_paths))}
    result["brute_force_test"] = evaluate(plain["cat"], cat_labels, plain["test"], test_labels)
    result["brute_force_validation"] = evaluate(plain["cat"], cat_labels, plain["val"], val_labels)
    px = caches[("pixels", "pixels")]
    result["raw_pixels_32x32_test"] = evaluate(px.get(cat_paths, "pixels"), cat_labels,
                                               px.get(test_paths, "pixels"), test_labels)
    result["raw_pixels_32x32_validation"] = evaluate(px.get(cat_paths, "pixels"), cat_labels,
                                                     px.get(val_paths, "pixels"), val_labels)
    log(f"brute force test P@1 {result['brute_force_test']['p@1']:.4f}; raw pixels "
        f"{result['raw_pixels_32x32_test']['p@1']:.4f}")

    if full_views and EXTRA == "ort":  # ONNX Runtime features give the same quality?
        ort = caches[("ort", "plain")]
        cos = (ort.get(all_paths, "final") * caches[("torch", "plain")].get(all_paths, "final")).sum(axis=1)
        result["onnxruntime_check"] = {
            "cosine_min": round(float(cos.min()), 7), "cosine_mean": round(float(cos.mean()), 7),
            "validation_p@1": evaluate(ort.get(cat_paths, "final"), cat_labels, ort.get(val_paths, "final"),
                                       val_labels)["p@1"],
            "test_p@1": evaluate(ort.get(cat_paths, "final"), cat_labels, ort.get(test_paths, "final"),
                                 test_labels)["p@1"]}

    # ---- greedy selection on validation P@1: views -> cut -> PCA-whitening -> query expansion
    state = {"views": ("plain",), "cut": "final", "whiten": None, "qe": 0}

    def features(st: dict, paths_q):
        cat = combine(caches, cat_paths, st["views"], st["cut"])
        q = combine(caches, paths_q, st["views"], st["cut"])
        if st["whiten"]:
            f = pca_whitening(cat, *st["whiten"])
            cat, q = f(cat), f(q)
        return cat, q

    def score(st: dict, paths_q, labels_q) -> dict:
        cat, q = features(st, paths_q)
        return evaluate(cat, cat_labels, q, labels_q, st["qe"])

    def top1_correct(st: dict, paths_q, labels_q) -> np.ndarray:
        cat, q = features(st, paths_q)
        return np.array(cat_labels)[evaluate_order(cat, q, st["qe"])[:, 0]] == np.array(labels_q)

    best = score(state, val_paths, val_labels)["p@1"]
    trials = [{"stage": "baseline", "option": "plain/final", "validation_p@1": round(best, 4), "kept": True}]
    view_options = [("plain", "flip"), ("plain", "full"), ("plain", "flip", "full")] if full_views else []
    stages = [
        ("views", view_options),
        ("cut", [c for c in CUTS if c != "final"]),
        ("whiten", [(d, p) for d in ((256,) if quick else (128, 256, 512)) for p in (0.5, 0.25)]),
        ("qe", [1, 3] if quick else [1, 2, 3, 5]),
    ]
    for stage, options in stages:
        stage_best, stage_choice = best, None
        for option in options:
            trial = dict(state, **{stage: option})
            if stage == "whiten" and option[0] >= combine(caches, cat_paths[:2], trial["views"], trial["cut"]).shape[1]:
                continue
            p1 = score(trial, val_paths, val_labels)["p@1"]
            trials.append({"stage": stage, "option": "+".join(option) if stage == "views" else str(option),
                           "validation_p@1": round(p1, 4), "kept": False})
            if p1 > stage_best + 1e-9:
                stage_best, stage_choice = p1, option
        if stage_choice is not None:
            state[stage] = stage_choice
            best = stage_best
            for t in trials:
                if t["stage"] == stage and t["option"] == ("+".join(stage_choice) if stage == "views"
                                                           else str(stage_choice)):
                    t["kept"] = True
        log(f"stage {stage}: {'kept ' + str(stage_choice) if stage_choice else 'nothing kept'} "
            f"(validation P@1 {best:.4f})")
    result["selection_trials"] = trials
    result["chosen"] = {"views": list(state["views"]), "cut": state["cut"],
                        "pca_whitening": None if not state["whiten"] else
                        {"dim": state["whiten"][0], "power": state["whiten"][1]},
                        "query_expansion_top": state["qe"]}
    result["chosen_validation"] = score(state, val_paths, val_labels)
    result["chosen_test"] = score(state, test_paths, test_labels)
    # each kept step alone on test, for the record (selected on validation only)
    steps = {}
    base = {"views": ("plain",), "cut": "final", "whiten": None, "qe": 0}
    for key in ("views", "cut", "whiten", "qe"):
        if state[key] != base[key]:
            steps[key] = {"validation_p@1": round(score(dict(base, **{key: state[key]}), val_paths, val_labels)["p@1"], 4),
                          "test_p@1": round(score(dict(base, **{key: state[key]}), test_paths, test_labels)["p@1"], 4)}
    result["chosen_steps_alone"] = steps
    # paired view of the change: queries whose top-1 became right / wrong (P@1 moves by 1/n per query)
    for split, pq, lq in (("validation", val_paths, val_labels), ("test", test_paths, test_labels)):
        a, b = top1_correct(base, pq, lq), top1_correct(state, pq, lq)
        result[f"chosen_vs_plain_{split}"] = {"queries_fixed": int((~a & b).sum()), "queries_broken": int((a & ~b).sum()),
                                             "one_query_p@1": round(1 / len(lq), 4),
                                             "standard_error_p@1": round(float(np.sqrt(a.mean() * (1 - a.mean()) / len(lq))), 4)}
    log(f"chosen {result['chosen']}: validation P@1 {result['chosen_validation']['p@1']:.4f} "
        f"(plain {result['brute_force_validation']['p@1']:.4f}), test P@1 {result['chosen_test']['p@1']:.4f} "
        f"(plain {result['brute_force_test']['p@1']:.4f})")
    result["category_rerank"] = category_rerank(plain, cat_labels, val_labels, test_labels)
    log(f"category re-ranking: {result['category_rerank']['chosen']}")
    import adapt_suite  # adapted embeddings (lookalike adapt): dev catalogue, clothing-small, gate, timing
    result["adaptation"] = adapt_suite.run(dataset, quick)
    import product_suite  # product level, served chain vs brute force: multi-photo and clothing-small catalogues
    result["products"] = product_suite.run(dataset, quick)
    return result


RERANK_BOOSTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def category_rerank(plain: dict, cat_labels: list[str], val_labels: list[str], test_labels: list[str]) -> dict:
    """The gateway's category-aware re-ranking (lookalike_gateway.ranking) over the served (plain)
    features: the category classifier trained as the service trains it (fit_head, its defaults) on the
    catalogue only, the top-RANK_DEPTH candidates re-ranked by cosine + boost * P(category | query); the
    boost chosen on validation P@1, then measured once on test."""
    from types import SimpleNamespace

    from lookalike_gateway.classifier_head import fit_head
    from lookalike_gateway.ranking import rerank_by_category

    started = time.perf_counter()
    head, report = fit_head(plain["cat"], cat_labels)
    train_s = time.perf_counter() - started
    labels = np.array(cat_labels)
    counts = {label: cat_labels.count(label) for label in set(cat_labels)}

    def measure(queries: np.ndarray, query_labels: list[str], boost: float) -> dict:
        scores = queries @ plain["cat"].T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :RANK_DEPTH]
        probabilities = head.probabilities(queries)
        ranked = []
        for i, row in enumerate(order):
            candidates = [SimpleNamespace(score=float(scores[i, j]), product=SimpleNamespace(category=labels[j]))
                          for j in row]
            ranked.append([c.product.category for c in rerank_by_category(candidates, probabilities[i],
                                                                           head.labels, boost)])
        return retrieval_metrics(ranked, query_labels, [counts[label] for label in query_labels])

    trials = [{"boost": b, "validation": measure(plain["val"], val_labels, b)} for b in RERANK_BOOSTS]
    best = max(trials, key=lambda t: (t["validation"]["p@1"], -t["boost"]))  # ties: the smaller boost
    return {"classifier": {"c": report["c"], "holdout_accuracy": round(report["accuracy"], 4),
                           "train_seconds": round(train_s, 1)},
            "trials": [{"boost": t["boost"], "validation_p@1": round(t["validation"]["p@1"], 4)} for t in trials],
            "chosen": {"boost": best["boost"], "validation": best["validation"],
                       "test": measure(plain["test"], test_labels, best["boost"])}}


def served_reference(dataset: Path, cat_paths: list[Path], query_paths: list[Path]) -> np.ndarray:
    """Brute-force top-RANK_DEPTH catalogue indices for the queries (plain torch features, cached)."""
    caches = ensure_features(cat_paths + query_paths, [("torch", "plain")])
    c = caches[("torch", "plain")]
    return ranking(c.get(cat_paths, "final"), c.get(query_paths, "final"))
