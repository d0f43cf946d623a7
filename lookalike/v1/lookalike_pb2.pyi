from lookalike.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchByImageRequest(_message.Message):
    __slots__ = ("image", "top_k", "filter")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    top_k: int
    filter: _types_pb2.Filter
    def __init__(self, image: _Optional[bytes] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ...) -> None: ...

class SearchByImageResponse(_message.Message):
    __slots__ = ("results", "cache_hit")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    cache_hit: bool
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class SearchSimilarRequest(_message.Message):
    __slots__ = ("product_id", "top_k", "filter")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    top_k: int
    filter: _types_pb2.Filter
    def __init__(self, product_id: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_types_pb2.Filter, _Mapping]] = ...) -> None: ...

class SearchSimilarResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.SearchResult, _Mapping]]] = ...) -> None: ...

class UpsertProductsRequest(_message.Message):
    __slots__ = ("product", "image")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    product: _types_pb2.Product
    image: bytes
    def __init__(self, product: _Optional[_Union[_types_pb2.Product, _Mapping]] = ..., image: _Optional[bytes] = ...) -> None: ...

class UpsertProductsResponse(_message.Message):
    __slots__ = ("product_id", "ok", "error")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    ok: bool
    error: str
    def __init__(self, product_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

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
