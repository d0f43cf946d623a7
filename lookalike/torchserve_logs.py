"""Reading a TorchServe run's logs: their tail (for error messages) and the count of images embedded (the
handler logs one line per batch, tagged lookalike_embedder.contract.BATCH_LOG_TAG, with n_ok=<n>; tests and
benches use the count to prove that a cache hit or a re-index did not reach the model)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from lookalike_embedder.contract import BATCH_LOG_PATTERN


def log_tail(log_dir: str | os.PathLike, lines: int = 40) -> str:
    """The last lines of torchserve.out, ts_log.log and model_log.log (for error messages)."""
    log_dir = Path(log_dir)
    parts = []
    for name in ("torchserve.out", "ts_log.log", "model_log.log"):
        path = log_dir / name
        if path.is_file():
            text = path.read_bytes()[-200_000:].decode("utf-8", "replace").splitlines()[-lines:]
            parts.append(f"----- {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(parts) or f"(no logs in {log_dir})"


def inference_count(log_dir: str | os.PathLike, settle_s: float = 0.3) -> int:
    """Images embedded by the model so far (rejected images and probes not counted).

    Sums the handler's per-batch log lines in model_log.log. Worker output reaches the log a
    little after the response, so this waits until the count is stable for `settle_s`.
    """
    path = Path(log_dir) / "model_log.log"

    def count() -> int:
        if not path.is_file():
            return 0
        text = path.read_text(errors="replace")
        return sum(int(m) for m in BATCH_LOG_PATTERN.findall(text))

    value, deadline = count(), time.monotonic() + max(2.0, 4 * settle_s)
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        again = count()
        if again == value:
            break
        value = again
    return value
