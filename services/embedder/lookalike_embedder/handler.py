"""TorchServe handler for the Lookalike embedder (model name "lookalike-lite0").

WIRE CONTRACT (what a client sees)
==================================

Request: one image per request. gRPC ``Predictions(PredictionsRequest{model_name="lookalike-lite0",
input={"data": <image bytes>}})``; over HTTP ``POST /predictions/lookalike-lite0`` with the raw image
as body and ``Content-Type: application/octet-stream`` (or image/*; TorchServe tries to parse a body
sent as application/x-www-form-urlencoded -- curl's and urllib's default for POST data -- as a form
and fails with 500 "Bad string"), or as the single field of a multipart form.
Accepted images: see `lookalike.images.decode_image` (JPEG/PNG/WEBP/GIF/BMP, <= 40 MP by
default). An optional input ``"request_id"`` (utf-8 bytes) is echoed in the worker log lines for
that item (TorchServe does not pass gRPC metadata to handlers). An optional input ``"crop"`` (ascii
``x,y,width,height``, fractions of the photo after EXIF orientation: `lookalike.crop`) embeds only that
region, cut from the one decode before resizing; a malformed box is a 400 with reason "invalid_crop".

TorchServe batches concurrent requests (batchSize / maxBatchDelay in model-config.yaml) into one
call of `handle`; every item gets its own answer, and a bad image never fails the other items.

Success: ``prediction`` = the embedding as raw little-endian float32 bytes (`lookalike.vectors.pack`),
``4 * dim`` bytes (5120 for the default cut "final"), L2 norm 1. HTTP: 200,
``Content-Type: application/octet-stream``.

Bad image: TorchServe 0.12 cannot fail one item of a batch over gRPC (a per-item status code is
dropped by its gRPC frontend; a handler exception fails the whole batch). So the item's
``prediction`` is a JSON document, gRPC status OK::

    {"error": {"code": "INVALID_ARGUMENT", "reason": "not_an_image", "message": "..."}}

``reason`` is one of `lookalike.images.REASONS` (plus "missing_input"). It can never be mistaken for
a vector: it starts with ``{"error"`` (`lookalike_embedder.contract.ERROR_PREFIX`), whose first 4 bytes
read as a float32 of about 4.5e30, impossible in a unit vector, and clients also check the length. Over
HTTP the same body comes with status 400 and ``Content-Type: application/json``.
`lookalike.embedder_client.EmbedderClient` turns it into `EmbedderImageError` (a ValueError).

Whole-batch failures (model crash, out of memory) are TorchServe errors: gRPC INTERNAL /
UNAVAILABLE etc. -- transport-level, not the image's fault.

CONFIGURATION
=============
`lookalike_embedder.settings.EmbedderSettings` (one class, env prefix LOOKALIKE_EMBEDDER_): each setting
from its environment variable, then ``handler.<key>`` in model-config.yaml, then the default; an invalid
value stops the worker naming the variable and the key. Server settings: backend (onnxruntime | torch),
cut, threads, decode_workers, max_pixels, weights; the archive's model (yaml only): image_size / resize /
mean / std / draft_margin (`lookalike_embedder.preprocessing.Preprocessing`), model_version, pooling, dim,
source. The list with defaults is that class; docs/configuration.md has the table.
device:     when TorchServe assigned a GPU: ONNX Runtime's CUDA provider if installed
            (onnxruntime-gpu), else eager PyTorch on CUDA; else the CPU
            (`lookalike_embedder.runtime.select_device`).

METRICS
=======
Every batch records its size (requests TorchServe handed over, rejected images included) in the
histogram ``lookalike_embedder_batch_size`` (dimensions ModelName, Level="Model"), through
``context.metrics`` (TorchServe's metrics cache). It is declared in services/embedder/metrics.yaml,
which config.properties names as ``metrics_config``: in metrics_mode=prometheus the frontend serves it
on the loopback metrics API (``lookalike_embedder_batch_size_bucket/_sum/_count``). Plus
``HandlerTime`` (gauge, ms) as before. A metrics failure never fails the batch.

This module must define exactly one class: TorchServe instantiates the only class of the handler
module.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lookalike.crop import parse_crop
from lookalike.images import DEFAULT_MAX_PIXELS, ImageRejected
from lookalike.vectors import pack
from lookalike_embedder import model as lk_model
from lookalike_embedder.contract import (BATCH_LOG_TAG, BATCH_SIZE_METRIC, ERROR_CONTENT_TYPE, EXTRA_KEYS,
                                         INPUT_KEYS, VECTOR_CONTENT_TYPE, WEIGHTS_FILE, error_payload)
from lookalike_embedder.preprocessing import Preprocessing, prepare
from lookalike_embedder.runtime import DEFAULT_BACKEND, OnnxRunner, TorchRunner, select_device, usable_cpus
from lookalike_embedder.settings import YAML_SECTION, EmbedderSettings

try:  # TorchServe present (inside the server): inherit its handler base for the standard shape.
    from ts.torch_handler.base_handler import BaseHandler
except ImportError:  # unit tests / tools without TorchServe
    BaseHandler = object
try:
    from ts.metrics.metric_type_enum import MetricTypes
except ImportError:  # without TorchServe there is no metrics cache to record into
    MetricTypes = None

logger = logging.getLogger(__name__)

#: BATCH_SIZE_METRIC's unit when the handler declares it itself (metrics.yaml lacks it).
BATCH_SIZE_UNIT = "count"
#: Its dimensions, in the order of metrics.yaml (values: the model name, "Model").
BATCH_SIZE_DIMENSIONS = ("ModelName", "Level")


class EmbedderHandler(BaseHandler):
    """initialize / preprocess / inference / postprocess, plus `handle` (TorchServe's entry point)."""

    def __init__(self):
        if BaseHandler is not object:
            super().__init__()
        self.initialized = False
        self.context = None
        self.runner = None
        self.backend = DEFAULT_BACKEND
        self.device = "cpu"
        self.threads = 1
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.spec = Preprocessing()
        self.cut = lk_model.DEFAULT_CUT
        self.dim = lk_model.FINAL_DIM
        self.model_version = lk_model.MODEL_VERSION
        self.decode_workers = 1
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle
    def initialize(self, context):
        started = time.perf_counter()
        self.context = context
        props = getattr(context, "system_properties", None) or {}
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        config = yaml_config.get(YAML_SECTION) or {}
        settings = EmbedderSettings.load(config)  # raises ConfigError naming a bad setting

        self.backend, self.device = select_device(props.get("gpu_id"), settings.backend)
        workers = max(1, int(yaml_config.get("minWorkers") or 1))
        self.threads = settings.threads or max(1, usable_cpus() // workers)
        self.cut = settings.cut
        self.max_pixels = settings.max_pixels
        self.decode_workers = settings.decode_workers or usable_cpus()
        self.spec = settings.preprocessing
        self.runner, self.model_version = self._load_runner(props, context, settings, config)
        # Warm-up: the first runs (at each batch shape) are several times slower than the next ones.
        size = self.spec.image_size
        for n in sorted({1, int(props.get("batch_size") or 1)}):
            self.dim = self.runner(np.zeros((n, 3, size, size), np.float32)).shape[1]
        settings.check_dim(self.dim)
        self.initialized = True
        logger.info("lookalike embedder ready: %s dim=%d backend=%s device=%s threads=%d decode_workers=%d "
                    "max_pixels=%d (%.1fs)", self.model_version, self.dim, self.backend, self.device,
                    self.threads, self.decode_workers, self.max_pixels, time.perf_counter() - started)

    def _load_runner(self, props: dict, context, settings: EmbedderSettings, config: dict):
        """(runner, model_version): the archive's ONNX graph when it fits the settings, else the eager model
        (exported to ONNX in memory for backend onnxruntime). `config`: model-config.yaml's ``handler:``
        as built, whose ``cut`` is the archive's (the settings' cut may come from the environment)."""
        model_dir = props.get("model_dir")
        serialized = ((getattr(context, "manifest", None) or {}).get("model") or {}).get("serializedFile")
        packed = os.path.join(model_dir, serialized) if model_dir and serialized else None
        packed = packed if packed and os.path.isfile(packed) else None
        onnx_file = packed if packed and packed.endswith(".onnx") else None
        byo = settings.source == "onnx"  # a bring-your-own ONNX model: no eager twin
        if byo and onnx_file is None:
            raise ValueError("handler.source is 'onnx' but the archive holds no .onnx model")
        if onnx_file and self.backend == "onnxruntime" and (
                byo or lk_model.normalize_cut(config.get("cut")) == self.cut):
            version = settings.model_version or lk_model.model_version(self.cut)
            return OnnxRunner(onnx_file, threads=self.threads, device=self.device,
                              pooling=settings.pooling), version
        if byo:
            raise ValueError("a bring-your-own ONNX model runs with backend onnxruntime only")
        weights = settings.weights
        if weights is None and model_dir and os.path.isfile(os.path.join(model_dir, WEIGHTS_FILE)):
            weights = os.path.join(model_dir, WEIGHTS_FILE)  # build_mar.py --serialized-file
        elif weights is None and packed and not packed.endswith(".onnx"):
            weights = packed  # an archive built before the ONNX default: the state dict was the serialized file
        model = lk_model.load_model("cpu", self.cut, weights)
        if self.backend == "onnxruntime":
            return OnnxRunner(lk_model.export_onnx(model), threads=self.threads, device=self.device), \
                model.model_version
        if self.device == "cpu":
            import torch
            torch.set_num_threads(self.threads)
        return TorchRunner(model, self.device), model.model_version

    # ------------------------------------------------------------------ steps
    def preprocess(self, data):
        """TorchServe batch (list of dicts) -> {"batch": float32 array [k,3,S,S] | None,
        "index": positions of the k good items, "errors": per item None or error bytes, "n": len}.
        Items are decoded and resized on `decode_workers` threads (PIL and torch release the GIL): done
        one after the other, they left all but one core idle between forward passes."""
        rows = list(data or [])
        prepare = self._prepare_item
        pool = self._decode_pool()
        prepared = list(pool.map(prepare, rows)) if pool is not None and len(rows) > 1 else [
            prepare(row) for row in rows]
        tensors, index, errors, request_ids = [], [], [], []
        for i, (request_id, tensor, error) in enumerate(prepared):
            request_ids.append(request_id)
            errors.append(error)
            if tensor is not None:
                tensors.append(tensor)
                index.append(i)
        batch = np.stack(tensors) if tensors else None
        return {"batch": batch, "index": index, "errors": errors, "n": len(errors), "request_ids": request_ids}

    def _decode_pool(self) -> ThreadPoolExecutor | None:
        if self.decode_workers <= 1:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="decode")
        return self._pool

    def _prepare_item(self, row) -> tuple[str | None, np.ndarray | None, bytes | None]:
        """One request item -> (request_id, the preprocessed array or None, None or the error payload)."""
        row = row if isinstance(row, dict) else {"data": row}
        request_id = row.get("request_id")
        if isinstance(request_id, (bytes, bytearray)):
            request_id = bytes(request_id).decode("utf-8", "replace")
        payload = next((row[k] for k in INPUT_KEYS if row.get(k) is not None), None)
        if payload is None:
            # e.g. a multipart form field with another name: accept a single unambiguous value
            others = [v for k, v in row.items() if k not in EXTRA_KEYS and v is not None]
            payload = others[0] if len(others) == 1 else None
        if payload is None:
            return request_id, None, error_payload("missing_input", "the request has no image: send it as input "
                                                   "'data' (gRPC) or as the request body (HTTP)")
        if isinstance(payload, str):
            payload = payload.encode("latin-1", "replace")
        elif not isinstance(payload, (bytes, bytearray, memoryview)):
            return request_id, None, error_payload("not_an_image", "the request input is not binary image data")
        crop = row.get("crop")
        try:  # the gateway checked the box already: a bad one here is a client talking to TorchServe directly
            crop = parse_crop(bytes(crop).decode("ascii", "replace") if isinstance(crop, (bytes, bytearray))
                              else crop)
        except ValueError as exc:
            return request_id, None, error_payload("invalid_crop", str(exc))
        try:
            return request_id, prepare(payload, self.spec, max_pixels=self.max_pixels, crop=crop), None
        except ImageRejected as exc:
            logger.info("rejected image (request_id=%s): %s: %s", request_id, exc.reason, exc.message)
            return request_id, None, error_payload(exc.reason, exc.message)

    def inference(self, data, *args, **kwargs):
        """Runs the model on the good items only; adds "vectors" (float32 [k, dim])."""
        batch = data["batch"]
        if batch is None:
            data["vectors"] = np.zeros((0, self.dim), dtype=np.float32)
        else:
            data["vectors"] = self.runner(batch)
        return data

    def postprocess(self, data):
        """One entry per request: packed vector bytes, or the error document."""
        out = list(data["errors"])
        for row, i in enumerate(data["index"]):
            out[i] = pack(data["vectors"][row])
        context = self.context
        if context is not None and hasattr(context, "set_response_status"):
            for i, item in enumerate(out):
                try:
                    if data["errors"][i] is not None:
                        reason = json.loads(item)["error"]["reason"]
                        context.set_response_status(400, reason, i)
                        context.set_response_content_type(i, ERROR_CONTENT_TYPE)
                    else:
                        context.set_response_content_type(i, VECTOR_CONTENT_TYPE)
                except Exception:  # only cosmetics for the HTTP frontend; never fail the batch here
                    logger.debug("could not set response metadata for item %d", i, exc_info=True)
        return out

    def handle(self, data, context):
        """TorchServe entry point: one call per batch; returns one bytes object per request."""
        started = time.perf_counter()
        self.context = context
        if not self.initialized:
            self.initialize(context)
        prepared = self.inference(self.preprocess(data))
        output = self.postprocess(prepared)
        n_ok = len(prepared["index"])
        if n_ok:
            # One line per batch; lookalike.torchserve_logs.inference_count() sums n_ok.
            logger.info("%s n_ok=%d n_rejected=%d ms=%.1f", BATCH_LOG_TAG, n_ok, prepared["n"] - n_ok,
                        (time.perf_counter() - started) * 1000)
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            self.record_batch_size(metrics, prepared["n"], context)
            try:
                metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
            except Exception:
                pass
        return output

    def record_batch_size(self, metrics, size: int, context=None) -> None:
        """Observes `size` in the BATCH_SIZE_METRIC histogram of TorchServe's metrics cache `metrics`
        (the metric from metrics.yaml; declared here if the config lacks it, which log mode still
        records). Never raises: metrics must not fail a batch."""
        if MetricTypes is None:
            return
        try:
            try:
                metric = metrics.get_metric(BATCH_SIZE_METRIC, MetricTypes.HISTOGRAM)
            except Exception:  # ts.metrics.metric_cache_errors.MetricsCacheKeyError: not in metrics_config
                metric = metrics.add_metric_to_cache(BATCH_SIZE_METRIC, BATCH_SIZE_UNIT,
                                                     list(BATCH_SIZE_DIMENSIONS), MetricTypes.HISTOGRAM)
            manifest_name = (((getattr(context, "manifest", None) or {}).get("model") or {}).get("modelName"))
            model_name = getattr(context, "model_name", None) or manifest_name or lk_model.MODEL_NAME
            metric.add_or_update(int(size), [str(model_name), "Model"])
        except Exception:
            logger.debug("could not record %s", BATCH_SIZE_METRIC, exc_info=True)
