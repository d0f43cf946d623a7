"""`lookalike adapt`: learn from the active catalogue, build an adapted collection, switch the alias.

1. **read** every stored vector of the active collection (an adapted one gives its raw vectors back:
   projection.raw) with its label (the product id; or a payload field);
2. **fit** (adapt_fit.adapt): method and settings chosen on the catalogue's own held-out photos and
   products; the chosen procedure measured on an independent split: the report and the **gate** -- when a
   held-out figure gets worse (or the plain space wins the validation) nothing is built, unless forced;
3. **build** a new collection ``<alias>__<model id>__a<N>`` from the stored vectors, projected (no
   re-embedding): the projection files are written first, so every gateway projects into it; catch-up
   passes copy what changed meanwhile (compared by payload and raw vector) and mirror deletions;
4. **activate**: a last pass with this gateway's writes held, then the alias switch (CollectionManager.switch).

`plain` skips 2 and builds a collection of the raw vectors: the way back to the plain space that keeps
products written since the adaptation (`lookalike collections rollback` is the instant switch back).
"""
from __future__ import annotations

import logging
import os
import time

import grpc
import numpy as np
from threadpoolctl import threadpool_limits

from lookalike import naming
from lookalike import vectors
from lookalike.search.v1 import search_pb2
from lookalike.v1 import lookalike_pb2

from . import adapt_fit, quality_gate
from .classifier import label_of, parse_label_field
from .collection_manager import CollectionManager
from .errors import ApiError, Deadline
from .reindex import mirror_deletions
from .search_client import SearchClient, pages

log = logging.getLogger(__name__)

CATCH_UP_PASSES = 3
SAME_VECTOR = 1.0 - 1e-5  # cosine above which a stored vector is the expected one
READ_SHARE, FIT_SHARE = 0.05, 0.55  # of a job's progress; building takes the rest


def labeller(field: str):
    """product -> label for a label field ("" / "product", "category", "attributes.<name>")."""
    if field in ("", "product"):
        return lambda product: product.id
    kind, name = parse_label_field(field)

    def label(product) -> str:
        value, predicted = label_of(product, kind, name)
        return "" if predicted else value
    return label


class Adapter:
    """One adaptation run (see the module docstring) over the search client and the collection manager."""

    def __init__(self, search: SearchClient, collections: CollectionManager):
        self.search = search
        self.collections = collections

    def _call(self, method: str, request, seconds: float = 60.0):
        return self.search.call(method, request, Deadline(seconds))

    # ---- reading --------------------------------------------------------------------------------------

    def _read(self, source, label) -> tuple[np.ndarray, list[str]]:
        x, y, _ = quality_gate.read_labelled(self.search, source, label)
        if not y:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "the active collection has no labelled vectors")
        return x, y

    # ---- the run ----------------------------------------------------------------------------------------

    def run(self, request: lookalike_pb2.StartAdaptationRequest, progress=None) -> dict:
        """The whole adaptation (run as a job: `progress(fraction, stage)`); returns the result
        (AdaptationResult's fields, the report under "report")."""
        with self.collections.exclusive_job(grpc.StatusCode.ABORTED):
            return self._run(request, progress or (lambda fraction, stage=None: None))

    def _run(self, request, progress) -> dict:
        source = self.collections.refresh()
        started = time.perf_counter()
        report: dict = {"source": source.collection, "model_id": source.model_id,
                        "label_field": request.label_field or "product", "plain": request.plain}
        result = {"source": source.collection, "collection": "", "activated": False, "previous": "",
                  "refused": "", "regressions": [], "report": report}
        projection = None
        if not request.plain:
            label = labeller(request.label_field)
            progress(0.0, f"reading {source.collection}")
            x, y = self._read(source, label)
            report["read_seconds"] = round(time.perf_counter() - started, 2)
            progress(READ_SHARE, f"choosing a projection on {len(y)} photos, {len(set(y))} labels")
            try:
                # BLAS on every core fights the serving threads (and is many times slower on a busy machine)
                with threadpool_limits(limits=max(1, (os.cpu_count() or 2) - 1)):
                    # a category is coarse, a product is a group; an attribute is judged from its photos
                    coarse = {"category": True, "product": False}.get(report["label_field"])
                    projection, fit_report = adapt_fit.adapt(
                        x, y, coarse=coarse, progress=lambda stage, f: progress(READ_SHARE + FIT_SHARE * f, stage))
            except adapt_fit.AdaptError as exc:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
            report.update(fit_report)
            result["regressions"] = fit_report["regressions"]
            if (projection is None or fit_report["regressions"]) and not (request.force and projection is not None):
                result["refused"] = ("the plain space scored best on validation" if projection is None else
                                     "held-out figures got worse: " + "; ".join(fit_report["regressions"]))
                report.update(activated=False, refused=result["refused"])
                self.collections.adaptations.save_report(report)
                log.info("adaptation of %s refused: %s", source.collection, result["refused"])
                return result
        target_name = self._target_name(source, plain=request.plain)
        if projection is not None:
            self.collections.adaptations.save(target_name, projection)
        target = self.collections.target(target_name)
        size = projection.output_dim if projection is not None else self._plain_size(source)
        self._call("CreateCollection", search_pb2.CreateCollectionRequest(name=target_name, vector_size=size))
        log.info("adapt %s -> %s (%s)", source.collection, target_name, "plain" if request.plain else "projected")
        base = READ_SHARE + FIT_SHARE if not request.plain else 0.0
        for number in range(1, CATCH_UP_PASSES + 1):
            changes = 0
            for done, total, changed in self._sync(source, target):
                changes = changed
                progress(base + (0.95 - base) * done / max(total, 1) if number == 1 else 0.95,
                         f"building {target_name} (pass {number}: {done} of {total})")
            if changes == 0:
                break
        result["collection"] = target_name
        if request.activate:
            progress(0.95, f"activating {target_name}")
            with self.collections.gate.exclusive():  # this gateway's writes wait; searches do not
                for _ in self._sync(source, target):
                    pass
                _, result["previous"] = self.collections.switch(target_name, Deadline(30.0))
            result["activated"] = True
        report.update(collection=target_name, activated=result["activated"], previous=result["previous"],
                      seconds=round(time.perf_counter() - started, 2))
        self.collections.adaptations.save_report(report)
        return result

    # ---- building ---------------------------------------------------------------------------------------

    def _target_name(self, source, plain: bool) -> str:
        names = {c.name for c in self._call("ListCollections", search_pb2.ListCollectionsRequest()).collections}
        alias = self.collections.alias or naming.DEFAULT_ALIAS
        if plain:
            if source.projection is None:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"the active collection {source.collection} is already in the plain space")
            # the newest plain collection of the model, brought up to date; else a new one
            for name in naming.candidate_names(alias, source.model_id):
                if name not in names:
                    return name
                if name != source.collection and self.collections.adaptations.projection(name) is None:
                    return name
        n = 1
        while True:
            name = naming.collection_name(alias, source.model_id, f"a{n}")
            if name not in names and not (self.collections.adaptations.root / name).exists():
                return name
            n += 1

    def _plain_size(self, source) -> int:
        if source.projection is not None:
            return source.projection.input_dim
        for points in pages(self.search, source.collection):
            for point in points:
                return len(vectors.unpack(point.vector))
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "the active collection is empty")

    def _sync(self, source, target):
        """One pass: every source point into the target (projected) unless already there with the same
        payload and vector; then deletions mirrored. Yields (done, total, changes so far)."""
        total = self._call("CountPoints", search_pb2.CountPointsRequest(collection=source.collection)).count
        done = changes = 0
        for points in pages(self.search, source.collection):
            ids = [p.product.id for p in points]
            stored = {p.product.id: p for p in self._call("GetPoints", search_pb2.GetPointsRequest(
                product_ids=ids, collection=target.collection, with_vectors=True)).points} if ids else {}
            writes = []
            for point in points:
                packed = quality_gate.point_vectors(point)  # every image of the product
                if not packed:
                    continue
                wanted = [target.project(source.raw(vectors.unpack(v))) for v in packed]
                if _same(stored.get(point.product.id), point, wanted):
                    continue
                write = search_pb2.Point(product=point.product, vector=vectors.pack(wanted[0]))
                if len(wanted) > 1:
                    write.more_vectors.extend(vectors.pack(v) for v in wanted[1:])
                writes.append(write)
            if writes:
                self._call("UpsertPoints", search_pb2.UpsertPointsRequest(points=writes,
                                                                          collection=target.collection))
                changes += len(writes)
            done += len(points)
            yield done, total, changes
        changes += mirror_deletions(self.search, source, target)
        yield done, total, changes


def _same(have, point, wanted: list[np.ndarray]) -> bool:
    """Whether the target already holds `point` with the wanted vectors (and the same payload)."""
    if have is None or have.product != point.product:
        return False
    stored = quality_gate.point_vectors(have)
    return len(stored) == len(wanted) and all(
        float(np.dot(vectors.unpack(v), w)) >= SAME_VECTOR for v, w in zip(stored, wanted))
