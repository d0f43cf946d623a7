"""The REST API's typed models: what every route answers, shared by the handlers (FastAPI validates and
serialises through them) and the OpenAPI spec, so the two cannot drift. Limits come from
lookalike.limits; the error responses each route documents from `errors(...)`."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from lookalike import limits

LABEL_FIELD_PATTERN = r"^(category|attributes\..+)$"
ADAPT_LABEL_FIELD_PATTERN = r"^(product|category|attributes\..+)$"
# No control characters (validation.validate_product_id). Over REST, an id ending in /image, /similar or /images/N would name
# those sub-resources of another id: such ids are for gRPC only.
PRODUCT_ID_PATTERN = r"^(?!.*/(image|similar|images/[0-9]+)$)[^\x00-\x1f\x7f]+$"
IMAGE_CONTENT_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp"  # images.ALLOWED_FORMATS
CROP_DOC = ("x,y,width,height: search with this region of the photo, as fractions 0..1 of its width and height "
            "after EXIF orientation (0 < width, 0 < height, x + width <= 1, y + height <= 1; else 400)")
CROP_PATTERN = r"^ *[0-9]*\.?[0-9]+ *(, *[0-9]*\.?[0-9]+ *){3}$"  # four numbers; lookalike.crop checks the box
MIN_SCORE_DOC = "drop results scoring (cosine) below this, -1..1"


# ---- errors ------------------------------------------------------------------------------------------

class FieldViolation(BaseModel):
    field: str = Field(description="the request field at fault, e.g. `top_k` or `image`")
    description: str


class BadRequestDetail(BaseModel):
    """Which fields of the request are wrong (google.rpc.BadRequest)."""
    type: Literal["BadRequest"] = "BadRequest"
    field_violations: list[FieldViolation]


class ResourceInfoDetail(BaseModel):
    """What was not found (google.rpc.ResourceInfo)."""
    type: Literal["ResourceInfo"] = "ResourceInfo"
    resource_type: str = Field(description="`product`, `image`, `classifier`, `classifier-training job`")
    resource_name: str
    description: str = ""


class RetryInfoDetail(BaseModel):
    """When to retry (google.rpc.RetryInfo); the `Retry-After` header says the same in whole seconds."""
    type: Literal["RetryInfo"] = "RetryInfo"
    retry_delay_s: float = Field(ge=0)


ErrorDetail = Annotated[BadRequestDetail | ResourceInfoDetail | RetryInfoDetail, Field(discriminator="type")]


class ErrorInfo(BaseModel):
    code: str = Field(description="the gRPC status code name (lookalike/status.py maps it to the HTTP status)",
                      examples=["INVALID_ARGUMENT"])
    message: str = Field(description="for people", examples=["top_k must be between 1 and 1000, got 0"])
    details: list[ErrorDetail] = Field(default_factory=list,
                                       description="structured details, as in the gRPC error's google.rpc.Status")


class ErrorBody(BaseModel):
    """Every error: `{"error": {"code", "message", "details"}}`."""
    error: ErrorInfo


ERROR_DESCRIPTIONS = {
    400: "Invalid request (INVALID_ARGUMENT, FAILED_PRECONDITION): the message and `details` say which field",
    401: "Missing or invalid API key (UNAUTHENTICATED); only when the gateway has API keys configured",
    404: "Not found (NOT_FOUND)",
    405: "Method not allowed; the `Allow` header lists the methods of this path",
    409: "Conflict (ABORTED): another job of this kind is running",
    413: "Body or image above the upload limit (RESOURCE_EXHAUSTED)",
    415: "Not an image type, or an image format that is not accepted (INVALID_ARGUMENT)",
    429: "Rate limit exceeded (RESOURCE_EXHAUSTED); see `Retry-After`",
    503: ("A dependency (embedder, search service) is unavailable, the gateway is shutting down, or an uncached "
          "photo was shed because the embed queue is full (UNAVAILABLE); see `Retry-After`"),
    504: "The request's deadline passed (DEADLINE_EXCEEDED)",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
V1_ERRORS = (401, 429, 503)  # any /v1 route: API keys, the rate limit, draining


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: the error body for each status it can answer (plus V1_ERRORS)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes) | set(V1_ERRORS)):
        out[code] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]}
        if code in (429, 503):
            out[code]["headers"] = RETRY_AFTER
    return out


# ---- products and search -------------------------------------------------------------------------------

class ProductFields(BaseModel):
    id: str = Field(max_length=limits.MAX_ID_LENGTH, examples=["shoes/oxford-123.jpg"])
    title: str = Field(examples=["Brown leather Oxford"])
    category: str = Field(examples=["shoes"])
    price: float | None = Field(examples=[89.0])
    attributes: dict[str, str] = Field(examples=[{"colour": "brown"}])
    image_url: str | None = Field(description="the stored original image (GET), when there is one",
                                  examples=["/v1/products/shoes%2Foxford-123.jpg/image"])


class ProductImage(BaseModel):
    index: int = Field(ge=0, description="0 = the main photo")
    sha256: str = Field(description="SHA-256 (hex) of the original bytes")
    url: str = Field(examples=["/v1/products/shoes%2Foxford-123.jpg/images/1"])


class Product(ProductFields):
    images: list[ProductImage] = Field(description="every photo of the product, the main one first")


class SearchResult(ProductFields):
    score: float = Field(description="cosine similarity to the query (of the best-matching photo), -1..1",
                         examples=[0.8731])
    matched_image: int = Field(ge=0, description="which of the product's photos matched best (0 = the main one)")
    matched_image_url: str = Field(examples=["/v1/products/shoes%2Foxford-123.jpg/images/0"])


class SearchResponse(BaseModel):
    results: list[SearchResult] = Field(description="best first, each product once")
    cache_hit: bool = Field(description="the query embedding came from the cache")
    category_boost: float = Field(description="the category boost applied to the order (0: plain similarity)")
    weak_match_score: float = Field(description=(
        "below this score even the best result is usually not the same kind of product: show 'no close match' "
        "when results[0].score is below it (calibrated by the gateway from the active catalogue's own photos; "
        "0: off or not calibrated yet)"))
    took_ms: float


class SimilarResponse(BaseModel):
    results: list[SearchResult] = Field(description="best first, the product itself excluded")


class PutProductResponse(BaseModel):
    id: str
    ok: bool = Field(description="true: stored durably")
    outcome: Literal["CREATED", "UPDATED", "UNCHANGED"]
    images: int = Field(ge=1, description="photos the product now has")


class DeleteProductResponse(BaseModel):
    id: str
    deleted: bool


# ---- classification ------------------------------------------------------------------------------------

class Prediction(BaseModel):
    label: str = Field(examples=["shoes"])
    probability: float = Field(ge=0, le=1, examples=[0.93])


class ClassifyResponse(BaseModel):
    predictions: list[Prediction] = Field(description="most probable first")
    cache_hit: bool
    classifier_version: str
    took_ms: float


class ClassMetrics(BaseModel):
    label: str
    precision: float = Field(description="on the held-out part")
    recall: float
    support: int = Field(description="held-out examples of this label")
    train_examples: int


class ClassifierReport(BaseModel):
    """A training report (also kept as the classifier's meta.json)."""
    version: str = Field(examples=["20261201T142501.123Z-ab12"])
    model_id: str = Field(description="the embedder model whose vectors it was trained on")
    collection: str = ""
    label_field: str = Field(examples=["category"])
    labels: list[str]
    dim: int = 0
    train_size: int
    test_size: int
    accuracy: float = Field(description="on the held-out part (the CV accuracy when there is none)")
    cv_accuracy: float
    c: float = Field(description="the chosen inverse regularisation strength")
    cv_scores: dict[str, float] = Field(default_factory=dict, description="C -> cross-validated accuracy")
    cv_folds: int = 0
    per_class: list[ClassMetrics]
    confusion: list[list[int]] = Field(description="held-out confusion matrix [true][predicted], `labels` order")
    created_at: str
    skipped_labels: dict[str, int] = Field(default_factory=dict, description="labels left out -> their count")
    unlabeled: int = 0
    sampled: bool = False
    seconds: float = Field(description="training wall time, reading the embeddings included")


class ClassifierVersions(BaseModel):
    versions: list[str] = Field(description="stored versions, oldest first")
    current: str | None


def _label_field(value: str, pattern: str) -> str:
    """The label field when it matches `pattern` (a field validator; the spec shows the pattern)."""
    if not re.fullmatch(pattern, value):
        choices = pattern.strip("^$()").replace("\\..+", ".<name>").split("|")
        raise ValueError(f"unknown label field {value!r}: use {' or '.join(repr(c) for c in choices)}")
    return value


def _integral(value):
    """5.0 is a JSON integer (JSON Schema); the strict model takes it as 5 (and still refuses 5.5, "5", true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class TrainRequest(BaseModel):
    """POST /v1/classifiers; every field optional (an empty body trains on `category`)."""
    model_config = ConfigDict(extra="forbid", strict=True,  # false is not 0.0
                              json_schema_extra={"examples": [{"label_field": "category"}]})
    label_field: str = Field("category", json_schema_extra={"pattern": LABEL_FIELD_PATTERN},
                             description="'category' or 'attributes.<name>'")
    holdout_fraction: float | None = Field(None, ge=0, lt=0.5, allow_inf_nan=False, description="held-out part; default 0.2")
    c_values: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None, min_length=1, max_length=20, description="candidate C values (positive); the default grid when unset")
    min_examples_per_label: Annotated[int | None, BeforeValidator(_integral)] = Field(None, ge=2, le=1_000_000,
                                               description="labels with fewer examples are left out (5)")

    check_label_field = field_validator("label_field")(lambda value: _label_field(value, LABEL_FIELD_PATTERN))


class Job(BaseModel):
    """A long-running job (jobs.job_json)."""
    id: str = Field(examples=["classifier-training-3f2a9c1b7d4e"])
    kind: str = Field(examples=["classifier-training"])
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0, le=1, description="0..1, never goes back")
    stage: str = Field(examples=["reading embeddings (1000 of 3781)"])
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: ErrorInfo | None = Field(description="why it failed, once state is `failed`")


class ClassifierTrainingJob(Job):
    report: ClassifierReport | None = Field(description="the training report, once state is `succeeded`")


class AdaptRequest(BaseModel):
    """POST /v1/adaptations; every field optional (an empty body adapts on product groups and activates)."""
    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"label_field": "product", "activate": True}]})
    label_field: str = Field("product", json_schema_extra={"pattern": ADAPT_LABEL_FIELD_PATTERN},
                             description="'product', 'category' or 'attributes.<name>'")
    activate: bool = Field(True, description="switch searches to the adapted collection when the gate passes")
    force: bool = Field(False, description="activate even when a held-out figure got worse")
    plain: bool = Field(False, description="back to the plain space (a collection of the raw vectors)")

    check_label_field = field_validator("label_field")(lambda value: _label_field(value, ADAPT_LABEL_FIELD_PATTERN))


class AdaptationResult(BaseModel):
    source: str = Field(description="the collection adapted")
    collection: str = Field(description="the adapted collection built")
    activated: bool
    previous: str
    refused: str = Field(description="why the gate refused it (a held-out figure got worse); empty when it did not")
    regressions: list[str]
    report: dict[str, Any] = Field(description="the adaptation report (held-out figures, the method chosen)")


class AdaptationJob(Job):
    result: AdaptationResult | None = Field(description="once state is `succeeded`")


# ---- operations ----------------------------------------------------------------------------------------

class CollectionInfo(BaseModel):
    name: str
    model_id: str
    vector_size: int
    points: int
    active: bool


class Collections(BaseModel):
    alias: str
    active: str
    previous: str
    collections: list[CollectionInfo]


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["ok", "unavailable"]
    embedder: bool
    search: bool
    cache: bool
