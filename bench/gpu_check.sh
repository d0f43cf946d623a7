#!/usr/bin/env bash
# The embedder's GPU path, checked and measured on a machine with an NVIDIA GPU (run it when one is lent).
#
#   bench/gpu_check.sh [PYTHON]          # default .venv/bin/python; needs onnxruntime-gpu for the ORT CUDA path
#
# 1. what runs: nvidia-smi, torch.cuda, ONNX Runtime's providers;
# 2. the device the handler would pick for TorchServe's gpu_id 0 (lookalike_embedder.runtime.select_device);
# 3. vectors on the GPU (ORT CUDA provider, else eager CUDA) vs eager PyTorch on the CPU: cosine >= 0.99999
#    on real photos (clothing-small validation, else synthetic), else exit 1;
# 4. images/s at batch 1, 16, 64, 128 (model only), and decode + preprocess + model at batch 64 on CPU threads.
# Writes bench/results/gpu_check.json. Exit 0 = the GPU path works; 2 = no GPU here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || { echo "gpu_check: no nvidia-smi: no GPU on this machine"; exit 2; }
exec "$PY" - <<'PY'
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import torch
from lookalike_embedder import export, model as lk
from lookalike_embedder.preprocessing import prepare
from lookalike_embedder.runtime import OnnxRunner, TorchRunner, cuda_providers, select_device

out = {"torch_cuda": torch.cuda.is_available(), "ort_cuda_provider": cuda_providers()}
backend, device = select_device(0, "onnxruntime")
out.update(selected_backend=backend, selected_device=device)
print(json.dumps(out))
if device == "cpu":
    sys.exit("gpu_check: neither ONNX Runtime's CUDA provider nor torch.cuda can use the GPU")
eager = lk.load_model("cpu")
photos, real, source = export.check_photos(64)
batch = np.stack([prepare(p) for p in photos])
reference = TorchRunner(eager)(batch)
if backend == "onnxruntime":
    run = OnnxRunner(lk.export_onnx(eager), device=device)
    assert run.device == device, f"ORT fell back to {run.device}"
else:
    run = TorchRunner(lk.load_model(device), device)
cos = float((run(batch) * reference).sum(axis=1).min())
out.update(min_cosine_to_cpu_eager=cos, photos=len(photos), real_photos=real)
speed = {}
for size in (1, 16, 64, 128):
    x = np.repeat(batch, -(-size // len(batch)), axis=0)[:size]
    for _ in range(3):
        run(x)
    n = max(3, 512 // size)
    t = time.perf_counter()
    for _ in range(n):
        run(x)
    speed[size] = round(n * size / (time.perf_counter() - t), 1)
out["model_only_images_per_s"] = speed
threads = len(os.sched_getaffinity(0))
data = photos * 4
with ThreadPoolExecutor(threads) as pool:
    t = time.perf_counter()
    for i in range(0, len(data), 64):
        run(np.stack(list(pool.map(prepare, data[i:i + 64]))))
    out["decode_preprocess_model_images_per_s"] = round(len(data) / (time.perf_counter() - t), 1)
out["decode_threads"] = threads
print(json.dumps(out, indent=2))
os.makedirs("bench/results", exist_ok=True)
json.dump(out, open("bench/results/gpu_check.json", "w"), indent=2)
sys.exit(0 if cos >= export.MIN_COSINE else 1)
PY
