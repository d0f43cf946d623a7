"""Reindex: zero-downtime re-embedding of the active collection into another (a new model version, or
the same model again).

Products are read from the active collection page by page (ScrollPoints), their originals from the
ImageStore, and written to the target collection through the ingest pipeline (so a product already in the
target with the same image and metadata is skipped: an interrupted reindex resumes). Writes keep going to
the active collection meanwhile; catch-up passes copy what changed and delete what was deleted, until a
pass finds nothing to do. Activation checks the quality gate (quality_gate.check_switch), runs a last
catch-up pass with this gateway's writes held, then switches the alias; searches never wait.
"""
from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import grpc
from PIL import Image

from lookalike import naming
from lookalike.search.v1 import search_pb2
from lookalike.v1 import lookalike_pb2

from . import metrics
from .collection_manager import CollectionManager, Target
from .errors import EMBEDDER_NAME, ApiError, Deadline, dependency_error
from .image_store import ImageStore
from .ingest_pipeline import IngestPipeline
from .ingest_types import CREATED, FAILED, UNCHANGED, UPDATED, IngestItem
from .quality_gate import check_switch
from .search_client import SearchClient, pages

log = logging.getLogger(__name__)

MAX_CATCH_UP_PASSES = 5
PROGRESS_EVERY_S = 1.0
CALL_DEADLINE_S = 30.0  # each of a reindex's own calls (probe, create, count, a scroll page, delete, switch)


class Reindexer:
    """Runs reindexes for the gateway (see the module docstring)."""

    def __init__(self, settings, search: SearchClient, collections: CollectionManager, pipeline: IngestPipeline,
                 image_store: ImageStore):
        self.settings = settings
        self.search = search
        self.collections = collections
        self.pipeline = pipeline
        self.image_store = image_store

    def reindex(self, request: lookalike_pb2.ReindexRequest, deadline_for_batch, cancelled=None) -> Iterator[
            lookalike_pb2.ReindexResponse]:
        """Builds (or brings up to date) a collection from the active one; see the module docstring.
        `cancelled()` true: the caller went away; the work stops (calling again resumes)."""
        with self.collections.exclusive_job():
            source = self.collections.refresh()
            target = self._reindex_target(request, source, Deadline(CALL_DEADLINE_S))
            log.info("reindex %s -> %s (model %s)", source.collection, target.collection, target.model_id)
            run = _Run(source.collection, target.collection, target.model_id)
            run.cancelled = cancelled
            for number in range(1, MAX_CATCH_UP_PASSES + 2):
                run.pass_number = number
                changes = yield from self._pass(run, source, target, deadline_for_batch)
                if changes == 0 or number > MAX_CATCH_UP_PASSES:
                    break
            if request.activate:
                if run.failed and not request.force:
                    raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"{run.failed} products could not be re-embedded into {target.collection}; "
                                   "the alias still points at " f"{source.collection} (force activates anyway)")
                yield check_switch(self.search, self.collections.adaptations, run.progress(), source, target,
                                   request.force)  # the quality gate
                with self.collections.gate.exclusive():  # this gateway's writes wait (searches do not)
                    run.pass_number += 1
                    yield from self._pass(run, source, target, deadline_for_batch)
                    _, previous = self.collections.switch(target.collection, Deadline(CALL_DEADLINE_S))
                run.activated, run.previous = True, previous
            run.finished = True
            yield run.progress()

    def _reindex_target(self, request, source: Target, deadline: Deadline) -> Target:
        collections = self.collections
        wanted = None
        if request.model_version or not request.collection:
            try:
                wanted = naming.model_id(self.settings.embedder_model,
                                         request.model_version or self.settings.embedder_model_version)
            except ValueError as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if request.collection:
            name = request.collection
            if not naming.NAME_PATTERN.match(name) or name == collections.alias:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{name!r} is not a collection name")
            if name == source.collection:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is the active collection")
            carried = naming.model_of(name, collections.alias, "")
            if wanted and carried and carried != wanted:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"collection {name} is for model {carried}, not {wanted}")
            if not carried and name not in self._names(deadline):  # only old collections lack the model
                example = naming.collection_name(collections.alias, wanted or collections.default_model)
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"new collection names carry the model id: {example} or {example}__<tag>")
        else:
            name = next(n for n in naming.candidate_names(collections.alias, wanted) if n != source.collection)
        target = collections.target(name)
        size = len(self._probe_vector(target, deadline))
        self.search.call("CreateCollection", search_pb2.CreateCollectionRequest(name=name, vector_size=size),
                         deadline)
        return target

    def _names(self, deadline: Deadline) -> set[str]:
        response = self.search.call("ListCollections", search_pb2.ListCollectionsRequest(), deadline)
        return {c.name for c in response.collections}

    def _probe_vector(self, target: Target, deadline):
        """An embedding of a small generated image: the target model's vector size."""
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (128, 96, 64)).save(buffer, "PNG")
        try:
            return target.embedder.embed(buffer.getvalue(), timeout=deadline.remaining("probing the model"))
        except grpc.RpcError as exc:
            details = exc.details() or ""
            # TorchServe 0.12 answers INTERNAL "Model version: X does not exist" (ModelVersionNotFoundException)
            if exc.code() == grpc.StatusCode.NOT_FOUND or "does not exist" in details or "NotFound" in details:
                first_line = details.splitlines()[0] if details else exc.code().name
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"the embedder does not serve model {target.model_id}: {first_line}") from None
            raise dependency_error(EMBEDDER_NAME, exc) from None

    def _pass(self, run: _Run, source: Target, target: Target, deadline_for_batch):
        """One pass: every product of the source into the target, then deletions mirrored. Yields progress;
        returns the number of changes it made (written + removed)."""
        run.done = run.unchanged = run.failed = 0
        run.total = self.search.call("CountPoints", search_pb2.CountPointsRequest(
            collection=source.collection), Deadline(CALL_DEADLINE_S)).count
        missing: dict[str, str] = {}
        changes = 0
        last = time.monotonic()
        items = self._source_items(source, missing)
        results = self.pipeline.run(items, deadline_for_batch, target=lambda: target,
                                            detect_duplicates=False, gated=False, cancelled=run.cancelled)
        for result in results:
            run.done += 1
            if result.outcome in (CREATED, UPDATED):
                run.embedded += 1
                changes += 1
                metrics.REINDEXED.inc()
            elif result.outcome == UNCHANGED:
                run.unchanged += 1
            elif result.outcome == FAILED:
                run.failed += 1
                proto = result.to_proto()
                if result.product_id in missing:
                    proto.error = missing[result.product_id]
                run.failures.append(proto)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                yield run.progress()
        removed = mirror_deletions(self.search, source, target)
        run.removed += removed
        changes += removed
        yield run.progress()
        return changes

    def _source_items(self, source: Target, missing: dict[str, str]) -> Iterator[IngestItem]:
        for points in pages(self.search, source.collection, with_vectors=False, deadline_s=CALL_DEADLINE_S):
            for point in points:
                product = point.product
                hashes = list(product.image_sha256s) or [product.image_sha256]
                originals = [self.image_store.get(h) if h else None for h in hashes]
                if any(image is None for image in originals):
                    lost = [i for i, image in enumerate(originals) if image is None]
                    missing[product.id] = (f"original image{'s' if len(lost) > 1 else ''} "
                                           f"{', '.join(map(str, lost))} of {product.id!r} not in the gateway's "
                                           "image store (index it again)")
                    originals = [b""]
                product.ClearField("image_sha256")
                product.ClearField("image_sha256s")
                yield IngestItem(product, originals[0], more_images=originals[1:])


class _Run:
    """Counters of one reindex, turned into progress messages."""

    def __init__(self, source: str, collection: str, model_id: str):
        self.source, self.collection, self.model_id = source, collection, model_id
        self.total = self.done = self.embedded = self.unchanged = self.failed = self.removed = 0
        self.pass_number = 1
        self.finished = self.activated = False
        self.previous = ""
        self.failures: list = []
        self.cancelled = None

    def progress(self) -> lookalike_pb2.ReindexResponse:
        message = lookalike_pb2.ReindexResponse(
            collection=self.collection, source=self.source, model_id=self.model_id, total=self.total,
            done=self.done, embedded=self.embedded, unchanged=self.unchanged, failed=self.failed,
            removed=self.removed, pass_number=self.pass_number, finished=self.finished, activated=self.activated,
            previous=self.previous, failures=self.failures)
        self.failures = []
        return message


def mirror_deletions(search: SearchClient, source: Target, target: Target) -> int:
    """Deletes from `target` the products no longer in `source`; returns how many (reindex, adaptation)."""
    removed = 0
    for points in pages(search, target.collection, with_vectors=False, deadline_s=CALL_DEADLINE_S):
        ids = [p.product.id for p in points]
        if ids:
            present = search.call("GetPoints", search_pb2.GetPointsRequest(
                product_ids=ids, collection=source.collection), Deadline(CALL_DEADLINE_S))
            gone = sorted(set(ids) - {p.product.id for p in present.points})
            if gone:
                removed += search.call("DeletePoints", search_pb2.DeletePointsRequest(
                    product_ids=gone, collection=target.collection), Deadline(CALL_DEADLINE_S)).deleted
    return removed
