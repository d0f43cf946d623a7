"""lookalike.naming: the model id is spelled in one place, and every key derived from it uses that form."""
from __future__ import annotations

import pytest

from lookalike import naming
from lookalike_gateway.server import build_gateway
from lookalike_gateway.settings import GatewaySettings


def test_a_model_id_is_the_name_plus_the_pinned_version_after_a_dot():
    assert naming.model_id() == naming.DEFAULT_MODEL_NAME == "lookalike-lite0"
    assert naming.model_id("lookalike-lite0", "2.0") == "lookalike-lite0.2.0"
    assert naming.split_model_id("lookalike-lite0.2.0") == ("lookalike-lite0", "2.0")
    with pytest.raises(ValueError):
        naming.model_id("lookalike.lite0")  # a dot in the name would make the id ambiguous


@pytest.mark.parametrize("version", ["", "2.0"])
def test_the_gateways_cache_keys_carry_the_model_id(tmp_path, version):
    """The embedding cache of the configured model keys by naming.model_id (it once joined a pinned version
    with '-', so its keys differed from those of the same model reached through a collection's name)."""
    settings = GatewaySettings(embedder_address="127.0.0.1:9", embedder_model_version=version, redis_url="",
                               data_dir=tmp_path, search_address="127.0.0.1:9")
    gateway = build_gateway(settings)
    try:
        mid = naming.model_id(settings.embedder_model, version)
        assert gateway.cache.model_id == mid
        assert gateway.cache.key("ab12") == f"lookalike:emb:{mid}:ab12"
        if version:
            assert gateway.cache.key("ab12") == "lookalike:emb:lookalike-lite0.2.0:ab12"
        collection = naming.collection_name("products", mid)
        assert naming.model_of(collection, "products", "none") == mid  # the id a collection's name carries
    finally:
        gateway.embedder.close()


def test_collection_names_carry_the_model_id_and_read_back():
    mid = naming.model_id("lookalike-lite0", "2.0")
    assert mid == "lookalike-lite0.2.0" and naming.split_model_id(mid) == ("lookalike-lite0", "2.0")
    name = naming.collection_name("products", mid, "r2")
    assert name == "products__lookalike-lite0.2.0__r2"
    assert naming.model_of(name, "products", "x") == mid
    assert naming.model_of("products", "products", "default") == "default"  # from before aliases
    assert list(zip(range(3), naming.candidate_names("p", "m"))) == [(0, "p__m"), (1, "p__m__r2"), (2, "p__m__r3")]
    for bad in ("a.b", "a__b", ""):
        with pytest.raises(ValueError):
            naming.model_id(bad)
