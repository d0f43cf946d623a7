"""Model-only throughput of the embedder (no TorchServe, no image decoding).

    python -m lookalike_embedder.bench --batch-sizes 1 16 32 --n-images 64 [--cut final] [--threads 2] [--repeats 3]

Set OMP_WAIT_POLICY=PASSIVE in the environment when the CPUs are shared (see README.md).
"""
from __future__ import annotations

import argparse
import time

import torch

from lookalike_embedder import model as lk_model


def benchmark_model(batch_sizes=(1, 16, 32), n_images: int = 64, *, cut: str = lk_model.DEFAULT_CUT,
                    device: str | torch.device | None = None, num_threads: int | None = None,
                    warmup: int = 1, repeats: int = 1, verbose: bool = True) -> dict[int, float]:
    """Embeds `n_images` random preprocessed images at each batch size; returns {batch_size: images/s}.

    Measures the forward pass (+ L2 normalisation, + copy to numpy) only, after `warmup` untimed
    batches per size; with `repeats` > 1 keeps the best of several runs (useful on shared CPUs).
    With `verbose`, prints one line per batch size.
    """
    fx = lk_model.FeatureExtractor(device, cut, num_threads=num_threads)
    results: dict[int, float] = {}
    generator = torch.Generator().manual_seed(0)
    for bs in batch_sizes:
        bs = int(bs)
        batch = torch.rand((bs, 3, lk_model.IMAGE_SIZE, lk_model.IMAGE_SIZE), generator=generator) * 2 - 1
        for _ in range(warmup):
            fx.embed_batch(batch)
        n_batches = max(1, -(-int(n_images) // bs))
        elapsed = float("inf")
        for _ in range(max(1, int(repeats))):
            if fx.device.type == "cuda":
                torch.cuda.synchronize(fx.device)
            started = time.perf_counter()
            for _ in range(n_batches):
                fx.embed_batch(batch)  # returns numpy: includes the device->host copy (synchronises)
            elapsed = min(elapsed, time.perf_counter() - started)
        results[bs] = n_batches * bs / elapsed
        if verbose:
            print(f"{fx.model_version} device={fx.device} threads={torch.get_num_threads()} batch={bs:>3}: "
                  f"{results[bs]:8.1f} images/s ({1000 * elapsed / (n_batches * bs):.1f} ms/image, "
                  f"{n_batches * bs} images)", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--cut", default=lk_model.DEFAULT_CUT)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs per batch size")
    args = parser.parse_args(argv)
    benchmark_model(args.batch_sizes, args.n_images, cut=args.cut, device=args.device, num_threads=args.threads,
                    repeats=args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
