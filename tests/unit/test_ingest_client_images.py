"""The ingest client with several photos per product: folder layout, JSONL and CSV manifests, and a run
against an in-process gateway (gRPC over a socket, fake embedder and search service)."""
from __future__ import annotations

import json

import pytest

from lookalike.catalogue_reader import iter_folder, iter_manifest, open_catalogue
from lookalike.ingest import index_items

from .gateway_fakes import png
from .test_ingest_client import gateway_address  # noqa: F401


@pytest.fixture
def mixed(tmp_path):
    """shoes/p1.png (one photo), shoes/boot/{a,b,c}.png (one product, three photos), hats/cap/{x,y}.png."""
    root = tmp_path / "catalogue"
    (root / "shoes" / "boot").mkdir(parents=True)
    (root / "hats" / "cap").mkdir(parents=True)
    (root / "shoes" / "p1.png").write_bytes(png(1))
    for name, seed in (("c.png", 12), ("a.png", 10), ("b.png", 11)):
        (root / "shoes" / "boot" / name).write_bytes(png(seed))
    (root / "shoes" / "boot" / "readme.txt").write_text("not a photo")
    (root / "hats" / "cap" / "x.png").write_bytes(png(20))
    (root / "hats" / "cap" / "y.png").write_bytes(png(21))
    return root


def test_folder_of_photos_is_one_product(mixed):
    items = {i.product.id: i for i in iter_folder(mixed)}
    assert sorted(items) == ["hats/cap", "shoes/boot", "shoes/p1.png"]
    boot = items["shoes/boot"]
    assert (boot.product.title, boot.product.category) == ("boot", "shoes")
    assert [p.name for p in boot.image_paths] == ["a.png", "b.png", "c.png"]  # name order, first = main
    assert items["shoes/p1.png"].image_paths == [mixed / "shoes" / "p1.png"]
    assert open_catalogue(mixed)[1] == 3


def test_manifests_list_several_photos(mixed, tmp_path):
    jsonl = tmp_path / "m.jsonl"
    rows = [{"id": "boot", "images": ["catalogue/shoes/boot/a.png", "catalogue/shoes/boot/b.png"]},
            {"id": "cap", "image": "catalogue/hats/cap/x.png", "images": ["catalogue/hats/cap/x.png",
                                                                           "catalogue/hats/cap/y.png"]},
            {"id": "bad", "images": 5},
            {"id": "none", "images": []}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = list(iter_manifest(jsonl))
    assert [p.name for p in items[0].image_paths] == ["a.png", "b.png"] and items[0].product.title == "a"
    assert [p.name for p in items[1].image_paths] == ["x.png", "y.png"]  # `image` first, not repeated
    assert "images must be a list" in items[2].error
    assert "no image path" in items[3].error
    csv = mixed / "catalogue.csv"
    csv.write_text("id,images,category\n"
                   "boot,shoes/boot/a.png | shoes/boot/c.png,shoes\n"
                   "one,shoes/p1.png,shoes\n"
                   "empty,,shoes\n")
    items = list(open_catalogue(csv)[0])
    assert [p.relative_to(mixed).as_posix() for p in items[0].image_paths] == ["shoes/boot/a.png", "shoes/boot/c.png"]
    assert items[1].image_paths == [mixed / "shoes" / "p1.png"] and not items[1].more_paths
    assert "no image path" in items[2].error


def test_index_a_catalogue_with_product_folders_then_rerun(mixed, gateway_address):  # noqa: F811
    address, gateway = gateway_address
    items, total = open_catalogue(mixed)
    report = index_items(address, items, total=total, progress=False)
    assert (report.total, report.created, report.failed) == (3, 3, 0)
    stored = gateway.search.stub.collections["products__lookalike-lite0"]
    assert len(stored["shoes/boot"].product.image_sha256s) == 3 and len(stored["shoes/boot"].more_vectors) == 2
    assert gateway.embedder.calls == 6
    items, total = open_catalogue(mixed)
    again = index_items(address, items, total=total, progress=False)
    assert again.unchanged == 3 and gateway.embedder.calls == 6
    (mixed / "shoes" / "boot" / "b.png").unlink()  # one photo fewer: the product is updated, nothing embedded
    (mixed / "hats" / "cap" / "y.png").write_bytes(b"broken")  # a bad photo fails its product alone
    items, total = open_catalogue(mixed)
    third = index_items(address, items, total=total, progress=False)
    assert (third.updated, third.unchanged, third.failed) == (1, 1, 1)
    assert len(stored["shoes/boot"].product.image_sha256s) == 2 and gateway.embedder.calls == 6
    assert "image 1" in third.failures[0]["error"] and third.failures[0]["id"] == "hats/cap"
