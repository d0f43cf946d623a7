"""The embedder's wire contract and archive layout: the facts its clients and its archive builder share
with the handler (a leaf: imports nothing of the project, nor torch). The contract itself is described in
lookalike_embedder.handler's docstring."""
from __future__ import annotations

import json
import re

#: Every per-item error payload starts with these bytes (read as a float32 they are ~4.5e30: never a
#: component of a unit vector).
ERROR_PREFIX = b'{"error"'
ERROR_CONTENT_TYPE = "application/json"
VECTOR_CONTENT_TYPE = "application/octet-stream"
#: Input keys looked up, in order, for the image bytes of one request.
INPUT_KEYS = ("data", "body", "image", "file")
EXTRA_KEYS = ("request_id", "crop")  # inputs beside the image
#: Tag of the per-batch log line ("lookalike-embedded-batch n_ok=3 n_rejected=1 ms=250.0"), and the pattern
#: that reads its n_ok (images embedded) back from TorchServe's logs.
BATCH_LOG_TAG = "lookalike-embedded-batch"
BATCH_LOG_PATTERN = re.compile(BATCH_LOG_TAG + r" n_ok=(\d+)")
#: The handler's histogram of requests per batch (declared in services/embedder/metrics.yaml, model_metrics;
#: served on TorchServe's loopback metrics API, which the gateway re-exports).
BATCH_SIZE_METRIC = "lookalike_embedder_batch_size"
#: File name of the ONNX graph inside the archive (build_mar.py's --serialized-file).
ONNX_FILE = "model.onnx"
#: An optional EfficientNet-Lite0 state dict inside the archive (build_mar.py --serialized-file).
WEIGHTS_FILE = "weights.pt"


def error_payload(reason: str, message: str, code: str = "INVALID_ARGUMENT") -> bytes:
    """The per-item error document (see lookalike_embedder.handler)."""
    return json.dumps({"error": {"code": code, "reason": reason, "message": message}},
                      separators=(",", ":")).encode("utf-8")
