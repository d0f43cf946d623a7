"""embedding.py: the embedder calls of queries and ingest bursts, with the one retry policy: only what was
UNAVAILABLE is sent again, a photo the embedder cannot decode fails alone, other failures name the embedder."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from lookalike.embedder_client import EmbedderImageError
from lookalike_gateway.embedding import embed_burst, embed_one
from lookalike_gateway.errors import ApiError, Deadline
from lookalike_gateway.retry import RetryPolicy

from .gateway_fakes import FakeRpcError, fake_clock

FAST = RetryPolicy(first_backoff_s=0.001, max_backoff_s=0.002, min_attempt_s=0.001)


class ScriptedEmbedder:
    """embed_many answers each image from a script: image -> list of answers, one per time it is sent."""

    def __init__(self, script: dict[bytes, list]):
        self.script = {image: list(answers) for image, answers in script.items()}
        self.sent: list[list[bytes]] = []

    def embed_many(self, images, timeout=30.0):
        self.sent.append(list(images))
        return [self.script[image].pop(0) for image in images]

    def embed(self, image, timeout=10.0, request_id=None, crop=None):
        answer = self.embed_many([image])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_burst_resends_only_what_was_unavailable():
    ok, later = np.ones(4, np.float32), np.full(4, 2.0, np.float32)
    embedder = ScriptedEmbedder({
        b"ok": [ok],
        b"corrupt": [EmbedderImageError("truncated", "the file ends early")],
        b"blip": [FakeRpcError(grpc.StatusCode.UNAVAILABLE), later],
        b"broken": [FakeRpcError(grpc.StatusCode.INTERNAL)],
    })
    results = embed_burst(embedder, [b"ok", b"corrupt", b"blip", b"broken"], Deadline(10), FAST)
    assert embedder.sent == [[b"ok", b"corrupt", b"blip", b"broken"], [b"blip"]]
    assert results[0] is ok and results[2] is later
    assert isinstance(results[1], ApiError) and results[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(results[3], ApiError) and results[3].code == grpc.StatusCode.UNAVAILABLE
    assert "embedder (TorchServe) failed: INTERNAL" in results[3].message


def test_a_burst_gives_up_on_what_stays_unavailable_within_the_deadline(monkeypatch):
    clock = fake_clock(monkeypatch)
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    embedder = ScriptedEmbedder({b"x": [down] * 1000})
    start = clock.now
    [result] = embed_burst(embedder, [b"x"], Deadline(0.1), FAST)
    assert result.code == grpc.StatusCode.UNAVAILABLE and "embedder (TorchServe) is unavailable" in result.message
    assert len(embedder.sent) == len(clock.slept) + 1 > 1  # a retry after each backoff
    assert clock.now - start <= 0.1 - FAST.min_attempt_s  # gave up while the deadline still had room


def test_a_query_is_not_sent_while_the_embedder_is_known_down(monkeypatch):
    clock = fake_clock(monkeypatch)
    embedder = ScriptedEmbedder({b"q": [np.ones(4, np.float32)]})
    with pytest.raises(ApiError) as err:
        embed_one(embedder, b"q", Deadline(0.05), ready=lambda: False, policy=FAST)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and embedder.sent == [] and clock.slept
    assert embed_one(embedder, b"q", Deadline(5), policy=FAST).sum() == 4
