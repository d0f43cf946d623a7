"""deploy/capacity.py: the tables in deploy/CAPACITY.md are what the script computes from the committed JSON."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "capacity.py"
MD = REPO / "deploy" / "CAPACITY.md"


@pytest.fixture(scope="module")
def cap():
    spec = importlib.util.spec_from_file_location("lookalike_capacity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def block(cap):
    text = MD.read_text()
    found = cap.block_of(text)
    assert found is not None, "deploy/CAPACITY.md has no generated block"
    return found


def test_capacity_md_matches_a_fresh_run_on_the_json_it_names(cap, block):
    sources = cap.sources_of(block)
    assert set(sources) == {"bench", "quantization", "redis", "served"}
    for name, path in sources.items():
        assert path.is_file(), f"CAPACITY.md was generated from {path}, which is missing"
    fresh = cap.render(cap.Inputs(sources["bench"], sources["quantization"], sources["redis"], sources["served"]))
    assert fresh == block, "deploy/CAPACITY.md is stale: run `python deploy/capacity.py --write`"


def test_check_cli_passes_and_detects_drift(cap, block, tmp_path):
    ok = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # change one figure in a copy: --check must fail
    lines = block.splitlines()
    idx = next(i for i, line in enumerate(lines) if line.startswith("| 1M |"))
    lines[idx] = lines[idx].replace("| 3 |", "| 4 |", 1) if "| 3 |" in lines[idx] else lines[idx] + " x"
    tampered = MD.read_text().replace(block, "\n".join(lines))
    copy = tmp_path / "CAPACITY.md"
    copy.write_text(tampered)
    bad = subprocess.run([sys.executable, str(SCRIPT), "--check", "--md", str(copy)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "differ" in bad.stderr


def test_bytes_per_point_model(cap):
    assert cap.BYTES_PER_POINT == {"float32": 5120, "int8": 1280, "binary": 160}
    assert cap.graph_bytes() == 16 * 2 * 4
    f32, i8, b = (cap.per_point(m) for m in ("float32", "int8", "binary"))
    assert f32["ram"] == pytest.approx((5120 + 128) * 1.5)
    assert i8["ram"] < f32["ram"] / 3 and b["ram"] < i8["ram"] / 4
    # quantized collections keep the float32 originals on disk for rescoring
    assert i8["disk"] > f32["disk"] and b["disk"] > f32["disk"]


def test_cluster_sizing_rules(cap):
    small = cap.cluster(1_000_000, "float32")
    assert small["nodes"] == 3 and small["shards"] == 6  # the floor: 3 peers, 6 shards (deploy/kubernetes/base)
    big = cap.cluster(100_000_000, "float32")
    assert big["ram"] == pytest.approx(100_000_000 * cap.per_point("float32")["ram"] * 2)  # replication 2
    node_ram = cap.A("node_ram_gib") * cap.GIB * cap.A("node_ram_usable")
    assert big["nodes"] * node_ram >= big["ram"]
    assert big["shards"] >= big["nodes"] and big["shards"] % big["nodes"] == 0
    assert cap.cluster(100_000_000, "int8")["nodes"] < big["nodes"]


def test_every_public_constant_is_cited(cap, block):
    text = MD.read_text()
    for key in cap.SOURCES:
        url = cap.SOURCES[key].split("http", 1)[1].split()[0].rstrip(")")
        assert url in text, f"CAPACITY.md does not cite {key} ({url})"
    assert "no GPU was measured" in text.replace("No GPU", "no GPU").replace("NO GPU", "no GPU")
