"""Shared helpers of the benchmark suites: machine description, repeat statistics, timing, data sets.

Every suite reports a figure measured over R repeats as ``{"median", "min", "max", "q1", "q3", "runs"}``
(`summarize`); plots draw the median with a min..max bar. The machine is shared, so only ratios measured
within one run are meaningful.
"""
from __future__ import annotations

import io
import os
import platform
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see lookalike/torchserve_process.py
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: clothing-small beside the checkout ($LOOKALIKE_CLOTHING_DIR overrides it, as for the tests): every bench's default.
DEFAULT_DATASET = Path(os.environ.get("LOOKALIKE_CLOTHING_DIR")
                       or ROOT.parent / "shared" / "datasets" / "clothing-small")


# ----------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_mhz() -> float | None:
    """Nominal clock: BogoMIPS / 2 on x86 (the `cpu MHz` line of a VM is often the host's base clock)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("bogomips"):
                return float(line.split(":", 1)[1]) / 2
    except (OSError, ValueError):
        pass
    return None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict:
    """CPU model, cores, memory, load average now (call at the start of a suite)."""
    info = {"cpu_model": cpu_model(), "cores": usable_cpus(), "platform": platform.platform(),
            "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    flags = cpu_flags()
    info["simd"] = [f for f in ("avx512f", "avx2", "fma", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    mhz = cpu_mhz()
    if mhz:
        info["nominal_mhz"] = round(mhz)
        # fp32 FLOP per cycle per core: 2 FMA units x (16 lanes AVX-512 | 8 lanes AVX2) x 2
        lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
        fma_units = 2 if "fma" in flags else 1
        info["theoretical_peak_gflops"] = round(info["cores"] * fma_units * lanes * 2 * mhz / 1000, 1)
    try:
        import psutil
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    return info


def machine_line(info: dict) -> str:
    """One line for figure footers: CPU model, cores, load average at start."""
    load = info.get("load_average") or ["?"] * 3
    return (f"{info.get('cpu_model', '?')}, {info.get('cores', '?')} cores, "
            f"load avg (1/5/15 min) at start {load[0]}/{load[1]}/{load[2]}")


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- statistics

def summarize(values) -> dict:
    """Median, min, max and quartiles of the repeats of one figure (None values dropped)."""
    arr = np.array([float(v) for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"median": None, "min": None, "max": None, "q1": None, "q3": None, "runs": []}
    r = lambda x: round(float(x), 4)  # noqa: E731
    return {"median": r(np.median(arr)), "min": r(arr.min()), "max": r(arr.max()),
            "q1": r(np.percentile(arr, 25)), "q3": r(np.percentile(arr, 75)), "runs": [r(x) for x in arr]}


def latency_stats(samples_s) -> dict:
    """p50/p95/p99/mean in ms of one run's per-request latencies."""
    ms = np.array(samples_s, dtype=float) * 1000
    if ms.size == 0:
        return {"n": 0}
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def summarize_runs(runs: list[dict], keys) -> dict:
    """{key: summarize([run[key] for run in runs])} for the numeric keys of repeated runs."""
    return {k: summarize([run.get(k) for run in runs]) for k in keys}


def fmt(stat: dict | None, digits: int = 1) -> str:
    """'12.3 (11.0–13.1)' from a summarize() dict; single runs print just the value."""
    if not stat or stat.get("median") is None:
        return "–"
    med = f"{stat['median']:.{digits}f}"
    if len(stat.get("runs") or []) <= 1 or stat["min"] == stat["max"]:
        return med
    return f"{med} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


# ----------------------------------------------------------------------------- data

def list_split(dataset: Path, split: str) -> tuple[list[Path], list[str]]:
    """Image paths and their category labels of one split, in a stable order."""
    paths, labels = [], []
    for category in sorted(p for p in (dataset / split).iterdir() if p.is_dir()):
        for photo in sorted(category.iterdir()):
            paths.append(photo)
            labels.append(category.name)
    return paths, labels


def every_nth(items: list, n_wanted: int) -> list[int]:
    """Indices of about `n_wanted` evenly spaced items (a stratified subset of a category-sorted list)."""
    if n_wanted >= len(items):
        return list(range(len(items)))
    step = len(items) / n_wanted
    return [int(i * step) for i in range(n_wanted)]


def perturbed_jpeg(data: bytes, seed: int) -> bytes:
    """Unique bytes that look like the same photo: a random 1-4 px crop of one or two edges, maybe mirrored,
    re-encoded as JPEG q=90. Used for cache misses that are not in the cache and not in the catalogue."""
    from lookalike.images import decode_image

    rng = random.Random(seed)
    img = decode_image(data)
    w, h = img.size
    box = (rng.randint(0, 4), rng.randint(0, 4), w - rng.randint(1, 4), h - rng.randint(0, 4))
    img = img.crop(box)
    if rng.random() < 0.5:
        from PIL import ImageOps
        img = ImageOps.mirror(img)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


# ----------------------------------------------------------------------------- CPU per process

def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process and every process it started (the stack), by short name."""
    import psutil

    out: dict[str, float] = {}
    me = psutil.Process()
    for proc in [me] + me.children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        name = ("bench (client)" if proc.pid == me.pid else "torchserve worker" if "model_service_worker" in line
                else "torchserve java" if "java" in line else "gateway" if "lookalike_gateway" in line
                else "search" if "lookalike_search" in line else "redis" if "redis" in line else "other")
        out[name] = out.get(name, 0.0) + times.user + times.system + times.children_user + times.children_system
    return out


def cpu_delta(before: dict, after: dict, images: int) -> dict:
    return {name: round((after.get(name, 0) - before.get(name, 0)) / images * 1000, 2)
            for name in sorted(after) if after.get(name, 0) - before.get(name, 0) > 0.05}
