"""Adapted embeddings: the projection (maths, files, raw recovery), the splits and the gate, and the whole
`adapt` flow through the gateway over in-memory fakes (build, switch, serve, ingest later, adapt again,
back to plain, refusal)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike.v1 import lookalike_pb2, types_pb2
from lookalike.vectors import unpack
from lookalike_gateway import adapt_fit
from lookalike_gateway.adapt_eval import make_split, regressions, retrieval, split_figures
from lookalike_gateway.adaptation import Adapter
from lookalike_gateway.errors import Deadline
from lookalike_gateway.projection import Projection, ProjectionError

from .gateway_fakes import FakeEmbedder, FakeSearch, make_gateway, png
from .gateway_fakes import ingest as ingest_items

DIM = 16


def grouped(n_groups: int, per_group: int, seed: int = 0, signal: float = 0.5):
    """Vectors whose group shows in 4 dimensions only, under strong photo-specific noise in the others:
    plain cosine confuses groups, a discriminant projection separates them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_groups, 4))
    x = rng.normal(0, 1.0, (n_groups * per_group, DIM))
    labels = np.repeat(np.arange(n_groups), per_group)
    x[:, :4] = signal * centres[labels] + rng.normal(0, 0.05, (len(x), 4))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_projection_blends_round_trips_files_and_gives_the_raw_vector_back(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, DIM)).astype(np.float32)
    p = Projection(rng.normal(size=DIM), [(rng.normal(size=(DIM, 6)), np.zeros(6))], alpha=0.7)
    y = p.apply(x)
    assert y.shape == (5, DIM + 6) and np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    raw = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(p.raw(y), raw, atol=1e-6)  # no second store of raw vectors needed
    # cosine of adapted vectors = weighted blend of the plain and the learned cosines
    z = p.learned(x)
    blend = (0.09 * raw[0] @ raw[1] + 0.49 * z[0] @ z[1]) / 0.58
    assert y[0] @ y[1] == pytest.approx(blend, abs=1e-5)
    assert np.allclose(p.apply(x[0]), y[0])
    p.save(tmp_path / "a")
    assert not list((tmp_path / "a").glob("*.tmp*"))
    q = Projection.load(tmp_path / "a")
    assert np.allclose(q.apply(x), y) and q.alpha == 0.7
    with pytest.raises(ProjectionError, match="size"):
        p.apply(np.ones(DIM + 1))
    with pytest.raises(ProjectionError):
        Projection.load(tmp_path / "missing")
    (tmp_path / "a" / "projection.json").write_text(json.dumps({"format": 99, "layers": 1, "alpha": 0.5}))
    with pytest.raises(ProjectionError, match="format"):
        Projection.load(tmp_path / "a")
    with pytest.raises(ProjectionError, match="alpha"):
        Projection(np.zeros(DIM), [(np.ones((DIM, 2)), np.zeros(2))], alpha=1.5)


def test_split_keeps_queries_and_left_out_groups_out_of_the_fit():
    _, labels = grouped(30, 4)
    split = make_split(labels, group_holdout=0.2, seed=0)
    fit = set(split.fit.tolist())
    assert not fit & set(split.seen.tolist()) and not fit & set(split.unseen.tolist())
    fit_groups = set(labels[split.fit].tolist())
    assert not fit_groups & set(labels[split.unseen].tolist())  # unseen = groups left out entirely
    assert set(labels[split.seen].tolist()) <= fit_groups
    assert len(split.unseen) == 6 and len(split.seen) == 24
    assert set(split.gallery.tolist()) == set(range(len(labels))) - set(split.seen) - set(split.unseen)


def test_retrieval_figures_on_a_known_case():
    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2]]
    x[1] = [0.9, 0.1, 0, 0]
    labels = ["a", "a", "b", "b", "c"]
    figures = retrieval(x / np.linalg.norm(x, axis=1, keepdims=True), labels, np.array([0, 2]), np.array([1, 3, 4]))
    assert figures == {"p@1": 1.0, "r@5": 1.0, "map": 1.0, "queries": 2}


def test_lda_improves_held_out_photos_and_groups_and_the_gate_sees_a_bad_fit():
    x, labels = grouped(60, 5)
    split = make_split(labels, seed=1)
    before = split_figures(x, labels, split)
    p = adapt_fit.fit(x[split.fit], labels[split.fit], {"method": "lda", "dim": 8, "shrinkage": 0.1, "alpha": 0.8})
    after = split_figures(p.apply(x), labels, split)
    assert after["seen"]["p@1"] > before["seen"]["p@1"] + 0.2
    assert after["unseen"]["p@1"] > before["unseen"]["p@1"] + 0.2  # not memorisation
    assert regressions(before, after) == []
    shuffled = np.random.default_rng(0).permutation(labels)
    bad = adapt_fit.fit(x[split.fit], shuffled[split.fit], {"method": "lda", "dim": 8, "alpha": 0.95})
    assert regressions(before, split_figures(bad.apply(x), labels, split))


def test_adapt_selects_reports_and_refuses_too_few_groups():
    x, labels = grouped(50, 4)
    projection, report = adapt_fit.adapt(x, labels, trials=adapt_fit.candidates(dims=(4, 8), shrinkages=(0.1,)))
    assert projection is not None and report["chosen"]["method"] == "lda"
    assert report["after"]["seen"]["p@1"] > report["before"]["seen"]["p@1"]
    assert report["regressions"] == [] and len(report["validation_table"]) == 1 + 2 * len(adapt_fit.DEFAULT_ALPHAS)
    assert projection.alpha < 1  # served projections keep the raw vector recoverable
    with pytest.raises(adapt_fit.AdaptError, match="two or more photos"):
        adapt_fit.adapt(x[:10], np.arange(10))


# ---- the flow through the gateway ---------------------------------------------------------------------

def catalogue(n_groups: int, per_group: int, seed: int, first_group: int = 0, signal: float = 0.5):
    x, labels = grouped(n_groups, per_group, seed, signal)
    items, vectors = [], {}
    for i, (v, g) in enumerate(zip(x, labels)):
        image = png(seed * 100_000 + i)
        vectors[image] = v
        sku = f"g{first_group + g}"
        items.append((types_pb2.Product(id=f"{sku}-{i}", title=sku, attributes={"sku": sku}), image))
    return items, vectors


def ingest(gateway, items):
    return ingest_items(gateway, items, deadline_s=30.0)


class Done:
    """An adaptation's result, as attributes (plus the parsed report)."""

    def __init__(self, result: dict):
        self.__dict__.update(result)


def run(gateway, **request):
    seen = []
    result = Adapter(gateway.search, gateway.collections).run(lookalike_pb2.StartAdaptationRequest(**request),
                                  lambda fraction, stage=None: seen.append(fraction))
    assert seen == sorted(seen) and all(0 <= f <= 1 for f in seen)  # progress never goes back
    json.dumps(result)  # a job's result is JSON
    return Done(result)


def test_adapt_builds_switches_serves_ingests_adapts_again_and_goes_back_to_plain(tmp_path):
    items, vectors = catalogue(40, 4, seed=1)
    later, more = catalogue(10, 4, seed=2, first_group=40)
    embedder = FakeEmbedder({**vectors, **more}, dim=DIM)
    gateway = make_gateway(tmp_path, embedder=embedder, search=FakeSearch())
    ingest(gateway, items)
    plain = "products__lookalike-lite0"

    done = run(gateway, label_field="attributes.sku", activate=True)
    report = done.report
    assert done.activated and done.collection == "products__lookalike-lite0__a1" and done.previous == plain
    assert report["regressions"] == [] and report["after"]["seen"]["p@1"] > report["before"]["seen"]["p@1"]
    assert gateway.collections.active().collection == done.collection
    stored = gateway.search.stub.collections[done.collection]
    assert len(stored) == len(items)
    projection = gateway.collections.active().projection
    some = stored[items[0][0].id]
    assert len(unpack(some.vector)) == projection.output_dim
    assert np.allclose(projection.raw(unpack(some.vector)), vectors[items[0][1]], atol=1e-5)
    assert (tmp_path / "adaptations" / done.collection / "projection.npz").exists()

    # a query is projected (the cache keeps raw vectors): a photo of a stored product finds its group
    query = items[5][1]
    found = gateway.search_by_image(query, 4, types_pb2.Filter(), Deadline(10), category_boost=0).results
    assert found[0].product.id == items[5][0].id
    assert [r.product.attributes["sku"] for r in found[:2]] == [items[5][0].attributes["sku"]] * 2

    # products added later are projected at ingest and searchable at once; a metadata-only change keeps them
    ingest(gateway, later)
    stored = gateway.search.stub.collections[done.collection]
    assert len(stored) == len(items) + len(later)
    new = stored[later[0][0].id]
    assert np.allclose(projection.raw(unpack(new.vector)), more[later[0][1]], atol=1e-5)
    changed = types_pb2.Product()
    changed.CopyFrom(later[0][0])
    changed.title = "renamed"
    ingest(gateway, [(changed, later[0][1])])
    assert np.allclose(unpack(gateway.search.stub.collections[done.collection][changed.id].vector), unpack(new.vector),
                       atol=1e-6)
    found = gateway.search_by_image(later[1][1], 1, types_pb2.Filter(), Deadline(10), category_boost=0).results
    assert found[0].product.id == later[1][0].id

    # adapt again: learnt from the active (adapted) collection's raw vectors, later products included
    again = run(gateway, label_field="attributes.sku", activate=True)
    assert again.activated and again.collection == "products__lookalike-lite0__a2" and again.previous == done.collection
    assert again.report["photos"] == len(items) + len(later)
    assert len(gateway.search.stub.collections[again.collection]) == len(items) + len(later)

    # back to plain: the plain collection brought up to date with the raw vectors (later products included)
    back = run(gateway, plain=True, activate=True)
    assert back.activated and back.collection == plain
    assert gateway.collections.active().projection is None
    restored = gateway.search.stub.collections[plain]
    assert len(restored) == len(items) + len(later)
    assert np.allclose(unpack(restored[later[2][0].id].vector), more[later[2][1]], atol=1e-5)
    assert restored[changed.id].product.title == "renamed"
    found = gateway.search_by_image(later[3][1], 1, types_pb2.Filter(), Deadline(10), category_boost=0).results
    assert found[0].product.id == later[3][0].id


def test_the_gate_refuses_an_adaptation_that_makes_held_out_figures_worse_unless_forced(tmp_path, monkeypatch):
    items, vectors = catalogue(40, 4, seed=4, signal=3.0)  # the plain space already works well
    gateway = make_gateway(tmp_path, embedder=FakeEmbedder(vectors, dim=DIM), search=FakeSearch())
    ingest(gateway, items)
    # a bad procedure: chosen regardless of validation, fitted on shuffled labels
    fit = adapt_fit.fit
    rng = np.random.default_rng(0)
    monkeypatch.setattr(adapt_fit, "select", lambda *a, **k: (
        {"method": "lda", "dim": 8, "shrinkage": 0.1, "alpha": 0.9}, [], {}))
    monkeypatch.setattr(adapt_fit, "fit", lambda x, labels, settings: fit(x, rng.permutation(labels), settings))
    before = dict(gateway.search.stub.collections)
    done = run(gateway, label_field="attributes.sku", activate=True)
    assert not done.activated and not done.collection
    assert done.regressions and "got worse" in done.refused
    assert gateway.search.stub.collections.keys() == before.keys()  # nothing built
    assert gateway.collections.active().collection == "products__lookalike-lite0"
    reports = list((tmp_path / "adaptations" / "reports").glob("*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["activated"] is False

    forced = run(gateway, label_field="attributes.sku", activate=True, force=True)
    assert forced.activated and forced.regressions  # built and switched, the regressions still reported
    assert gateway.collections.active().collection == forced.collection


def test_plain_when_already_plain_and_unknown_label_fields_are_clear_errors(tmp_path):
    from lookalike_gateway.errors import ApiError

    items, vectors = catalogue(5, 2, seed=5)
    gateway = make_gateway(tmp_path, embedder=FakeEmbedder(vectors, dim=DIM), search=FakeSearch())
    ingest(gateway, items)
    with pytest.raises(ApiError, match="already in the plain space"):
        run(gateway, plain=True, activate=True)
    with pytest.raises(ApiError, match="label field"):
        run(gateway, label_field="colour", activate=True)
    with pytest.raises(ApiError, match="no labelled vectors"):
        run(gateway, label_field="category", activate=True)  # no product has a category
    with pytest.raises(ApiError, match="at least 2 labels"):
        run(gateway, label_field="product", activate=True)  # one photo per product: nothing to learn


def test_adaptation_runs_as_a_job_with_progress_and_a_json_result(tmp_path):
    from lookalike_gateway.adaptation_api import AdaptationService, get_response
    from lookalike_gateway.errors import ApiError
    from lookalike_gateway.jobs import JobState

    items, vectors = catalogue(30, 4, seed=6)
    gateway = make_gateway(tmp_path, embedder=FakeEmbedder(vectors, dim=DIM), search=FakeSearch())
    ingest(gateway, items)
    service = AdaptationService(gateway.search, gateway.collections)
    with pytest.raises(ApiError, match="label field"):  # checked before a job starts
        service.start(lookalike_pb2.StartAdaptationRequest(label_field="colour"))
    job = service.start(lookalike_pb2.StartAdaptationRequest(label_field="attributes.sku", activate=True))
    done = service.jobs.wait(job.id, 60)
    assert done.state == JobState.SUCCEEDED and done.progress == 1.0, done.error
    response = get_response(done)
    assert response.result.activated and response.result.collection.endswith("__a1")
    assert json.loads(response.result.report_json)["chosen"]["method"] == "lda"
    assert service.latest_report()["activated"] is True


def test_coarse_labels_blend_lightly_so_search_does_not_turn_into_classification():
    assert adapt_fit.alphas_for(np.repeat(np.arange(100), 4)) == adapt_fit.DEFAULT_ALPHAS  # product groups
    assert adapt_fit.alphas_for(np.repeat(np.arange(10), 300)) == adapt_fit.FIELD_ALPHAS  # categories
    assert adapt_fit.alphas_for(np.repeat(np.arange(10), 12), coarse=True) == adapt_fit.FIELD_ALPHAS  # "category"
    assert max(adapt_fit.FIELD_ALPHAS) < min(adapt_fit.DEFAULT_ALPHAS)


def test_the_gate_guards_a_reindex_too(tmp_path):
    """A reindex whose vectors search worse on held-out photos is not activated unless forced; one that
    searches as well is, with the report on its progress."""
    from lookalike_gateway.errors import ApiError

    items, vectors = catalogue(30, 4, seed=7, signal=3.0)
    for product, _ in items:
        product.category = product.attributes["sku"]  # one photo per product: the gate labels by category
    embedder = FakeEmbedder(vectors, dim=DIM)
    gateway = make_gateway(tmp_path, embedder=embedder, search=FakeSearch())
    ingest(gateway, items)

    def reindex(**fields):
        return list(gateway.reindexer.reindex(lookalike_pb2.ReindexRequest(activate=True, **fields),
                                              lambda: Deadline(30)))

    same = reindex(collection="products__lookalike-lite0__r2")  # the same model: the same figures
    quality = json.loads(next(m.quality_json for m in same if m.quality_json))
    assert quality["label"] == "category" and quality["regressions"] == [] and quality["before"] == quality["after"]
    assert same[-1].activated

    rng = np.random.default_rng(0)  # a "new model" that has forgotten what the catalogue looks like
    embedder.vectors = {image: rng.normal(size=DIM).astype(np.float32) for image in vectors}
    with pytest.raises(ApiError, match="searches worse"):
        reindex(collection="products__lookalike-lite0__r3")
    assert gateway.collections.refresh().collection == "products__lookalike-lite0__r2"
    forced = reindex(collection="products__lookalike-lite0__r3", force=True)
    assert forced[-1].activated
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "adaptations" / "reports").glob("*.json"))]
    assert [r["kind"] for r in reports] == ["reindex"] * 3 and reports[-1]["forced"] is True


def test_the_reindex_gate_compares_each_collection_as_it_is_searched(tmp_path):
    """Out of an adapted collection, a plain reindex is measured against the adapted space (what searches
    see now), not against the raw vectors inside it."""
    items, vectors = catalogue(40, 4, seed=8)  # weak signal: the adaptation helps a lot
    gateway = make_gateway(tmp_path, embedder=FakeEmbedder(vectors, dim=DIM), search=FakeSearch())
    ingest(gateway, items)
    assert run(gateway, label_field="attributes.sku", activate=True).activated
    for product, _ in items:
        product.category = product.attributes["sku"]
    ingest(gateway, items)  # metadata only: categories for the gate's labels
    from lookalike_gateway.errors import ApiError

    with pytest.raises(ApiError, match="searches worse"):
        list(gateway.reindexer.reindex(lookalike_pb2.ReindexRequest(activate=True), lambda: Deadline(30)))
