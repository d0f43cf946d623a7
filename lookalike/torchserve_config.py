"""TorchServe's configuration for the Lookalike embedder: the shipped templates in services/embedder,
building the model archive, and the per-run config.properties a TorchServeProcess writes.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Mapping

_REPO_ROOT = Path(__file__).resolve().parents[1]


def embedder_dir() -> Path:
    """services/embedder of this checkout (holds config.properties, build_mar.py, Dockerfile)."""
    path = _REPO_ROOT / "services" / "embedder"
    if not (path / "config.properties").is_file():
        raise FileNotFoundError(f"{path} not found: TorchServeProcess needs the repository checkout "
                                "(services/embedder), not just the installed package")
    return path


def default_config_template() -> Path:
    """The shipped TorchServe config: services/embedder/config.properties."""
    return embedder_dir() / "config.properties"


def default_metrics_config() -> Path:
    """The shipped TorchServe metrics declaration: services/embedder/metrics.yaml."""
    return embedder_dir() / "metrics.yaml"


def build_embedder_mar(model_store: str | os.PathLike, **kwargs) -> Path:
    """Builds (or reuses) <model_store>/lookalike-lite0.mar with services/embedder/build_mar.py.

    kwargs: cut, batch_size, max_batch_delay, workers, serialized_file, force, quiet.
    """
    script = embedder_dir() / "build_mar.py"
    spec = importlib.util.spec_from_file_location("_lookalike_build_mar", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kwargs.setdefault("quiet", True)
    return module.build_mar(model_store, **kwargs)


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """Java-style key=value file (comments and blank lines skipped; no line continuations)."""
    props: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def render_properties(template: str | os.PathLike, overrides: Mapping[str, object]) -> str:
    """The template file with `overrides` applied (existing keys replaced in place, new keys appended;
    a value of None removes the key)."""
    lines, seen = [], set()
    for line in Path(template).read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "!")) and "=" in stripped:
            key = stripped.split("=", 1)[0].strip()
            if key in overrides:
                seen.add(key)
                if overrides[key] is None:
                    continue
                line = f"{key}={overrides[key]}"
        lines.append(line)
    extra = [f"{k}={v}" for k, v in overrides.items() if k not in seen and v is not None]
    if extra:
        lines += ["", "# per-run overrides (lookalike.torchserve_process.TorchServeProcess)"] + extra
    return "\n".join(lines) + "\n"


def allowed_urls_property(model_store: str | os.PathLike) -> str:
    """config.properties value of `allowed_urls` admitting only archives directly inside `model_store`
    (a Java regex; backslashes doubled for the properties file)."""
    pattern = "file://" + re.escape(str(model_store)) + "/[^/]+\\.mar"
    return pattern.replace("\\", "\\\\")



def archives(model_store: str | os.PathLike, model_name: str) -> list[str]:
    """The archive files TorchServe loads from `model_store`: <model_name>.mar first (the default
    version: TorchServe makes the first version it registers the default), then every
    <model_name>.<version>.mar in the store, sorted."""
    others = sorted(p.name for p in Path(model_store).glob(f"{model_name}.*.mar"))
    return [f"{model_name}.mar", *others]


def run_properties(*, ports: Mapping[str, int], inference_host: str, model_store: str | os.PathLike,
                   load_models: list[str]) -> dict[str, object]:
    """config.properties entries of one run: its ports and addresses (management, gRPC management and
    metrics on loopback only; inference on `inference_host`), the Prometheus metrics API with the metrics
    of services/embedder/metrics.yaml, the model store and its archives (the only URLs allowed)."""
    return {
        "inference_address": f"http://{inference_host}:{ports['http']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "enable_metrics_api": "true",
        "metrics_mode": "prometheus",
        "metrics_config": str(default_metrics_config()),
        "grpc_inference_address": inference_host,
        "grpc_inference_port": ports["grpc"],
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": ports["grpc_management"],
        "model_store": str(model_store),
        "load_models": ",".join(load_models),
        "allowed_urls": allowed_urls_property(model_store),
    }


__all__ = ["embedder_dir", "default_config_template", "default_metrics_config", "build_embedder_mar",
           "read_properties", "render_properties", "allowed_urls_property", "archives", "run_properties"]
