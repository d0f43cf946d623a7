"""A small typed Python client of the gateway's gRPC API, for backend services (the CLI uses it too).

    from lookalike.client import LookalikeClient, LookalikeError

    with LookalikeClient("127.0.0.1:50051", api_key=None, timeout=30) as client:
        found = client.search_by_image(open("shoe.jpg", "rb").read(), top_k=5, category="shoes")
        for result in found.results:
            print(result.score, result.product.id, result.product.title)
        client.upsert_product(types_pb2.Product(id="sku-1", title="Red shoe", category="shoes"), image)
        product = client.get_product("sku-1")
        report = client.train_classifier(on_progress=lambda job: print(f"{job.progress:.0%} {job.stage}"))
        print(client.classify(image).predictions[0].label)

Every call has a deadline (`timeout`, per call or the client's default). A failed call raises
`LookalikeError` with the gRPC status code, the message, the matching HTTP status
(lookalike.status) and the structured details the gateway attaches (google.rpc.BadRequest field
violations, ResourceInfo, RetryInfo): the same as the REST error body's `details`.
Messages are the generated protobuf classes of lookalike.v1 (`lookalike.v1.types_pb2.Product`...).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from lookalike import api_keys, ports
from lookalike import status as status_table
from lookalike.crop import crop_box, parse_crop
from lookalike.filters import make_filter
from lookalike.grpc_channel import CLIENT_OPTIONS
from lookalike.v1 import (classifier_pb2, classifier_pb2_grpc, lookalike_pb2, lookalike_pb2_grpc, types_pb2)

DEFAULT_TIMEOUT_S = 30.0
TRAIN_POLL_S = 0.5


@dataclass
class LookalikeError(Exception):
    """A failed call: gRPC code, message, HTTP status and structured details (status.error_details)."""

    code: grpc.StatusCode
    message: str
    details: list[dict] = field(default_factory=list)

    def __post_init__(self):
        super().__init__(f"{self.code.name}: {self.message}")

    @property
    def http_status(self) -> int:
        return status_table.http_status(self.code)

    @property
    def retry_after_s(self) -> float | None:
        """The server's hint (RetryInfo) on RESOURCE_EXHAUSTED / UNAVAILABLE, else None."""
        for detail in self.details:
            if detail.get("type") == "RetryInfo":
                return float(detail["retry_delay_s"])
        return None

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> "LookalikeError":
        return cls(exc.code(), exc.details() or exc.code().name, status_table.rpc_error_details(exc))


class LookalikeClient:
    """lookalike.v1.Lookalike and lookalike.v1.Classification over one channel."""

    def __init__(self, address: str = ports.GATEWAY_ADDRESS, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, channel: grpc.Channel | None = None):
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(address, options=CLIENT_OPTIONS)
        self.timeout = timeout
        self._metadata = api_keys.metadata(api_key)
        self.lookalike = lookalike_pb2_grpc.LookalikeStub(self.channel)
        self.classification = classifier_pb2_grpc.ClassificationStub(self.channel)

    def __enter__(self) -> "LookalikeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def _call(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise LookalikeError.from_rpc_error(exc) from None

    # -- search and products ------------------------------------------------------------------------

    def search_by_image(self, image: bytes, top_k: int | None = None, category: str | None = None,
                        min_price: float | None = None, max_price: float | None = None,
                        category_boost: float | None = None, crop=None, min_score: float | None = None,
                        timeout: float | None = None) -> lookalike_pb2.SearchByImageResponse:
        """`crop`: search with that region only (a lookalike.crop.CropBox, "x,y,w,h" or 4 numbers in 0..1);
        `min_score`: drop results scoring below it. Each result is a distinct product (`matched_image`)."""
        request = lookalike_pb2.SearchByImageRequest(image=image, filter=make_filter(category, min_price, max_price))
        if top_k is not None:
            request.top_k = top_k
        if category_boost is not None:
            request.category_boost = category_boost
        if crop is not None:
            request.crop.CopyFrom(crop_message(crop))
        if min_score is not None:
            request.min_score = min_score
        return self._call(self.lookalike.SearchByImage, request, timeout)

    def search_similar(self, product_id: str, top_k: int | None = None, category: str | None = None,
                       min_price: float | None = None, max_price: float | None = None,
                       min_score: float | None = None, timeout: float | None = None) -> list[types_pb2.SearchResult]:
        request = lookalike_pb2.SearchSimilarRequest(product_id=product_id,
                                                     filter=make_filter(category, min_price, max_price))
        if top_k is not None:
            request.top_k = top_k
        if min_score is not None:
            request.min_score = min_score
        return list(self._call(self.lookalike.SearchSimilar, request, timeout).results)

    def get_product(self, product_id: str, timeout: float | None = None) -> types_pb2.Product:
        return self._call(self.lookalike.GetProduct, lookalike_pb2.GetProductRequest(product_id=product_id),
                          timeout).product

    def delete_products(self, product_ids: Iterable[str], timeout: float | None = None) -> int:
        """How many of the ids were stored (and are now deleted)."""
        request = lookalike_pb2.DeleteProductsRequest(product_ids=list(product_ids))
        return self._call(self.lookalike.DeleteProducts, request, timeout).deleted

    def upsert_products(self, items: Iterable[tuple[types_pb2.Product, bytes | Sequence[bytes]]],
                        skip_duplicates: bool = False,
                        timeout: float | None = None) -> Iterator[lookalike_pb2.UpsertProductsResponse]:
        """Streams (product, image) pairs -- or (product, [images]), the main one first: an upsert replaces
        the product's photos; yields one result per item, in order (a bad item fails alone: its result
        carries the error). `timeout` bounds the whole stream (default: none)."""
        def request(product, images) -> lookalike_pb2.UpsertProductsRequest:
            photos = [images] if isinstance(images, (bytes, bytearray)) else list(images)
            return lookalike_pb2.UpsertProductsRequest(product=product, image=bytes(photos[0]) if photos else b"",
                                                       more_images=photos[1:], skip_duplicates=skip_duplicates)
        requests = (request(product, images) for product, images in items)
        try:
            yield from self.lookalike.UpsertProducts(requests, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise LookalikeError.from_rpc_error(exc) from None

    def upsert_product(self, product: types_pb2.Product, image: bytes | Sequence[bytes],
                       timeout: float | None = None) -> lookalike_pb2.UpsertProductsResponse:
        """Indexes one product (one photo, or several: the main one first); raises LookalikeError when it was
        not stored."""
        (result,) = list(self.upsert_products([(product, image)], timeout=timeout or self.timeout))
        if result.outcome == lookalike_pb2.UpsertProductsResponse.OUTCOME_FAILED:  # the reason as text only
            raise LookalikeError(grpc.StatusCode.UNKNOWN, result.error)
        return result

    # -- classification -----------------------------------------------------------------------------

    def classify(self, image: bytes, top_k: int | None = None, crop=None,
                 timeout: float | None = None) -> classifier_pb2.ClassifyResponse:
        request = classifier_pb2.ClassifyRequest(image=image)
        if top_k is not None:
            request.top_k = top_k
        if crop is not None:
            request.crop.CopyFrom(crop_message(crop))
        return self._call(self.classification.Classify, request, timeout)

    def start_classifier_training(self, label_field: str = "category", holdout_fraction: float | None = None,
                                  c_values: Iterable[float] | None = None,
                                  min_examples_per_label: int | None = None,
                                  timeout: float | None = None) -> types_pb2.JobStatus:
        """Starts a training job (ABORTED while one runs) and returns it at once."""
        training = classifier_pb2.TrainClassifierRequest(label_field=label_field, c_values=list(c_values or ()))
        if holdout_fraction is not None:
            training.holdout_fraction = holdout_fraction
        if min_examples_per_label is not None:
            training.min_examples_per_label = min_examples_per_label
        request = classifier_pb2.StartClassifierTrainingRequest(training=training)
        return self._call(self.classification.StartClassifierTraining, request, timeout).job

    def get_classifier_training(self, job_id: str,
                                timeout: float | None = None) -> classifier_pb2.GetClassifierTrainingResponse:
        request = classifier_pb2.GetClassifierTrainingRequest(job_id=job_id)
        return self._call(self.classification.GetClassifierTraining, request, timeout)

    def train_classifier(self, label_field: str = "category", holdout_fraction: float | None = None,
                         c_values: Iterable[float] | None = None, min_examples_per_label: int | None = None,
                         on_progress: Callable[[types_pb2.JobStatus], None] | None = None,
                         wait_s: float = 600.0, poll_s: float = TRAIN_POLL_S) -> classifier_pb2.ClassifierReport:
        """Starts a training job and polls it until done (`on_progress(job)` after each read); returns
        the report, or raises the job's error. DEADLINE_EXCEEDED after `wait_s` (the job goes on)."""
        job = self.start_classifier_training(label_field, holdout_fraction, c_values, min_examples_per_label)
        deadline = time.monotonic() + wait_s
        while True:
            read = self.get_classifier_training(job.id)
            if on_progress is not None:
                on_progress(read.job)
            if read.job.state == types_pb2.JOB_STATE_SUCCEEDED:
                return read.report
            if read.job.state == types_pb2.JOB_STATE_FAILED:
                code = grpc.StatusCode[read.job.error_code] if read.job.error_code in grpc.StatusCode.__members__ \
                    else grpc.StatusCode.UNKNOWN
                raise LookalikeError(code, read.job.error_message)
            if time.monotonic() >= deadline:
                raise LookalikeError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"training job {job.id} did not finish within {wait_s:.0f}s; it goes on")
            time.sleep(poll_s)

    def get_classifier(self, timeout: float | None = None) -> classifier_pb2.ClassifierReport:
        """The active classifier's report (NOT_FOUND before any training)."""
        return self._call(self.classification.GetClassifier, classifier_pb2.GetClassifierRequest(),
                          timeout).classifier


def crop_message(crop) -> types_pb2.CropBox:
    """A lookalike.crop.CropBox, "x,y,w,h" text or four numbers -> the gRPC CropBox (ValueError when invalid,
    before anything is sent)."""
    box = parse_crop(crop) if isinstance(crop, str) else crop_box(*crop)
    return types_pb2.CropBox(x=box.x, y=box.y, width=box.width, height=box.height)
