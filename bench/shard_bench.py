"""Query latency of the sharded index against the unsharded one, on hash-seeded vectors (no model).

N rows of random unit vectors (dim 384, as MiniLM) with short texts from a small vocabulary, in sources
of 20 rows and episodes by date. The unsharded index is ``ranking.rank`` with the index's hnswlib graph;
the sharded one has shards of ``--shard-rows`` rows, each with its own graph. Exact mode scores every
row (``exact_limit`` above N); approximate mode uses the graphs (the default settings: past 20,000 rows).
Reports p50/p95 per query over ``--queries`` queries (a query vector is a stored vector plus noise),
whether exact rankings agree, and the approximate top-10's overlap with the exact top-10.

    .venv/bin/python bench/shard_bench.py [--rows 100000] [--shard-rows 25000] [--queries 100]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from memos_cli.config import configure_threads
from memos_cli.engine.plaintext import index, ranking
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.engine.plaintext.sharded import ShardedIndex

WORDS = (
    "launch budget cat hiking parser adoption peanut allergy meeting paris guitar recipe lisbon marathon "
    "porto offsite book garden review release invoice travel doctor concert holiday"
).split()


def corpus(n: int, dim: int, seed: int = 5) -> tuple[list[ranking.Row], np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = [
        ranking.Row(
            text="note " + " ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))),
            speaker=["Ann", "Bo", "Cy", None][i % 4],
            time=f"2024-{1 + (i // 2000) % 12:02d}-{1 + (i // 100) % 28:02d}",
            source=f"s{i // 20}.jsonl",
        )
        for i in range(n)
    ]
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return rows, vectors


def timed(fn, queries):  # type: ignore[no-untyped-def]
    out, times = [], []
    for q in queries:
        began = time.perf_counter()
        out.append([r for r, _ in fn(*q)])
        times.append(time.perf_counter() - began)
    return out, np.asarray(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shard-rows", type=int, default=25_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    threads = configure_threads()  # memos' own BLAS thread count (see README, "Threads and speed")
    rows, vectors = corpus(args.rows, args.dim)
    graph = index.graph_settings()

    began = time.perf_counter()
    lexical = LexicalIndex()
    lexical.add([ranking.lexical_text(r) for r in rows])
    whole = ranking.RankInputs(vectors=vectors, lexical=lexical, rows=rows, structure=ranking.structure(rows))
    import hnswlib

    hnsw = hnswlib.Index(space="ip", dim=args.dim)
    hnsw.init_index(max_elements=args.rows, ef_construction=graph.ef_construction, M=graph.m, random_seed=42)
    hnsw.add_items(vectors, np.arange(args.rows))
    hnsw.set_ef(graph.ef)
    unsharded_build = time.perf_counter() - began

    def ann(q: np.ndarray, n: int) -> np.ndarray:
        return hnsw.knn_query(q.reshape(1, -1), k=min(n, args.rows))[0][0].astype(np.int64)

    began = time.perf_counter()
    sharded = ShardedIndex.split(vectors, rows, args.shard_rows)
    for shard in sharded.shards:
        shard.extend_graph(graph)
    sharded_build = time.perf_counter() - began

    rng = np.random.default_rng(9)
    queries = []
    for _ in range(args.queries):
        q = vectors[int(rng.integers(args.rows))] + 0.3 * rng.normal(size=args.dim).astype(np.float32)
        words = " ".join(rng.choice(WORDS, size=3))
        queries.append((f"Ann {words}", q / np.linalg.norm(q)))
    exact = ranking.RankSettings(exact_limit=args.rows + 1)
    approx = ranking.DEFAULT_SETTINGS
    results = {}
    for name, settings in (("exact", exact), ("approximate", approx)):
        u, ut = timed(lambda t, q, s=settings: ranking.rank(whole, t, q, k=10, ann=ann, settings=s), queries)
        s, st = timed(lambda t, q, s=settings: sharded.rank(t, q, k=10, settings=s), queries)
        results[name] = (u, ut, s, st)
    ex_u, _, ex_s, _ = results["exact"]
    print(
        f"{platform.machine()}, {threads} BLAS thread(s), {args.rows:,} rows, dim {args.dim}, "
        f"{len(sharded.shards)} shards of {args.shard_rows:,}"
    )
    print(f"build (BM25 + graph): unsharded {unsharded_build:.1f} s, sharded {sharded_build:.1f} s")
    print("| mode | index | p50 ms | p95 ms | top-10 equal to exact unsharded | top-10 overlap with exact |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (u, ut, s, st) in results.items():
        for label, got, times in (("unsharded", u, ut), ("sharded", s, st)):
            equal = sum(a == b for a, b in zip(got, ex_u, strict=True))
            overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ex_u, strict=True)])
            print(
                f"| {name} | {label} | {np.percentile(times, 50):.1f} | {np.percentile(times, 95):.1f} "
                f"| {equal}/{len(got)} | {overlap:.3f} |"
            )
    assert ex_s == ex_u, "exact sharded rankings differ from unsharded"


if __name__ == "__main__":
    main()
