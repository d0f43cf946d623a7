"""Inference backends of the embedder: ONNX Runtime (default) and eager PyTorch, one small protocol.

    runner = OnnxRunner(onnx_bytes_or_path, threads=2)          # or TorchRunner(lite_embedder)
    vectors = runner(batch)      # float32 [n, 3, H, W] -> float32 [n, dim], rows L2-normalised

Every runner pools the model's output the declared way (`pooling`: "mean" over the spatial axes of
an [n, C, H, W] map, "cls" = token 0 of an [n, T, D] sequence, "none" for an [n, D] output; "auto"
picks by the output's rank) and L2-normalises it, so a bring-your-own ONNX model needs no code.

Device: `select_device` -- ONNX Runtime's CUDA execution provider when a GPU was assigned and the
installed onnxruntime has it (the onnxruntime-gpu wheel), else eager CUDA if torch sees the GPU,
else the CPU with ONNX Runtime.
"""
from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

POOLINGS = ("auto", "mean", "cls", "none")
#: The backends (the handler's handler.backend / $LOOKALIKE_EMBEDDER_BACKEND, FeatureExtractor's backend=);
#: the served default first.
BACKENDS = ("onnxruntime", "torch")
DEFAULT_BACKEND = BACKENDS[0]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Runner(Protocol):
    dim: int
    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def pool_and_normalize(out: np.ndarray, pooling: str = "auto") -> np.ndarray:
    """Model output -> float32 [n, dim] with L2 norm 1 per row (zero rows stay zero)."""
    out = np.asarray(out, dtype=np.float32)
    if pooling == "auto":
        pooling = {2: "none", 3: "cls", 4: "mean"}.get(out.ndim, "")
    if pooling == "mean" and out.ndim == 4:
        out = out.mean(axis=(2, 3))
    elif pooling == "cls" and out.ndim == 3:
        out = out[:, 0, :]
    elif not (pooling == "none" and out.ndim == 2):
        raise ValueError(f"cannot pool a model output of shape {out.shape} with pooling {pooling!r}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


def cuda_providers() -> bool:
    """True when the installed onnxruntime can run on CUDA (onnxruntime-gpu)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def select_device(gpu_id, backend: str) -> tuple[str, str]:
    """(backend, device) for TorchServe's gpu_id (None / -1: none assigned) and the configured backend:
    the ORT CUDA provider when possible, else eager CUDA when torch sees the GPU, else CPU."""
    if gpu_id is None or str(gpu_id) in ("", "-1"):
        return backend, "cpu"
    device = f"cuda:{int(gpu_id)}"
    if backend == "onnxruntime" and cuda_providers():
        return backend, device
    try:
        import torch
        if torch.cuda.is_available():
            return "torch", device
    except ImportError:
        pass
    return backend, "cpu"


class OnnxRunner:
    """An ONNX Runtime session over an image-embedding model (one float input [n, 3, H, W])."""

    def __init__(self, model: bytes | str | os.PathLike, *, threads: int = 1, device: str = "cpu",
                 pooling: str = "auto", spinning: bool = False):
        import onnxruntime as ort

        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads must not spin: beside the JVM and the other services they would steal
        # the cores the next batch's decoding needs (and collapse throughput on shared CPUs).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else bytes(model)
        self.session = ort.InferenceSession(source, options, providers=providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"the ONNX model must have one input (an image batch); it has {len(inputs)}")
        self.input_name = inputs[0].name
        self.pooling = pooling
        self.device = device if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.threads = options.intra_op_num_threads
        self.dim = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        out = pool_and_normalize(self.session.run(None, {self.input_name: batch})[0], self.pooling)
        self.dim = out.shape[1]
        return out


class TorchRunner:
    """Eager PyTorch (`lookalike_embedder.model.LiteEmbedder`): the reference, and eager CUDA."""

    def __init__(self, model, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = device
        self.model = model.to(torch.device(device))
        self.dim = int(getattr(model, "dim", 0))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            out = self.model(x.to(self.device, non_blocking=True))
        return pool_and_normalize(out.float().cpu().numpy(), "none")


__all__ = ["POOLINGS", "Runner", "pool_and_normalize", "cuda_providers", "select_device", "OnnxRunner",
           "TorchRunner"]
