"""Reading a catalogue for indexing: a folder of photos or a manifest, lazily, as CatalogueItems
(the product's metadata and where its photos are; lookalike.ingest streams them to the gateway).

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

Reading is lazy (a generator walks the folder or the manifest), so a catalogue of any size is read in
constant memory; ids are stable across runs, so indexing again resumes where it stopped.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.v1 import types_pb2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".ndjson"}


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
