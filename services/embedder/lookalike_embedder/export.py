"""Build-time ONNX export and its check against eager PyTorch on real photos (used by build_mar.py).

    report = export_checked("out/model.onnx", cut="final", photos=check_photos())
    # writes the graph only when every photo's ONNX Runtime vector has cosine >= MIN_COSINE to eager

    report = check_onnx("their-model.onnx", spec, photos, dim=768)    # a bring-your-own model

Photos: `check_photos()` takes up to `n` photos spread over the classes of clothing-small's
validation split ($LOOKALIKE_CLOTHING_DIR or ../shared/datasets/clothing-small next to the repo);
without the dataset (a Docker build) it falls back to synthetic photo-like images and says so.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike_embedder.preprocessing import Preprocessing, prepare

#: Served (ONNX Runtime) vs eager PyTorch: the build refuses a graph below this on any check photo.
MIN_COSINE = 0.99999
_REPO = Path(__file__).resolve().parents[3]


class ExportCheckFailed(RuntimeError):
    """The exported model does not reproduce the eager vectors (or a BYO model is unusable)."""


@dataclass
class CheckReport:
    photos: int
    real_photos: bool
    min_cosine: float | None
    dim: int
    source: str

    def describe(self) -> str:
        kind = "real photos" if self.real_photos else "SYNTHETIC images (no photos found)"
        cos = "" if self.min_cosine is None else f", min cosine to eager {self.min_cosine:.7f}"
        return f"checked on {self.photos} {kind} ({self.source}): dim {self.dim}{cos}"


def _dataset_dirs() -> list[Path]:
    env = os.environ.get("LOOKALIKE_CLOTHING_DIR")
    roots = [Path(env)] if env else []
    roots.append(_REPO.parent / "shared" / "datasets" / "clothing-small")
    return [root / "validation" for root in roots]


def check_photos(n: int = 24, directory: str | os.PathLike | None = None) -> tuple[list[bytes], bool, str]:
    """(image bytes, real?, where from): up to `n` photos spread over the sub-directories of the
    first existing photo directory, else `n` synthetic JPEGs."""
    candidates = [Path(directory)] if directory else _dataset_dirs()
    for root in candidates:
        files = sorted(p for p in root.glob("**/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        if files:
            step = max(1, len(files) // n)
            picked = files[::step][:n]
            return [p.read_bytes() for p in picked], True, str(root)
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        size = (300 + 20 * (i % 5), 400 - 15 * (i % 7))
        buf = io.BytesIO()
        Image.fromarray(base, "RGB").resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, False, "synthetic"


def _batch(photos: list[bytes], spec: Preprocessing) -> np.ndarray:
    return np.stack([prepare(data, spec) for data in photos])


def export_checked(path: str | os.PathLike, *, cut: str = "final", weights: str | None = None,
                   photos: tuple[list[bytes], bool, str] | None = None, threads: int | None = None,
                   min_cosine: float = MIN_COSINE, preset: str = "lite0") -> CheckReport:
    """Exports the eager model (`preset`, default EfficientNet-Lite0, at `cut`) to ONNX at `path`, after
    checking ONNX Runtime's vectors against eager PyTorch's on the photos; raises ExportCheckFailed (and
    writes nothing) below `min_cosine`."""
    import torch

    from lookalike_embedder import model as lk_model
    from lookalike_embedder.presets import preset as get_preset
    from lookalike_embedder.runtime import OnnxRunner, TorchRunner, usable_cpus

    chosen = get_preset(preset)
    threads = threads or usable_cpus()
    torch.set_num_threads(threads)
    data, real, source = photos or check_photos()
    model = lk_model.load_model("cpu", cut, weights, arch=chosen.arch)
    graph = lk_model.export_onnx(model, chosen.spec.image_size)
    batch = _batch(data, chosen.spec)
    eager = TorchRunner(model)(batch)
    served = OnnxRunner(graph, threads=threads)(batch)
    cosines = (eager * served).sum(axis=1)
    worst = float(cosines.min())
    if not np.isfinite(cosines).all() or worst < min_cosine:
        raise ExportCheckFailed(f"the ONNX export of {model.model_version} gives vectors with cosine {worst:.7f} "
                                f"to eager PyTorch on {source} (refusing below {min_cosine})")
    Path(path).write_bytes(graph)
    return CheckReport(len(data), real, worst, int(served.shape[1]), source)


def check_onnx(path: str | os.PathLike, spec: Preprocessing, *, pooling: str = "auto", dim: int | None = None,
               photos: tuple[list[bytes], bool, str] | None = None) -> CheckReport:
    """A bring-your-own ONNX model: runs it on the photos with its declared preprocessing and pooling;
    raises ExportCheckFailed when it does not load, gives another dimension than declared, non-finite
    values, or the same vector for every photo."""
    from lookalike_embedder.runtime import OnnxRunner, usable_cpus

    data, real, source = photos or check_photos()
    try:
        vectors = OnnxRunner(path, threads=usable_cpus(), pooling=pooling)(_batch(data, spec))
    except Exception as exc:  # onnxruntime raises its own types; say which model and why
        raise ExportCheckFailed(f"{path}: cannot run it on {spec.image_size}x{spec.image_size} images with "
                                f"pooling {pooling!r}: {exc}") from exc
    if dim is not None and vectors.shape[1] != int(dim):
        raise ExportCheckFailed(f"{path}: declared dim {dim}, the model gives {vectors.shape[1]}")
    if not np.isfinite(vectors).all():
        raise ExportCheckFailed(f"{path}: non-finite values in the embeddings")
    if len(data) > 1 and float((vectors @ vectors.T).min()) > 0.99999:
        raise ExportCheckFailed(f"{path}: every photo gets the same vector (wrong input layout or normalisation?)")
    return CheckReport(len(data), real, None, int(vectors.shape[1]), source)


__all__ = ["MIN_COSINE", "ExportCheckFailed", "CheckReport", "check_photos", "export_checked", "check_onnx"]
