"""Transfer learning as a service: linear classifiers on the stored deep features, next to search.

Training reads every stored embedding and its payload from the search service (ScrollPoints), takes
the labels from a payload field (``category`` or ``attributes.<name>``), and fits a multinomial
logistic regression on standardised features: C is chosen by stratified k-fold cross-validation on the
training part, accuracy and per-class precision/recall are measured on a stratified held-out part. The
standardisation is folded into the linear head, so classifying is one matrix-vector product and a
softmax in numpy (microseconds) on the query embedding the gateway already has (Redis-cached: a photo
just searched is not embedded again).

Trained heads are kept under ``<data_dir>/classifiers/<version>/`` (``head.npz``: coef, intercept,
labels; ``meta.json``: the training report) -- no pickle. ``<data_dir>/classifiers/current`` names the
active version; it is replaced atomically after each training and re-read when it changes (gateways
sharing a volume follow each other within a second).
"""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from fastapi import APIRouter, Body, File, Form, UploadFile
from prometheus_client import Histogram
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lookalike import vectors
from lookalike.v1 import classifier_pb2, classifier_pb2_grpc, search_pb2

from .core import ApiError, Deadline, Gateway, validate_top_k
from .grpc_api import GatewayServicer, _unary

log = logging.getLogger(__name__)

DEFAULT_LABEL_FIELD = "category"
DEFAULT_HOLDOUT = 0.2
DEFAULT_C_VALUES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # on standardised features; see bench/classify_eval.py
DEFAULT_MIN_EXAMPLES = 5
DEFAULT_TOP_K = 5
CV_FOLDS = 3
SEED = 0
MAX_ITER = 1000
SCROLL_PAGE = 1000
# Training reads at most this many labelled points. Scrolling goes in point-id order, and point ids are
# uuid5 hashes of the product ids, so the first N are a uniform sample of the catalogue.
MAX_TRAIN_POINTS = 100_000
TRAIN_TIMEOUT_S = 600.0  # how long a caller waits for a training by default (it finishes regardless)
RELOAD_CHECK_S = 1.0  # how often `current` is checked for a version trained elsewhere
VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{4}$")
PREDICTED_SUFFIX = "_predicted"
PROBABILITY_SUFFIX = "_probability"

HEAD_SECONDS = Histogram("lookalike_gateway_classifier_head_seconds",
                         "Time of the linear head + softmax per Classify (the embedding excluded)",
                         buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01))


class TrainingError(ValueError):
    """The stored data cannot train a classifier (FAILED_PRECONDITION): the message says why."""


# ---- the head -------------------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class LinearHead:
    """probabilities(x) = softmax(coef @ x + intercept); one row of coef per label."""

    labels: tuple[str, ...]
    coef: np.ndarray  # (k, d) float64
    intercept: np.ndarray  # (k,) float64

    def __post_init__(self):
        k = len(self.labels)
        if k < 2 or self.coef.shape[0] != k or self.intercept.shape != (k,) or self.coef.ndim != 2:
            raise ValueError(f"inconsistent head: {k} labels, coef {self.coef.shape}, intercept {self.intercept.shape}")

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Label probabilities of one vector (k,) or of rows (n, k)."""
        return softmax(np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept)

    def top(self, x: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k most probable labels of one vector, best first (ties: label order)."""
        p = self.probabilities(x)
        order = np.argsort(-p, kind="stable")[:k]
        return [(self.labels[i], float(p[i])) for i in order]


def _head_from_sklearn(model, mean: np.ndarray, scale: np.ndarray) -> LinearHead:
    """Folds the standardisation (x - mean) / scale into the fitted model's weights."""
    w = np.asarray(model.coef_, dtype=np.float64)
    b = np.asarray(model.intercept_, dtype=np.float64)
    if w.shape[0] == 1:  # binary: sigmoid(w x + b) == softmax([-z/2, z/2])
        w = np.vstack([-w[0] / 2, w[0] / 2])
        b = np.array([-b[0] / 2, b[0] / 2])
    w = w / scale
    return LinearHead(tuple(str(c) for c in model.classes_), w, b - w @ mean)


def fit_head(x: np.ndarray, y, *, holdout_fraction: float = DEFAULT_HOLDOUT,
             c_values=DEFAULT_C_VALUES, folds: int = CV_FOLDS, seed: int = SEED) -> tuple[LinearHead, dict]:
    """Fits the head on (x, y): stratified held-out split, C by stratified `folds`-fold CV on the
    training part, the model refit on the whole training part with that C.

    Returns the head and a report (labels, train_size, test_size, accuracy, cv_accuracy, c, cv_scores,
    per_class, confusion). Every label needs at least 2 examples (raise TrainingError otherwise). With
    holdout_fraction 0 there is no held-out part: accuracy, per_class and confusion come from the
    out-of-fold predictions of the chosen C.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    from sklearn.model_selection import StratifiedKFold, train_test_split

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray([str(v) for v in y])
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x has shape {x.shape} for {y.shape[0]} labels")
    counts = Counter(y.tolist())
    labels = sorted(counts)
    if len(labels) < 2:
        raise TrainingError(f"need at least 2 labels, got {len(labels)} ({', '.join(labels) or 'none'})")
    if min(counts.values()) < 2:
        rare = sorted(label for label, n in counts.items() if n < 2)
        raise TrainingError(f"every label needs at least 2 examples; {', '.join(rare)} has 1")
    c_values = sorted({float(c) for c in c_values})
    if not c_values or any(not np.isfinite(c) or c <= 0 for c in c_values):
        raise ValueError(f"C values must be positive and finite, got {c_values}")
    if not 0 <= holdout_fraction < 0.5:
        raise ValueError(f"holdout_fraction must be in [0, 0.5), got {holdout_fraction}")

    if holdout_fraction > 0:
        n_test = min(max(int(round(holdout_fraction * len(y))), len(labels)), len(y) - len(labels))
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    else:
        x_train, y_train, x_test, y_test = x, y, x[:0], y[:0]
    mean = x_train.mean(axis=0)
    scale = np.maximum(x_train.std(axis=0), 1e-6)
    z_train = ((x_train - mean) / scale).astype(np.float32)  # float32: half the time, the same accuracy

    train_counts = Counter(y_train.tolist())
    n_folds = max(2, min(folds, min(train_counts.values())))
    cv_scores = []
    oof = {}
    if min(train_counts.values()) >= 2:
        predicted = {c: np.empty_like(y_train) for c in c_values}
        losses = dict.fromkeys(c_values, 0.0)
        for fit_idx, val_idx in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(z_train, y_train):
            # C ascending, each fit starting from the previous solution (the same optimum, ~2x fewer iterations)
            model = LogisticRegression(C=c_values[0], max_iter=MAX_ITER, warm_start=True)
            truth = y_train[val_idx]
            for c in c_values:
                model.C = c
                model.fit(z_train[fit_idx], y_train[fit_idx])
                proba = model.predict_proba(z_train[val_idx])
                predicted[c][val_idx] = model.classes_[np.argmax(proba, axis=1)]
                p_truth = proba[np.arange(len(val_idx)), np.searchsorted(model.classes_, truth)]
                losses[c] -= float(np.log(np.clip(p_truth, 1e-12, 1)).sum())
        cv_scores = [float(np.mean(predicted[c] == y_train)) for c in c_values]
        log_losses = [losses[c] / len(y_train) for c in c_values]
        oof = predicted
        # the best CV accuracy; among equals the best CV log-loss (better calibrated probabilities)
        best = max(range(len(c_values)), key=lambda i: (cv_scores[i], -log_losses[i]))
        c = c_values[best]
    else:  # a label with one training example: no CV possible, take the middle of the grid
        c = c_values[len(c_values) // 2]
    model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(z_train, y_train)
    head = _head_from_sklearn(model, mean, scale)

    if len(y_test):
        truth, predicted = y_test, np.asarray(head.labels)[np.argmax(head.probabilities(x_test), axis=1)]
    elif oof:
        truth, predicted = y_train, oof[c]
    else:
        truth = predicted = y_train[:0]
    precision, recall, _, support = precision_recall_fscore_support(truth, predicted, labels=list(head.labels),
                                                                    zero_division=0)
    report = {
        "labels": list(head.labels),
        "train_size": int(len(y_train)),
        "test_size": int(len(y_test)),
        "accuracy": float(np.mean(truth == predicted)) if len(truth) else 0.0,
        "cv_accuracy": float(max(cv_scores)) if cv_scores else 0.0,
        "c": float(c),
        "cv_scores": {f"{cv_c:g}": round(s, 6) for cv_c, s in zip(c_values, cv_scores)},
        "cv_folds": int(n_folds) if cv_scores else 0,
        "per_class": [{"label": label, "precision": float(p), "recall": float(r), "support": int(s),
                       "train_examples": int(train_counts.get(label, 0))}
                      for label, p, r, s in zip(head.labels, precision, recall, support)],
        "confusion": confusion_matrix(truth, predicted, labels=list(head.labels)).tolist() if len(truth) else [],
    }
    return head, report


# ---- labels ---------------------------------------------------------------------------------------

def parse_label_field(field: str) -> tuple[str, str | None]:
    """("category", None) or ("attributes", name); FAILED_PRECONDITION for anything else."""
    field = (field or DEFAULT_LABEL_FIELD).strip()
    if field == "category":
        return field, None
    if field.startswith("attributes.") and len(field) > len("attributes."):
        return "attributes", field[len("attributes."):]
    raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                   f"unknown label field {field!r}: use 'category' or 'attributes.<name>'")


def label_of(product, kind: str, name: str | None) -> tuple[str, bool]:
    """The product's label for the field and whether it was itself predicted (then not for training)."""
    if kind == "category":
        return product.category, product.attributes.get("category" + PREDICTED_SUFFIX) == "true"
    return product.attributes.get(name, ""), product.attributes.get(name + PREDICTED_SUFFIX) == "true"


# ---- persistence ----------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Writes a file so a reader sees the old or the new content, never a part (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class ClassifierRepository:
    """Versions of trained heads under `root`, and the `current` pointer."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def pointer(self) -> Path:
        return self.root / "current"

    @staticmethod
    def new_version(now: dt.datetime | None = None) -> str:
        now = now or dt.datetime.now(dt.timezone.utc)
        return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"

    def versions(self) -> list[str]:
        """Stored versions, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.match(p.name))

    def save(self, head: LinearHead, report: dict, activate: bool = True) -> str:
        """Writes a new version (head.npz + meta.json) and, by default, points `current` at it."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = report.get("version") or self.new_version()
        if not VERSION_RE.match(version):
            raise ValueError(f"bad version name {version!r}")
        report = {**report, "version": version}
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        try:
            with open(staging / "head.npz", "wb") as handle:
                np.savez(handle, coef=head.coef, intercept=head.intercept, labels=np.array(head.labels, dtype=str))
                handle.flush()
                os.fsync(handle.fileno())
            _write_file(staging / "meta.json", json.dumps(report, indent=2, sort_keys=True).encode())
            _fsync_dir(staging)
            os.rename(staging, self.root / version)
        except BaseException:
            for leftover in staging.glob("*"):
                leftover.unlink(missing_ok=True)
            staging.rmdir()
            raise
        _fsync_dir(self.root)
        if activate:
            self.activate(version)
        return version

    def activate(self, version: str) -> None:
        if version not in self.versions():
            raise KeyError(version)
        atomic_write(self.pointer, f"{version}\n".encode())

    def current_version(self) -> str | None:
        """The version `current` names; the newest stored one when the pointer is missing or invalid."""
        try:
            named = self.pointer.read_text().strip()
        except OSError:
            named = ""
        if VERSION_RE.match(named) and (self.root / named).is_dir():
            return named
        versions = self.versions()
        if named:
            log.warning("classifier pointer %s names %r, which is not a stored version", self.pointer, named)
        return versions[-1] if versions else None

    def load(self, version: str) -> tuple[LinearHead, dict]:
        if not VERSION_RE.match(version):
            raise ValueError(f"bad version name {version!r}")
        folder = self.root / version
        with np.load(folder / "head.npz", allow_pickle=False) as data:
            head = LinearHead(tuple(str(label) for label in data["labels"]), np.asarray(data["coef"], dtype=np.float64),
                              np.asarray(data["intercept"], dtype=np.float64))
        meta = json.loads((folder / "meta.json").read_text())
        if list(head.labels) != list(meta.get("labels", head.labels)):
            raise ValueError(f"classifier {version}: head.npz and meta.json disagree on the labels")
        return head, meta

    def stamp(self) -> tuple | None:
        """Changes whenever `current` is replaced."""
        try:
            st = self.pointer.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size


# ---- the service ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Active:
    version: str
    head: LinearHead
    meta: dict


class ClassifierService:
    """Classify / train / report over a Gateway; thread-safe; one training at a time."""

    def __init__(self, gateway: Gateway, root: Path, train_threads: int | None = None):
        self.gateway = gateway
        self.repo = ClassifierRepository(root)
        self.train_threads = train_threads or max(1, (os.cpu_count() or 2) - 1)  # leave a core for serving
        self._active: Active | None = None
        self._stamp: tuple | None = None
        self._next_check = 0.0
        self._load_lock = threading.Lock()
        self._training = threading.Lock()
        self._training_since: float | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="classifier-train")
        self.reload()

    def target(self):
        """The active collection and its model (a catalogue.Target): what classify embeds with and what
        training reads."""
        return self.gateway.catalogue.active()

    # -- loading ---------------------------------------------------------------------------------

    def reload(self) -> Active | None:
        """(Re)loads the version `current` names; keeps the previous one when that fails."""
        with self._load_lock:
            self._stamp = self.repo.stamp()
            self._next_check = time.monotonic() + RELOAD_CHECK_S
            version = self.repo.current_version()
            if version is None:  # none trained, or the folder was removed: classify says NOT_FOUND
                if self._active is not None:
                    log.info("no stored classifier any more under %s", self.repo.root)
                self._active = None
                return None
            if self._active is not None and self._active.version == version:
                return self._active
            try:
                head, meta = self.repo.load(version)
            except (OSError, ValueError, KeyError) as exc:
                log.error("cannot load classifier %s: %s", version, exc)
                return self._active
            self._active = Active(version, head, meta)
            log.info("classifier %s active: %d labels (%s), accuracy %.3f", version, len(head.labels),
                     meta.get("label_field"), meta.get("accuracy", float("nan")))
            return self._active

    def active(self) -> Active | None:
        """The active classifier, following `current` when another process replaced it."""
        if time.monotonic() >= self._next_check:
            if self.repo.stamp() != self._stamp:
                return self.reload()
            self._next_check = time.monotonic() + RELOAD_CHECK_S
        return self._active

    def _require(self, model_id: str | None = None) -> Active:
        active = self.active()
        if active is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND,
                           "no classifier has been trained yet: train one first (POST /v1/classifiers, "
                           "gRPC lookalike.v1.Classification/TrainClassifier)")
        trained_on = active.meta.get("model_id")
        if model_id is not None and trained_on and trained_on != model_id:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"the active classifier {active.version} was trained on {trained_on!r} embeddings, but "
                           f"the active collection uses {model_id!r}: train a new one")
        return active

    # -- API -------------------------------------------------------------------------------------

    def classify(self, image: bytes, top_k: int | None,
                 deadline: Deadline) -> tuple[list[tuple[str, float]], bool, str]:
        """(predictions best first, cache_hit, classifier version)."""
        if len(image) > self.gateway.settings.max_upload_bytes:
            self.gateway.check_image(image)  # the size error, before hashing a huge body
        if not image:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
        top_k = validate_top_k(top_k, DEFAULT_TOP_K)
        target = self.target()  # one snapshot: the model the classifier must have been trained on
        active = self._require(target.model_id)  # before the embedder: no work without a classifier
        vector, cache_hit = self.gateway.query_embedding(image, deadline, target)
        if vector.shape[0] != active.head.dim:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"the active classifier {active.version} expects {active.head.dim}-d embeddings, the "
                           f"embedder returned {vector.shape[0]}-d: train a new one")
        started = time.perf_counter()
        predictions = active.head.top(vector, min(top_k, len(active.head.labels)))
        HEAD_SECONDS.observe(time.perf_counter() - started)
        return predictions, cache_hit, active.version

    def current_report(self) -> dict:
        active = self._require()
        return {**active.meta, "version": active.version}

    def list_versions(self) -> dict:
        active = self.active()
        return {"versions": self.repo.versions(), "current": active.version if active else None}

    def train(self, label_field: str = DEFAULT_LABEL_FIELD, holdout_fraction: float | None = None,
              c_values=None, min_examples: int | None = None, wait_s: float = TRAIN_TIMEOUT_S) -> dict:
        """Trains in the training thread and waits up to `wait_s` for the report. ABORTED while
        another training runs; DEADLINE_EXCEEDED when the wait ends first (the training goes on)."""
        kind, name = parse_label_field(label_field)
        field = "category" if kind == "category" else f"attributes.{name}"
        holdout = DEFAULT_HOLDOUT if holdout_fraction is None else float(holdout_fraction)
        if not np.isfinite(holdout) or not 0 <= holdout < 0.5:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"holdout_fraction must be in [0, 0.5), got {holdout}")
        cs = tuple(c_values) if c_values else DEFAULT_C_VALUES
        if len(cs) > 20 or any(not np.isfinite(c) or c <= 0 for c in cs):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "c_values must be at most 20 positive finite numbers")
        minimum = DEFAULT_MIN_EXAMPLES if min_examples is None else int(min_examples)
        if minimum < 2:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"min_examples_per_label must be at least 2, got {minimum}")
        if not self._training.acquire(blocking=False):
            since = time.monotonic() - (self._training_since or time.monotonic())
            raise ApiError(grpc.StatusCode.ABORTED, f"a classifier is already training (for {since:.0f}s); "
                                                    "retry when it is done")
        self._training_since = time.monotonic()
        try:
            context = contextvars.copy_context()  # the request id follows into the worker's logs
            future = self._worker.submit(context.run, self._train_locked, field, kind, name, holdout, cs, minimum)
        except BaseException:
            self._training.release()
            raise
        try:
            return future.result(timeout=max(0.0, wait_s))
        except FutureTimeout:
            raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"training did not finish within {wait_s:.0f}s; it goes on, and GET /v1/classifiers/current "
                           "shows the new classifier once it is done") from None

    def _train_locked(self, field: str, kind: str, name: str | None, holdout: float, cs, minimum: int) -> dict:
        try:
            return self._train(field, kind, name, holdout, cs, minimum)
        except ApiError as exc:
            log.info("classifier training on %s refused: %s", field, exc.message)
            raise
        except Exception:
            log.exception("classifier training on %s failed", field)
            raise
        finally:
            self._training_since = None
            self._training.release()

    def _read_embeddings(self, collection: str, kind: str, name: str | None, deadline: Deadline):
        xs, ys, unlabeled, offset = [], [], 0, ""
        while True:
            page = self.gateway._call_search("ScrollPoints", search_pb2.ScrollPointsRequest(
                limit=SCROLL_PAGE, offset=offset, with_vectors=True, collection=collection), deadline)
            for point in page.points:
                label, predicted = label_of(point.product, kind, name)
                if not label or predicted or not point.vector:
                    unlabeled += 1
                    continue
                xs.append(vectors.unpack(point.vector))
                ys.append(label)
            offset = page.next_offset
            if not offset:
                return xs, ys, unlabeled, False
            if len(ys) >= MAX_TRAIN_POINTS:
                return xs, ys, unlabeled, True

    def _train(self, field: str, kind: str, name: str | None, holdout: float, cs, minimum: int) -> dict:
        from threadpoolctl import threadpool_limits

        started = time.perf_counter()
        target = self.target()
        xs, ys, unlabeled, sampled = self._read_embeddings(target.collection, kind, name, Deadline(TRAIN_TIMEOUT_S))
        what = "a category" if kind == "category" else f"attribute {name!r}"
        if not ys:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"no stored product has {what} to learn from ({unlabeled} products without one)")
        dims = Counter(x.shape[0] for x in xs)
        if len(dims) > 1:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"stored embeddings have mixed sizes {dict(dims)}")
        counts = Counter(ys)
        kept = {label for label, n in counts.items() if n >= minimum}
        skipped = {label: n for label, n in sorted(counts.items()) if label not in kept}
        if len(kept) < 2:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"label field {field!r} has {len(kept)} label(s) with at least {minimum} examples "
                           f"({', '.join(sorted(kept)) or 'none'}; {len(counts)} labels in all); a classifier needs "
                           "at least 2")
        keep = [i for i, label in enumerate(ys) if label in kept]
        x = np.stack([xs[i] for i in keep])
        y = [ys[i] for i in keep]
        with threadpool_limits(limits=self.train_threads):
            try:
                head, report = fit_head(x, y, holdout_fraction=holdout, c_values=cs)
            except TrainingError as exc:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"label field {field!r}: {exc}") from None
        now = dt.datetime.now(dt.timezone.utc)
        version = self.repo.new_version(now)
        report.update({
            "version": version, "model_id": target.model_id, "collection": target.collection,
            "label_field": field, "dim": head.dim,
            "created_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "skipped_labels": skipped, "unlabeled": unlabeled, "sampled": sampled,
            "seconds": round(time.perf_counter() - started, 3),
        })
        self.repo.save(head, report)
        self.reload()
        log.info("classifier %s trained on %s: %d labels, %d train / %d test, accuracy %.3f, C %g, %.1fs",
                 version, field, len(head.labels), report["train_size"], report["test_size"], report["accuracy"],
                 report["c"], report["seconds"])
        return report

    # -- ingest ----------------------------------------------------------------------------------

    def category_head(self, model_id: str, dim: int) -> LinearHead | None:
        """The active classifier's head when it predicts ``category`` from `dim`-d embeddings of
        `model_id` (the active collection's model); else None."""
        active = self.active()
        if active is None or active.meta.get("label_field") != "category" or dim != active.head.dim:
            return None
        trained_on = active.meta.get("model_id")
        if trained_on and trained_on != model_id:
            return None
        return active.head

    def annotate(self, product, vector: np.ndarray) -> None:
        """Gives a product stored without a category the active category classifier's prediction,
        marked `category_predicted=true` and `category_probability` in its attributes."""
        if product.category:
            return
        head = self.category_head(self.target().model_id, vector.shape[0])
        if head is None:
            return
        label, probability = head.top(vector, 1)[0]
        product.category = label
        product.attributes["category" + PREDICTED_SUFFIX] = "true"
        product.attributes["category" + PROBABILITY_SUFFIX] = f"{probability:.2f}"

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    # -- REST ------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        """The REST routes (/v1/classify, /v1/classifiers...), a FastAPI APIRouter."""
        return build_router(self)


# ---- wire formats ---------------------------------------------------------------------------------

def report_proto(report: dict) -> classifier_pb2.TrainClassifierResponse:
    labels = report.get("labels", [])
    return classifier_pb2.TrainClassifierResponse(
        version=report.get("version", ""), model_id=report.get("model_id", ""),
        label_field=report.get("label_field", ""), labels=labels,
        train_size=report.get("train_size", 0), test_size=report.get("test_size", 0),
        accuracy=report.get("accuracy", 0.0), cv_accuracy=report.get("cv_accuracy", 0.0), c=report.get("c", 0.0),
        per_class=[classifier_pb2.ClassMetrics(**m) for m in report.get("per_class", [])],
        seconds=report.get("seconds", 0.0), created_at=report.get("created_at", ""),
        skipped_labels=report.get("skipped_labels", {}), unlabeled=report.get("unlabeled", 0),
        confusion=[int(v) for row in report.get("confusion", []) for v in row])


class ClassificationServicer(GatewayServicer, classifier_pb2_grpc.ClassificationServicer):
    """lookalike.v1.Classification over a ClassifierService."""

    def __init__(self, service: ClassifierService, auth, draining: threading.Event | None = None):
        super().__init__(service.gateway, auth, draining)
        self.service = service

    @_unary
    def Classify(self, request, context, deadline):
        top_k = request.top_k if request.HasField("top_k") else None
        predictions, cache_hit, version = self.service.classify(request.image, top_k, deadline)
        return classifier_pb2.ClassifyResponse(
            predictions=[classifier_pb2.Prediction(label=label, probability=p) for label, p in predictions],
            cache_hit=cache_hit, classifier_version=version)

    @_unary
    def TrainClassifier(self, request, context, deadline):
        remaining = context.time_remaining()  # training may take longer than the usual request deadline
        wait_s = TRAIN_TIMEOUT_S if remaining is None else min(remaining - 0.5, TRAIN_TIMEOUT_S)
        report = self.service.train(
            request.label_field or DEFAULT_LABEL_FIELD,
            request.holdout_fraction if request.HasField("holdout_fraction") else None,
            list(request.c_values) or None,
            request.min_examples_per_label if request.HasField("min_examples_per_label") else None,
            wait_s=max(0.0, wait_s))
        return report_proto(report)

    @_unary
    def GetClassifier(self, request, context, deadline):
        return classifier_pb2.GetClassifierResponse(classifier=report_proto(self.service.current_report()))


SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classification"].full_name  # lookalike.v1.Classification


def add_to_host(host, service: ClassifierService, auth, draining: threading.Event | None = None) -> None:
    """Registers lookalike.v1.Classification on the gateway's ServiceHost (health and reflection list it)."""
    host.add(classifier_pb2_grpc.add_ClassificationServicer_to_server,
             ClassificationServicer(service, auth, draining), SERVICE_NAME)


# ---- REST -----------------------------------------------------------------------------------------

class TrainBody(BaseModel):
    """POST /v1/classifiers; every field optional (an empty body trains on `category`)."""
    model_config = ConfigDict(extra="forbid")
    label_field: str = Field(DEFAULT_LABEL_FIELD, description="'category' or 'attributes.<name>'")
    holdout_fraction: float | None = Field(None, description="held-out part, [0, 0.5); default 0.2")
    c_values: list[float] | None = Field(None, description="candidate C values; the default grid when unset")
    min_examples_per_label: int | None = Field(None, description="labels with fewer examples are left out (5)")


def build_router(service: ClassifierService) -> APIRouter:
    settings = service.gateway.settings
    router = APIRouter(tags=["classification"])

    async def read_image(upload: UploadFile | None) -> bytes:
        if upload is None:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "multipart field 'image' is required")
        declared = (upload.content_type or "").split(";")[0].strip().lower()
        if declared and not declared.startswith("image/") and declared != "application/octet-stream":
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"content type {declared!r} is not an image type",
                           http_status=415)
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"image is above the limit of {settings.max_upload_bytes} bytes", http_status=413)
        return data

    @router.post("/v1/classify")
    async def classify(image: UploadFile | None = File(None), top_k: int | None = Form(None)):
        """The active classifier's labels for the uploaded photo (multipart `image`), most probable first."""
        data = await read_image(image)
        started = time.perf_counter()
        predictions, cache_hit, version = await run_in_threadpool(
            service.classify, data, top_k, Deadline(settings.request_timeout_s))
        return {"predictions": [{"label": label, "probability": round(p, 6)} for label, p in predictions],
                "cache_hit": cache_hit, "classifier_version": version,
                "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @router.post("/v1/classifiers")
    async def train(body: TrainBody | None = Body(None)):
        """Trains a classifier on the stored embeddings (an empty body: labels from `category`) and
        makes it the active one; returns the training report."""
        body = body or TrainBody()
        return await run_in_threadpool(service.train, body.label_field, body.holdout_fraction, body.c_values,
                                       body.min_examples_per_label)

    @router.get("/v1/classifiers/current")
    def current():
        """The active classifier's training report."""
        return service.current_report()

    @router.get("/v1/classifiers")
    def versions():
        """Stored classifier versions (oldest first) and the active one."""
        return service.list_versions()

    return router
