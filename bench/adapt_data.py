"""A multi-photo development catalogue made from clothing-small, and its features (cached).

clothing-small has one photo per product. A shop catalogue has several photos per product, taken at other
framings, lights and sides. Here each clothing-small photo is a *product*; its photos are `VIEWS` views
generated from it, deterministically from a seed (nothing is written to disk but the feature cache):

    0 the photo as it is            1 re-framed: a random crop of 45-80 % of the area
    2 mirrored and re-lit           3 re-framed on a background: shrunk, shifted, slightly rotated
    4 cropped, re-lit and gamma     5 low light, colour cast, blurred

Features are the served ones (lookalike_embedder FeatureExtractor, final cut; ONNX Runtime when
installed: cosine to eager > 0.99999), cached per (photo, view) in bench/results/features-adapt-*.npz.

    python bench/adapt_data.py [--products N]   # fills the cache
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402

from lookalike import atomic  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATASET, RESULTS, list_split  # noqa: E402

VIEWS = 6
SPLITS = ("train", "validation", "test")
CACHE = RESULTS / "features-adapt-v1.npz"


def log(msg: str) -> None:
    print(f"[adapt-data] {msg}", flush=True)


def clothing_photos(dataset: Path = DEFAULT_DATASET) -> tuple[list[Path], list[str], list[str]]:
    """Every clothing-small photo with its category and split, in a stable order."""
    paths, labels, splits = [], [], []
    for split in SPLITS:
        p, lab = list_split(dataset, split)
        paths += p
        labels += lab
        splits += [split] * len(p)
    return paths, labels, splits


def _relight(img, rng: random.Random, dark: bool = False):
    from PIL import ImageEnhance

    low, high = (0.45, 0.75) if dark else (0.7, 1.3)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(low, high))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    cast = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], dtype=np.float32)
    arr = np.asarray(img, dtype=np.float32) * cast
    from PIL import Image
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _crop(img, rng: random.Random, low: float, high: float):
    w, h = img.size
    area = rng.uniform(low, high) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, max(16, round(np.sqrt(area * aspect)))))
    ch = int(min(h, max(16, round(np.sqrt(area / aspect)))))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((left, top, left + cw, top + ch))


def make_view(img, view: int, seed: int):
    """View `view` (0..VIEWS-1) of an RGB PIL image, the same for the same seed."""
    from PIL import Image, ImageFilter, ImageOps

    rng = random.Random(seed * 1009 + view)
    if view == 0:
        return img
    if view == 1:
        return _crop(img, rng, 0.45, 0.8)
    if view == 2:
        return _relight(ImageOps.mirror(img), rng)
    if view == 3:
        w, h = img.size
        scale = rng.uniform(0.55, 0.8)
        small = img.resize((max(8, int(w * scale)), max(8, int(h * scale))), Image.BICUBIC)
        small = small.rotate(rng.uniform(-12, 12), resample=Image.BICUBIC, expand=True,
                             fillcolor=(255, 255, 255))
        tone = rng.randint(170, 250)
        canvas = Image.new("RGB", (w, h), (tone, tone - rng.randint(0, 20), tone - rng.randint(0, 30)))
        canvas.paste(small, (rng.randint(0, max(0, w - small.width)), rng.randint(0, max(0, h - small.height))))
        return canvas
    if view == 4:
        out = _relight(_crop(img, rng, 0.6, 0.9), rng)
        gamma = rng.uniform(0.7, 1.4)
        arr = 255.0 * (np.asarray(out, dtype=np.float32) / 255.0) ** gamma
        return Image.fromarray(arr.astype(np.uint8))
    if view == 5:
        out = _relight(img, rng, dark=True)
        return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.8)))
    raise ValueError(f"view {view} of {VIEWS}")


def dev_products(n_products: int, dataset: Path = DEFAULT_DATASET) -> tuple[list[Path], list[str]]:
    """`n_products` clothing-small photos (evenly spread over splits and categories) as products."""
    paths, labels, _ = clothing_photos(dataset)
    if n_products >= len(paths):
        return paths, labels
    step = len(paths) / n_products
    keep = [int(i * step) for i in range(n_products)]
    return [paths[i] for i in keep], [labels[i] for i in keep]


class AdaptFeatures:
    """{(photo path, view): 1280-d feature}, stored as one npz (keys "path|view")."""

    def __init__(self, path: Path = CACHE):
        self.path = path
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        if path.exists():
            data = np.load(path, allow_pickle=False)
            self.index = {str(k): i for i, k in enumerate(data["keys"])}
            self.vectors = data["vectors"]

    @staticmethod
    def key(path: Path, view: int) -> str:
        return f"{path}|{view}"

    def missing(self, items: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        return [(p, v) for p, v in items if self.key(p, v) not in self.index]

    def get(self, items: list[tuple[Path, int]]) -> np.ndarray:
        return self.vectors[[self.index[self.key(p, v)] for p, v in items]]

    def add(self, items: list[tuple[Path, int]], vectors: np.ndarray) -> None:
        base = len(self.index)
        for i, (p, v) in enumerate(items):
            self.index[self.key(p, v)] = base + i
        self.vectors = vectors if self.vectors.size == 0 else np.concatenate([self.vectors, vectors])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_with(self.path, lambda out: np.savez(out, keys=np.array(list(self.index), dtype=str),
                                                          vectors=self.vectors), fsync=False)


def ensure(items: list[tuple[Path, int]], batch: int = 32) -> AdaptFeatures:
    """Embeds the (photo, view) pairs not cached yet; returns the cache."""
    from lookalike.images import decode_image

    cache = AdaptFeatures()
    todo = sorted(cache.missing(items), key=lambda pv: (str(pv[0]), pv[1]))
    if not todo:
        return cache
    from lookalike_embedder.model import FeatureExtractor
    try:
        import onnxruntime  # noqa: F401
        backend = "onnxruntime"
    except ImportError:
        backend = "torch"
    extractor = FeatureExtractor(device="cpu", backend=backend)
    log(f"embedding {len(todo)} views with {backend} (cached in {cache.path})")
    started, decoded = time.perf_counter(), {}
    for lo in range(0, len(todo), batch):
        chunk = todo[lo:lo + batch]
        images = []
        for path, view in chunk:
            if path not in decoded:
                decoded.clear()
                decoded[path] = decode_image(path.read_bytes())
            images.append(make_view(decoded[path], view, view_seed(path)))
        cache.add(chunk, extractor.embed_images(images))
        done = lo + len(chunk)
        if done % (batch * 20) == 0 or done == len(todo):
            log(f"  {done}/{len(todo)} ({done / (time.perf_counter() - started):.1f} views/s)")
            cache.save()
    return cache


def view_seed(path: Path) -> int:
    """A seed from the photo's name (stable across runs and machines; Python's hash() is salted)."""
    import zlib
    return zlib.crc32(f"{path.parent.name}/{path.name}".encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1200)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    args = parser.parse_args()
    paths, _, _ = clothing_photos(args.dataset)
    products, _ = dev_products(args.products, args.dataset)
    items = [(p, 0) for p in paths] + [(p, v) for p in products for v in range(1, VIEWS)]
    ensure(items).save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
