from lookalike.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Point(_message.Message):
    __slots__ = ("product", "vector", "more_vectors")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MORE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    product: _types_pb2.Product
    vector: bytes
    more_vectors: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, product: _Optional[_Union[_types_pb2.Product, _Mapping]] = ..., vector: _Optional[bytes] = ..., more_vectors: _Optional[_Iterable[bytes]] = ...) -> None: ...

class UpsertPointsRequest(_message.Message):
    __slots__ = ("points", "collection")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    collection: str
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., collection: _Optional[str] = ...) -> None: ...

class UpsertPointsResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class SearchByVectorRequest(_message.Message):
    __slots__ = ("vector", "top_k", "filter", "collection")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    vector: bytes
    top_k: int
    filter: _types_pb2.Filter
    collection: str
    def __init__(self, vector: _Optional[bytes] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., collection: _Optional[str] = ...) -> None: ...

class SearchByVectorResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ...) -> None: ...

class SearchByVectorsRequest(_message.Message):
    __slots__ = ("vectors", "top_k", "filter", "collection")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedScalarFieldContainer[bytes]
    top_k: int
    filter: _types_pb2.Filter
    collection: str
    def __init__(self, vectors: _Optional[_Iterable[bytes]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., collection: _Optional[str] = ...) -> None: ...

class SearchByVectorsResponse(_message.Message):
    __slots__ = ("searches",)
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    searches: _containers.RepeatedCompositeFieldContainer[SearchByVectorResponse]
    def __init__(self, searches: _Optional[_Iterable[_Union[SearchByVectorResponse, _Mapping]]] = ...) -> None: ...

class SearchByIdRequest(_message.Message):
    __slots__ = ("product_id", "top_k", "filter", "collection")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    top_k: int
    filter: _types_pb2.Filter
    collection: str
    def __init__(self, product_id: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., collection: _Optional[str] = ...) -> None: ...

class SearchByIdResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ...) -> None: ...

class GetPointsRequest(_message.Message):
    __slots__ = ("product_ids", "with_vectors", "collection")
    PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    product_ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    collection: str
    def __init__(self, product_ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ..., collection: _Optional[str] = ...) -> None: ...

class GetPointsResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class DeletePointsRequest(_message.Message):
    __slots__ = ("product_ids", "collection")
    PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    product_ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    def __init__(self, product_ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ...) -> None: ...

class DeletePointsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class CountPointsRequest(_message.Message):
    __slots__ = ("filter", "images", "collection")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    filter: _types_pb2.Filter
    images: bool
    collection: str
    def __init__(self, filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., images: _Optional[bool] = ..., collection: _Optional[str] = ...) -> None: ...

class CountPointsResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ScrollPointsRequest(_message.Message):
    __slots__ = ("limit", "offset", "filter", "with_vectors", "collection")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    limit: int
    offset: str
    filter: _types_pb2.Filter
    with_vectors: bool
    collection: str
    def __init__(self, limit: _Optional[int] = ..., offset: _Optional[str] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ..., with_vectors: _Optional[bool] = ..., collection: _Optional[str] = ...) -> None: ...

class ScrollPointsResponse(_message.Message):
    __slots__ = ("points", "next_offset")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    next_offset: str
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., next_offset: _Optional[str] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "vector_size", "points", "active")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    vector_size: int
    points: int
    active: bool
    def __init__(self, name: _Optional[str] = ..., vector_size: _Optional[int] = ..., points: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("with_counts",)
    WITH_COUNTS_FIELD_NUMBER: _ClassVar[int]
    with_counts: bool
    def __init__(self, with_counts: _Optional[bool] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("alias", "active", "previous", "collections")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    active: str
    previous: str
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, alias: _Optional[str] = ..., active: _Optional[str] = ..., previous: _Optional[str] = ..., collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "vector_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    vector_size: int
    def __init__(self, name: _Optional[str] = ..., vector_size: _Optional[int] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection", "created")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    created: bool
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("active", "previous")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    active: str
    previous: str
    def __init__(self, active: _Optional[str] = ..., previous: _Optional[str] = ...) -> None: ...
