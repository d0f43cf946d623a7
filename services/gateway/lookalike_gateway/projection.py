"""An adapted embedding space: a learned projection of the raw deep features, blended with them.

    y = normalise([ (1 - alpha) * x / |x|  ||  alpha * z / |z| ]),   z = (x - mean) @ matrix  (or an MLP)

so the cosine of two adapted vectors is a weighted blend of the plain cosine and the cosine in the learned
space: ((1-alpha)^2 cos_plain + alpha^2 cos_learned) / ((1-alpha)^2 + alpha^2). alpha = 1 searches the
learned space only; alpha = 0 the plain one. The blend keeps what the generic features know (similarity
within a label) and adds what the catalogue taught (which photos belong together).

Numpy only (the gateway projects query embeddings and new products with it). Saved as `<dir>/projection.npz`
(arrays, no pickle) and `<dir>/projection.json` (method, settings, report), like the classifiers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lookalike import atomic

FORMAT = 1
ARRAYS = "projection.npz"
META = "projection.json"


class ProjectionError(ValueError):
    """A projection that cannot be used (wrong input size, a corrupt or unknown file)."""


@dataclass
class Projection:
    """`mean` [d], `layers`: [(weight [in, out], bias [out])...] with ReLU between layers (a linear map is
    one layer without bias, an MLP several); `alpha` the blend weight of the learned part."""

    mean: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray]]
    alpha: float
    method: str = "lda"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.layers = [(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in self.layers]
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ProjectionError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.layers or self.layers[0][0].shape[0] != self.mean.shape[0]:
            raise ProjectionError("the first layer's input size must match the mean's")
        for (w, b), (w2, _) in zip(self.layers, self.layers[1:] + [(None, None)]):
            if b.shape != (w.shape[1],):
                raise ProjectionError(f"a bias of shape {b.shape} for a layer of {w.shape[1]} outputs")
            if w2 is not None and w2.shape[0] != w.shape[1]:
                raise ProjectionError("consecutive layers do not fit together")

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def learned_dim(self) -> int:
        return int(self.layers[-1][0].shape[1])

    @property
    def output_dim(self) -> int:
        return self.input_dim + self.learned_dim

    def learned(self, x: np.ndarray) -> np.ndarray:
        """The learned part z, unit rows (before blending)."""
        z = np.asarray(x, dtype=np.float32) - self.mean
        for i, (w, b) in enumerate(self.layers):
            z = z @ w + b
            if i < len(self.layers) - 1:
                np.maximum(z, 0.0, out=z)
        return _unit(z)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw features [n, d] or [d] -> adapted unit vectors [n, d + k] (or [d + k])."""
        x = np.asarray(x, dtype=np.float32)
        single = x.ndim == 1
        if single:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ProjectionError(f"features of size {x.shape[-1]} for a projection of size {self.input_dim}")
        a = float(self.alpha)
        out = np.concatenate([(1.0 - a) * _unit(x), a * self.learned(x)], axis=1)
        out = _unit(out)
        return out[0] if single else out

    def raw(self, y: np.ndarray) -> np.ndarray:
        """The raw unit feature an adapted vector was made from: its first `input_dim` components are
        (1 - alpha) * x / |x| scaled by one positive number, so they give x / |x| back exactly (float
        rounding aside). Stored adapted vectors therefore keep the raw ones: no second store needed."""
        y = np.asarray(y, dtype=np.float32)
        if y.shape[-1] != self.output_dim:
            raise ProjectionError(f"an adapted vector of size {y.shape[-1]}, expected {self.output_dim}")
        if self.alpha >= 1.0:
            raise ProjectionError("alpha 1 keeps no trace of the raw vector")
        return _unit(y[..., :self.input_dim])

    # ---- files -------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Writes the two files atomically (each through a temporary file and a rename)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"mean": self.mean}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"weight{i}"], arrays[f"bias{i}"] = w, b
        atomic.write_with(directory / ARRAYS, lambda out: np.savez(out, **arrays), fsync=False)
        meta = dict(self.meta, format=FORMAT, method=self.method, alpha=float(self.alpha), layers=len(self.layers),
                    input_dim=self.input_dim, learned_dim=self.learned_dim, output_dim=self.output_dim)
        atomic.write_text(directory / META, json.dumps(meta, indent=2, sort_keys=True), fsync=False)

    @classmethod
    def load(cls, directory: Path) -> Projection:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META).read_text())
            with np.load(directory / ARRAYS, allow_pickle=False) as data:
                layers = [(data[f"weight{i}"], data[f"bias{i}"]) for i in range(int(meta["layers"]))]
                mean = data["mean"]
        except (OSError, ValueError, KeyError) as exc:
            raise ProjectionError(f"cannot read the projection in {directory}: {exc}") from None
        if meta.get("format") != FORMAT:
            raise ProjectionError(f"projection format {meta.get('format')!r} in {directory} is not {FORMAT}")
        return cls(mean, layers, float(meta["alpha"]), str(meta.get("method", "")), meta)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
