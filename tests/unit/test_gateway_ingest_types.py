"""ingest_types.py: what the ingest pipeline answers per item, and the metadata comparison behind
UNCHANGED."""
from __future__ import annotations

import pytest

from lookalike.v1 import lookalike_pb2, types_pb2
from lookalike_gateway.ingest_types import image_hashes, same_metadata

from .gateway_fakes import ingest, make_gateway, png, product


@pytest.fixture
def gateway(tmp_path):
    return make_gateway(tmp_path, upsert_batch_size=4)


def test_image_hashes_lists_every_image_main_first_or_falls_back_to_the_main_hash():
    several = types_pb2.Product(id="p", image_sha256="a", image_sha256s=["a", "b"])
    only_main = types_pb2.Product(id="p", image_sha256="a")
    assert (image_hashes(several), image_hashes(only_main), image_hashes(types_pb2.Product(id="p"))) == (
        ["a", "b"], ["a"], [])


def test_same_metadata_ignores_a_predicted_category():
    sent = product("p", title="t")
    stored = product("p", title="t", category="shoes",
                     attributes={"category_predicted": "true", "category_probability": "0.91"})
    assert same_metadata(stored, sent)
    assert not same_metadata(stored, product("p", title="t", category="bags"))
    assert not same_metadata(product("p", title="t", price=1.0), sent)


def test_to_proto_carries_the_outcome(gateway):
    ingest(gateway, [(product("o"), png(9))])
    result = ingest(gateway, [(product("d"), png(9)), (product("x"), b"junk")])
    protos = [r.to_proto() for r in result]
    assert protos[0].outcome == lookalike_pb2.UpsertProductsResponse.OUTCOME_CREATED and protos[0].duplicate_of == "o"
    assert protos[1].outcome == lookalike_pb2.UpsertProductsResponse.OUTCOME_FAILED and protos[1].error
