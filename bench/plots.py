"""PNG figures of a bench run: median over repeats, bars = min..max, machine line in every footer."""
from __future__ import annotations

from pathlib import Path

from common import machine_line


def _setup():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _footer(fig, results: dict, extra: str = "", suite: str | None = None) -> None:
    """Machine line with the load average at the start of the suite that measured the figure."""
    machine = dict(results["machine"])
    load = ((results["suites"].get(suite) or {}).get("load_at_start")) if suite else None
    if load:
        machine["load_average"] = load
    reps = results.get("repeats", 1)
    note = f"median of {reps} runs, bars = min..max" if reps > 1 else "1 run (quick mode: no spread)"
    fig.text(0.01, 0.01, f"{machine_line(machine)}; {note}{'; ' + extra if extra else ''}",
             fontsize=7, color="#444")


def _err(stat: dict):
    med = stat["median"]
    return med, [[med - stat["min"]], [stat["max"] - med]]


def embedder_throughput(results: dict, path: Path) -> bool:
    emb = results["suites"].get("embedder") or {}
    if "model_only" not in emb:
        return False
    plt = _setup()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, per in emb["model_only"].items():
        sizes = sorted(int(b) for b in per)
        meds = [per[str(b)]["median"] for b in sizes]
        lo = [per[str(b)]["median"] - per[str(b)]["min"] for b in sizes]
        hi = [per[str(b)]["max"] - per[str(b)]["median"] for b in sizes]
        cos = (emb.get("cosine_to_eager") or {}).get(name, {}).get("min")
        label = name + (f" (min cosine {cos:.2f}: rejected)" if cos is not None and cos < 0.999 else "")
        ax.errorbar(sizes, meds, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ceiling = emb.get("ceiling_images_per_s")
    if ceiling:
        ax.axhline(ceiling, ls="--", color="red",
                   label=f"physical limit: {emb['matmul_peak_gflops']['max']:.0f} GFLOP/s best matmul / "
                         f"{emb['flops_per_image_g']:.2f} GFLOP per image = {ceiling:.0f} img/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 4, 8, 16, 32], ["1", "4", "8", "16", "32"])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (model only, 224x224)")
    ax.set_ylim(bottom=0)
    ax.set_title("Embedder throughput vs batch size (EfficientNet-Lite0, final cut, CPU)")
    ax.set_ylim(top=(ceiling or ax.get_ylim()[1]) * 1.6)
    ax.legend(fontsize=7, loc="upper left", ncol=1)
    ax.grid(alpha=0.3)
    _footer(fig, results, suite="embedder")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def embedder_serving(results: dict, path: Path) -> bool:
    ts = (results["suites"].get("embedder") or {}).get("torchserve")
    if not ts or not ts.get("grpc"):
        return False
    plt = _setup()
    fig, ax = plt.subplots(figsize=(8, 5))
    for proto, label in (("grpc", "TorchServe gRPC (EmbedderClient.embed_many)"),
                         ("rest", "TorchServe REST (raw bytes in, JSON list built client-side)")):
        conc = sorted(int(c) for c in ts[proto])
        stats = [ts[proto][str(c)]["images_per_s"] for c in conc]
        ax.errorbar(conc, [s["median"] for s in stats], yerr=[[s["median"] - s["min"] for s in stats],
                                                             [s["max"] - s["median"] for s in stats]],
                    marker="o", capsize=3, label=label)
        for c, s in zip(conc, stats):
            mean_batch = ts[proto][str(c)].get("server_batch_mean")
            if mean_batch:
                ax.annotate(f"batch~{mean_batch:.1f}", (c, s["median"]), textcoords="offset points",
                            xytext=(4, -12 if proto == "rest" else 6), fontsize=7)
    emb = results["suites"]["embedder"]
    best = emb["model_only"]["eager"][str(emb["eager_best_batch"])]["median"]
    ax.axhline(best, ls="--", color="gray", label=f"model only, eager, best batch ({best:.1f} img/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 8, 32], ["1", "8", "32"])
    ax.set_xlabel("requests in flight (concurrency)")
    ax.set_ylabel("images / s (JPEG decode + preprocess + model)")
    ax.set_ylim(bottom=0)
    ax.set_title("Embedder through TorchServe: throughput vs concurrency (server batching)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _footer(fig, results, suite="embedder")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def gateway_latency(results: dict, path: Path) -> bool:
    gw = (results["suites"].get("gateway") or {}).get("latency")
    if not gw:
        return False
    plt = _setup()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    styles = {("grpc", "miss"): ("tab:blue", "-"), ("rest", "miss"): ("tab:orange", "-"),
              ("grpc", "hit"): ("tab:blue", ":"), ("rest", "hit"): ("tab:orange", ":")}
    for (proto, kind), (color, ls) in styles.items():
        per = gw.get(proto, {}).get(kind)
        if not per:
            continue
        conc = sorted(int(c) for c in per)
        for metric, marker in (("p50_ms", "o"), ("p99_ms", "^")):
            stats = [per[str(c)][metric] for c in conc]
            ax1.errorbar(conc, [s["median"] for s in stats], yerr=[[s["median"] - s["min"] for s in stats],
                                                                  [s["max"] - s["median"] for s in stats]],
                         color=color, ls=ls, marker=marker, capsize=3, label=f"{proto} {kind} {metric[:3]}")
        stats = [per[str(c)]["qps"] for c in conc]
        ax2.errorbar(conc, [s["median"] for s in stats], yerr=[[s["median"] - s["min"] for s in stats],
                                                              [s["max"] - s["median"] for s in stats]],
                     color=color, ls=ls, marker="o", capsize=3, label=f"{proto} {kind}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32], ["1", "8", "32"])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("query latency, ms (p50 circles, p99 triangles)")
    ax1.set_title("Gateway SearchByImage latency (top 10)")
    ax2.set_yscale("log")
    ax2.set_ylabel("queries / s")
    ax2.set_title("Gateway throughput (miss: new photo, hit: cached embedding)")
    ingest = results["suites"]["gateway"].get("ingest", {})
    _footer(fig, results, f"catalogue {ingest.get('images', '?')} photos, engine {ingest.get('engine', '?')}",
            suite="gateway")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def search_tradeoff(results: dict, path: Path) -> bool:
    store = results["suites"].get("store") or {}
    configs = [c for c in store.get("configs", []) if "sweep" in c and c.get("engine") == "qdrant-edge"]
    if not configs:
        return False
    plt = _setup()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, kind in zip(axes, ("unfiltered", "filtered")):
        for cfg in configs:
            sweep = cfg["sweep"].get(kind, {})
            efs = list(sweep)
            xs = [sweep[e]["p50_ms"]["median"] for e in efs]
            ys = [sweep[e]["recall_at_10"]["median"] for e in efs]
            xerr = [[sweep[e]["p50_ms"]["median"] - sweep[e]["p50_ms"]["min"] for e in efs],
                    [sweep[e]["p50_ms"]["max"] - sweep[e]["p50_ms"]["median"] for e in efs]]
            ax.errorbar(xs, ys, xerr=xerr, marker="o", capsize=3, label=cfg.get("label"))
            if cfg["n"] >= max(c["n"] for c in configs):  # label the largest size only (readability)
                for e, x, y in zip(efs, xs, ys):
                    ax.annotate(f"ef={e}", (x, y), textcoords="offset points", xytext=(3, -9), fontsize=6)
        ax.axhline(0.95, color="green", ls="--", lw=0.8)
        ax.axvline(10, color="green", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("query p50, ms (in-process store call)")
        ax.set_title(f"{kind} queries")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("recall@10 vs exact")
    fig.suptitle("qdrant-edge HNSW: recall vs latency over the query-time ef (green: target recall >= 0.95, "
                 "p50 <= 10 ms)", fontsize=10)
    _footer(fig, results, "clustered 1280-d unit vectors (lookalike_search.bench)", suite="store")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def quality_bars(results: dict, path: Path) -> bool:
    q = results["suites"].get("quality") or {}
    if "brute_force_test" not in q:
        return False
    plt = _setup()
    rows = [("raw pixels 32x32", q["raw_pixels_32x32_validation"]["p@1"], q["raw_pixels_32x32_test"]["p@1"]),
            ("plain features", q["brute_force_validation"]["p@1"], q["brute_force_test"]["p@1"]),
            ("chosen pipeline", q["chosen_validation"]["p@1"], q["chosen_test"]["p@1"])]
    served = (results["suites"].get("gateway") or {}).get("served_quality")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[1] for r in rows], width=0.4, label="validation (selection)")
    ax.bar([x + 0.2 for x in xs], [r[2] for r in rows], width=0.4, label="test (report)")
    for x, r in zip(xs, rows):
        ax.text(x - 0.2, r[1] + 0.01, f"{r[1]:.3f}", ha="center", fontsize=8)
        ax.text(x + 0.2, r[2] + 0.01, f"{r[2]:.3f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [r[0] for r in rows])
    ax.set_ylabel("P@1 (clothing-small, catalogue = train)")
    ax.set_ylim(0, 1)
    ax.set_title("Retrieval quality" + (f" (served P@1 on its query set: {served['served']['p@1']:.3f})"
                                        if served else ""))
    ax.legend(fontsize=8)
    _footer(fig, results, "deterministic: no repeats needed", suite="quality")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


FIGURES = {
    "embedder_throughput_vs_batch.png": embedder_throughput,
    "embedder_serving_vs_concurrency.png": embedder_serving,
    "gateway_latency_vs_concurrency.png": gateway_latency,
    "search_recall_vs_latency.png": search_tradeoff,
    "quality_p1.png": quality_bars,
}


def make_all(results: dict, out_dir: Path, prefix: str = "") -> list[str]:
    try:
        _setup()
    except ImportError:
        print("[plots] matplotlib missing: pip install -e '.[bench]' (figures skipped)", flush=True)
        return []
    written = []
    for name, fn in FIGURES.items():
        path = out_dir / f"{prefix}{name}"
        try:
            if fn(results, path):
                written.append(path.name)
        except Exception as exc:  # noqa: BLE001 - a broken figure must not lose the run
            print(f"[plots] {name}: {type(exc).__name__}: {exc}", flush=True)
    return written
