"""The API's limits, one fact each: the gateway's REST and gRPC validation, the search service and the
OpenAPI spec all read them from here (a leaf module: it imports nothing of the project)."""
from __future__ import annotations

MAX_TOP_K = 1000  # results per search (top_k is 1..MAX_TOP_K)
DEFAULT_TOP_K = 10  # results per search when the caller sets none (the gateway's default_top_k default)
MAX_ID_LENGTH = 512  # characters in a product id; no control characters
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # one image (the gateway's max_upload_bytes default)
MULTIPART_SLACK_BYTES = 64 * 1024  # a REST body may exceed the image limit by this much (multipart framing)
MAX_GRPC_MESSAGE_BYTES = 64 * 1024 * 1024  # the largest gRPC message our clients send and our servers take by default
MAX_CATEGORY_BOOST = 10.0  # category_boost is 0..MAX_CATEGORY_BOOST
DEFAULT_CLASSIFY_TOP_K = 5  # labels per Classify when the caller sets none
MAX_IMAGES_PER_PRODUCT = 256  # photos of one product, at most (the search service's limit)
MAX_VECTORS_PER_SEARCH = 1024  # query vectors per SearchByVectors call (the search service's limit; callers batch by it)
MAX_SCROLL_LIMIT = 1000  # points per ScrollPoints page (the search service's limit: 1000 x 1280-d float32 = 5 MB)
DEFAULT_MAX_IMAGES_PER_PRODUCT = 32  # the gateway's max_images_per_product default
DEFAULT_MAX_PRODUCT_BYTES = 32 * 1024 * 1024  # a product's photos together (the gateway's max_product_bytes default); also
# the gateway's gRPC message limit, which gRPC applies to every method: a larger one would let a query upload
# of that size be read whole before SearchByImage refuses it
