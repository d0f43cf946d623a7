"""Client-side catalogue ingestion: reads a folder or a manifest, streams products to the gateway's
UpsertProducts, shows progress, reports outcomes and failures.

Catalogues:
  * a folder laid out ``<category>/<image>`` (one photo per product: the id is the image's path below the
    folder, the title its stem, the category its parent folder) and/or ``<category>/<product>/<images>``
    (one product per folder of photos, in name order, the first the main one: the id is the folder's
    path below the catalogue folder, the title its name, the category the folder above it);
  * a manifest, CSV (header row) or JSON Lines (``.jsonl``/``.ndjson``, one object per line), with
    ``id`` and ``image`` and/or ``images`` (paths, relative to the manifest's folder: ``image`` the main
    photo, ``images`` the product's photos -- a JSON list, or in CSV one cell with the paths separated by
    ``|``), optional ``title``, ``category``, ``price``, and any other column/key as a string attribute
    (a JSON ``attributes`` object is merged in).

Everything is streamed: the catalogue is read lazily, at most `read_ahead` images are in memory on
this side, and the gRPC stream's flow control holds the rest back, so memory stays flat whatever the
catalogue's size. Ids are stable, and the gateway skips products whose image and metadata are already
stored (UNCHANGED, no embedding): running the same command again after an interruption (Ctrl-C,
kill -9, a lost connection) resumes where the acknowledged products end.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import stat
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".ndjson"}
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the gateway's default LOOKALIKE_GATEWAY_MAX_UPLOAD_BYTES
KEPT_FAILURES = 1000  # in IngestReport.failures; the failures file gets every one
Outcome = lookalike_pb2.UpsertProductsResponse


class CatalogueError(ValueError):
    """The catalogue as a whole cannot be read (missing folder, manifest without id/image columns...)."""


@dataclass
class CatalogueItem:
    """One product to index: metadata plus where its images are (`image_path` the main one, `more_paths` the
    others); `error` when the catalogue entry itself is unusable (bad price, repeated id): the item is then
    reported failed without its images being sent."""
    product: types_pb2.Product
    image_path: Path
    error: str = ""
    more_paths: list[Path] = field(default_factory=list)

    @property
    def image_paths(self) -> list[Path]:
        return [self.image_path, *self.more_paths]


# ---- reading catalogues ------------------------------------------------------------------------------

def _image_files(root: Path) -> Iterator[Path]:
    """Image files below root, in a stable order (sorted walk), lazily; linked folders are followed once
    (a symlink loop does not walk forever)."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield Path(folder) / name


def iter_folder(root: Path) -> Iterator[CatalogueItem]:
    """Products of a folder: `<category>/<image>` is a product with one photo (id: the image's path relative
    to `root`, title: its stem); `<category>/<product>/<images>` is one product with several photos in name
    order (id: the product folder's path relative to `root`, title: its name). Deeper trees: a folder two or
    more levels down holding photos is a product, the folder above it its category. Ids are stable across runs.
    """
    root = Path(root)
    if not root.is_dir():
        raise CatalogueError(f"catalogue folder not found: {root}")
    group: list[Path] = []
    for path in _image_files(root):  # a folder's photos come together, in name order
        rel = path.relative_to(root)
        if len(rel.parts) < 3:
            yield from _product_folder(root, group)
            group = []
            category = rel.parent.name if rel.parent != Path(".") else ""
            yield CatalogueItem(types_pb2.Product(id=rel.as_posix(), title=path.stem, category=category), path)
        elif group and group[0].parent != path.parent:
            yield from _product_folder(root, group)
            group = [path]
        else:
            group.append(path)
    yield from _product_folder(root, group)


def _product_folder(root: Path, photos: list[Path]) -> Iterator[CatalogueItem]:
    if not photos:
        return
    folder = photos[0].parent
    rel = folder.relative_to(root)
    product = types_pb2.Product(id=rel.as_posix(), title=folder.name, category=rel.parent.name)
    yield CatalogueItem(product, photos[0], more_paths=photos[1:])


def scan_folder(root: Path) -> list[CatalogueItem]:
    """`iter_folder` as a list (for small catalogues, tests and benchmarks)."""
    try:
        return list(iter_folder(root))
    except CatalogueError as exc:
        raise FileNotFoundError(str(exc)) from None


KNOWN = ("id", "image", "images", "title", "category", "price", "attributes")
IMAGES_SEPARATOR = "|"  # between the paths of a CSV `images` cell


def _manifest_item(row: dict, base: Path, where: str) -> CatalogueItem:
    """A catalogue item from one manifest row (CSV dict of strings, or a JSON object)."""
    fields = {str(k).strip().lower() if str(k).strip().lower() in KNOWN else str(k).strip(): v
              for k, v in row.items() if k is not None}
    pid = fields.get("id")
    pid = "" if pid is None else str(pid).strip()
    image = fields.get("image")
    image = "" if image is None else str(image).strip()
    errors = []
    listed = fields.get("images")
    if isinstance(listed, str):
        listed = [p for p in (part.strip() for part in listed.split(IMAGES_SEPARATOR)) if p]
    elif listed is None:
        listed = []
    elif not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        errors.append("images must be a list of paths")
        listed = []
    photos = ([image] if image else []) + [p.strip() for p in listed if p.strip() and p.strip() != image]
    path = base / photos[0] if photos else base
    product = types_pb2.Product(id=pid, title=str(fields.get("title") or (Path(photos[0]).stem if photos else "")),
                                category=str(fields.get("category") or ""))
    if not pid:
        errors.append("no id")
    if not photos:
        errors.append("no image path")
    price = fields.get("price")
    if price not in (None, ""):
        try:
            value = float(price)
            if not math.isfinite(value):
                raise ValueError
            product.price = value
        except (TypeError, ValueError):
            errors.append(f"price {price!r} is not a finite number")
    attributes = fields.get("attributes")
    if isinstance(attributes, str) and attributes.strip().startswith("{"):
        try:
            attributes = json.loads(attributes)
        except ValueError:
            errors.append("attributes is not a JSON object")
            attributes = None
    if isinstance(attributes, dict):
        for key, value in attributes.items():
            product.attributes[str(key)] = value if isinstance(value, str) else json.dumps(value)
    elif attributes not in (None, ""):
        product.attributes["attributes"] = str(attributes)
    for key, value in fields.items():
        if key in KNOWN or value is None or value == "":
            continue
        product.attributes[key] = value if isinstance(value, str) else json.dumps(value)
    return CatalogueItem(product, path, f"{where}: {'; '.join(errors)}" if errors else "",
                         more_paths=[base / p for p in photos[1:]])


def iter_manifest(manifest: Path) -> Iterator[CatalogueItem]:
    """Products of a CSV or JSON Lines manifest, lazily, in file order; image paths relative to its folder."""
    manifest = Path(manifest)
    base = manifest.resolve().parent
    suffix = manifest.suffix.lower()
    try:
        handle = open(manifest, newline="" if suffix == ".csv" else None, encoding="utf-8-sig")
    except OSError as exc:
        raise CatalogueError(f"cannot read manifest {manifest}: {exc.strerror or exc}") from None
    with handle:
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            header = {h.strip().lower() for h in reader.fieldnames or []}
            if "id" not in header or not header & {"image", "images"}:
                raise CatalogueError(f"manifest {manifest} needs 'id' and 'image' (or 'images') columns; it has "
                                     f"{sorted(header) or 'no header'}")
            for row in reader:
                extra = row.pop(None, None)
                item = _manifest_item(row, base, f"{manifest.name} line {reader.line_num}")
                if extra:
                    item.error = item.error or f"{manifest.name} line {reader.line_num}: more fields than columns"
                yield item
        else:
            for line, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                    if not isinstance(row, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    yield CatalogueItem(types_pb2.Product(id=f"{manifest.name}:{line}"), base,
                                        f"{manifest.name} line {line}: not a JSON object ({exc})")
                    continue
                yield _manifest_item(row, base, f"{manifest.name} line {line}")


def open_catalogue(path: Path) -> tuple[Iterator[CatalogueItem], int]:
    """(items, how many) of a catalogue folder or manifest; ids repeated within it fail after the first."""
    path = Path(path)
    if path.is_dir():
        return _unique_ids(iter_folder(path)), sum(1 for _ in iter_folder(path))
    if not path.exists():
        raise CatalogueError(f"catalogue not found: {path}")
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise CatalogueError(f"{path} is neither a folder nor a manifest ({', '.join(sorted(MANIFEST_SUFFIXES))})")
    total = sum(1 for _ in iter_manifest(path))  # a first pass (no images read) for the progress bar
    return _unique_ids(iter_manifest(path)), total


def _unique_ids(items: Iterable[CatalogueItem]) -> Iterator[CatalogueItem]:
    seen: set[str] = set()
    for item in items:
        pid = item.product.id
        if pid and pid in seen and not item.error:
            item.error = f"id {pid!r} appears more than once in the catalogue; only the first is indexed"
        seen.add(pid)
        yield item


# ---- streaming to the gateway ------------------------------------------------------------------------

def read_image_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes; OSError/ValueError with a reason otherwise (a FIFO,
    a device or a folder is refused without blocking on it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size} bytes, above the {max_bytes}-byte limit")
        if info.st_size == 0:
            raise ValueError(f"{path} is empty")
        chunks, left = [], info.st_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise ValueError(f"{path} grew above the {max_bytes}-byte limit while being read")
        return data
    finally:
        os.close(fd)


def _read(item: CatalogueItem, max_bytes: int) -> tuple[list[bytes], str]:
    """The bytes of each of the item's images, or ([], why not)."""
    if item.error:
        return [], item.error
    out = []
    for path in item.image_paths:
        try:
            out.append(read_image_file(path, max_bytes))
        except OSError as exc:
            return [], f"cannot read {path}: {exc.strerror or exc}"
        except ValueError as exc:
            return [], str(exc)
    return out, ""


def _requests(items: Iterable[CatalogueItem], local_errors: dict[int, str], skip_duplicates: bool = False,
              max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, workers: int = 4,
              read_ahead: int = 64) -> Iterator[lookalike_pb2.UpsertProductsRequest]:
    """Reads image files in parallel with a bounded read-ahead window; yields requests in catalogue order.

    An item that cannot be sent (unreadable, too big, a bad catalogue entry) is sent without its image, so
    the gateway fails it in order; `local_errors[sequence number]` says why."""
    with ThreadPoolExecutor(workers, thread_name_prefix="read") as pool:
        remaining = iter(items)
        window: deque = deque((item, pool.submit(_read, item, max_bytes))
                              for item in itertools.islice(remaining, read_ahead))
        sequence = 0
        while window:
            item, future = window.popleft()
            following = next(remaining, None)
            if following is not None:
                window.append((following, pool.submit(_read, following, max_bytes)))
            photos, error = future.result()
            if error:
                local_errors[sequence] = error
            sequence += 1
            yield lookalike_pb2.UpsertProductsRequest(product=item.product, image=photos[0] if photos else b"",
                                                      more_images=photos[1:], skip_duplicates=skip_duplicates)


@dataclass
class IngestReport:
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0  # duplicates not stored (skip_duplicates)
    duplicates: int = 0  # duplicates reported (stored, or skipped)
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[dict] = field(default_factory=list)  # the first KEPT_FAILURES
    duplicate_list: list[dict] = field(default_factory=list)  # the first KEPT_FAILURES

    @property
    def done(self) -> int:
        return self.created + self.updated + self.unchanged + self.failed + self.skipped

    @property
    def indexed(self) -> int:
        """Products stored and acknowledged: created, updated or already there unchanged."""
        return self.created + self.updated + self.unchanged

    @property
    def rate(self) -> float:
        """Products acknowledged per second."""
        return self.done / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        line = (f"{'interrupted: ' if self.interrupted else ''}{self.done} of {self.total} products in "
                f"{self.seconds:.1f}s ({self.rate:.1f}/s): {self.created} new, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.failed} failed")
        if self.duplicates:
            line += f"; {self.duplicates} duplicates ({self.skipped} skipped)"
        return line


class _Sink:
    """Where failures and duplicates go as they arrive: the report (the first few) and the report files."""

    def __init__(self, report: IngestReport, failures_file: Path | None, duplicates_file: Path | None):
        self.report = report
        self.paths = {"failures": failures_file, "duplicates": duplicates_file}
        self.handles: dict = {}
        for path in self.paths.values():
            if path is not None:
                Path(path).unlink(missing_ok=True)  # a file from an earlier run would mislead

    def write(self, kind: str, record: dict) -> None:
        kept = self.report.failures if kind == "failures" else self.report.duplicate_list
        if len(kept) < KEPT_FAILURES:
            kept.append(record)
        path = self.paths[kind]
        if path is None:
            return
        if kind not in self.handles:
            self.handles[kind] = open(path, "w")
        self.handles[kind].write(json.dumps(record) + "\n")
        self.handles[kind].flush()

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def index_items(address: str, items: Iterable[CatalogueItem], api_key: str | None = None, progress: bool = True,
                timeout_s: float | None = None, total: int | None = None, skip_duplicates: bool = False,
                failures_file: Path | None = None, duplicates_file: Path | None = None,
                max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> IngestReport:
    """Streams `items` to the gateway's UpsertProducts; returns counts and per-item failures.

    Ctrl-C (KeyboardInterrupt) cancels the stream and returns what was acknowledged so far with
    `interrupted` set; everything acknowledged is stored. Transport failures raise grpc.RpcError."""
    from tqdm import tqdm

    if total is None:
        items = list(items)
        total = len(items)
    report = IngestReport(total=total)
    sink = _Sink(report, failures_file, duplicates_file)
    local_errors: dict[int, str] = {}
    metadata = [("x-api-key", api_key)] if api_key else None
    started = time.perf_counter()
    bar = tqdm(total=total, unit="item", disable=not progress, dynamic_ncols=True, desc="indexing", smoothing=0.1)
    shown = 0.0
    responses = None
    try:
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
            stub = lookalike_pb2_grpc.LookalikeStub(channel)
            responses = stub.UpsertProducts(_requests(items, local_errors, skip_duplicates, max_image_bytes),
                                            metadata=metadata, timeout=timeout_s)
            for sequence, response in enumerate(responses):
                _count(report, sink, response, local_errors.pop(sequence, None))
                bar.update(1)
                now = time.monotonic()
                if now - shown > 0.5:
                    shown = now
                    bar.set_postfix(new=report.created, updated=report.updated, unchanged=report.unchanged,
                                    failed=report.failed, refresh=False)
    except KeyboardInterrupt:
        report.interrupted = True
        if responses is not None:
            responses.cancel()
    finally:
        bar.set_postfix(new=report.created, updated=report.updated, unchanged=report.unchanged,
                        failed=report.failed, refresh=False)
        bar.close()
        sink.close()
        report.seconds = time.perf_counter() - started
    return report


def _count(report: IngestReport, sink: _Sink, response, local_error: str | None) -> None:
    outcome = response.outcome
    if not response.ok or outcome == Outcome.FAILED:
        report.failed += 1
        sink.write("failures", {"id": response.product_id, "error": local_error or response.error})
        return
    if outcome == Outcome.UNCHANGED:
        report.unchanged += 1
    elif outcome == Outcome.UPDATED:
        report.updated += 1
    elif outcome == Outcome.SKIPPED_DUPLICATE:
        report.skipped += 1
    else:  # CREATED, or a gateway older than outcomes (ok=true)
        report.created += 1
    if response.duplicate_of:
        report.duplicates += 1
        sink.write("duplicates", {"id": response.product_id, "duplicate_of": response.duplicate_of,
                                  "exact": response.exact_duplicate,
                                  "similarity": round(float(response.duplicate_similarity), 4),
                                  "skipped": outcome == Outcome.SKIPPED_DUPLICATE})


def write_failures(report: IngestReport, path: Path) -> None:
    """One JSON line per failed item kept in the report: {"id": ..., "error": ...}."""
    with open(path, "w") as out:
        for failure in report.failures:
            out.write(json.dumps(failure) + "\n")
