"""End to end on the shared real stack: products with several photos (a JSONL manifest of real photos, their
mirror images and close-ups, generated here), distinct products in every answer with the matched image,
search by a region of the photo (TorchServe crops), min_score, the images over REST, and the bad inputs."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image, ImageOps

from lookalike.catalogue_reader import open_catalogue
from lookalike.ingest import index_items
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2

from tests.conftest import clothing_split

pytestmark = pytest.mark.e2e
CENTRE = types_pb2.CropBox(x=0.25, y=0.25, width=0.5, height=0.5)


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.grpc_address) as channel:
        yield lookalike_pb2_grpc.LookalikeStub(channel)


@pytest.fixture(scope="module")
def products(stack, stub, tmp_path_factory):
    """Five validation photos, each a product with three photos: the photo, its mirror image and its centre
    close-up (JPEG). Deleted afterwards (the stack is shared)."""
    root = clothing_split("validation")
    folder = tmp_path_factory.mktemp("multi")
    rows, files = [], {}
    for category in sorted(p for p in root.iterdir() if p.is_dir())[:5]:
        source = sorted(category.iterdir())[10]  # test_ingest uses the first seven
        img = ImageOps.exif_transpose(Image.open(source)).convert("RGB")
        w, h = img.size
        names = [f"{category.name}-main.jpg", f"{category.name}-mirror.jpg", f"{category.name}-detail.jpg"]
        img.save(folder / names[0], quality=95)
        ImageOps.mirror(img).save(folder / names[1], quality=95)
        img.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)).save(folder / names[2], quality=95)
        pid = f"multi-e2e/{category.name}"
        rows.append({"id": pid, "images": names, "category": category.name, "title": category.name})
        files[pid] = [folder / n for n in names]
    manifest = folder / "products.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items, total = open_catalogue(manifest)
    report = index_items(stack.grpc_address, items, total=total, progress=False)
    assert (report.created + report.updated + report.unchanged, report.failed) == (5, 0), report.failures
    yield files
    stub.DeleteProducts(lookalike_pb2.DeleteProductsRequest(product_ids=list(files)), timeout=30)


def search(stub, data: bytes, **kw):
    return stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=data, top_k=20, category_boost=0, **kw),
                              timeout=60)


def test_answers_hold_distinct_products_at_their_matched_image(stub, products):
    for pid, paths in products.items():
        got = stub.GetProduct(lookalike_pb2.GetProductRequest(product_id=pid), timeout=30).product
        assert len(got.image_sha256s) == 3
        found = search(stub, paths[1].read_bytes()).results  # the mirror photo
        ids = [r.product.id for r in found]
        assert len(ids) == len(set(ids))
        assert (found[0].product.id, found[0].matched_image) == (pid, 1)
        assert found[0].score > 0.99 and found[0].matched_image_sha256 == got.image_sha256s[1]
    similar = stub.SearchSimilar(lookalike_pb2.SearchSimilarRequest(product_id=pid, top_k=10), timeout=30).results
    assert pid not in [r.product.id for r in similar] and len({r.product.id for r in similar}) == len(similar)


def test_search_by_a_region_finds_the_close_up(stub, products):
    pid, paths = next(iter(products.items()))
    whole = search(stub, paths[0].read_bytes()).results[0]
    assert (whole.product.id, whole.matched_image) == (pid, 0)
    region = search(stub, paths[0].read_bytes(), crop=CENTRE)
    assert not region.cache_hit  # the box is part of the cache key
    top = region.results[0]
    assert (top.product.id, top.matched_image) == (pid, 2) and top.score > 0.95
    assert search(stub, paths[0].read_bytes(), crop=CENTRE).cache_hit


@pytest.mark.parametrize("box", [types_pb2.CropBox(x=0.1, y=0.1, width=0, height=0.5),
                                 types_pb2.CropBox(x=0.7, y=0.0, width=0.5, height=0.5),
                                 types_pb2.CropBox(x=0.0, y=0.6, width=0.5, height=0.5)])
def test_bad_boxes_are_invalid_argument(stub, products, box):
    pid, paths = next(iter(products.items()))
    with pytest.raises(grpc.RpcError) as err:
        search(stub, paths[0].read_bytes(), crop=box)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_min_score_drops_weaker_results(stub, products):
    pid, paths = next(iter(products.items()))
    everything = search(stub, paths[0].read_bytes()).results
    cut = float(np.median([r.score for r in everything]))
    kept = search(stub, paths[0].read_bytes(), min_score=cut).results
    assert kept and all(r.score >= cut for r in kept) and len(kept) < len(everything)
    with pytest.raises(grpc.RpcError) as err:
        search(stub, paths[0].read_bytes(), min_score=1.5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def multipart(fields: dict, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "lookalike-e2e-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
              f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_rest_images_crop_and_bad_inputs(stack, products):
    pid, paths = next(iter(products.items()))
    quoted = pid.replace("/", "%2F")
    product = json.loads(urllib.request.urlopen(f"{stack.http_url}/v1/products/{quoted}", timeout=30).read())
    assert [i["index"] for i in product["images"]] == [0, 1, 2]
    detail = urllib.request.urlopen(stack.http_url + product["images"][2]["url"], timeout=30).read()
    assert detail == paths[2].read_bytes()
    body, kind = multipart({"crop": "0.25,0.25,0.5,0.5", "category_boost": "0"}, [("q.jpg", paths[0].read_bytes())])
    request = urllib.request.Request(f"{stack.http_url}/v1/search", data=body, headers={"Content-Type": kind})
    found = json.loads(urllib.request.urlopen(request, timeout=60).read())
    assert (found["results"][0]["id"], found["results"][0]["matched_image"]) == (pid, 2)
    for fields in ({"crop": "0.5,0.5,0.6,0.1"}, {"crop": "0,0,0,0"}, {"min_score": "7"}):
        body, kind = multipart(fields, [("q.jpg", paths[0].read_bytes())])
        bad = urllib.request.Request(f"{stack.http_url}/v1/search", data=body, headers={"Content-Type": kind})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=30)
        assert err.value.code == 400
        assert json.loads(err.value.read())["error"]["code"] == "INVALID_ARGUMENT"
    missing = f"{stack.http_url}/v1/products/{quoted}/images/3"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(missing, timeout=30)
    assert err.value.code == 404


def test_cli_search_with_a_region_and_min_score(stack, products):
    import subprocess
    import sys

    pid, paths = next(iter(products.items()))
    command = [sys.executable, "-m", "lookalike.cli", "search", str(paths[0]), "--gateway", stack.grpc_address,
               "--category-boost", "0"]
    region = subprocess.run(command + ["--crop", "0.25,0.25,0.5,0.5", "--top-k", "3"], capture_output=True,
                            text=True, timeout=120)
    assert region.returncode == 0, region.stderr
    first = region.stdout.splitlines()[1]
    assert pid in first and first.endswith("(image 2)")
    strict = subprocess.run(command + ["--min-score", "0.999"], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 0 and strict.stdout.startswith("1 results"), strict.stdout
    bad = subprocess.run(command + ["--crop", "0.5,0.5,0.6,0.2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "reaches outside" in bad.stderr
