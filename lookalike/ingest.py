"""Client-side catalogue ingestion: scans a folder, streams products to the gateway, reports progress."""
from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


@dataclass
class CatalogueItem:
    """One product to index: metadata plus where its image is."""
    product: types_pb2.Product
    image_path: Path


def scan_folder(root: Path) -> list[CatalogueItem]:
    """Products of a folder laid out `<category>/<image>` (deeper folders: the image's parent is the category).

    The product id is the image's path relative to `root` (stable across runs); the title is its stem.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"catalogue folder not found: {root}")
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(root)
        category = rel.parent.name if rel.parent != Path(".") else ""
        items.append(CatalogueItem(types_pb2.Product(id=rel.as_posix(), title=path.stem, category=category), path))
    return items


@dataclass
class IngestReport:
    total: int = 0
    indexed: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0


def _requests(items: list[CatalogueItem], read_errors: dict, workers: int = 4,
              read_ahead: int = 64) -> Iterator[lookalike_pb2.UpsertProductsRequest]:
    """Reads image files in parallel with a bounded read-ahead window; yields requests in catalogue order."""
    with ThreadPoolExecutor(workers) as pool:
        remaining = iter(items)
        window: deque = deque((item, pool.submit(item.image_path.read_bytes))
                              for item in itertools.islice(remaining, read_ahead))
        while window:
            item, future = window.popleft()
            following = next(remaining, None)
            if following is not None:
                window.append((following, pool.submit(following.image_path.read_bytes)))
            try:
                image = future.result()
            except OSError as exc:
                read_errors[item.product.id] = f"cannot read {item.image_path}: {exc.strerror or exc}"
                image = b""
            yield lookalike_pb2.UpsertProductsRequest(product=item.product, image=image)


def index_items(address: str, items: list[CatalogueItem], api_key: str | None = None, progress: bool = True,
                timeout_s: float | None = None) -> IngestReport:
    """Streams `items` to the gateway's UpsertProducts; returns counts and per-item failures."""
    from tqdm import tqdm

    report = IngestReport(total=len(items))
    read_errors: dict[str, str] = {}
    metadata = [("x-api-key", api_key)] if api_key else None
    started = time.perf_counter()
    bar = tqdm(total=len(items), unit="img", disable=not progress, dynamic_ncols=True, desc="indexing")
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        stub = lookalike_pb2_grpc.LookalikeStub(channel)
        responses = stub.UpsertProducts(_requests(items, read_errors), metadata=metadata, timeout=timeout_s)
        for response in responses:
            if response.ok:
                report.indexed += 1
            else:
                report.failed += 1
                reason = read_errors.get(response.product_id, response.error)
                report.failures.append({"id": response.product_id, "error": reason})
            bar.update(1)
            bar.set_postfix(indexed=report.indexed, failed=report.failed, refresh=False)
    bar.close()
    report.seconds = time.perf_counter() - started
    return report


def write_failures(report: IngestReport, path: Path) -> None:
    """One JSON line per failed item: {"id": ..., "error": ...}."""
    with open(path, "w") as out:
        for failure in report.failures:
            out.write(json.dumps(failure) + "\n")
