"""The search filter message from its optional parts (REST form fields, client arguments, CLI flags)."""
from __future__ import annotations

from lookalike.v1 import types_pb2


def make_filter(category: str | None = None, min_price: float | None = None,
                max_price: float | None = None) -> types_pb2.Filter:
    """A lookalike.v1.Filter; None (or an empty category) leaves that part unset."""
    flt = types_pb2.Filter(category=category or "")
    if min_price is not None:
        flt.min_price = min_price
    if max_price is not None:
        flt.max_price = max_price
    return flt
