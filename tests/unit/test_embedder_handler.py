"""The TorchServe handler without a server: fake context, real model, real and synthetic images."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.settings import ConfigError
from lookalike.vectors import unpack
from lookalike_embedder import handler as handler_module
from lookalike_embedder import model as lk
from lookalike_embedder.contract import BATCH_LOG_PATTERN, BATCH_SIZE_METRIC, ERROR_PREFIX
from lookalike_embedder.handler import EmbedderHandler
from tests.conftest import CLOTHING

CLOTHING_TEST = CLOTHING / "test"


class FakeContext:
    """What the handler uses of ts.context.Context."""

    def __init__(self, gpu_id=None, model_yaml_config=None):
        self.system_properties = {"model_dir": "/nonexistent", "gpu_id": gpu_id, "batch_size": 16}
        self.model_yaml_config = model_yaml_config or {}
        self.manifest = {"model": {"modelName": lk.MODEL_NAME, "handler": "handler.py"}}
        self.metrics = None
        self.status: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def synthetic_jpeg(seed: int, size=(320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)
    return encode(img)


@pytest.fixture(scope="module")
def handler():
    mp = pytest.MonkeyPatch()
    mp.setenv("LOOKALIKE_EMBEDDER_THREADS", "1")
    mp.delenv("LOOKALIKE_EMBEDDER_CUT", raising=False)
    h = EmbedderHandler()
    h.initialize(FakeContext(gpu_id=None))
    yield h
    mp.undo()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """Two real photos when the dataset is present, plus synthetic ones (always)."""
    real = []
    if CLOTHING_TEST.is_dir():
        real = [p.read_bytes() for p in sorted(CLOTHING_TEST.glob("*/*.jpg"))[:2]]
    return real + [synthetic_jpeg(1), synthetic_jpeg(2, (200, 300)), encode(Image.new("L", (64, 64), 90), "PNG")]


def vectors(outputs) -> np.ndarray:
    return np.stack([unpack(o) for o in outputs])


def test_initialize_without_a_gpu_runs_the_default_model_on_onnxruntime_cpu(handler):
    assert handler.initialized
    assert handler.device == "cpu" and handler.backend == "onnxruntime" and handler.threads == 1
    assert handler.cut == "final" and handler.dim == 1280
    assert handler.model_version == lk.MODEL_VERSION


def test_batch_shape_norm_and_equality_with_feature_extractor(handler, images):
    out = handler.handle([{"data": data} for data in images], FakeContext())
    assert len(out) == len(images)
    assert all(isinstance(o, bytes) and len(o) == 4 * 1280 for o in out)
    got = vectors(out)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the offline eager path (same decoder, same preprocessing, PyTorch): the same vectors
    from lookalike.images import decode_image
    eager = lk.FeatureExtractor("cpu").embed_images([decode_image(d) for d in images])
    assert (eager * got).sum(axis=1).min() >= 0.99999


def test_deterministic_and_batch_independent(handler, images):
    batch = vectors(handler.handle([{"data": d} for d in images], FakeContext()))
    again = vectors(handler.handle([{"data": d} for d in images], FakeContext()))
    np.testing.assert_array_equal(batch, again)
    alone = vectors(handler.handle([{"data": images[-2]}], FakeContext()))
    np.testing.assert_allclose(alone[0], batch[-2], atol=1e-5)


def test_input_shapes(handler, images):
    """gRPC gives bytes under the input name; HTTP gives bytearray under 'body' (or a form field name)."""
    out = handler.handle([{"data": images[0]}, {"body": bytearray(images[0])},
                          {"upload": images[0], "request_id": b"r-1"}], FakeContext())
    np.testing.assert_array_equal(unpack(out[0]), unpack(out[1]))
    np.testing.assert_array_equal(unpack(out[0]), unpack(out[2]))


def test_bad_items_do_not_fail_the_batch(handler, images):
    good = images[0]
    truncated = good[: len(good) // 2]
    batch = [{"data": b"not an image"}, {"data": good}, {"data": truncated}, {"data": b""}, {"a": b"x", "b": b"y"},
             {"data": encode(Image.new("RGB", (8000, 6000)), "PNG")}, {"data": good}]
    context = FakeContext()
    out = handler.handle(batch, context)
    assert len(out) == len(batch)
    reasons = {}
    for i, item in enumerate(out):
        if item.startswith(ERROR_PREFIX):
            error = json.loads(item)["error"]
            assert error["code"] == "INVALID_ARGUMENT" and error["message"]
            reasons[i] = error["reason"]
            assert context.status[i][0] == 400
            assert context.content_types[i] == "application/json"
    assert reasons == {0: "not_an_image", 2: "truncated", 3: "empty", 4: "missing_input", 5: "too_many_pixels"}
    np.testing.assert_array_equal(unpack(out[1]), unpack(out[6]))
    assert context.content_types[1] == "application/octet-stream" and 1 not in context.status
    expected = vectors(handler.handle([{"data": good}], FakeContext()))[0]
    np.testing.assert_allclose(unpack(out[1]), expected, atol=1e-5)


def test_parallel_decoding_gives_the_serial_batch_in_order(handler, images):
    """preprocess decodes on decode_workers threads; order, tensors and per-item errors are those of the
    one-by-one path."""
    batch = [{"data": d} for d in images] + [{"data": b"not an image"}, {"data": images[0][:200]}]
    saved = handler.decode_workers
    try:
        handler.decode_workers = 1
        serial = handler.preprocess(batch)
        handler.decode_workers = 4
        parallel = handler.preprocess(batch)
        assert handler._pool is not None and handler._pool._max_workers >= 2
    finally:
        handler.decode_workers = saved
    assert parallel["index"] == serial["index"] == list(range(len(images)))
    assert parallel["errors"] == serial["errors"] and parallel["n"] == serial["n"] == len(batch)
    assert np.array_equal(parallel["batch"], serial["batch"])


def test_all_bad_batch(handler):
    out = handler.handle([{"data": b"x"}, {"data": b"y"}], FakeContext())
    assert all(o.startswith(ERROR_PREFIX) for o in out)


def test_cut_from_env_and_yaml(monkeypatch):
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_THREADS", "1")
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_CUT", "block10")
    h = EmbedderHandler()
    h.initialize(FakeContext(model_yaml_config={"handler": {"cut": "block14"}}))
    assert h.cut == "block10" and h.dim == 112  # env wins
    out = h.handle([{"data": synthetic_jpeg(3)}], FakeContext())
    assert len(out[0]) == 4 * 112
    monkeypatch.delenv("LOOKALIKE_EMBEDDER_CUT")
    h = EmbedderHandler()
    h.initialize(FakeContext(model_yaml_config={"handler": {"cut": "block14", "max_pixels": 1000}}))
    assert h.cut == "block14" and h.dim == 192 and h.max_pixels == 1000
    out = h.handle([{"data": synthetic_jpeg(3)}], FakeContext())  # 320x240 > 1000 pixels
    assert json.loads(out[0])["error"]["reason"] == "too_many_pixels"


def test_torch_backend_gives_the_onnx_vectors(monkeypatch, handler, images):
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_THREADS", "1")
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_BACKEND", "torch")
    h = EmbedderHandler()
    h.initialize(FakeContext())
    assert h.backend == "torch" and h.model_version == handler.model_version  # same vectors: same model id
    eager = vectors(h.handle([{"data": d} for d in images], FakeContext()))
    served = vectors(handler.handle([{"data": d} for d in images], FakeContext()))
    assert (eager * served).sum(axis=1).min() >= 0.99999
    monkeypatch.setenv("LOOKALIKE_EMBEDDER_BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="LOOKALIKE_EMBEDDER_BACKEND / handler.backend"):
        EmbedderHandler().initialize(FakeContext())


def test_module_defines_exactly_one_class():
    """TorchServe instantiates the only class defined in the handler module."""
    import inspect
    classes = [c for _, c in inspect.getmembers(handler_module, inspect.isclass)
               if c.__module__ == handler_module.__name__]
    assert classes == [EmbedderHandler]


# ---- metrics: the batch-size histogram -----------------------------------------------------------------

EMBEDDER_DIR = Path(handler_module.__file__).resolve().parents[1]
#: How TorchServe 0.12's frontend parses a worker's metric line (org.pytorch.serve.metrics.Metric, from its jar).
FRONTEND_METRIC_LINE = re.compile(r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?"
                                  r"\|#hostname:([^,]+),([^,]+)(,(.*))?")


class RecordingMetrics:
    """The part of TorchServe's metrics cache the handler uses, recording calls (or failing them all)."""

    def __init__(self, declared: bool = True, broken: bool = False):
        self.declared, self.broken = declared, broken
        self.observed: list[tuple[str, str, list, float]] = []
        self.added: list[tuple] = []
        self.times: list[str] = []

    def _metric(self, name, metric_type):
        outer = self

        class _Metric:
            def add_or_update(self, value, dimension_values=(), request_id=""):
                outer.observed.append((name, metric_type.name, list(dimension_values), value))
        return _Metric()

    def get_metric(self, name, metric_type):
        if self.broken:
            raise RuntimeError("metrics cache broken")
        if not self.declared:
            raise KeyError(name)
        return self._metric(name, metric_type)

    def add_metric_to_cache(self, name, unit, dimension_names, metric_type):
        self.added.append((name, unit, tuple(dimension_names), metric_type.name))
        return self._metric(name, metric_type)

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None):
        if self.broken:
            raise RuntimeError("metrics cache broken")
        self.times.append(name)


def metrics_context(metrics) -> FakeContext:
    context = FakeContext()
    context.metrics = metrics
    return context


def test_every_batch_records_its_size(handler, images):
    metrics = RecordingMetrics()
    batch = [{"data": images[0]}, {"data": b"not an image"}, {"data": images[1]}]
    out = handler.handle(batch, metrics_context(metrics))
    assert len(out) == 3 and out[1].startswith(ERROR_PREFIX)
    # one observation per batch: every request TorchServe handed over, the rejected one included
    assert metrics.observed == [("lookalike_embedder_batch_size", "HISTOGRAM", ["lookalike-lite0", "Model"], 3)]
    assert metrics.added == [] and metrics.times == ["HandlerTime"]
    handler.handle([{"data": images[0]}], metrics_context(metrics))
    assert [o[3] for o in metrics.observed] == [3, 1]


def test_batch_size_metric_is_declared_when_the_config_lacks_it(handler, images):
    metrics = RecordingMetrics(declared=False)
    handler.handle([{"data": images[0]}, {"data": images[1]}], metrics_context(metrics))
    assert metrics.added == [("lookalike_embedder_batch_size", "count", ("ModelName", "Level"), "HISTOGRAM")]
    assert [o[3] for o in metrics.observed] == [2]


def test_a_broken_metrics_cache_never_fails_the_batch(handler, images):
    out = handler.handle([{"data": images[0]}, {"data": b"x"}], metrics_context(RecordingMetrics(broken=True)))
    assert len(out[0]) == 4 * 1280 and out[1].startswith(ERROR_PREFIX)


def test_shipped_metrics_yaml_declares_the_histogram_the_handler_emits(handler, images, caplog):
    """The real TorchServe metrics cache, loaded from services/embedder/metrics.yaml like the worker does:
    the line the handler makes it print is one TorchServe's frontend parses into the declared histogram."""
    pytest.importorskip("ts")
    import yaml
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    config = EMBEDDER_DIR / "metrics.yaml"
    declared = yaml.safe_load(config.read_text())["model_metrics"]["histogram"]
    spec = next(m for m in declared if m["name"] == BATCH_SIZE_METRIC)
    assert spec["dimensions"] == list(handler_module.BATCH_SIZE_DIMENSIONS)
    cache = MetricsCacheYamlImpl(config_file_path=str(config))
    cache.initialize_cache()
    cache.model_name = "lookalike-lite0"
    cache.request_ids = {0: "req-a", 1: "req-b"}
    with caplog.at_level("INFO", logger="ts.metrics.caching_metric"):
        handler.handle([{"data": images[0]}, {"data": images[1]}], metrics_context(cache))
    lines = [r.getMessage() for r in caplog.records if "[METRICS]lookalike_embedder_batch_size" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    match = FRONTEND_METRIC_LINE.fullmatch(lines[0].split("[METRICS]", 1)[1])
    assert match, lines[0]
    name, unit, value, dims, _, kind = match.groups()[:6]
    assert (name, unit, float(value), kind) == ("lookalike_embedder_batch_size", "Count", 2.0, "HISTOGRAM")
    assert dims == "ModelName:lookalike-lite0,Level:Model"
    config_props = (EMBEDDER_DIR / "config.properties").read_text()
    assert "metrics_config=/home/model-server/metrics.yaml" in config_props  # the Dockerfile copies it there
    assert "COPY --chown=root:root services/embedder/metrics.yaml /home/model-server/metrics.yaml" in \
        (EMBEDDER_DIR / "Dockerfile").read_text()


def photo(size=(300, 200), seed=3) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)


def test_handler_takes_the_box_as_an_input(handler):
    data = encode(photo(), "PNG")
    out = handler.handle([{"data": data, "crop": b"0.5,0.25,0.5,0.5"}, {"data": data},
                          {"data": data, "crop": b"0,0,0,1"}, {"data": data, "crop": b"0.6,0,0.5,1"}],
                         FakeContext())
    expected = handler.handle([{"data": encode(photo().crop((150, 50, 300, 150)), "PNG")}], FakeContext())[0]
    np.testing.assert_allclose(unpack(out[0]), unpack(expected), atol=1e-5)
    assert not np.allclose(unpack(out[0]), unpack(out[1]), atol=1e-3)
    for bad in out[2:]:
        assert bad.startswith(ERROR_PREFIX)
        assert json.loads(bad)["error"]["reason"] == "invalid_crop"


def test_every_batch_logs_the_line_the_launcher_counts(handler, images, caplog):
    """lookalike's TorchServe launcher counts inferences from this line (contract.BATCH_LOG_PATTERN)."""
    with caplog.at_level("INFO", logger=handler_module.__name__):
        handler.handle([{"data": images[0]}, {"data": b"x"}, {"data": images[1]}], FakeContext())
    assert [int(m.group(1)) for m in map(BATCH_LOG_PATTERN.search, caplog.messages) if m] == [2]
