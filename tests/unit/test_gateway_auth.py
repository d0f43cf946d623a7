"""auth.py: API keys, per-key rate limits, bearer tokens."""
from __future__ import annotations

import grpc
import pytest

from lookalike_gateway.errors import ApiError


def test_api_keys_and_rate_limit():
    from lookalike_gateway.auth import ApiKeyCheck, RateLimiter

    check = ApiKeyCheck(frozenset({"k1", "k2"}), RateLimiter(rate_per_s=1.0, burst=2))
    with pytest.raises(ApiError) as err:
        check.check(None)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ApiError):
        check.check("wrong")
    assert check.check("k1") == "k1"
    assert check.check("k1") == "k1"
    with pytest.raises(ApiError) as err:
        check.check("k1")
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.http_status == 429
    assert 0 < err.value.retry_after_s <= 1.0
    assert check.check("k2") == "k2"  # limits are per key
    open_check = ApiKeyCheck(frozenset())
    assert open_check.check(None, caller="1.2.3.4") is None


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None)])
def test_bearer_token(header, token):
    from lookalike_gateway.auth import bearer_token

    assert bearer_token(header) == token
