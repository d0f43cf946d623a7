"""The Lookalike gateway: public gRPC API, REST proxy and web UI, with a Redis cache of query embeddings."""
