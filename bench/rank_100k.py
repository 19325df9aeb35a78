"""rank() at 100,000 memories, this branch's defaults vs the settings before issue 15's neighbour-text
field (``context_lexical``, BM25F), interleaved query by query (same rows, same hnswlib graph with the
engine's parameters, same queries).

Rows from bench/throughput.py's synthetic corpus (one source, so every row has neighbours); vectors are
seeded random unit vectors (the graph builds in ~80 s instead of embedding 100,000 texts); queries are
embedded by MiniLM, whose per-query time is printed too (the rest of a warm search).

    PYTHONPATH=. python bench/rank_100k.py [N]
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput  # noqa: E402

from memos_cli.engine.plaintext import ranking, temporal  # noqa: E402
from memos_cli.engine.plaintext.index import HNSW_EF, HNSW_EF_CONSTRUCTION, HNSW_M  # noqa: E402
from memos_cli.engine.plaintext.lexical import LexicalIndex  # noqa: E402
from memos_cli.models.embedder import load_embedder  # noqa: E402

BEFORE = dataclasses.replace(ranking.DEFAULT_SETTINGS, window=0.5, context_dense=0.25, context_lexical=0.0)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rows = [
        ranking.Row(text=r["text"], speaker=r["speaker"], time=r["time"], source="synthetic.jsonl", source_id=r["id"])
        for r in throughput.corpus(n)
    ]
    vectors = np.random.default_rng(0).normal(size=(n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    lexical = LexicalIndex()
    lexical.add([ranking.lexical_text(r) for r in rows])
    inputs = ranking.RankInputs(vectors=vectors, lexical=lexical, rows=rows, structure=ranking.structure(rows))
    graph = hnswlib.Index(space="ip", dim=384)
    graph.init_index(max_elements=n, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=42)
    graph.add_items(vectors, np.arange(n))
    graph.set_ef(HNSW_EF)

    def ann(q: np.ndarray, want: int) -> np.ndarray:
        return graph.knn_query(q.reshape(1, -1), k=want)[0][0].astype(np.int64)

    embedder = load_embedder()
    queries = throughput.queries(200)
    embed_ms = []
    for q in queries:
        started = time.perf_counter()
        embedder.encode([q])
        embed_ms.append((time.perf_counter() - started) * 1000)
    qvecs = embedder.encode(queries)
    latest = max(r.time for r in rows if r.time)
    plans = [temporal.query_plan(q, latest) for q in queries]
    settings = {"before": BEFORE, "default": ranking.DEFAULT_SETTINGS}
    for s in settings.values():  # warm the cached tables
        ranking.rank(inputs, plans[0][1], qvecs[0], k=10, ann=ann, settings=s, periods=plans[0][0])
    ms: dict[str, list[float]] = {label: [] for label in settings}
    for round_ in range(3):
        for (periods, text), qv in zip(plans, qvecs, strict=True):
            for label in list(settings)[:: 1 if round_ % 2 == 0 else -1]:
                started = time.perf_counter()
                ranking.rank(inputs, text, qv, k=10, ann=ann, settings=settings[label], periods=periods)
                ms[label].append((time.perf_counter() - started) * 1000)
    print(f"{n} memories; query embedding p50 {np.median(embed_ms):.2f} ms")
    for label, values in ms.items():
        print(f"rank() {label:8} p50 {np.median(values):.2f} ms  p95 {np.percentile(values, 95):.2f} ms")


if __name__ == "__main__":
    main()
