"""lookalike_embedder.contract: the facts the handler shares with its clients and the archive builder."""
from __future__ import annotations

import json

import numpy as np

from lookalike_embedder import contract


def test_error_prefix_cannot_be_a_unit_vector():
    # the first float32 of an error payload is huge: never a component of an L2-normalised vector
    first = np.frombuffer(contract.ERROR_PREFIX[:4], dtype="<f4")[0]
    assert abs(first) > 1e6


def test_error_payload_starts_with_the_prefix_and_reads_back():
    payload = contract.error_payload("not_an_image", "cannot identify image file")
    assert payload.startswith(contract.ERROR_PREFIX)
    assert json.loads(payload) == {"error": {"code": "INVALID_ARGUMENT", "reason": "not_an_image",
                                             "message": "cannot identify image file"}}

