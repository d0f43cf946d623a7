"""validation.py: request fields refused with INVALID_ARGUMENT naming the field."""
from __future__ import annotations

import io
from types import SimpleNamespace

import grpc
import pytest
from PIL import Image

from lookalike.limits import MAX_CATEGORY_BOOST
from lookalike.v1 import types_pb2
from lookalike_gateway.errors import ApiError
from lookalike_gateway.validation import (check_image, check_size, validate_category_boost, validate_crop,
                                          validate_filter, validate_min_score, validate_product_id, validate_top_k)


@pytest.mark.parametrize("top_k, expected", [(None, 10), (1, 1), (1000, 1000)])
def test_top_k_accepted(top_k, expected):
    assert validate_top_k(top_k, 10) == expected


@pytest.mark.parametrize("top_k", [0, -1, 1001])
def test_top_k_rejected(top_k):
    with pytest.raises(ApiError) as err:
        validate_top_k(top_k, 10)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 600])
def test_bad_product_ids(bad):
    with pytest.raises(ApiError):
        validate_product_id(bad)


def test_a_price_range_must_be_ordered_and_finite():
    assert validate_filter(types_pb2.Filter(min_price=1, max_price=2)).max_price == 2
    for bad, field in ((types_pb2.Filter(min_price=3, max_price=2), "min_price"),
                       (types_pb2.Filter(max_price=float("nan")), "max_price")):
        with pytest.raises(ApiError) as err:
            validate_filter(bad)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details[0]["field_violations"][0]["field"] == field


@pytest.mark.parametrize("value, expected", [(None, None), (-1, -1.0), (0.5, 0.5), (1, 1.0)])
def test_min_score_accepted(value, expected):
    assert validate_min_score(value) == expected


@pytest.mark.parametrize("value", [-1.01, 1.5, float("nan")])
def test_min_score_rejected(value):
    with pytest.raises(ApiError) as err:
        validate_min_score(value)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "min_score" in err.value.message


def test_category_boost_default_and_bounds():
    assert validate_category_boost(None, 0.2) == 0.2
    assert validate_category_boost(0, 0.2) == 0.0
    for bad in (-0.1, MAX_CATEGORY_BOOST + 0.1, float("inf")):
        with pytest.raises(ApiError):
            validate_category_boost(bad, 0.2)


def test_a_crop_comes_as_text_a_proto_or_a_box():
    box = validate_crop("0.1,0.2,0.5,0.5")
    assert tuple(box) == (0.1, 0.2, 0.5, 0.5)
    assert validate_crop(types_pb2.CropBox(x=0.1, y=0.2, width=0.5, height=0.5)) == pytest.approx(box)  # float32
    assert validate_crop(box) is box and validate_crop(None) is None
    for bad in ("0.1,0.2", "0.9,0.9,0.5,0.5", "a,b,c,d"):
        with pytest.raises(ApiError) as err:
            validate_crop(bad)
        assert err.value.details[0]["field_violations"][0]["field"] == "crop"


def test_check_image_refuses_empty_oversized_and_non_images_from_the_header():
    limits = SimpleNamespace(max_upload_bytes=10_000, max_image_pixels=10_000)
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "PNG")
    check_image(out.getvalue(), limits)  # a small PNG passes
    cases = [(b"", grpc.StatusCode.INVALID_ARGUMENT, None), (b"x" * 10_001, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
             (b"plain text, not an image", grpc.StatusCode.INVALID_ARGUMENT, None)]
    big = io.BytesIO()
    Image.new("RGB", (200, 200)).save(big, "PNG")  # 40,000 pixels: above the pixel limit (a bomb, in small)
    cases.append((big.getvalue(), grpc.StatusCode.INVALID_ARGUMENT, None))
    for image, code, http in cases:
        with pytest.raises(ApiError) as err:
            check_image(image, limits)
        assert (err.value.code, err.value.http_status) == (code, http), err.value.message


def test_an_empty_or_oversized_body_is_refused_before_anything_looks_inside():
    limits = SimpleNamespace(max_upload_bytes=100, max_image_pixels=10)
    check_size(b"x" * 100, limits)  # not an image, but the size checks do not look
    with pytest.raises(ApiError) as empty:
        check_size(b"", limits)
    assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT and empty.value.message == "image is empty"
    with pytest.raises(ApiError) as big:
        check_size(b"x" * 101, limits)
    assert (big.value.code, big.value.http_status) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 413)
