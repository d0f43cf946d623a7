"""Several embedder archives served side by side, and `lookalike reindex --model-version` moving a catalogue to
another one behind the alias: real TorchServe (both archives registered), gateway, search service, Redis.

The second archive is the default model packed under another version name (build_mar.py --model-version;
no download), so the test checks the plumbing (archive naming, TorchServe registering both with the default
first, the gateway embedding with the model of the collection it searches), not another model's quality.
"""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from lookalike.catalogue_reader import scan_folder
from lookalike.ingest import index_items
from lookalike.torchserve_config import build_embedder_mar

pytestmark = pytest.mark.e2e

VERSION = "e2e-v2"


def test_reindex_to_another_archive_served_beside_the_default(tmp_path_factory):
    from lookalike.stack import Stack, StackConfig

    from ..conftest import clothing_split, make_catalogue

    data_dir = tmp_path_factory.mktemp("versions")
    store = data_dir / "torchserve" / "model-store"  # where the stack's TorchServe looks (and builds the default)
    build_embedder_mar(store)
    build_embedder_mar(store, model_version=VERSION)  # reuses the checked export of the first build
    assert sorted(p.name for p in store.glob("*.mar")) == ["lookalike-lite0.e2e-v2.mar", "lookalike-lite0.mar"]
    catalogue = make_catalogue(tmp_path_factory.mktemp("versions-catalogue"), 2)
    config = StackConfig(data_dir=data_dir, http_port=0, grpc_port=0,
                         extra_gateway_env={"LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S": "0.5"})
    with Stack(config) as stack:
        versions = stack.torchserve.management_get("/models/lookalike-lite0/all")
        assert sorted(v["modelVersion"] for v in versions) == ["1.0", VERSION]
        assert stack.torchserve.describe_model()["modelVersion"] == "1.0"  # the default archive stays default
        report = index_items(stack.grpc_address, scan_folder(catalogue), progress=False)
        assert report.failed == 0 and report.indexed == 20

        query = next(iter(sorted(clothing_split("test").rglob("*.jpg"))))  # not in the catalogue

        def search(http: httpx.Client, photo) -> dict:
            return http.post("/v1/search", files={"image": ("q.jpg", photo.read_bytes(), "image/jpeg")},
                             data={"top_k": "3"}).raise_for_status().json()

        with httpx.Client(base_url=stack.http_url, timeout=60) as http:
            assert search(http, query)["cache_hit"] is False  # cached under the default model's id
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            moved = subprocess.run([sys.executable, "-m", "lookalike.cli", "reindex", "--gateway",
                                    stack.grpc_address, "-q", "--model-version", VERSION], env=env,
                                   capture_output=True, text=True, timeout=900)
            assert moved.returncode == 0, moved.stdout + moved.stderr
            listing = http.get("/v1/collections").raise_for_status().json()
            assert listing["active"] == f"products__lookalike-lite0.{VERSION}"
            active = next(c for c in listing["collections"] if c["name"] == listing["active"])
            assert active["model_id"] == f"lookalike-lite0.{VERSION}" and active["points"] == 20
            # the active collection's model embeds the query: not the default model's cache entry
            assert search(http, query)["cache_hit"] is False
            assert search(http, query)["cache_hit"] is True
            photo = next(iter(sorted(catalogue.rglob("*.jpg"))))
            found = search(http, photo)
        assert found["results"][0]["id"] == f"{photo.parent.name}/{photo.name}"  # finds itself after the move
        assert found["results"][0]["score"] > 0.999
        served = [float(line.rsplit(" ", 1)[1]) for line in stack.torchserve.metrics_text().splitlines()
                  if line.startswith("ts_inference_requests_total") and f'model_version="{VERSION}"' in line]
        assert served and served[0] > 0, "TorchServe counted no inference request to the second archive"
