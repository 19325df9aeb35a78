"""Warm query latency at 100,000 memories through the engine's whole search (``Searcher.search``, what
``query --batch`` and chat run), quiet and next to one competing CPU-bound process, side by side.

The cube is real (records in memories.jsonl, its index with BM25 postings and the hnswlib graph built by
the engine's own ``open_index``); only the stored vectors are seeded random unit vectors handed to the
index builder (``known_vectors``), so building takes about two minutes instead of embedding 100,000
texts. Queries are embedded by MiniLM on every search, as in use: that is part of the figure. Rows and
queries are bench/throughput.py's synthetic corpus (one source, so every row has neighbours; a third of
the queries carry time words). Issue 15's bar: warm query p50 <= 15 ms at 100,000 memories.

    PYTHONPATH=. python bench/search_100k.py [--n 100000] [--queries 200] [--conditions quiet,loaded]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput  # noqa: E402

from memos_cli.cube import layout  # noqa: E402
from memos_cli.cube.bundle import Cube, utc_now  # noqa: E402
from memos_cli.cube.records import MemoryRecord, content_hash, memory_id_for  # noqa: E402
from memos_cli.engine.embedding import EmbedderHandle  # noqa: E402
from memos_cli.engine.plaintext.index import open_index, row_for, row_key  # noqa: E402
from memos_cli.engine.plaintext.query import Searcher  # noqa: E402


def build(root: Path, n: int) -> Path:
    """A cube of ``n`` synthetic memories and its full index (vectors seeded, nothing embedded)."""
    cube = Cube.init(root / "cube", owner="bench")
    now = utc_now()
    records = []
    for r in throughput.corpus(n):
        chash = content_hash(r["text"], "synthetic.jsonl", r["id"])
        records.append(
            MemoryRecord(
                id=memory_id_for(chash),
                version=1,
                text=r["text"],
                type="dialogue",
                created=now,
                source="synthetic.jsonl",
                source_id=r["id"],
                speaker=r["speaker"],
                time=r["time"],
                hash=chash,
                actor="bench",
            )
        )
    (cube.path / layout.MEMORIES).write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")
    cube = Cube.open(cube.path)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    known = {row_key(row_for(r)): vectors[i] for i, r in enumerate(records)}
    ident = EmbedderHandle().identity

    def no_embedding() -> object:
        raise AssertionError("every row has a known vector: nothing is embedded")

    started = time.perf_counter()
    index = open_index(
        cube, cube.read_state(), no_embedding, dim=ident.dim, embedder_name=ident.fingerprint, known_vectors=known
    )
    print(f"built the index of {len(index.rows):,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return cube.path


def measure(cube_path: Path, queries: list[str]) -> list[float]:
    searcher = Searcher([Cube.open(cube_path)], record_usage=False)
    for q in queries[:5]:  # warm: the index loads and numpy's tables are built on the first searches
        searcher.search(q, k=10)
    ms = []
    for q in queries:
        started = time.perf_counter()
        searcher.search(q, k=10)
        ms.append((time.perf_counter() - started) * 1000)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--conditions", default="quiet,loaded")
    args = parser.parse_args()
    queries = throughput.queries(args.queries)
    with tempfile.TemporaryDirectory(prefix="memos-search100k-") as tmp:
        cube_path = build(Path(tmp), args.n)
        print(f"{'condition':10} {'load':>5} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
        for condition in args.conditions.split(","):
            busy = None
            if condition == "loaded":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                load = os.getloadavg()[0]
                ms = measure(cube_path, queries)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            p95 = float(np.percentile(ms, 95))
            print(f"{condition:10} {load:5.1f} {statistics.median(ms):8.2f} {p95:8.2f} {statistics.mean(ms):8.2f}")


if __name__ == "__main__":
    main()
