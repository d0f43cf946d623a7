from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Product(_message.Message):
    __slots__ = ("id", "title", "category", "price", "attributes", "image_sha256")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    category: str
    price: float
    attributes: _containers.ScalarMap[str, str]
    image_sha256: str
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., category: _Optional[str] = ..., price: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ..., image_sha256: _Optional[str] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("category", "min_price", "max_price")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MIN_PRICE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    category: str
    min_price: float
    max_price: float
    def __init__(self, category: _Optional[str] = ..., min_price: _Optional[float] = ..., max_price: _Optional[float] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("product", "score")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    product: Product
    score: float
    def __init__(self, product: _Optional[_Union[Product, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...
