"""How collections are named: the alias searches use, and collection names that carry the model id.

A catalogue lives in collections named ``<alias>__<model id>`` (``products__lookalike-lite0``), or
``<alias>__<model id>__<tag>`` for another copy built with the same model (``products__lookalike-lite0__r2``).
The alias (``products``) points at the active one. Vectors of different models are not comparable,
so whoever searches a collection embeds the query with the model its name carries.

A model id is the TorchServe model name, plus ``.<version>`` when a version is pinned
(``lookalike-lite0.2.0``): model names cannot contain dots, versions can.
"""
from __future__ import annotations

import re

SEPARATOR = "__"
DEFAULT_ALIAS = "products"
#: The embedder's TorchServe model name (lookalike_embedder.model.MODEL_NAME, without importing torch).
DEFAULT_MODEL_NAME = "lookalike-lite0"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def model_id(model_name: str = DEFAULT_MODEL_NAME, model_version: str = "") -> str:
    """``name`` or ``name.version``."""
    if not _MODEL_NAME.match(model_name or "") or SEPARATOR in model_name:
        raise ValueError(f"model name {model_name!r} must be letters, digits, '-' or '_' (no '__')")
    version = (model_version or "").strip()
    if version and (SEPARATOR in version or not NAME_PATTERN.match(version)):
        raise ValueError(f"model version {model_version!r} must be letters, digits, '.', '-' or '_'")
    return f"{model_name}.{version}" if version else model_name


def split_model_id(mid: str) -> tuple[str, str]:
    """(model name, model version) of a model id; the version is "" when none is pinned."""
    name, _, version = mid.partition(".")
    return name, version


def collection_name(alias: str, mid: str, tag: str = "") -> str:
    """``<alias>__<model id>[__<tag>]``."""
    if tag and not _TAG.match(tag):
        raise ValueError(f"collection tag {tag!r} must be letters, digits, '.' or '-'")
    name = f"{alias}{SEPARATOR}{mid}" + (f"{SEPARATOR}{tag}" if tag else "")
    if not NAME_PATTERN.match(name):
        raise ValueError(f"collection name {name!r} is not valid (letters, digits, '.', '-', '_'; <= 255)")
    return name


def model_of(collection: str, alias: str, default: str) -> str:
    """The model id a collection name carries; `default` for a name without one (a collection created
    before names carried the model, e.g. the alias name itself)."""
    prefix = alias + SEPARATOR
    if not collection.startswith(prefix):
        return default
    mid = collection[len(prefix):].split(SEPARATOR, 1)[0]
    return mid or default


def candidate_names(alias: str, mid: str):
    """Target names for a new build of `mid`, in order of preference: the plain name, then __r2, __r3..."""
    yield collection_name(alias, mid)
    n = 2
    while True:
        yield collection_name(alias, mid, f"r{n}")
        n += 1
