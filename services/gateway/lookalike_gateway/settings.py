"""Gateway configuration (env prefix LOOKALIKE_GATEWAY_)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookalike import images, limits, naming, ports


class GatewaySettings(BaseSettings):
    """Every gateway setting; each can be set as LOOKALIKE_GATEWAY_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    grpc_port: int = Field(ports.GATEWAY_GRPC_PORT, ge=0, le=65535)
    http_port: int = Field(ports.GATEWAY_HTTP_PORT, ge=0, le=65535)
    port_file: Path | None = None  # when set, "grpc=<port>\nhttp=<port>" is written there once ready

    embedder_address: str = "127.0.0.1:7070"
    embedder_model: str = naming.DEFAULT_MODEL_NAME
    embedder_model_version: str = ""  # part of the cache key; empty = the model's default version
    embedder_token: SecretStr | None = None
    embedder_token_file: Path | None = None  # TorchServe's key_file.json
    # TorchServe's metrics API (loopback only, e.g. http://127.0.0.1:8082/metrics): when set, /metrics also
    # re-exports the embedder's batch-size and queue metrics (lookalike_gateway.embedder_metrics); empty = off.
    embedder_metrics_url: str = ""
    search_address: str = f"127.0.0.1:{ports.SEARCH_PORT}"
    # The supervisor's status file of a local stack (lookalike serve sets it): /metrics exports
    # lookalike_stack_restarts_total{child}, /healthz shows children that are down; empty = none.
    stack_status_file: Path | None = None

    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    # A slow Redis is skipped (for redis_retry_after_s), not waited for. 0.25 s, not less: on a loaded machine
    # a healthy Redis GET can take 50+ ms to be scheduled, and a false timeout turns every cache hit of the
    # next redis_retry_after_s into an embed (bench/results/hit_priority.json: 147 hot photos missed at 0.05 s,
    # 0 at 0.25; cache-hit p99 1.57 s -> 0.84 s under 32 clients).
    redis_timeout_s: float = Field(0.25, gt=0, le=5)
    redis_retry_after_s: float = Field(2.0, ge=0)  # after a Redis failure, skip it this long

    # Uncached queries (lookalike_gateway.admission): at most this many embeds at once, this many more
    # waiting; a miss beyond that is answered UNAVAILABLE / 503 with Retry-After, so cache hits never wait
    # behind embedding work. Ingest and reindex are bounded separately.
    query_embed_concurrency: int = Field(4, ge=1, le=256)
    query_embed_queue: int = Field(8, ge=0, le=4096)
    query_embed_retry_after_s: float = Field(1.0, gt=0, le=60)

    data_dir: Path = Path("var/gateway")
    request_timeout_s: float = Field(10.0, gt=0, le=600)  # default deadline when the caller sets none
    # Ingest: the deadline of each micro-batch of a stream (embedding 32 images on a busy CPU takes seconds).
    ingest_batch_timeout_s: float = Field(120.0, gt=0, le=3600)
    max_upload_bytes: int = Field(limits.DEFAULT_MAX_UPLOAD_BYTES, ge=1024)
    # A product's photos: at most this many, together at most max_product_bytes (one upsert message).
    max_images_per_product: int = Field(limits.DEFAULT_MAX_IMAGES_PER_PRODUCT, ge=1, le=limits.MAX_IMAGES_PER_PRODUCT)
    max_product_bytes: int = Field(limits.DEFAULT_MAX_PRODUCT_BYTES, ge=1024)
    max_image_pixels: int = Field(images.DEFAULT_MAX_PIXELS, ge=1)  # the embedder decodes with the same default
    default_top_k: int = Field(limits.DEFAULT_TOP_K, ge=1, le=limits.MAX_TOP_K)
    upsert_batch_size: int = Field(32, ge=1, le=1024)
    # Image search re-ranks by category when a category classifier is trained (lookalike_gateway.ranking):
    # order = cosine + category_boost * P(result's category | query); 0 = plain similarity order.
    category_boost: float = Field(0.2, ge=0, le=limits.MAX_CATEGORY_BOOST)
    category_rerank_depth: int = Field(100, ge=1, le=limits.MAX_TOP_K)  # candidates re-ranked
    # Below this score even the best result is usually not the same kind of product: searches report it
    # (weak_match_score) and the page says "no close match". "auto" = calibrated by the gateway from the active
    # catalogue's own photos, in the background (lookalike_gateway.calibration); a number overrides it; 0 = off.
    weak_match_score: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = "auto"
    # Ingest reports products whose image is byte-identical to another product's, or whose embedding is
    # within this cosine distance (1 - similarity) of another product's; 0 = exact duplicates only.
    # On clothing-small, 0.03 flags the one near-identical pair among 3,068 training photos.
    detect_duplicates: bool = True
    duplicate_max_distance: float = Field(0.03, ge=0, le=2)

    api_keys: str = ""  # comma-separated; empty = no authentication (local single-user run)
    rate_limit_per_s: float = Field(0.0, ge=0)  # per API key (or client address); 0 = no limit
    rate_limit_burst: int = Field(50, ge=1)
    cors_origins: str = ""  # comma-separated allowed origins; empty = none
    log_level: str = "INFO"
    shutdown_delay_s: float = Field(1.0, ge=0, le=60)  # after SIGTERM: NOT_SERVING and refusing, then close
    access_log: bool = True  # one log line per /v1 request (method, route, status, ms, request id)

    @field_validator("embedder_address", "search_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be HOST:PORT")
        return value

    @field_validator("embedder_metrics_url")
    @classmethod
    def _embedder_metrics_url(cls, value: str) -> str:
        from .embedder_metrics import check_metrics_url

        return check_metrics_url(value.strip())

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix:// (or be empty to disable the cache)")
        return value

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
