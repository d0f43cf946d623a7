from lookalike.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchByImageRequest(_message.Message):
    __slots__ = ("image", "top_k", "filter", "category_boost", "crop", "min_score")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_BOOST_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    top_k: int
    filter: _types_pb2.Filter
    category_boost: float
    crop: _types_pb2.CropBox
    min_score: float
    def __init__(self, image: _Optional[bytes] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., category_boost: _Optional[float] = ..., crop: _Optional[_Union[_types_pb2.CropBox, _Mapping]] = ..., min_score: _Optional[float] = ...) -> None: ...

class SearchByImageResponse(_message.Message):
    __slots__ = ("results", "cache_hit", "category_boost", "weak_match_score")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_BOOST_FIELD_NUMBER: _ClassVar[int]
    WEAK_MATCH_SCORE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    cache_hit: bool
    category_boost: float
    weak_match_score: float
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ..., cache_hit: _Optional[bool] = ..., category_boost: _Optional[float] = ..., weak_match_score: _Optional[float] = ...) -> None: ...

class SearchSimilarRequest(_message.Message):
    __slots__ = ("product_id", "top_k", "filter", "min_score")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    top_k: int
    filter: _types_pb2.Filter
    min_score: float
    def __init__(self, product_id: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., min_score: _Optional[float] = ...) -> None: ...

class SearchSimilarResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ...) -> None: ...

class UpsertProductsRequest(_message.Message):
    __slots__ = ("product", "image", "more_images", "skip_duplicates")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MORE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SKIP_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    product: _types_pb2.Product
    image: bytes
    more_images: _containers.RepeatedScalarFieldContainer[bytes]
    skip_duplicates: bool
    def __init__(self, product: _Optional[_Union[_types_pb2.Product, _Mapping]] = ..., image: _Optional[bytes] = ..., more_images: _Optional[_Iterable[bytes]] = ..., skip_duplicates: _Optional[bool] = ...) -> None: ...

class UpsertProductsResponse(_message.Message):
    __slots__ = ("product_id", "error", "outcome", "duplicate_of", "exact_duplicate", "duplicate_similarity", "duplicate_image", "images")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[UpsertProductsResponse.Outcome]
        OUTCOME_CREATED: _ClassVar[UpsertProductsResponse.Outcome]
        OUTCOME_UPDATED: _ClassVar[UpsertProductsResponse.Outcome]
        OUTCOME_UNCHANGED: _ClassVar[UpsertProductsResponse.Outcome]
        OUTCOME_FAILED: _ClassVar[UpsertProductsResponse.Outcome]
        OUTCOME_SKIPPED_DUPLICATE: _ClassVar[UpsertProductsResponse.Outcome]
    OUTCOME_UNSPECIFIED: UpsertProductsResponse.Outcome
    OUTCOME_CREATED: UpsertProductsResponse.Outcome
    OUTCOME_UPDATED: UpsertProductsResponse.Outcome
    OUTCOME_UNCHANGED: UpsertProductsResponse.Outcome
    OUTCOME_FAILED: UpsertProductsResponse.Outcome
    OUTCOME_SKIPPED_DUPLICATE: UpsertProductsResponse.Outcome
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    EXACT_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    error: str
    outcome: UpsertProductsResponse.Outcome
    duplicate_of: str
    exact_duplicate: bool
    duplicate_similarity: float
    duplicate_image: int
    images: int
    def __init__(self, product_id: _Optional[str] = ..., error: _Optional[str] = ..., outcome: _Optional[_Union[UpsertProductsResponse.Outcome, str]] = ..., duplicate_of: _Optional[str] = ..., exact_duplicate: _Optional[bool] = ..., duplicate_similarity: _Optional[float] = ..., duplicate_image: _Optional[int] = ..., images: _Optional[int] = ...) -> None: ...

class DeleteProductsRequest(_message.Message):
    __slots__ = ("product_ids",)
    PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    product_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, product_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteProductsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetProductRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    def __init__(self, product_id: _Optional[str] = ...) -> None: ...

class GetProductResponse(_message.Message):
    __slots__ = ("product",)
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    product: _types_pb2.Product
    def __init__(self, product: _Optional[_Union[_types_pb2.Product, _Mapping]] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("model_version", "collection", "activate", "force")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    collection: str
    activate: bool
    force: bool
    def __init__(self, model_version: _Optional[str] = ..., collection: _Optional[str] = ..., activate: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class ReindexResponse(_message.Message):
    __slots__ = ("collection", "source", "model_id", "total", "done", "embedded", "unchanged", "failed", "removed", "pass_number", "finished", "activated", "previous", "failures", "quality_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    PASS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    source: str
    model_id: str
    total: int
    done: int
    embedded: int
    unchanged: int
    failed: int
    removed: int
    pass_number: int
    finished: bool
    activated: bool
    previous: str
    failures: _containers.RepeatedCompositeFieldContainer[UpsertProductsResponse]
    quality_json: str
    def __init__(self, collection: _Optional[str] = ..., source: _Optional[str] = ..., model_id: _Optional[str] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., embedded: _Optional[int] = ..., unchanged: _Optional[int] = ..., failed: _Optional[int] = ..., removed: _Optional[int] = ..., pass_number: _Optional[int] = ..., finished: _Optional[bool] = ..., activated: _Optional[bool] = ..., previous: _Optional[str] = ..., failures: _Optional[_Iterable[_Union[UpsertProductsResponse, _Mapping]]] = ..., quality_json: _Optional[str] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "model_id", "vector_size", "points", "active")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_id: str
    vector_size: int
    points: int
    active: bool
    def __init__(self, name: _Optional[str] = ..., model_id: _Optional[str] = ..., vector_size: _Optional[int] = ..., points: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("alias", "active", "previous", "collections")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    active: str
    previous: str
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, alias: _Optional[str] = ..., active: _Optional[str] = ..., previous: _Optional[str] = ..., collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class ActivateCollectionRequest(_message.Message):
    __slots__ = ("collection", "rollback")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    collection: str
    rollback: bool
    def __init__(self, collection: _Optional[str] = ..., rollback: _Optional[bool] = ...) -> None: ...

class ActivateCollectionResponse(_message.Message):
    __slots__ = ("active", "previous")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    active: str
    previous: str
    def __init__(self, active: _Optional[str] = ..., previous: _Optional[str] = ...) -> None: ...

class StartAdaptationRequest(_message.Message):
    __slots__ = ("label_field", "activate", "force", "plain")
    LABEL_FIELD_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    PLAIN_FIELD_NUMBER: _ClassVar[int]
    label_field: str
    activate: bool
    force: bool
    plain: bool
    def __init__(self, label_field: _Optional[str] = ..., activate: _Optional[bool] = ..., force: _Optional[bool] = ..., plain: _Optional[bool] = ...) -> None: ...

class StartAdaptationResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_types_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class GetAdaptationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class AdaptationResult(_message.Message):
    __slots__ = ("source", "collection", "activated", "previous", "refused", "regressions", "report_json")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REGRESSIONS_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    source: str
    collection: str
    activated: bool
    previous: str
    refused: str
    regressions: _containers.RepeatedScalarFieldContainer[str]
    report_json: str
    def __init__(self, source: _Optional[str] = ..., collection: _Optional[str] = ..., activated: _Optional[bool] = ..., previous: _Optional[str] = ..., refused: _Optional[str] = ..., regressions: _Optional[_Iterable[str]] = ..., report_json: _Optional[str] = ...) -> None: ...

class GetAdaptationResponse(_message.Message):
    __slots__ = ("job", "result")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.JobStatus
    result: AdaptationResult
    def __init__(self, job: _Optional[_Union[_types_pb2.JobStatus, _Mapping]] = ..., result: _Optional[_Union[AdaptationResult, _Mapping]] = ...) -> None: ...
