"""Vectors on the wire: packed little-endian float32."""
from __future__ import annotations

import numpy as np

WIRE_DTYPE = np.dtype("<f4")


def pack(vector) -> bytes:
    """Packs a 1-d float vector into little-endian float32 bytes."""
    return np.asarray(vector, dtype=WIRE_DTYPE).tobytes()


def unpack(data: bytes, dim: int | None = None) -> np.ndarray:
    """Unpacks bytes from `pack`; raises ValueError when the length is wrong."""
    if len(data) % 4:
        raise ValueError(f"vector byte length {len(data)} is not a multiple of 4")
    vector = np.frombuffer(data, dtype=WIRE_DTYPE)
    if dim is not None and vector.shape[0] != dim:
        raise ValueError(f"vector has {vector.shape[0]} dimensions, expected {dim}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("vector has non-finite values")
    return vector
