"""Lookalike embedder: EfficientNet-Lite0 image embeddings served by TorchServe.

- `lookalike_embedder.model`         -- the eager model, its ONNX export and `FeatureExtractor` (no TorchServe needed);
- `lookalike_embedder.preprocessing` -- `prepare(bytes, spec)`: the one decode + resize + normalise;
- `lookalike_embedder.runtime`       -- the backends (`OnnxRunner`, `TorchRunner`), pooling, device selection;
- `lookalike_embedder.handler`       -- the TorchServe handler (the wire contract is documented there);
- `lookalike_embedder.contract`      -- the contract's facts its clients and build_mar.py share (torch-free);
- `lookalike_embedder.export`, `.presets`, `.bench` -- build-time export check, Lite0/1/2, `benchmark_model`.

services/embedder/build_mar.py packs the handler into lookalike-lite0.mar; clients talk to the
server through `lookalike.embedder_client.EmbedderClient`.
"""
