"""Embedder (TorchServe handler) configuration: `EmbedderSettings`, env prefix LOOKALIKE_EMBEDDER_.

Each setting is read from the first place that has it (an empty value counts as unset):

1. the environment, ``LOOKALIKE_EMBEDDER_<NAME>`` (the settings in `ENV_SETTINGS` only);
2. the ``handler:`` section of the archive's model-config.yaml (``handler.<name>``);
3. the default below.

The archive's model (preprocessing, model_version, pooling, dim, source) is a fact of the .mar that
build_mar.py wrote into model-config.yaml: those keys are read from there only, never from the environment,
so a stray variable cannot feed a model other inputs than it was built for.

    settings = EmbedderSettings.load(model_yaml_config.get("handler") or {})

An invalid value raises `lookalike.settings.ConfigError` naming the variable and the yaml key, e.g.
``LOOKALIKE_EMBEDDER_THREADS / handler.threads: Input should be greater than or equal to 0 (got '-1')``:
TorchServe's worker then fails to load the model with that line in its model log.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from lookalike.images import DEFAULT_MAX_PIXELS
from lookalike.settings import ConfigError, load_settings
from lookalike_embedder import model as lk_model
from lookalike_embedder.preprocessing import LITE0, Preprocessing, triple
from lookalike_embedder.runtime import BACKENDS, DEFAULT_BACKEND, POOLINGS

ENV_PREFIX = "LOOKALIKE_EMBEDDER_"
#: The model-config.yaml section the handler's settings live in.
YAML_SECTION = "handler"
#: The settings an environment variable may set (LOOKALIKE_EMBEDDER_<NAME>); the others are the archive's.
ENV_SETTINGS = frozenset({"backend", "cut", "threads", "decode_workers", "max_pixels", "weights"})


class _ServerEnvSource(EnvSettingsSource):
    """The environment, for `ENV_SETTINGS` only."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name not in ENV_SETTINGS:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class EmbedderSettings(BaseSettings):
    """Every setting of the TorchServe handler. Build it with `load` (yaml `handler:` mapping below the
    environment); constructor keywords are that yaml layer too: the environment wins over them."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    # -- server settings: LOOKALIKE_EMBEDDER_<NAME>, then handler.<name>
    # onnxruntime: the model.onnx build_mar.py packed into the archive (checked against eager PyTorch at build
    # time); torch: the eager PyTorch model.
    backend: str = DEFAULT_BACKEND
    # The feature layer: final (1280-d) or block0..block15. A cut other than the archive's is exported to ONNX
    # in memory at start-up (a few seconds).
    cut: str = lk_model.DEFAULT_CUT
    # Intra-op threads on CPU; 0 = the CPUs this process may use divided by the workers (minWorkers).
    threads: int = Field(0, ge=0, le=1024)
    # Threads decoding and resizing a batch's images in parallel; 0 = the CPUs this process may use.
    decode_workers: int = Field(0, ge=0, le=1024)
    # Decompression-bomb guard: photos with more pixels are rejected from the header, before decoding.
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    # Eager model: a state dict other than the archive's weights.pt (or the pip package's file).
    weights: str | None = None

    # -- the archive's model: handler.<name> only (build_mar.py writes them)
    image_size: int = Field(LITE0.image_size, ge=1, le=4096)
    resize: int = Field(LITE0.resize, ge=1, le=8192)
    mean: tuple[float, float, float] = LITE0.mean
    std: tuple[float, float, float] = LITE0.std
    draft_margin: float = Field(LITE0.draft_margin, ge=0)  # 0 = no JPEG draft decoding
    model_version: str | None = None  # the vector space id; default: the eager model's (per cut)
    pooling: str = "auto"  # auto | mean | cls | none (lookalike_embedder.runtime.pool_and_normalize)
    dim: int | None = Field(None, ge=1, le=65536)  # declared vector size: checked against the model's output
    source: str | None = None  # "onnx": a bring-your-own ONNX model (no eager twin)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        # Environment first, then the yaml layer (the constructor's keywords); no .env file, no secrets dir.
        return _ServerEnvSource(settings_cls), init_settings

    @classmethod
    def load(cls, handler_config: Mapping[str, Any] | None = None) -> EmbedderSettings:
        """The settings from the environment over `handler_config` (model-config.yaml's ``handler:``);
        raises `lookalike.settings.ConfigError` naming each invalid setting."""
        layer = {key: value for key, value in (handler_config or {}).items() if value not in (None, "")}
        return load_settings(cls, **layer)

    @classmethod
    def setting_name(cls, field: str) -> str:
        """How an error names a setting: its variable (for the server settings) and its yaml key."""
        key = f"{YAML_SECTION}.{field}"
        if field in ENV_SETTINGS:
            return f"{ENV_PREFIX}{field.upper()} / {key}"
        return f"{key} (model-config.yaml)"

    @field_validator("backend", "pooling", mode="before")
    @classmethod
    def _choice(cls, value, info: ValidationInfo):
        choices = {"backend": BACKENDS, "pooling": POOLINGS}[info.field_name]
        name = str(value).strip().lower()
        if name not in choices:
            raise ValueError(f"unknown {info.field_name}; expected one of {', '.join(choices)}")
        return name

    @field_validator("cut", mode="before")
    @classmethod
    def _cut(cls, value):
        return lk_model.normalize_cut(str(value))

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value):
        if value is not None and str(value).strip().lower() != "onnx":
            raise ValueError("the only source is 'onnx' (a bring-your-own ONNX model); leave it unset otherwise")
        return None if value is None else "onnx"

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _triple(cls, value):
        values = triple(value)
        if len(values) != 3:
            raise ValueError("needs 3 values (one per channel: R, G, B) or one for all three")
        return values

    @field_validator("std", mode="after")
    @classmethod
    def _std(cls, value: tuple[float, float, float]):
        if min(value) <= 0:
            raise ValueError("every std value must be > 0")
        return value

    @field_validator("resize", mode="after")
    @classmethod
    def _resize(cls, value: int, info: ValidationInfo):
        size = info.data.get("image_size")
        if size is not None and value < size:
            raise ValueError(f"must be >= handler.image_size ({size}): the centre crop is cut from the resized photo")
        return value

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(image_size=self.image_size, resize=self.resize, mean=self.mean, std=self.std,
                             draft_margin=self.draft_margin)

    def check_dim(self, dim: int) -> None:
        """Raises `ConfigError` when handler.dim is declared and the model gives `dim`-d vectors instead."""
        if self.dim is not None and self.dim != dim:
            raise ConfigError(f"{self.setting_name('dim')}: is {self.dim} but the model gives {dim}-d vectors")


__all__ = ["ENV_PREFIX", "ENV_SETTINGS", "YAML_SECTION", "EmbedderSettings"]
