"""Shared fixtures: the clothing-small photos and one real stack (TorchServe, redis, search, gateway)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLOTHING = Path(os.environ.get("LOOKALIKE_CLOTHING_DIR", ROOT.parent / "shared" / "datasets" / "clothing-small"))
CATALOGUE_PER_CLASS = 12


def clothing_split(split: str) -> Path:
    path = CLOTHING / split
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"clothing-small photos missing at {path}")
        pytest.skip(f"clothing-small photos not found at {path}")
    return path


@pytest.fixture(scope="session")
def clothing_test_photos() -> dict[str, list[Path]]:
    """Test-split photos by category."""
    root = clothing_split("test")
    return {d.name: sorted(d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()}


@pytest.fixture(scope="session")
def small_catalogue(tmp_path_factory) -> Path:
    """A catalogue folder of CATALOGUE_PER_CLASS training photos per category (symlinks to the originals)."""
    return make_catalogue(tmp_path_factory.mktemp("catalogue"), CATALOGUE_PER_CLASS)


def make_catalogue(target: Path, per_class: int) -> Path:
    """`target` filled with `per_class` training photos per category (symlinks to the originals)."""
    source = clothing_split("train")
    for category in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / category.name).mkdir()
        for photo in sorted(category.iterdir())[:per_class]:
            (target / category.name / photo.name).symlink_to(photo)
    return target


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The whole chain as real processes, on free ports, indexed with nothing yet."""
    from lookalike.stack import Stack, StackConfig

    data_dir = tmp_path_factory.mktemp("stack")
    # A loaded CI machine (two cores, TorchServe and a browser busy) can take longer than the 50 ms
    # default to answer a Redis SET; the gateway then skips the cache for 2 s by design, and a test
    # expecting its second identical query to be a cache hit fails. The Redis-stalled behaviour
    # itself is tested on its own stack (tests/e2e/test_resilience.py) with the defaults.
    config = StackConfig(data_dir=data_dir, http_port=0, grpc_port=0,
                         extra_gateway_env={"LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S": "0.5"})
    with Stack(config) as running:
        yield running


@pytest.fixture(scope="session")
def indexed_stack(stack, small_catalogue):
    """The stack with the small catalogue indexed through the gRPC UpsertProducts stream."""
    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items

    report = index_items(stack.grpc_address, scan_folder(small_catalogue), progress=False)
    assert report.failed == 0, report.failures
    assert report.indexed == len(scan_folder(small_catalogue))
    return stack
