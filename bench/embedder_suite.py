"""Embedder suite: model-only images/s vs batch size (eager PyTorch and faster CPU paths), decode+preprocess
cost, FLOPs and the practical CPU peak (the physical limit), TorchServe over gRPC (server batching) and
over REST at several concurrencies, and the CUDA run when a GPU is present.
"""
from __future__ import annotations

import os
import re
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads
import numpy as np  # noqa: E402

from common import list_split, load_now, summarize  # noqa: E402

BATCH_SIZES = (1, 4, 8, 16, 32)
CONCURRENCY = (1, 8, 32)


def log(msg: str) -> None:
    print(f"[embedder] {msg}", flush=True)


# ----------------------------------------------------------------------------- physical limit

def flops_per_image(model) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass at 224x224, counted by torch's FlopCounterMode
    (convolutions and matmuls; element-wise ops, pooling and BN are not counted)."""
    return flops_per_image_at(model, 224)


def flops_per_image_at(model, size: int) -> float:
    """`flops_per_image` at a `size` x `size` input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, 3, size, size))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def matmul_gflops(size: int = 2048, loops: int = 5) -> float:
    """fp32 GFLOP/s of a big square matmul with torch's threads (best of `loops`): the practical peak."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(loops):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


# ----------------------------------------------------------------------------- inputs

def sample_photos(dataset: Path, n: int, split: str = "validation") -> list[bytes]:
    paths, _ = list_split(dataset, split)
    step = max(1, len(paths) // n)
    return [p.read_bytes() for p in paths[::step][:n]]


def decode_preprocess_cost(photos: list[bytes]) -> dict:
    """ms/image of lookalike.images.decode_image and of model.preprocess (resize, crop, to tensor)."""
    from lookalike.images import decode_image
    from lookalike_embedder.model import preprocess

    decode_ms, prep_ms = [], []
    for data in photos:
        t0 = time.perf_counter()
        img = decode_image(data)
        t1 = time.perf_counter()
        preprocess(img)
        t2 = time.perf_counter()
        decode_ms.append((t1 - t0) * 1000)
        prep_ms.append((t2 - t1) * 1000)
    sizes = [len(d) for d in photos]
    return {"decode_ms": round(statistics.median(decode_ms), 2), "preprocess_ms": round(statistics.median(prep_ms), 2),
            "total_ms": round(statistics.median([a + b for a, b in zip(decode_ms, prep_ms)]), 2),
            "images": len(photos), "median_jpeg_kb": round(statistics.median(sizes) / 1024, 1)}


def real_batch(photos: list[bytes]):
    import torch

    from lookalike.images import decode_image
    from lookalike_embedder.model import preprocess

    return torch.stack([preprocess(decode_image(d)) for d in photos])


# ----------------------------------------------------------------------------- backends

def make_backends(names: list[str], calibration=None) -> dict:
    """{name: (embed_batch callable, note)}; a backend that cannot be built is returned as an error string."""
    import torch

    from lookalike_embedder.model import FeatureExtractor

    out: dict = {}
    eager = FeatureExtractor("cpu")
    for name in names:
        try:
            if name == "eager":
                out[name] = (eager.embed_batch, "PyTorch eager, channels_last (the served path)")
            elif name == "onnxruntime":
                fx = FeatureExtractor("cpu", backend="onnxruntime")
                out[name] = (fx.embed_batch, "ONNX Runtime fp32 (FeatureExtractor(backend='onnxruntime'))")
            elif name == "torch.compile":
                compiled = torch.compile(eager.model, dynamic=False)

                def run_compiled(batch, _m=compiled):
                    with torch.inference_mode():
                        return _m(batch).numpy()
                out[name] = (run_compiled, "torch.compile (inductor, dynamic=False: one compile per batch size)")
            elif name == "onnxruntime-int8":
                out[name] = (ort_int8(eager.model, calibration), "ONNX Runtime static int8 (QDQ, per-channel, "
                             "calibrated on 32 validation photos)")
            elif name == "torch-int8-dynamic":
                q = torch.ao.quantization.quantize_dynamic(eager.model, {torch.nn.Linear}, dtype=torch.qint8)
                changed = any("quantized" in type(m).__module__ for m in q.modules())

                def run_q(batch, _m=q):
                    with torch.inference_mode():
                        return _m(batch).numpy()
                out[name] = (run_q, "torch dynamic int8 (Linear only): "
                             + ("quantized some layers" if changed else "no Linear layer in the cut model: no-op"))
        except Exception as exc:  # noqa: BLE001 - report, don't fail the run
            out[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def ort_int8(model, calibration):
    """ONNX Runtime session of the model quantized to int8 (static, QDQ) with `calibration` batches."""
    import io
    import warnings

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tmp = Path(tempfile.mkdtemp(prefix="lk-int8-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(model, torch.zeros((1, 3, 224, 224)), buf, input_names=["image"],
                          output_names=["embedding"], dynamic_axes={"image": {0: "n"}, "embedding": {0: "n"}},
                          dynamo=False)
    (tmp / "fp32.onnx").write_bytes(buf.getvalue())
    from onnxruntime.quantization.shape_inference import quant_pre_process
    quant_pre_process(str(tmp / "fp32.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": calibration[i:i + 1].numpy()} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(tmp / "pre.onnx"), str(tmp / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(tmp / "int8.onnx"), options, providers=["CPUExecutionProvider"])

    def run(batch):
        out = session.run(None, {"image": batch.numpy()})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)
    return run


def time_batch(fn, batch, n_images: int) -> float:
    """images/s of `fn` on repeated `batch`es covering ~n_images, after one untimed warm-up call."""
    fn(batch)
    n_batches = max(1, -(-n_images // batch.shape[0]))
    started = time.perf_counter()
    for _ in range(n_batches):
        fn(batch)
    return n_batches * batch.shape[0] / (time.perf_counter() - started)


def model_only(backends: dict, batch_sizes, n_images: int, repeats: int, only_sizes: dict | None = None) -> dict:
    """images/s per backend and batch size; repeats interleave the backends so they see the same load."""
    import torch

    gen = torch.Generator().manual_seed(0)
    batches = {bs: torch.rand((bs, 3, 224, 224), generator=gen) * 2 - 1 for bs in batch_sizes}
    runs: dict = {name: {bs: [] for bs in batch_sizes} for name in backends}
    peaks = []
    for rep in range(repeats):
        peaks.append(matmul_gflops())  # the practical peak under the same load as this repeat
        for name, fn in backends.items():
            for bs in (only_sizes or {}).get(name, batch_sizes):
                try:
                    runs[name][bs].append(time_batch(fn, batches[bs], n_images))
                except Exception as exc:  # noqa: BLE001
                    log(f"{name} b{bs} failed: {type(exc).__name__}: {str(exc)[:200]}")
            log(f"model-only repeat {rep + 1}/{repeats} {name}: "
                + ", ".join(f"b{bs}={v[-1]:.1f}" for bs, v in runs[name].items() if v) + " images/s")
    out = {name: {str(bs): summarize(v) for bs, v in per.items() if v} for name, per in runs.items()}
    return out, peaks


def cosine_to_reference(backends: dict, batch) -> dict:
    """Min/mean cosine of each backend's vectors to eager's, on real photos (chunks of 8: torch.compile
    with dynamic=False compiles once per batch size, and 8 is one of the timed sizes)."""
    def run_chunks(fn):
        return np.concatenate([np.asarray(fn(batch[i:i + 8]), dtype=np.float32) for i in range(0, len(batch), 8)])

    ref = run_chunks(backends["eager"])
    out = {}
    for name, fn in list(backends.items()):
        try:
            vec = run_chunks(fn)
        except Exception as exc:  # noqa: BLE001 - e.g. a compiler missing for torch.compile
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            del backends[name]
            continue
        vec = vec / np.linalg.norm(vec, axis=1, keepdims=True)
        cos = (vec * ref).sum(axis=1)
        out[name] = {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}
    return out


# ----------------------------------------------------------------------------- TorchServe

def batch_sizes_seen(log_path: Path, since: int) -> tuple[list[int], int]:
    """Batch sizes of the handler's per-batch log lines written after byte offset `since`."""
    if not log_path.is_file():
        return [], since
    data = log_path.read_bytes()
    sizes = [int(m) for m in re.findall(rb"lookalike-embedded-batch n_ok=(\d+)", data[since:])]
    return sizes, len(data)


def nodelay_transport():
    """httpx transport with TCP_NODELAY, as curl and browsers use: without it the request body waits for
    the server's delayed ACK of the headers (~40 ms per request on Linux), which is the client's cost."""
    import socket

    import httpx
    return httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


def rest_embed(url: str, key: str, photos: list[bytes], concurrency: int, as_json: bool = True) -> tuple[float, list]:
    """POSTs every photo to /predictions/lookalike-lite0 (raw bytes, application/octet-stream) from
    `concurrency` threads; the handler answers the raw float32 bytes, which the client turns into a JSON
    list (what a JSON API would carry). Returns (seconds, per-request latencies)."""
    import json

    import httpx

    local = threading.local()

    def one(data: bytes) -> float:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=120, transport=nodelay_transport(),
                                                 headers={"Authorization": f"Bearer {key}"})
        started = time.perf_counter()
        response = client.post("/predictions/lookalike-lite0", content=data,
                               headers={"Content-Type": "application/octet-stream"})
        response.raise_for_status()
        vector = np.frombuffer(response.content, dtype="<f4")
        if as_json:
            json.loads(json.dumps(vector.tolist()))
        if vector.shape[0] != 1280:
            raise RuntimeError(f"unexpected answer: {response.content[:200]!r}")
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, photos))
    return time.perf_counter() - started, latencies


def torchserve_suite(photos: list[bytes], n_per_run: dict, repeats: int) -> dict:
    """gRPC (EmbedderClient.embed_many with max_in_flight=c) and REST at each concurrency c."""
    from lookalike.torchserve_process import TorchServeProcess

    result: dict = {"grpc": {}, "rest": {}, "load_at_start": load_now()}
    with tempfile.TemporaryDirectory(prefix="lkb-ts-") as tmp:
        ts = TorchServeProcess(Path(tmp))
        ts.start()
        result["cold_start_s"] = round(ts.ready_after_s or 0, 2)
        try:
            info = ts.describe_model()
            result["server_batching"] = {"batchSize": info.get("batchSize"), "maxBatchDelay": info.get("maxBatchDelay")}
        except Exception:  # noqa: BLE001
            pass
        log_path = ts.log_dir / "model_log.log"
        client = ts.client()
        deadline = time.monotonic() + 120
        while True:  # warm-up; under load the first connection can time out before Java answers
            try:
                client.embed(photos[0], timeout=30)
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        client.embed_many(photos[:8], timeout=120, max_in_flight=8)
        _, offset = batch_sizes_seen(log_path, 0)
        runs: dict = {(p, c): [] for p in ("grpc", "rest") for c in CONCURRENCY}
        seen: dict = {(p, c): [] for p in ("grpc", "rest") for c in CONCURRENCY}
        k = 0
        failures: dict = {}
        for rep in range(repeats):
            for conc in CONCURRENCY:
                for proto in ("grpc", "rest"):
                    n = n_per_run[conc]
                    chunk = [photos[(k + i) % len(photos)] for i in range(n)]
                    k += n
                    if proto == "grpc":
                        started = time.perf_counter()
                        out = client.embed_many(chunk, timeout=600, max_in_flight=conc)
                        seconds = time.perf_counter() - started
                        errors = [r for r in out if isinstance(r, Exception)]
                        if errors:
                            log(f"gRPC: {len(errors)} of {n} failed, e.g. {errors[0]!r}"[:400])
                            failures[(proto, conc)] = failures.get((proto, conc), 0) + len(errors)
                        lat = None
                    else:
                        seconds, lat = rest_embed(ts.http_url, ts.inference_key, chunk, conc)
                    time.sleep(0.5)  # let the worker's log lines land
                    sizes, offset = batch_sizes_seen(log_path, offset)
                    seen[(proto, conc)] += sizes
                    figure = {"images_per_s": n / seconds}
                    if lat:
                        figure.update({"p50_ms": 1000 * float(np.percentile(lat, 50)),
                                       "p99_ms": 1000 * float(np.percentile(lat, 99))})
                    runs[(proto, conc)].append(figure)
                    log(f"torchserve {proto} c={conc} rep {rep + 1}: {n / seconds:.1f} images/s "
                        f"(server batches: mean {np.mean(sizes) if sizes else 0:.1f})")
        client.close()
        ts.stop()
    for (proto, conc), figures in runs.items():
        entry = {key: summarize([f.get(key) for f in figures]) for key in figures[0]}
        entry["n_per_run"] = n_per_run[conc]
        sizes = seen[(proto, conc)]
        entry["server_batch_mean"] = round(float(np.mean(sizes)), 2) if sizes else None
        entry["server_batch_max"] = max(sizes) if sizes else None
        entry["failed_requests"] = failures.get((proto, conc), 0)
        result[proto][str(conc)] = entry
    return result


# ----------------------------------------------------------------------------- GPU

def cuda_suite(batch_sizes=BATCH_SIZES, n_images: int = 256, repeats: int = 3) -> dict:
    """Model-only images/s on CUDA (fp32, and fp16 autocast) when a GPU is present; else a skip note."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
    from lookalike_embedder.bench import benchmark_model

    runs = [benchmark_model(batch_sizes, n_images, device="cuda", verbose=False) for _ in range(repeats)]
    return {"device": torch.cuda.get_device_name(0),
            "images_per_s": {str(bs): summarize([r[bs] for r in runs]) for bs in batch_sizes}}


# ----------------------------------------------------------------------------- suite

def run(dataset: Path, quick: bool, repeats: int) -> dict:
    import torch

    from lookalike_embedder.model import load_model

    result: dict = {"load_at_start": load_now(), "torch_threads": torch.get_num_threads()}
    log("FLOPs and matmul peak")
    model = load_model("cpu")
    flops = flops_per_image(model)
    result["flops_per_image_g"] = round(flops / 1e9, 4)

    photos = sample_photos(dataset, 48 if quick else 96)
    log("decode + preprocess cost")
    result["decode_preprocess"] = decode_preprocess_cost(photos)

    names = ["eager", "onnxruntime"] + ([] if quick else ["torch.compile", "onnxruntime-int8", "torch-int8-dynamic"])
    real = real_batch(photos[:32])
    log(f"building backends {names}")
    built = make_backends(names, calibration=real)
    backends = {n: b[0] for n, b in built.items() if isinstance(b, tuple)}
    result["backends"] = {n: (b[1] if isinstance(b, tuple) else {"error": b}) for n, b in built.items()}
    cos = cosine_to_reference(backends, real)
    result["cosine_to_eager"] = cos
    # Only time what is within tolerance or worth showing; torch.compile at 2 sizes (each size compiles).
    only = {"torch.compile": (1, 8), "onnxruntime-int8": (1, 8), "torch-int8-dynamic": (1, 8)}
    log("model-only images/s")
    result["model_only"], peaks = model_only(backends, BATCH_SIZES, 32 if quick else 64, repeats, only)
    # measured inside every repeat, so the peak sees the same load as the models; the best repeat is the
    # closest to the machine's real capacity
    result["matmul_peak_gflops"] = summarize(peaks)
    result["ceiling_images_per_s"] = round(max(peaks) * 1e9 / flops, 1)
    eager = result["model_only"]["eager"]
    best_bs = max(eager, key=lambda b: eager[b]["median"])
    result["eager_best_batch"] = int(best_bs)
    result["model_only"] = {n: per for n, per in result["model_only"].items() if per}
    result["utilisation_of_peak"] = {
        name: round(max(v["median"] for v in per.values()) * flops / 1e9 / max(peaks), 3)
        for name, per in result["model_only"].items()}
    # "faster": at the batch sizes both ran, the backend's best median beats eager's best median there
    chosen = []
    for n, per in result["model_only"].items():
        if n in ("eager", "torch-int8-dynamic") or cos.get(n, {}).get("min", 0) < 0.999:
            continue  # torch-int8-dynamic quantizes nothing here (no Linear layer): same model as eager
        if max(v["median"] for v in per.values()) > max(eager[b]["median"] for b in per):
            chosen.append(n)
    result["faster_within_tolerance"] = chosen

    log("TorchServe gRPC/REST")
    n_per_run = {1: 8, 8: 16, 32: 32} if quick else {1: 24, 8: 48, 32: 64}
    ts_photos = sample_photos(dataset, 120, "test")
    result["torchserve"] = torchserve_suite(ts_photos, n_per_run, repeats)
    result["cuda"] = cuda_suite(repeats=repeats)
    return result
