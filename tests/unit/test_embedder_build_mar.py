"""services/embedder/build_mar.py: archive contents, idempotence, overrides."""
from __future__ import annotations

import json
import zipfile

import pytest
import yaml

from lookalike.torchserve import build_embedder_mar


def test_build_contents_and_idempotence(tmp_path):
    store = tmp_path / "store"
    mar = build_embedder_mar(store)
    assert mar == store / "lookalike-lite0.mar"
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert names == {"handler.py", "model.py", "model-config.yaml", "MAR-INF/MANIFEST.json"}
    assert manifest["model"]["modelName"] == "lookalike-lite0"
    assert manifest["model"]["handler"] == "handler.py"
    assert manifest["model"]["configFile"] == "model-config.yaml"
    assert "serializedFile" not in manifest["model"]  # no weights in the archive
    assert config["batchSize"] == 16 and config["maxBatchDelay"] == 1
    assert config["minWorkers"] == config["maxWorkers"] == 1
    assert config["handler"]["cut"] == "final"
    assert mar.stat().st_size < 100_000

    mtime = mar.stat().st_mtime_ns
    assert build_embedder_mar(store) == mar
    assert mar.stat().st_mtime_ns == mtime  # up to date: not rebuilt
    assert [p.name for p in store.iterdir() if p.name.startswith("lk-mar-")] == []  # no temp leftovers


def test_overrides_rebuild(tmp_path):
    store = tmp_path / "store"
    build_embedder_mar(store)
    mar = build_embedder_mar(store, cut="block10", batch_size=8, max_batch_delay=5)
    with zipfile.ZipFile(mar) as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert config["handler"]["cut"] == "block10"
    assert config["batchSize"] == 8 and config["maxBatchDelay"] == 5
    with pytest.raises(ValueError):
        build_embedder_mar(store, cut="block99")
