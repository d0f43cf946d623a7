"""Lookalike embedder: EfficientNet-Lite0 image embeddings served by TorchServe.

- `lookalike_embedder.model`   -- the model, preprocessing and `FeatureExtractor` (no TorchServe needed);
- `lookalike_embedder.handler` -- the TorchServe handler (the wire contract is documented there);
- `lookalike_embedder.bench`   -- `benchmark_model(batch_sizes, n_images)`.

services/embedder/build_mar.py packs the handler into lookalike-lite0.mar; clients talk to the
server through `lookalike.embedder_client.EmbedderClient`.
"""
