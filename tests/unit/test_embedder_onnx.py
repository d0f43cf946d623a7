"""FeatureExtractor(backend="onnxruntime"): the served backend gives the eager vectors (onnxruntime is a core
dependency: no skip when it is missing, the test fails)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike_embedder import model as lk


def test_onnxruntime_backend_matches_eager():
    torch.set_num_threads(1)
    eager = lk.FeatureExtractor("cpu")
    fast = lk.FeatureExtractor("cpu", backend="onnxruntime", num_threads=1)
    batch = torch.rand((3, 3, 224, 224), generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b = eager.embed_batch(batch), fast.embed_batch(batch)
    assert b.shape == (3, lk.FINAL_DIM) and b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.9999
    assert fast.embed_batch(batch[:1]).shape == (1, lk.FINAL_DIM)  # dynamic batch size
    assert fast.embed_batch(torch.zeros((0, 3, 224, 224))).shape == (0, lk.FINAL_DIM)


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="backend"):
        lk.FeatureExtractor("cpu", backend="tensorrt")
