"""Redis cache of query embeddings. A dead or slow Redis is skipped (and counted), never an error."""
from __future__ import annotations

import hashlib
import logging
import threading
import time

import numpy as np
import redis

from lookalike import vectors
from . import metrics

log = logging.getLogger(__name__)


def image_digest(image: bytes) -> str:
    """Hex SHA-256 of the image bytes."""
    return hashlib.sha256(image).hexdigest()


class EmbeddingCache:
    """get/put of embeddings keyed by image SHA-256 and model id, with a TTL.

    Every Redis call has a short socket timeout; after a failure Redis is skipped for
    `retry_after_s` so a dead Redis costs nothing per query.
    """

    def __init__(self, url: str, model_id: str, ttl_s: int, timeout_s: float, retry_after_s: float):
        self.model_id = model_id
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._skip_until = 0.0
        self._lock = threading.Lock()
        self._client = None
        if url:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                retry_on_timeout=False)

    def key(self, digest: str) -> str:
        return f"lookalike:emb:{self.model_id}:{digest}"

    def _usable(self) -> bool:
        return self._client is not None and time.monotonic() >= self._skip_until

    def _failed(self, op: str, exc: Exception) -> None:
        metrics.CACHE_EVENTS.labels(event="error").inc()
        with self._lock:
            self._skip_until = time.monotonic() + self.retry_after_s
        log.warning("redis %s failed, cache skipped for %.1fs: %s", op, self.retry_after_s, exc)

    def get(self, digest: str) -> np.ndarray | None:
        """The cached embedding, or None on a miss or when Redis is unavailable."""
        if not self._usable():
            metrics.CACHE_EVENTS.labels(event="skipped").inc()
            return None
        try:
            data = self._client.get(self.key(digest))
        except (redis.RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        if data is None:
            metrics.CACHE_EVENTS.labels(event="miss").inc()
            return None
        try:
            vector = vectors.unpack(data)
        except ValueError:
            metrics.CACHE_EVENTS.labels(event="corrupt").inc()
            return None
        metrics.CACHE_EVENTS.labels(event="hit").inc()
        return vector

    def put(self, digest: str, vector: np.ndarray) -> None:
        """Stores an embedding; failures are logged and counted, never raised."""
        if not self._usable():
            return
        try:
            self._client.set(self.key(digest), vectors.pack(vector), ex=self.ttl_s)
        except (redis.RedisError, OSError) as exc:
            self._failed("set", exc)

    def ping(self) -> bool:
        if self._client is None:
            return False
        try:
            return bool(self._client.ping())
        except (redis.RedisError, OSError):
            return False
