"""Writes a sample catalogue (<category>/<image>.png) from Debian's dataset-fashion-mnist.

Used when the clothing-small photos are not beside the checkout: `python scripts/sample_catalogue.py OUT [--per-class N]`.
Installs the Debian package when it is missing (needs root or sudo).
"""
from __future__ import annotations

import argparse
import gzip
import os
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def ensure_dataset() -> None:
    if (SOURCE / "t10k-images-idx3-ubyte.gz").exists():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def write_catalogue(out: Path, per_class: int, split: str = "t10k") -> int:
    """Writes `per_class` images of each class (upscaled to 112 px RGB PNG); returns the count."""
    ensure_dataset()
    images = _read_idx(SOURCE / f"{split}-images-idx3-ubyte.gz")
    labels = _read_idx(SOURCE / f"{split}-labels-idx1-ubyte.gz")
    written = 0
    for label, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            # Fashion-MNIST is white-on-black; catalogue photos are dark-on-white.
            pixels = 255 - images[index]
            Image.fromarray(pixels).convert("RGB").resize((112, 112), Image.BICUBIC).save(
                folder / f"{split}-{index:05d}.png")
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    print(f"wrote {write_catalogue(args.out, args.per_class)} images under {args.out}")


if __name__ == "__main__":
    main()
