"""Prometheus metrics of the gateway.

The embedder's own metrics (batch sizes, queue time) come from TorchServe's loopback metrics API; with
LOOKALIKE_GATEWAY_EMBEDDER_METRICS_URL set, /metrics re-exports them (lookalike_gateway.embedder_metrics).
"""
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("lookalike_gateway_requests_total", "Requests by API, method and status",
                   ["api", "method", "status"])
LATENCY = Histogram("lookalike_gateway_request_seconds", "Request latency by API and method", ["api", "method"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CACHE_EVENTS = Counter("lookalike_gateway_cache_events_total",
                       "Query-embedding cache events (hit, miss, error, skipped, corrupt)", ["event"])
EMBEDDER_CALLS = Counter("lookalike_gateway_embedder_calls_total", "Images sent to the embedder", ["outcome"])
SEARCH_LATENCY = Histogram("lookalike_gateway_search_seconds", "Latency of calls to the search service", ["method"],
                           buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
UPSERTED = Counter("lookalike_gateway_products_upserted_total", "Products acknowledged by the search service")
INGESTED = Counter("lookalike_gateway_ingest_items_total",
                   "Ingested items by outcome (created, updated, unchanged, failed, skipped_duplicate)", ["outcome"])
DUPLICATES = Counter("lookalike_gateway_duplicates_total", "Duplicates found at ingest (exact: same image hash; "
                     "near: embedding within the duplicate distance)", ["kind"])
REINDEXED = Counter("lookalike_gateway_reindexed_total", "Products re-embedded into another collection")
EMBEDDER_QUEUE_DEPTH = Gauge("lookalike_gateway_embedder_queue_depth",
                             "Embed requests (one per image) this gateway has sent to the embedder and not had "
                             "answered yet: queries, ingest and reindex bursts together")
EMBEDDER_BATCH_SIZE = Histogram("lookalike_gateway_embedder_batch_size",
                                "Images sent to the embedder in one ingest burst (one concurrent burst per ingest "
                                "micro-batch, retries included; TorchServe re-batches them by its batchSize)",
                                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
EMBEDDER_METRICS_SCRAPES = Counter("lookalike_gateway_embedder_metrics_scrapes_total",
                                   "Reads of TorchServe's metrics API for re-export on /metrics, by outcome "
                                   "(ok, error: the embedder's metrics are then missing from that scrape)",
                                   ["outcome"])
