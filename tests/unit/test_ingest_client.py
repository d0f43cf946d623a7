"""The ingest client: folder and manifest catalogues, hostile files, and a run against an in-process gateway
(gRPC over a socket, fake embedder and search service)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent import futures

import grpc
import pytest

from lookalike.catalogue_reader import CatalogueError, iter_folder, iter_manifest, open_catalogue
from lookalike.ingest import index_items, read_image_file
from lookalike.v1 import lookalike_pb2_grpc
from lookalike_gateway.auth import ApiKeyCheck
from lookalike_gateway.grpc_api import LookalikeServicer

from .gateway_fakes import GatedSearch, make_gateway, png, upsert_streams_ended, wait_for_stream_end


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "catalogue"
    for category, seeds in (("shoes", (1, 2)), ("hats", (3,))):
        (root / category).mkdir(parents=True)
        for seed in seeds:
            (root / category / f"p{seed}.png").write_bytes(png(seed))
    (root / "hats" / "notes.txt").write_text("not an image")
    return root


def test_folder_ids_are_relative_paths(photos):
    items = list(iter_folder(photos))
    assert [i.product.id for i in items] == ["hats/p3.png", "shoes/p1.png", "shoes/p2.png"]
    assert (items[0].product.title, items[0].product.category) == ("p3", "hats")
    assert open_catalogue(photos)[1] == 3
    (photos / "shoes" / "loop").symlink_to(photos)  # a symlink loop: the folder is not walked twice
    assert [i.product.id for i in iter_folder(photos)] == ["hats/p3.png", "shoes/p1.png", "shoes/p2.png"]
    (photos / "shoes" / "loop").unlink()
    with pytest.raises(CatalogueError):
        open_catalogue(photos / "missing")


def test_csv_manifest(photos):
    manifest = photos / "catalogue.csv"
    manifest.write_text("id,image,title,category,price,colour,Size\n"
                        "sku-1,shoes/p1.png,Oxford,shoes,89.5,brown,42\n"
                        "sku-2,shoes/p2.png,,shoes,,,\n"
                        "sku-3,hats/p3.png,Cap,hats,cheap,red,\n"
                        "sku-1,hats/p3.png,Again,hats,1,,\n")
    items, total = open_catalogue(manifest)
    items = list(items)
    assert total == 4
    first = items[0]
    assert (first.product.id, first.product.title, first.product.category, first.product.price) == (
        "sku-1", "Oxford", "shoes", 89.5)
    assert dict(first.product.attributes) == {"colour": "brown", "Size": "42"}
    assert first.image_path == photos / "shoes" / "p1.png" and not first.error
    assert items[1].product.title == "p2" and not items[1].product.HasField("price")  # defaults
    assert "price 'cheap'" in items[2].error and "line 4" in items[2].error
    assert "more than once" in items[3].error  # a repeated id


def test_jsonl_manifest(photos, tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [{"id": "a", "image": str(photos / "shoes" / "p1.png"), "price": 3, "attributes": {"fit": "slim"},
             "tags": ["x", "y"]},
            {"id": 7, "image": "catalogue/hats/p3.png", "category": "hats"},
            {"image": "catalogue/hats/p3.png"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n{broken\n")
    items = list(iter_manifest(manifest))
    assert items[0].product.price == 3.0 and dict(items[0].product.attributes) == {"fit": "slim", "tags": '["x", "y"]'}
    assert items[1].product.id == "7" and items[1].image_path == tmp_path / "catalogue" / "hats" / "p3.png"
    assert "no id" in items[2].error
    assert "not a JSON object" in items[3].error
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,path\n1,a.png\n")
    with pytest.raises(CatalogueError, match="'id' and 'image'"):
        open_catalogue(bad)


def test_hostile_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_image_file(fifo, 1000)  # a FIFO would block a plain open().read() forever
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2000)
    with pytest.raises(ValueError, match="limit"):
        read_image_file(big, 1000)
    with pytest.raises(ValueError, match="not a regular file"):
        read_image_file(tmp_path, 1000)
    with pytest.raises(OSError):
        read_image_file(tmp_path / "missing.jpg", 1000)


@pytest.fixture
def gateway_address(tmp_path):
    gateway = make_gateway(tmp_path / "gw", upsert_batch_size=2)
    server = grpc.server(futures.ThreadPoolExecutor(8))
    lookalike_pb2_grpc.add_LookalikeServicer_to_server(LookalikeServicer(gateway, ApiKeyCheck(frozenset())), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", gateway
    server.stop(0)


def test_index_rerun_resume_and_reports(photos, tmp_path, gateway_address):
    address, gateway = gateway_address
    (photos / "shoes" / "copy.png").write_bytes(png(1))  # an exact duplicate of shoes/p1.png
    (photos / "shoes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    os.mkfifo(photos / "shoes" / "pipe.png")
    failures, duplicates = tmp_path / "failures.jsonl", tmp_path / "dups.jsonl"
    items, total = open_catalogue(photos)
    report = index_items(address, items, total=total, progress=False, failures_file=failures,
                         duplicates_file=duplicates)
    assert (report.total, report.created, report.failed, report.duplicates) == (6, 4, 2, 1)
    reasons = {r["id"]: r["error"] for r in map(json.loads, failures.read_text().splitlines())}
    assert set(reasons) == {"shoes/broken.png", "shoes/pipe.png"}
    assert "not a regular file" in reasons["shoes/pipe.png"] and "image" in reasons["shoes/broken.png"]
    dup = json.loads(duplicates.read_text())
    assert (dup["id"], dup["duplicate_of"], dup["exact"]) == ("shoes/p1.png", "shoes/copy.png", True)
    embedded = gateway.embedder.calls

    items, total = open_catalogue(photos)
    again = index_items(address, items, total=total, progress=False, failures_file=failures)
    assert (again.unchanged, again.created, again.failed) == (4, 0, 2)
    assert gateway.embedder.calls == embedded  # nothing re-embedded
    assert "4 unchanged" in again.summary()

    (photos / "shoes" / "p2.png").write_bytes(png(22))  # a changed photo is updated in place
    items, total = open_catalogue(photos)
    third = index_items(address, items, total=total, progress=False, skip_duplicates=True)
    assert (third.updated, third.unchanged) == (1, 3)
    assert gateway.embedder.calls == embedded + 1


def test_ctrl_c_stops_and_the_same_command_resumes(tmp_path):
    """SIGINT to `lookalike index`: exit 130 after a summary; what was acknowledged stays stored, the rest is
    not; running the same command again reports the stored ones unchanged and adds the others once.
    Deterministic on a loaded machine: the search service stores the first batch, then holds every later
    write until SIGINT has landed (no timing assumption)."""
    root = tmp_path / "catalogue" / "things"
    root.mkdir(parents=True)
    for i in range(24):
        (root / f"{i:02d}.png").write_bytes(png(300 + i))
    search = GatedSearch()
    gateway = make_gateway(tmp_path / "gw", search=search, upsert_batch_size=4)
    server = grpc.server(futures.ThreadPoolExecutor(8))
    lookalike_pb2_grpc.add_LookalikeServicer_to_server(LookalikeServicer(gateway, ApiKeyCheck(frozenset())), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    stored = search.collections["products__lookalike-lite0"]
    command = [sys.executable, "-m", "lookalike.cli", "index", str(tmp_path / "catalogue"), "--gateway", address,
               "-q", "--failures", str(tmp_path / "failures.jsonl")]
    streams_before = upsert_streams_ended()
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert search.first_stored.wait(120), "the first batch was never stored"
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 130, output
        assert "interrupted" in output
        search.release.set()  # every later write of that run fails, whenever the gateway gets to it
        wait_for_stream_end(streams_before)  # no batch of that run is left in the gateway
        kept = len(stored)  # the first batch only
        assert 0 < kept < 24
        search.opened.set()
        again = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"{24 - kept} new, 0 updated, {kept} unchanged, 0 failed" in again.stdout
        assert sorted(stored) == sorted(f"things/{i:02d}.png" for i in range(24))
    finally:
        search.release.set()
        server.stop(0)
