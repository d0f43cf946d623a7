"""lookalike_embedder.runtime: pooling + L2, device selection, the ONNX runner's thread settings."""
from __future__ import annotations

import numpy as np
import pytest

from lookalike_embedder import runtime


def test_pooling_by_rank_and_normalisation():
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    pooled = runtime.pool_and_normalize(fmap)  # auto: mean over H, W
    expected = fmap.mean(axis=(2, 3))
    np.testing.assert_allclose(pooled, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-5)
    tokens = rng.normal(size=(2, 5, 6)).astype(np.float32)
    cls = runtime.pool_and_normalize(tokens)  # auto: token 0
    np.testing.assert_allclose(cls, tokens[:, 0] / np.linalg.norm(tokens[:, 0], axis=1, keepdims=True), rtol=1e-5)
    flat = runtime.pool_and_normalize(np.zeros((1, 3), np.float32))  # a zero row stays zero, no NaN
    assert np.isfinite(flat).all() and not flat.any()
    with pytest.raises(ValueError, match="pool"):
        runtime.pool_and_normalize(tokens, "mean")


def test_device_selection_without_a_gpu(monkeypatch):
    assert runtime.select_device(None, "onnxruntime") == ("onnxruntime", "cpu")
    assert runtime.select_device("-1", "torch") == ("torch", "cpu")
    monkeypatch.setattr(runtime, "cuda_providers", lambda: True)
    assert runtime.select_device(1, "onnxruntime") == ("onnxruntime", "cuda:1")  # ORT's CUDA provider
    monkeypatch.setattr(runtime, "cuda_providers", lambda: False)
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.select_device(0, "onnxruntime") == ("torch", "cuda:0")  # eager CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.select_device(0, "onnxruntime") == ("onnxruntime", "cpu")


def test_onnx_runner_threads_and_single_input():
    import io

    import torch
    from torch import nn

    buf = io.BytesIO()
    torch.onnx.export(nn.Conv2d(3, 4, 2).eval(), torch.zeros(1, 3, 8, 8), buf, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    run = runtime.OnnxRunner(buf.getvalue(), threads=1)
    assert run.threads == 1 and run.device == "cpu" and run.input_name == "x"
    out = run(np.ones((3, 3, 8, 8), np.float32))
    assert out.shape == (3, 4) and run.dim == 4
    with pytest.raises(ValueError, match="pooling"):
        runtime.OnnxRunner(buf.getvalue(), pooling="max")


def test_usable_cpus_is_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert runtime.usable_cpus() == 2  # not os.cpu_count(): a container or taskset may allow fewer
