"""Learning an adapted embedding from the catalogue's own photos: methods, selection, the gate's report.

Methods (each gives a `Projection`, blended with the plain features by `alpha`):

* ``lda``: regularised linear discriminant: within-group scatter shrunk towards its mean eigenvalue
  (``shrinkage``), whitened, then the principal directions of the whitened group means (``dim``). Numpy,
  closed form: seconds for 100k photos.
* ``linear`` / ``mlp``: a linear map or a one-hidden-layer MLP trained with a metric-learning loss
  (multi-similarity, pytorch-metric-learning, CPU), initialised from the LDA solution. Optional: used only
  when torch and pytorch-metric-learning import.

`adapt()` chooses the method and settings by validation on one split of the photos (by photo and by
group, see adapt_eval), measures the chosen procedure on a *second*, independent split for the report
(before/after on held-out photos of seen groups and on groups left out of the fit: the quality gate), then
refits on every photo for serving.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .adapt_eval import make_split, regressions, score, split_figures
from .projection import Projection, _unit

DEFAULT_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)  # < 1: the raw vector stays recoverable
# Coarse labels (a category, an attribute) teach what a *kind* of product looks like; weighted more, the
# learned part pulls every photo of a kind together and search turns into classification. On the dev
# catalogue (bench/adapt_suite.py, collapse check) same-product retrieval holds up to 0.2 and drops
# beyond (mAP -0.013 at 0.3, -0.10 at 0.5), so coarse labels choose among these.
FIELD_ALPHAS = (0.1, 0.2)
# Labels with more photos than this (median) are coarse (kinds of product), fewer: groups (one product's
# photos, whatever field names them).
GROUP_MAX_PHOTOS = 20


def alphas_for(labels, coarse: bool | None = None) -> tuple[float, ...]:
    """The blend weights to choose among: DEFAULT_ALPHAS for product groups, FIELD_ALPHAS for coarse labels
    (`coarse` None: judged from the photos per label)."""
    if coarse is None:
        _, counts = np.unique(np.asarray(labels), return_counts=True)
        coarse = bool(np.median(counts) > GROUP_MAX_PHOTOS)
    return FIELD_ALPHAS if coarse else DEFAULT_ALPHAS
DEFAULT_DIMS = (64, 128, 256)
DEFAULT_SHRINKAGE = (0.1, 0.3, 0.6)
MIN_GROUPS = 2
MAX_SELECTION_PHOTOS = 20_000  # settings are chosen on a sample of whole labels this large


class AdaptError(ValueError):
    """Labels that cannot teach anything (fewer than two groups with two photos...)."""


# ---- methods -----------------------------------------------------------------------------------------

def fit_lda(x: np.ndarray, labels, dim: int = 128, shrinkage: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], matrix [d, k]) of a regularised LDA on unit rows x; k = min(dim, groups - 1).

    Fewer photos than dimensions: the solution lies in the span of the centred photos (the within and
    between scatters both live there; the shrinkage only scales the rest), so it is computed in that
    basis -- the same result, without d x d eigenproblems."""
    x = _unit(np.asarray(x, dtype=np.float32))
    d = x.shape[1]
    mean = x.mean(axis=0, dtype=np.float64)
    basis = None
    if len(x) < d:
        _, sv, vt = np.linalg.svd((x - mean).astype(np.float64), full_matrices=False)
        basis = vt[sv > sv.max() * 1e-6].T  # d x r
        x = ((x - mean) @ basis).astype(np.float32)
        mean_r = np.zeros(basis.shape[1])
    else:
        mean_r = mean
    matrix = _lda_matrix(x, mean_r, labels, dim, shrinkage, d)
    if basis is not None:
        matrix = basis @ matrix
    return mean.astype(np.float32), matrix.astype(np.float32)


def _lda_matrix(x: np.ndarray, mean: np.ndarray, labels, dim: int, shrinkage: float, full_dim: int) -> np.ndarray:
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    n_groups = int(codes.max()) + 1
    if n_groups < MIN_GROUPS:
        raise AdaptError("an adaptation needs at least two labels")
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    means = np.add.reduceat(x[order].astype(np.float64), starts, axis=0) / counts[:, None]
    within = x - means[codes].astype(np.float32)  # float32 products: 100k x 1280 in seconds
    sw = (within.T @ within).astype(np.float64) / len(x)
    r = sw.shape[0]
    sw = (1.0 - shrinkage) * sw + shrinkage * (np.trace(sw) / full_dim) * np.eye(r)
    vals, vecs = np.linalg.eigh(sw)
    whiten = vecs / np.sqrt(np.maximum(vals, 1e-12))  # Sw^-1/2 (up to a rotation)
    centred = (means - mean) @ whiten * np.sqrt(counts / counts.sum())[:, None]
    k = max(1, min(int(dim), n_groups - 1, r))
    between_vals, between_vecs = np.linalg.eigh(centred.T @ centred)  # r x r: cheaper than an SVD of groups x r
    return whiten @ between_vecs[:, np.argsort(between_vals)[::-1][:k]]


def fit_metric(x: np.ndarray, labels, kind: str = "linear", dim: int = 128, epochs: int = 8, seed: int = 0,
               init: tuple[np.ndarray, np.ndarray] | None = None, threads: int | None = None) -> Projection:
    """A linear map or MLP trained with the multi-similarity loss (pytorch-metric-learning); alpha 1."""
    import torch
    from pytorch_metric_learning import losses, miners, samplers

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x = _unit(np.asarray(x, dtype=np.float32))
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    mean, matrix = init if init is not None else fit_lda(x, labels, dim)
    k = matrix.shape[1]
    tx, ty = torch.from_numpy(x - mean), torch.from_numpy(codes.astype(np.int64))
    if kind == "linear":
        model = torch.nn.Linear(x.shape[1], k, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(matrix.T.copy()))
    elif kind == "mlp":
        hidden = torch.nn.Linear(x.shape[1], 2 * k)
        out = torch.nn.Linear(2 * k, k)
        model = torch.nn.Sequential(hidden, torch.nn.ReLU(), out)
    else:
        raise AdaptError(f"unknown method {kind!r}")
    loss_fn = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    keep = np.flatnonzero(np.bincount(codes)[codes] >= 2)  # pairs need groups with two photos
    batch = min(256, max(8, len(keep)))
    sampler = samplers.MPerClassSampler(codes[keep], m=2, length_before_new_iter=len(keep))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3 if kind == "linear" else 2e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        indices = keep[np.fromiter(iter(sampler), dtype=np.int64)]
        for lo in range(0, len(indices) - batch + 1, batch):
            idx = torch.from_numpy(indices[lo:lo + batch])
            emb = model(tx[idx])
            loss = loss_fn(emb, ty[idx], miner(emb, ty[idx]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    if kind == "linear":
        layers = [(model.weight.detach().numpy().T.copy(), np.zeros(k, np.float32))]
    else:
        layers = [(hidden.weight.detach().numpy().T.copy(), hidden.bias.detach().numpy().copy()),
                  (out.weight.detach().numpy().T.copy(), out.bias.detach().numpy().copy())]
    return Projection(mean, layers, 1.0, kind)


def metric_available() -> bool:
    try:
        import pytorch_metric_learning  # noqa: F401
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def fit(x: np.ndarray, labels, settings: dict) -> Projection:
    """The projection of one candidate's settings ({"method", "dim", "shrinkage", "alpha", ...})."""
    method = settings["method"]
    mean, matrix = fit_lda(x, labels, settings.get("dim", 128), settings.get("shrinkage", 0.3))
    if method == "lda":
        projection = Projection(mean, [(matrix, np.zeros(matrix.shape[1], np.float32))], 1.0, "lda")
    else:
        projection = fit_metric(x, labels, method, settings.get("dim", 128), settings.get("epochs", 8),
                                init=(mean, matrix))
    projection.alpha = float(settings.get("alpha", 1.0))
    return projection


def candidates(methods=("lda",), dims=DEFAULT_DIMS, shrinkages=DEFAULT_SHRINKAGE) -> list[dict]:
    """Fit settings to try (alpha is chosen for each fit afterwards: it needs no refit)."""
    out = []
    for method in methods:
        for dim in dims:
            for s in (shrinkages if method == "lda" else (0.3,)):
                out.append({"method": method, "dim": dim, "shrinkage": s})
    return out


# ---- selection and the report -------------------------------------------------------------------

def select(x: np.ndarray, labels, split, trials: list[dict], alphas=DEFAULT_ALPHAS,
           progress: Callable[[str, float], None] | None = None) -> tuple[dict, list[dict], dict]:
    """Fits each trial on split.fit, measures every alpha on the split's queries; returns (best settings,
    the validation table, plain figures)."""
    x = _unit(np.asarray(x, dtype=np.float32))
    labels = np.asarray(labels)
    plain = split_figures(x, labels, split)
    table = [{"method": "plain", "alpha": 0.0, "score": round(score(plain), 4), **_flat(plain)}]
    best, best_score = {"method": "plain", "alpha": 0.0}, score(plain)
    for n, trial in enumerate(trials):
        started = time.perf_counter()
        projection = fit(x[split.fit], labels[split.fit], dict(trial, alpha=1.0))
        fit_s = time.perf_counter() - started
        for alpha in alphas:
            projection.alpha = alpha
            figures = split_figures(projection.apply(x), labels, split)
            s = score(figures)
            table.append({**trial, "alpha": alpha, "fit_s": round(fit_s, 2), "score": round(s, 4), **_flat(figures)})
            if s > best_score + 1e-9:
                best, best_score = dict(trial, alpha=alpha), s
        if progress:
            progress(f"validated {trial}", (n + 1) / len(trials))
    return best, table, plain


def adapt(x: np.ndarray, labels, trials: list[dict] | None = None, alphas=None, seed: int = 0,
          group_holdout: float = 0.2, progress: Callable[[str, float], None] | None = None,
          max_selection_photos: int = MAX_SELECTION_PHOTOS, coarse: bool | None = None,
          ) -> tuple[Projection | None, dict]:
    """Select on one split (of at most `max_selection_photos` photos: whole labels sampled), report on
    another, refit on all. Returns (projection or None when the plain space wins, report). The report's
    `regressions` lists held-out figures the adaptation made worse."""
    x = _unit(np.asarray(x, dtype=np.float32))
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if (counts >= 2).sum() < MIN_GROUPS:
        raise AdaptError(f"an adaptation needs at least {MIN_GROUPS} labels with two or more photos each; "
                         f"found {(counts >= 2).sum()}")
    started = time.perf_counter()
    trials = trials if trials is not None else candidates()
    alphas = alphas or alphas_for(labels, coarse)
    report_progress = (lambda m, f: progress(m, 0.8 * f)) if progress else None
    sample = sample_labels(labels, max_selection_photos, seed)
    selection_split = make_split(labels[sample], group_holdout, seed)
    best, table, _ = select(x[sample], labels[sample], selection_split, trials, alphas, report_progress)
    report_split = make_split(labels, group_holdout, seed + 1)
    before = split_figures(x, labels, report_split)
    report = {"photos": int(len(x)), "labels": int(len(counts)), "labels_with_2_photos": int((counts >= 2).sum()),
              "chosen": best, "validation_table": table, "selection_split": selection_split.sizes(),
              "report_split": report_split.sizes(), "before": before}
    if best["method"] == "plain":
        report.update(after=before, regressions=[], fit_seconds=round(time.perf_counter() - started, 2))
        return None, report
    if progress:
        progress("measuring the chosen settings on an independent split", 0.85)
    held_out = fit(x[report_split.fit], labels[report_split.fit], best)
    after = split_figures(held_out.apply(x), labels, report_split)
    if progress:
        progress("fitting on every photo", 0.92)
    projection = fit(x, labels, best)
    report.update(after=after, regressions=regressions(before, after),
                  fit_seconds=round(time.perf_counter() - started, 2))
    projection.meta = {"chosen": best, "photos": int(len(x)), "labels": int(len(counts))}
    return projection, report


def sample_labels(labels: np.ndarray, max_photos: int, seed: int) -> np.ndarray:
    """Indices of the photos of randomly chosen whole labels, at most `max_photos` of them (all when fewer)."""
    if len(labels) <= max_photos:
        return np.arange(len(labels))
    groups, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(groups))
    keep = order[np.cumsum(counts[order]) <= max_photos]
    return np.flatnonzero(np.isin(inverse, keep))


def _flat(figures: dict) -> dict:
    return {f"{kind}_{key}": figures[kind][key] for kind in ("seen", "unseen") for key in ("p@1", "r@5", "map")}
