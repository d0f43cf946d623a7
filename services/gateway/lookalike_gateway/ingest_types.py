"""What the ingest pipeline takes and answers: items (a product and its images), per-item outcomes, and
the metadata comparison behind UNCHANGED."""
from __future__ import annotations

from dataclasses import dataclass, field

from lookalike.v1 import lookalike_pb2, types_pb2

from .errors import ApiError

Outcome = lookalike_pb2.UpsertProductsResponse.Outcome
CREATED, UPDATED, UNCHANGED, FAILED, SKIPPED = (Outcome.OUTCOME_CREATED, Outcome.OUTCOME_UPDATED,
                                                Outcome.OUTCOME_UNCHANGED, Outcome.OUTCOME_FAILED,
                                                Outcome.OUTCOME_SKIPPED_DUPLICATE)


def outcome_name(outcome: int) -> str:
    """The outcome's name without the enum prefix ("CREATED"): what REST answers and the metric label."""
    return Outcome.Name(outcome).removeprefix("OUTCOME_")


# attribute suffixes of a field the gateway predicted (classifier.annotate): "category_predicted" = "true",
# "category_probability" = "0.91"
PREDICTED_SUFFIX, PROBABILITY_SUFFIX = "_predicted", "_probability"


@dataclass
class IngestItem:
    product: types_pb2.Product
    image: bytes  # the main image
    skip_duplicates: bool = False
    more_images: list[bytes] = field(default_factory=list)  # images 1.. in order

    @property
    def images(self) -> list[bytes]:
        return [self.image, *self.more_images]


@dataclass
class IngestResult:
    """The acknowledgement of one item."""
    product_id: str
    outcome: int
    error: ApiError | None = None
    duplicate_of: str = ""
    exact_duplicate: bool = False
    duplicate_similarity: float = 0.0
    duplicate_image: int = 0  # which of its images is the duplicate
    embedded: bool = False  # a new embedding was computed for it (not reused, not from the cache)
    images: int = 0  # images stored for the product (CREATED, UPDATED, UNCHANGED)

    @property
    def ok(self) -> bool:
        return self.outcome != FAILED

    def to_proto(self) -> lookalike_pb2.UpsertProductsResponse:
        return lookalike_pb2.UpsertProductsResponse(
            product_id=self.product_id, error=self.error.message if self.error else "",
            outcome=self.outcome, duplicate_of=self.duplicate_of, exact_duplicate=self.exact_duplicate,
            duplicate_similarity=self.duplicate_similarity, duplicate_image=self.duplicate_image,
            images=self.images)


def image_hashes(product: types_pb2.Product) -> list[str]:
    """A stored product's image hashes, the main one first: `image_sha256s`, or only `image_sha256` where
    that list is empty (none when neither is set)."""
    return list(product.image_sha256s) or ([product.image_sha256] if product.image_sha256 else [])


def same_metadata(stored: types_pb2.Product, incoming: types_pb2.Product) -> bool:
    """Title, category, price and attributes equal (the id and image hash are compared elsewhere).

    A category the gateway predicted for a product sent without one (attributes `category_predicted`
    = "true" and `category_probability`) counts as the empty category it was sent with."""
    category, attributes = stored.category, dict(stored.attributes)
    if not incoming.category and attributes.get("category" + PREDICTED_SUFFIX) == "true":
        category = ""
        attributes.pop("category" + PREDICTED_SUFFIX, None)
        attributes.pop("category" + PROBABILITY_SUFFIX, None)
    if stored.title != incoming.title or category != incoming.category or attributes != dict(incoming.attributes):
        return False
    if stored.HasField("price") != incoming.HasField("price"):
        return False
    return not stored.HasField("price") or stored.price == incoming.price
