"""Transfer learning as a service: linear classifiers on the stored deep features, next to search.

Training reads every stored embedding and its payload from the search service (ScrollPoints), takes
the labels from a payload field (``category`` or ``attributes.<name>``), and fits a multinomial
logistic regression on standardised features: C is chosen by stratified k-fold cross-validation on the
training part, accuracy and per-class precision/recall are measured on a stratified held-out part. The
standardisation is folded into the linear head, so classifying is one matrix-vector product and a
softmax in numpy (microseconds) on the query embedding the gateway already has (Redis-cached: a photo
just searched is not embedded again).

Trained heads are kept under ``<data_dir>/classifiers/`` (classifier_store); ``current`` is re-read
when it changes (gateways sharing a volume follow each other within a second). Training is a job
(jobs.JobRunner): started by one call, read by id. The maths is in classifier_head, the transports
(gRPC, REST) in classifier_api.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import Histogram

from lookalike import vectors
from lookalike.limits import DEFAULT_CLASSIFY_TOP_K, MAX_SCROLL_LIMIT
from lookalike.search.v1 import search_pb2

from .classifier_head import DEFAULT_C_VALUES, DEFAULT_HOLDOUT, LinearHead, TrainingError, fit_head
from .classifier_store import ClassifierRepository
from .collection_manager import CollectionManager, Target
from .errors import ApiError, Deadline, bad_argument, not_found
from .ingest_types import PREDICTED_SUFFIX, PROBABILITY_SUFFIX
from .jobs import Job, JobRunner, Progress
from .search_client import SearchClient
from .settings import GatewaySettings
from .validation import check_size, validate_crop, validate_top_k

log = logging.getLogger(__name__)

DEFAULT_LABEL_FIELD = "category"
DEFAULT_MIN_EXAMPLES = 5
SCROLL_PAGE = MAX_SCROLL_LIMIT  # the largest page the search service gives
# Training reads at most this many labelled points. Scrolling goes in point-id order, and point ids are
# uuid5 hashes of the product ids, so the first N are a uniform sample of the catalogue.
MAX_TRAIN_POINTS = 100_000
TRAIN_TIMEOUT_S = 600.0  # how long TrainClassifier (the waiting call) waits by default (the job finishes regardless)
READ_TIMEOUT_S = 600.0  # reading a training's embeddings (every ScrollPoints page together)
RELOAD_CHECK_S = 1.0  # how often `current` is checked for a version trained elsewhere
JOB_KIND = "classifier-training"
# progress of a training job: reading the embeddings, then fitting, then saving
READ_SHARE, FIT_SHARE = 0.3, 0.65

HEAD_SECONDS = Histogram("lookalike_gateway_classifier_head_seconds",
                         "Time of the linear head + softmax per Classify (the embedding excluded)",
                         buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01))


# ---- labels ---------------------------------------------------------------------------------------

def parse_label_field(field: str) -> tuple[str, str | None]:
    """("category", None) or ("attributes", name); INVALID_ARGUMENT (field label_field) for anything else."""
    field = (field or DEFAULT_LABEL_FIELD).strip()
    if field == "category":
        return field, None
    if field.startswith("attributes.") and len(field) > len("attributes."):
        return "attributes", field[len("attributes."):]
    raise bad_argument("label_field", f"unknown label field {field!r}: use 'category' or 'attributes.<name>'")


def label_of(product, kind: str, name: str | None) -> tuple[str, bool]:
    """The product's label for the field and whether it was itself predicted (then not for training)."""
    if kind == "category":
        return product.category, product.attributes.get("category" + PREDICTED_SUFFIX) == "true"
    return product.attributes.get(name, ""), product.attributes.get(name + PREDICTED_SUFFIX) == "true"



# ---- the service ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Active:
    version: str
    head: LinearHead
    meta: dict


#: core.Gateway.query_embedding: (image, deadline, target, crop) -> (the embedding, whether it was cached)
QueryEmbedding = Callable[..., tuple[np.ndarray, bool]]


class ClassifierService:
    """Classify / train / report; thread-safe; one training at a time. Checks uploads against `settings`,
    reads stored embeddings through `search` and the active collection from `collections`, and embeds
    queries with `query_embedding` (the gateway's: cached, admission-controlled)."""

    def __init__(self, settings: GatewaySettings, search: SearchClient, collections: CollectionManager,
                 query_embedding: QueryEmbedding, root: Path, train_threads: int | None = None):
        self.settings = settings
        self.search = search
        self.collections = collections
        self.query_embedding = query_embedding
        self.repo = ClassifierRepository(root)
        self.train_threads = train_threads or max(1, (os.cpu_count() or 2) - 1)  # leave a core for serving
        self._active: Active | None = None
        self._stamp: tuple | None = None
        self._next_check = 0.0
        self._load_lock = threading.Lock()
        self.jobs = JobRunner(JOB_KIND, describe="a classifier training")
        self.reload()

    def target(self) -> Target:
        """The active collection and its model: what classify embeds with and what training reads."""
        return self.collections.active()

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
            raise not_found("classifier", "current",
                            "no classifier has been trained yet: train one first (POST /v1/classifiers, "
                            "gRPC lookalike.v1.Classification/StartClassifierTraining)")
        trained_on = active.meta.get("model_id")
        if model_id is not None and trained_on and trained_on != model_id:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"the active classifier {active.version} was trained on {trained_on!r} embeddings, but "
                           f"the active collection uses {model_id!r}: train a new one")
        return active

    # -- API -------------------------------------------------------------------------------------

    def classify(self, image: bytes, top_k: int | None, deadline: Deadline,
                 crop=None) -> tuple[list[tuple[str, float]], bool, str]:
        """(predictions best first, cache_hit, classifier version); `crop`: classify that region only."""
        check_size(image, self.settings)  # before hashing a huge body
        top_k = validate_top_k(top_k, DEFAULT_CLASSIFY_TOP_K)
        target = self.target()  # one snapshot: the model the classifier must have been trained on
        active = self._require(target.model_id)  # before the embedder: no work without a classifier
        vector, cache_hit = self.query_embedding(image, deadline, target, validate_crop(crop))
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

    def start_training(self, label_field: str = DEFAULT_LABEL_FIELD, holdout_fraction: float | None = None,
                       c_values=None, min_examples: int | None = None) -> Job:
        """Checks the arguments (INVALID_ARGUMENT / FAILED_PRECONDITION at once) and starts the training
        as a job (ABORTED while another runs); the job's result is the training report."""
        kind, name = parse_label_field(label_field)
        field = "category" if kind == "category" else f"attributes.{name}"
        holdout = DEFAULT_HOLDOUT if holdout_fraction is None else float(holdout_fraction)
        if not np.isfinite(holdout) or not 0 <= holdout < 0.5:
            raise bad_argument("holdout_fraction", f"holdout_fraction must be in [0, 0.5), got {holdout}")
        cs = tuple(c_values) if c_values else DEFAULT_C_VALUES
        if len(cs) > 20 or any(not np.isfinite(c) or c <= 0 for c in cs):
            raise bad_argument("c_values", "c_values must be at most 20 positive finite numbers")
        minimum = DEFAULT_MIN_EXAMPLES if min_examples is None else int(min_examples)
        if minimum < 2:
            raise bad_argument("min_examples_per_label", f"min_examples_per_label must be at least 2, got {minimum}")
        return self.jobs.start(lambda progress: self._train(field, kind, name, holdout, cs, minimum, progress),
                               stage="reading embeddings")

    def train(self, label_field: str = DEFAULT_LABEL_FIELD, holdout_fraction: float | None = None,
              c_values=None, min_examples: int | None = None, wait_s: float = TRAIN_TIMEOUT_S) -> dict:
        """Starts a training and waits up to `wait_s` for its report. DEADLINE_EXCEEDED when the wait
        ends first (the job goes on); the job's own error when it failed."""
        job = self.jobs.wait(self.start_training(label_field, holdout_fraction, c_values, min_examples).id,
                             max(0.0, wait_s))
        if job.error is not None:
            raise job.error
        if not job.state.done:
            raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"training did not finish within {wait_s:.0f}s; it goes on as job {job.id} "
                           f"(GET /v1/classifiers/jobs/{job.id})")
        return job.result

    def training_job(self, job_id: str) -> Job:
        return self.jobs.get(job_id)

    def _read_embeddings(self, target, kind: str, name: str | None, deadline: Deadline, progress=None):
        xs, ys, unlabeled, offset = [], [], 0, ""
        collection, raw = target.collection, target.raw  # an adapted collection: its raw embeddings
        total = 0
        if progress is not None:
            total = self.search.call("CountPoints", search_pb2.CountPointsRequest(collection=collection),
                                     deadline).count
        while True:
            page = self.search.call("ScrollPoints", search_pb2.ScrollPointsRequest(
                limit=SCROLL_PAGE, offset=offset, with_vectors=True, collection=collection), deadline)
            for point in page.points:
                label, predicted = label_of(point.product, kind, name)
                if not label or predicted or not point.vector:
                    unlabeled += 1
                    continue
                xs.append(raw(vectors.unpack(point.vector)))
                ys.append(label)
            offset = page.next_offset
            if progress is not None and total:
                progress(min(len(ys) + unlabeled, total, MAX_TRAIN_POINTS) / min(total, MAX_TRAIN_POINTS),
                         f"reading embeddings ({len(ys) + unlabeled} of {total})")
            if not offset:
                return xs, ys, unlabeled, False
            if len(ys) >= MAX_TRAIN_POINTS:
                return xs, ys, unlabeled, True

    def _train(self, field: str, kind: str, name: str | None, holdout: float, cs, minimum: int,
               progress: Progress | None = None) -> dict:
        from threadpoolctl import threadpool_limits

        started = time.perf_counter()
        target = self.target()
        xs, ys, unlabeled, sampled = self._read_embeddings(
            target, kind, name, Deadline(READ_TIMEOUT_S),
            progress.span(0.0, READ_SHARE) if progress is not None else None)
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
                head, report = fit_head(x, y, holdout_fraction=holdout, c_values=cs,
                                        progress=progress.span(READ_SHARE, READ_SHARE + FIT_SHARE)
                                        if progress is not None else None)
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
        if progress is not None:
            progress(READ_SHARE + FIT_SHARE, "saving")
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
        self.jobs.close()
