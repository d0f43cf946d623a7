"""settings.py: an invalid setting stops the gateway naming it."""
from __future__ import annotations

import pytest

from lookalike.settings import ConfigError, load_settings
from lookalike_gateway.settings import GatewaySettings


def test_invalid_setting_is_named(monkeypatch, capsys):
    monkeypatch.setenv("LOOKALIKE_GATEWAY_HTTP_PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_settings(GatewaySettings)
    assert "LOOKALIKE_GATEWAY_HTTP_PORT" in str(err.value)
    monkeypatch.setenv("LOOKALIKE_GATEWAY_HTTP_PORT", "8080")
    monkeypatch.setenv("LOOKALIKE_GATEWAY_SEARCH_ADDRESS", "nohostport")
    with pytest.raises(ConfigError) as err:
        load_settings(GatewaySettings)
    assert "LOOKALIKE_GATEWAY_SEARCH_ADDRESS" in str(err.value)
