"""EmbedderSettings: defaults, the environment over model-config.yaml's handler: over the defaults, and every
bad value stopping the worker with a message that names the setting (its variable and its yaml key)."""
from __future__ import annotations

import pytest

from lookalike.images import DEFAULT_MAX_PIXELS
from lookalike.settings import ConfigError
from lookalike_embedder.preprocessing import LITE0, Preprocessing
from lookalike_embedder.settings import ENV_PREFIX, ENV_SETTINGS, EmbedderSettings

ENV_NAMES = {"backend": "LOOKALIKE_EMBEDDER_BACKEND", "cut": "LOOKALIKE_EMBEDDER_CUT",
             "threads": "LOOKALIKE_EMBEDDER_THREADS", "decode_workers": "LOOKALIKE_EMBEDDER_DECODE_WORKERS",
             "max_pixels": "LOOKALIKE_EMBEDDER_MAX_PIXELS", "weights": "LOOKALIKE_EMBEDDER_WEIGHTS"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_the_variables_keep_their_names():
    """The variables deployments set (Dockerfile, Kubernetes, docs) are exactly the server settings' names."""
    assert set(ENV_NAMES) == ENV_SETTINGS
    for field, env in ENV_NAMES.items():
        assert ENV_PREFIX + field.upper() == env


def test_defaults():
    s = EmbedderSettings.load()
    assert (s.backend, s.cut, s.threads, s.decode_workers, s.max_pixels, s.weights) == (
        "onnxruntime", "final", 0, 0, DEFAULT_MAX_PIXELS, None)
    assert s.preprocessing == LITE0
    assert (s.model_version, s.pooling, s.dim, s.source) == (None, "auto", None, None)


def test_env_over_yaml_over_default(monkeypatch):
    yaml = {"backend": "torch", "cut": "block14", "threads": 3, "decode_workers": 2, "max_pixels": 1000,
            "weights": "/yaml/w.pt"}
    s = EmbedderSettings.load(yaml)
    assert (s.backend, s.cut, s.threads, s.decode_workers, s.max_pixels, s.weights) == (
        "torch", "block14", 3, 2, 1000, "/yaml/w.pt")
    env = {"backend": " ONNXRuntime ", "cut": "BLOCK10", "threads": "5", "decode_workers": "4",
           "max_pixels": "2000", "weights": "/env/w.pt"}
    for field, value in env.items():
        monkeypatch.setenv(ENV_NAMES[field], value)
    s = EmbedderSettings.load(yaml)
    assert (s.backend, s.cut, s.threads, s.decode_workers, s.max_pixels, s.weights) == (
        "onnxruntime", "block10", 5, 4, 2000, "/env/w.pt")
    # one layer at a time: a variable set for one setting leaves the others to the yaml
    monkeypatch.delenv("LOOKALIKE_EMBEDDER_THREADS")
    assert EmbedderSettings.load(yaml).threads == 3
    assert EmbedderSettings.load().threads == 0


def test_empty_values_count_as_unset(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_CUT", "")
    assert EmbedderSettings.load({"cut": "block3"}).cut == "block3"
    assert EmbedderSettings.load({"cut": "", "threads": None}).cut == "final"


def test_the_archives_model_comes_from_the_yaml_only(monkeypatch):
    """build_mar.py's facts of the model are not read from the environment."""
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_IMAGE_SIZE", "999")
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_DIM", "3")
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_POOLING", "bogus")
    s = EmbedderSettings.load({"source": "onnx", "image_size": 240, "resize": 274, "mean": [0.485, 0.456, 0.406],
                               "std": "0.2", "draft_margin": 0, "model_version": "v1", "pooling": "none",
                               "dim": 1280})
    assert s.preprocessing == Preprocessing(240, 274, (0.485, 0.456, 0.406), (0.2, 0.2, 0.2), 0)
    assert (s.source, s.model_version, s.pooling, s.dim) == ("onnx", "v1", "none", 1280)
    assert EmbedderSettings.load().dim is None


def test_unknown_yaml_keys_are_ignored():
    assert EmbedderSettings.load({"some_future_key": 1}).backend == "onnxruntime"


@pytest.mark.parametrize("field,value,needle", [
    ("backend", "tensorrt", "unknown backend"),
    ("cut", "block99", "unknown cut"),
    ("threads", "-1", "greater than or equal to 0"),
    ("threads", "two", "valid integer"),
    ("decode_workers", "-2", "greater than or equal to 0"),
    ("max_pixels", "0", "greater than or equal to 1"),
    ("max_pixels", "lots", "valid integer"),
])
def test_a_bad_variable_stops_naming_it(monkeypatch, capsys, field, value, needle):
    monkeypatch.setenv(ENV_NAMES[field], value)
    with pytest.raises(ConfigError) as err:
        EmbedderSettings.load({field: "ignored: the variable wins"} if field != "cut" else {})
    message = str(err.value)
    assert f"{ENV_NAMES[field]} / handler.{field}: " in message and needle in message and repr(value) in message
    assert ENV_NAMES[field] in capsys.readouterr().err  # printed too: TorchServe's model log shows it


@pytest.mark.parametrize("config,name,needle", [
    ({"backend": "tensorrt"}, "LOOKALIKE_EMBEDDER_BACKEND / handler.backend", "unknown backend"),
    ({"threads": 1.5}, "LOOKALIKE_EMBEDDER_THREADS / handler.threads", "integer"),
    ({"cut": "layer4"}, "LOOKALIKE_EMBEDDER_CUT / handler.cut", "unknown cut"),
    ({"image_size": 0}, "handler.image_size (model-config.yaml)", "greater than or equal to 1"),
    ({"image_size": 300, "resize": 256}, "handler.resize (model-config.yaml)", "handler.image_size (300)"),
    ({"mean": [0.5, 0.5]}, "handler.mean (model-config.yaml)", "needs 3 values"),
    ({"std": [0.5, 0, 0.5]}, "handler.std (model-config.yaml)", "> 0"),
    ({"std": "a,b,c"}, "handler.std (model-config.yaml)", "could not convert"),
    ({"draft_margin": -1}, "handler.draft_margin (model-config.yaml)", "greater than or equal to 0"),
    ({"pooling": "max"}, "handler.pooling (model-config.yaml)", "unknown pooling"),
    ({"dim": 0}, "handler.dim (model-config.yaml)", "greater than or equal to 1"),
    ({"source": "torchscript"}, "handler.source (model-config.yaml)", "the only source is 'onnx'"),
])
def test_a_bad_yaml_value_stops_naming_it(config, name, needle):
    with pytest.raises(ConfigError) as err:
        EmbedderSettings.load(config)
    assert f"{name}: " in str(err.value) and needle in str(err.value)


def test_every_bad_setting_is_named_at_once(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_THREADS", "-1")
    with pytest.raises(ConfigError) as err:
        EmbedderSettings.load({"pooling": "max", "backend": "tpu"})
    for name in ("LOOKALIKE_EMBEDDER_THREADS", "handler.pooling", "LOOKALIKE_EMBEDDER_BACKEND"):
        assert name in str(err.value)


def test_a_declared_dim_is_checked_against_the_model():
    EmbedderSettings.load({"dim": 1280}).check_dim(1280)
    EmbedderSettings.load().check_dim(7)  # nothing declared: nothing to check
    with pytest.raises(ConfigError, match=r"handler.dim \(model-config.yaml\): is 1280 but the model gives 112-d"):
        EmbedderSettings.load({"dim": 1280}).check_dim(112)
