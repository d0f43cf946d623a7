"""lookalike.api_keys: the one spelling of the API key's metadata key and header, read by the clients and the gateway."""
from __future__ import annotations

from lookalike import api_keys
from lookalike.cli_common import api_key
from lookalike.client import LookalikeClient


def test_a_key_travels_as_x_api_key_and_none_sends_nothing():
    assert api_keys.metadata("k1") == [("x-api-key", "k1")]
    assert api_keys.metadata(None) is None and api_keys.metadata("") is None
    assert api_keys.headers("k1") == {"X-API-Key": "k1"} and api_keys.headers(None) == {}


def test_the_client_and_the_command_line_use_it(monkeypatch):
    with LookalikeClient("127.0.0.1:9", api_key="k2") as client:
        assert client._metadata == [("x-api-key", "k2")]
    args = type("Args", (), {"api_key": None})()
    monkeypatch.setenv(api_keys.ENV_VAR, "from-env")
    assert api_key(args) == "from-env"
    args.api_key = "given"
    assert api_key(args) == "given"
