"""Markdown report (bench/results/latest.md) from the results dict of bench/run.py."""
from __future__ import annotations

from common import fmt, machine_line


def _t(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _img(figures: list[str], name: str) -> list[str]:
    """Markdown image line for the figure file ending in `name` (quick runs prefix "quick-"), if written."""
    actual = next((f for f in figures if f.endswith(name)), None)
    return [f"![{name[:-4]}]({actual})", ""] if actual else []


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def embedder_md(e: dict, figures: list[str]) -> list[str]:
    out = ["## Embedder", ""]
    if "error" in e:
        return out + [f"failed: `{e['error'][:500]}`", ""]
    dp = e["decode_preprocess"]
    out += [f"Load average at start {e['load_at_start']}; torch threads {e['torch_threads']}.", "",
            f"* **FLOPs per image**: {e['flops_per_image_g']:.3f} GFLOP (2 x MACs of convs, torch FlopCounterMode)",
            f"* **practical peak**: 2048x2048 fp32 matmul {fmt(e['matmul_peak_gflops'])} GFLOP/s "
            f"-> physical limit {e['ceiling_images_per_s']:.0f} images/s (best peak / FLOPs per image); "
            f"\"of peak\" below = best median images/s x FLOPs / best matmul GFLOP/s (int8 backends run "
            "integer kernels, so they can pass 100%)",
            f"* **decode + preprocess** alone: {dp['total_ms']} ms/image (decode {dp['decode_ms']} ms, "
            f"resize/crop/tensor {dp['preprocess_ms']} ms; {dp['images']} photos, median {dp['median_jpeg_kb']} KB)",
            "", "Model only, images/s (forward + L2 norm + copy to numpy, random 224x224 input):", ""]
    sizes = ["1", "4", "8", "16", "32"]
    rows = []
    for name, per in e["model_only"].items():
        rows.append([name] + [fmt(per.get(b)) for b in sizes]
                    + [_f(e['cosine_to_eager'].get(name, {}).get('min'), 6),
                       f"{100 * e['utilisation_of_peak'].get(name, 0):.0f}%"])
    out += [_t(rows, ["backend", "b1", "b4", "b8", "b16", "b32", "min cosine to eager", "of peak"]), ""]
    for name, note in e.get("backends", {}).items():
        out.append(f"* `{name}`: {note if isinstance(note, str) else 'failed: ' + note.get('error', '')[:300]}")
    out += ["", f"Faster than eager and within cosine >= 0.999: **{', '.join(e['faster_within_tolerance']) or 'none'}**.",
            ""]
    ts = e.get("torchserve") or {}
    if ts.get("grpc"):
        out += [f"TorchServe (cold start {ts.get('cold_start_s')} s, server batching {ts.get('server_batching')}); "
                "images/s with real JPEGs (decode included):", ""]
        rows = []
        for proto in ("grpc", "rest"):
            for c, v in sorted(ts[proto].items(), key=lambda kv: int(kv[0])):
                rows.append([proto, c, v["n_per_run"], fmt(v["images_per_s"]), v.get("server_batch_mean"),
                             v.get("server_batch_max"), fmt(v.get("p50_ms"), 0) if v.get("p50_ms") else "–"])
        out += [_t(rows, ["protocol", "concurrency", "images/run", "images/s", "mean server batch",
                          "max batch", "p50 ms"]), ""]
    cuda = e.get("cuda", {})
    out += [f"GPU: {cuda.get('skipped') or cuda}", ""]
    for fig in ("embedder_throughput_vs_batch.png", "embedder_serving_vs_concurrency.png"):
        out += _img(figures, fig)
    return out


def gateway_md(g: dict, figures: list[str]) -> list[str]:
    out = ["## Gateway (whole chain)", ""]
    if "error" in g:
        return out + [f"failed: `{g['error'][:500]}`", ""]
    ing = g["ingest"]
    out += [f"Load average at start {g['load_at_start']}; stack start {g['stack_start_s']} s; search engine "
            f"{ing['engine']}.", "",
            f"* **ingest** (UpsertProducts stream, gRPC): {ing['images']} photos in {ing['seconds']} s = "
            f"**{ing['images_per_s']} images/s** ({ing['failed']} failed)", ""]
    lat = g["latency"]
    rows = []
    for proto in ("grpc", "rest"):
        for kind in ("miss", "hit"):
            for c, v in sorted(lat.get(proto, {}).get(kind, {}).items(), key=lambda kv: int(kv[0])):
                rows.append([proto, kind, c, v["requests_per_run"], fmt(v["p50_ms"]), fmt(v["p95_ms"]),
                             fmt(v["p99_ms"]), fmt(v["qps"]), v["cache_hit_fraction"]])
    out += ["Query latency (top 10) and throughput:", "",
            _t(rows, ["protocol", "cache", "clients", "requests/run", "p50 ms", "p95 ms", "p99 ms", "QPS",
                      "hit fraction"]), ""]
    if ing["engine"] == "qdrant-local":
        out += [f"Cache hits skip the embedder, so their latency and QPS are the search service's: with the default "
                f"`qdrant-local` engine (exact, pure Python) over {ing['images']} points they queue behind its "
                "search (see the store section: ~80 ms p50 at 10k points); `qdrant-edge` answers in ~1-3 ms. "
                "Misses are bound by the embedder (compare the TorchServe images/s above).", ""]
    sq = g.get("served_quality")
    if sq:
        out += [f"Served vs brute force ({sq['catalogue']} catalogue photos, {sq['queries']} test queries, REST "
                f"top 100):", ""]
        rows = [[k, _f(sq["served"][k], 4), _f(sq["brute_force"][k], 4), f"{sq['difference'][k]:+.5f}"]
                for k in sq["difference"]]
        out += [_t(rows, ["metric", "served", "brute force", "difference"]), "",
                f"Match to 3 decimals: **{sq['match_3_decimals']}**; same top-1 product "
                f"{100 * sq['top1_same_product']:.1f}%, top-10 overlap {100 * sq['top10_overlap']:.1f}%.", ""]
    cr = g.get("served_category_rerank")
    if cr:
        sv = cr["served"]
        out += [f"With the category classifier trained through the service (held-out accuracy "
                f"{cr['classifier_accuracy_holdout']:.3f}, {cr['train_seconds']} s) and the default category boost "
                f"{cr['category_boost']}, the same REST queries give P@1 **{sv['p@1']:.4f}**, P@5 {sv['p@5']:.4f}, "
                f"P@10 {sv['p@10']:.4f}, mAP@100 {sv['map@100']:.4f}.", ""]
    out += _img(figures, "gateway_latency_vs_concurrency.png")
    return out


def store_md(s: dict, figures: list[str]) -> list[str]:
    out = ["## Search store", "", f"Load average at start {s['load_at_start']}. Data: {s['generator']}.", ""]
    rows = []
    for c in s["configs"]:
        if "error" in c:
            rows.append([c["label"], "error: " + c["error"][:120]] + [""] * 9)
            continue
        for kind in ("unfiltered", "filtered"):
            for ef, v in c["sweep"].get(kind, {}).items():
                rows.append([c["label"], kind, ef, fmt(v["recall_at_10"], 3), fmt(v["p50_ms"], 2),
                             fmt(v["p99_ms"], 2), c["upsert_points_per_s"], c.get("index_build_s") or "–",
                             c["rss_delta_mib"], c["disk_mib"], c["raw_float32_mib"]])
    out += [_t(rows, ["config", "query", "ef", "recall@10", "p50 ms", "p99 ms", "upsert pts/s", "HNSW build s",
                      "RSS delta MiB", "disk MiB", "raw f32 MiB"]), "",
            f"1M points: {s.get('one_million')}", ""]
    try:  # recomputed, so that --render picks up a newer wording
        import store_suite
        store_suite.verdicts(s)
    except Exception:  # noqa: BLE001
        pass
    verdict = s.get("target_100k")
    if verdict:
        out += [f"**Target (100k, recall@10 >= 0.95, p50 <= 10 ms)**: {verdict}", ""]
    q = s.get("quantization_100k")
    if q:
        out += [f"**int8 vs float32 at 100k**: {q}", ""]
    out += _img(figures, "search_recall_vs_latency.png")
    return out


def quality_md(q: dict, figures: list[str]) -> list[str]:
    out = ["## Quality (clothing-small)", ""]
    if "error" in q:
        return out + [f"failed: `{q['error'][:500]}`", ""]
    if q.get("note"):
        out += [f"*{q['note']}*", ""]
    out += [f"Catalogue = train ({q['catalogue']} photos); selection on validation ({q['validation_queries']} "
            f"queries); report on test ({q['test_queries']}).", ""]
    metrics = ["p@1", "p@5", "p@10", "map@100"]
    rows = [["raw pixels 32x32", "validation"] + [_f(q["raw_pixels_32x32_validation"][m]) for m in metrics],
            ["raw pixels 32x32", "test"] + [_f(q["raw_pixels_32x32_test"][m]) for m in metrics],
            ["plain features (brute force)", "validation"] + [_f(q["brute_force_validation"][m]) for m in metrics],
            ["plain features (brute force)", "test"] + [_f(q["brute_force_test"][m]) for m in metrics],
            ["chosen pipeline", "validation"] + [_f(q["chosen_validation"][m]) for m in metrics],
            ["chosen pipeline", "test"] + [_f(q["chosen_test"][m]) for m in metrics]]
    out += [_t(rows, ["features", "queries", "P@1", "P@5", "P@10", "mAP@100"]), "",
            f"Chosen (greedy, validation P@1 must rise): `{q['chosen']}`", ""]
    if q.get("chosen_steps_alone"):
        out += ["Each kept step alone: " + "; ".join(
            f"{k}: validation {v['validation_p@1']:.4f}, test {v['test_p@1']:.4f}"
            for k, v in q["chosen_steps_alone"].items()), ""]
    for split in ("validation", "test"):
        pv = q.get(f"chosen_vs_plain_{split}")
        if pv:
            out.append(f"* chosen vs plain on {split}: top-1 fixed for {pv['queries_fixed']} queries, broken for "
                       f"{pv['queries_broken']} (one query = {pv['one_query_p@1']:.4f} of P@1; standard error of "
                       f"P@1 ~{pv['standard_error_p@1']:.3f})")
    pv, pt = q.get("chosen_vs_plain_validation"), q.get("chosen_vs_plain_test")
    if pv and pt:
        gain_v = pv["queries_fixed"] - pv["queries_broken"]
        gain_t = pt["queries_fixed"] - pt["queries_broken"]
        if gain_v <= 0:
            verdict = "nothing raised validation P@1: the service keeps the plain features."
        elif gain_t < 0 or gain_v <= 2:
            verdict = (f"the kept steps gain {gain_v:+d} validation queries, well inside the noise (standard error "
                       f"~{pv['standard_error_p@1']:.3f} = ~{pv['standard_error_p@1'] / pv['one_query_p@1']:.0f} "
                       f"queries), and change test by {gain_t:+d} queries: not adopted, the service keeps the "
                       "plain features.")
        else:
            verdict = f"the kept steps gain {gain_v:+d} validation and {gain_t:+d} test queries."
        out += ["", f"**Verdict**: {verdict}"]
    out.append("")
    rows = [[t["stage"], t["option"], _f(t["validation_p@1"], 4), "yes" if t["kept"] else ""]
            for t in q["selection_trials"]]
    out += ["<details><summary>every option tried (validation P@1)</summary>", "",
            _t(rows, ["stage", "option", "validation P@1", "kept"]), "", "</details>", ""]
    cr = q.get("category_rerank")
    if cr:
        ch = cr["chosen"]
        rows = [["plain features", "validation"] + [_f(q["brute_force_validation"][m]) for m in metrics],
                ["plain features", "test"] + [_f(q["brute_force_test"][m]) for m in metrics],
                [f"category re-ranking, boost {ch['boost']:g}", "validation"] + [_f(ch["validation"][m]) for m in metrics],
                [f"category re-ranking, boost {ch['boost']:g}", "test"] + [_f(ch["test"][m]) for m in metrics]]
        out += ["### Category re-ranking (served by the gateway once a category classifier is trained)", "",
                "The category classifier trained as the service trains it (catalogue only; C "
                f"{cr['classifier']['c']:g}, held-out accuracy {cr['classifier']['holdout_accuracy']:.3f}, "
                f"{cr['classifier']['train_seconds']} s), the top 100 re-ranked by cosine + boost x P(category | "
                "query) (lookalike_gateway.ranking); boost chosen on validation P@1 ("
                + ", ".join(f"{t['boost']:g}: {t['validation_p@1']:.4f}" for t in cr["trials"]) + "):", "",
                _t(rows, ["features", "queries", "P@1", "P@5", "P@10", "mAP@100"]), ""]
    if q.get("onnxruntime_check"):
        o = q["onnxruntime_check"]
        out += [f"ONNX Runtime features vs eager: min cosine {o['cosine_min']}, validation P@1 "
                f"{o['validation_p@1']:.4f}, test P@1 {o['test_p@1']:.4f} (eager: "
                f"{q['brute_force_validation']['p@1']:.4f} / {q['brute_force_test']['p@1']:.4f}).", ""]
    out += _img(figures, "quality_p1.png")
    if q.get("adaptation"):
        import adapt_suite
        out += [""] + adapt_suite.markdown(q["adaptation"])
    if q.get("products"):
        import product_suite
        out += [""] + product_suite.markdown(q["products"])
    return out


def render(results: dict) -> str:
    m = results["machine"]
    figures = results.get("figures", [])
    out = [f"# Lookalike benchmark ({'quick' if results['quick'] else 'full'} run)", "",
           f"Started {results['started']}, took {results['seconds'] / 60:.1f} min. Machine: "
           f"{machine_line(m)}; {m.get('memory_gib')} GiB RAM; SIMD {', '.join(m.get('simd', []))}; theoretical "
           f"fp32 peak {m.get('theoretical_peak_gflops')} GFLOP/s; torch {m.get('torch')}. Repeats: "
           f"{results['repeats']} (figures are `median (min–max)`).", "",
           "The CPUs are shared with other jobs: absolute numbers move with the load, ratios measured in "
           "the same run are what to compare. Figures explained in bench/README.md.", ""]
    if results.get("previous_machine"):
        out += [f"This report merges a re-run of some suites ({results.get('command', '')!r}) into an earlier "
                f"run (load average at its start {results['previous_machine'].get('load_average')}); each "
                "section gives the load average when its suite started.", ""]
    suites = results["suites"]
    for name, fn in (("quality", quality_md), ("embedder", embedder_md), ("gateway", gateway_md),
                     ("store", store_md)):
        if name in suites:
            try:
                out += fn(suites[name], figures)
            except Exception as exc:  # noqa: BLE001
                out += [f"## {name}", "", f"(report section failed: {type(exc).__name__}: {exc})", ""]
    for name, secs in results.get("suite_seconds", {}).items():
        out.append(f"* suite {name}: {secs / 60:.1f} min")
    return "\n".join(out) + "\n"
