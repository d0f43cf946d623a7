"""Search service configuration (env prefix LOOKALIKE_SEARCH_)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookalike import naming, ports

Engine = Literal["qdrant-local", "qdrant-edge", "qdrant-server"]
Quantization = Literal["none", "int8", "binary"]
ENGINES: tuple[str, ...] = get_args(Engine)


def default_engine(data_dir: Path | None, qdrant_url: str | None = None) -> str:
    """The engine when none is configured: qdrant-server with a URL; else qdrant-local for a data dir
    that holds only qdrant-local data (made before qdrant-edge was the default: it keeps its catalogue);
    else qdrant-edge."""
    if qdrant_url:
        return "qdrant-server"
    if data_dir is not None and (Path(data_dir) / "qdrant-local").is_dir() and not (
            Path(data_dir) / "qdrant-edge").is_dir():
        return "qdrant-local"
    return "qdrant-edge"


class SearchSettings(BaseSettings):
    """Every search-service setting; each can be set as LOOKALIKE_SEARCH_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_SEARCH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(ports.SEARCH_PORT, ge=0, le=65535)  # 0 = pick a free port (logged, and written to port_file)
    port_file: Path | None = None  # when set, the bound port is written there (atomically) once ready

    # Declared before `engine`: the engine validator reads it.
    qdrant_url: str | None = None  # e.g. http://qdrant:6333; setting it makes qdrant-server the default engine
    qdrant_api_key: SecretStr | None = None
    qdrant_prefer_grpc: bool = False  # server engine: talk gRPC (port 6334) instead of REST
    data_dir: Path = Path("var/search")  # declared before `engine`: the engine validator reads it
    # qdrant-edge (default): Qdrant's Rust engine in-process (exact search, HNSW past
    # edge_index_threshold_points); qdrant-local: qdrant-client's embedded mode (exact, pure Python:
    # ~12 ms per query at 3k points, ~80 ms at 10k); qdrant-server: a Qdrant server at qdrant_url.
    # Unset: qdrant-server with a qdrant_url, else qdrant-local when data_dir holds only qdrant-local
    # data (a data dir made before qdrant-edge was the default keeps its engine), else qdrant-edge.
    engine: Engine | None = Field(None, validate_default=True)

    # The alias searches use; requests that name no collection get the collection it points at.
    collection: str = Field(naming.DEFAULT_ALIAS, pattern=naming.NAME_PATTERN.pattern)
    # What the alias points at on the first start: created with vector_size. Default
    # <collection>__lookalike-lite0 (collection names carry the embedding model id; see lookalike/naming.py).
    initial_collection: str | None = Field(None, pattern=naming.NAME_PATTERN.pattern)
    vector_size: int = Field(1280, ge=1, le=65536)

    hnsw_m: int = Field(16, ge=0, le=512)  # 0 disables the graph (server: exact search only)
    hnsw_ef_construct: int = Field(100, ge=4, le=4096)
    search_ef: int = Field(128, ge=1, le=4096)  # hnsw_ef at query time (raised to top_k when smaller)
    full_scan_threshold_kb: int = Field(10000, ge=1)  # segments smaller than this are searched exactly
    indexing_threshold_kb: int | None = Field(None, ge=0)  # server/edge: segment size that gets an HNSW index

    # Server engine only (distributed Qdrant); ignored by the embedded engines.
    shard_number: int = Field(1, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=64)
    write_consistency_factor: int = Field(1, ge=1, le=64)

    quantization: Quantization = "none"  # collection option; local mode accepts but does not use it
    quantization_rescore: bool = True  # re-rank quantized candidates with the original vectors
    quantization_oversampling: float = Field(2.0, ge=1.0, le=16.0)

    # Edge engine: HNSW segments are built by an explicit optimize() during which the shard answers
    # nothing (8-12 s per 10k points on two cores). It runs once this many points are not indexed yet
    # (below that, exact search in Rust takes ~2 ms at 3k, ~11 ms at 30k points; 0 = after every quiet
    # period): at start, and after writes have been quiet for edge_optimize_idle_s (0 = only at start).
    edge_index_threshold_points: int = Field(20_000, ge=0)
    edge_optimize_idle_s: float = Field(5.0, ge=0)
    edge_flush_each_write: bool = True  # flush segments after every write (the WAL alone survives kill -9)

    request_timeout_s: float = Field(10.0, gt=0, le=600)  # Qdrant client timeout (server engine)
    max_workers: int = Field(8, ge=1, le=256)
    shutdown_grace_s: float = Field(10.0, ge=0, le=600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    access_log: bool = True  # one log line per RPC: method, status, ms, the caller's x-request-id
    # Prometheus metrics (requests by RPC and status, latency histograms) at http://METRICS_HOST:PORT/metrics;
    # 0 = off. Loopback by default: the metrics are for a local scraper or sidecar, never published.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value

    @field_validator("qdrant_url", mode="before")
    @classmethod
    def _url(cls, value):
        if isinstance(value, str):
            value = value.strip() or None
        if value is not None and not str(value).startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (e.g. http://127.0.0.1:6333)")
        return value

    @field_validator("engine", mode="after")
    @classmethod
    def _engine(cls, value: str | None, info: ValidationInfo) -> str:
        url = info.data.get("qdrant_url")
        if value is None:
            return default_engine(info.data.get("data_dir"), url)
        if value == "qdrant-server" and not url:
            raise ValueError("engine qdrant-server needs LOOKALIKE_SEARCH_QDRANT_URL")
        if value != "qdrant-server" and url:
            raise ValueError(f"engine {value} is embedded but LOOKALIKE_SEARCH_QDRANT_URL is set; "
                             "unset one of them")
        return value

    @field_validator("write_consistency_factor", mode="after")
    @classmethod
    def _wcf(cls, value: int, info: ValidationInfo) -> int:
        rf = info.data.get("replication_factor")
        if rf is not None and value > rf:
            raise ValueError(f"must not exceed LOOKALIKE_SEARCH_REPLICATION_FACTOR ({rf})")
        return value

    @property
    def bind_address(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        return f"{host}:{self.port}"
