"""Query latency of the sharded index against the unsharded one, on hash-seeded vectors (no model).

N rows of random unit vectors (dim 384, as MiniLM) with short texts from a small vocabulary, in sources
of 20 rows and episodes by date. The unsharded index is ``ranking.rank`` with the index's hnswlib graph;
the sharded one has shards of ``--shard-rows`` rows, each with its own graph. Exact mode scores every
row (``exact_limit`` above N); approximate mode uses the graphs (the default settings: past 20,000 rows).
Reports p50/p95 per query over ``--queries`` queries (a query vector is a stored vector plus noise),
whether exact rankings agree, and the approximate top-10's overlap with the exact top-10.

``--memory DIR``: memory on disk instead (issue 18). Writes the same rows, vectors and graphs as two
indexes under DIR (reused when there), unsharded and sharded, then, in a fresh process per case, loads
each index the way ``query`` does (``CubeIndex``) and ranks the queries: it reports the process's peak RSS
(which is the driver's) and the query p50, in exact and approximate mode, once quiet and once beside a
CPU-bound process the bench starts (and stops). With ``--ray`` it also ranks the sharded index through
shard actors on a Ray instance of its own (``address="local"``), reporting the driver's and each
actor's peak RSS.

    .venv/bin/python bench/shard_bench.py [--rows 100000] [--shard-rows 25000] [--queries 100]
    .venv/bin/python bench/shard_bench.py --memory /tmp/shardmem [--ray]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

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
    parser.add_argument("--memory", type=Path, help="measure peak RSS of on-disk indexes kept in this folder")
    parser.add_argument("--ray", action="store_true", help="with --memory: also through Ray shard actors")
    parser.add_argument("--child", nargs=3, metavar=("CUBE", "MODE", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), args.child[1], args.child[2], args)
    if args.memory:
        return memory(args)
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


# ---------------------------------------------------------------------------------- --memory
EMBEDDER = "bench-seeded-vectors"


def build(folder: Path, shard_rows: int, args: argparse.Namespace) -> Path:
    """A cube at ``folder`` whose index holds the corpus (``shard_rows`` per shard, 0 unsharded), with the
    engine's own writer (``CubeIndex``: vectors.f32, postings, graphs); nothing is embedded."""
    from memos_cli.cube.bundle import Cube, CubeState

    if (folder / ".memos" / "index" / "meta.json").exists():
        return folder
    cube = Cube.init(folder, owner="bench")
    rows, vectors = corpus(args.rows, args.dim)
    idx = index.CubeIndex(cube, args.dim, EMBEDDER)
    began = time.perf_counter()
    with idx.lock:
        idx.relayout(shard_rows)
        idx._append_rows(rows, [f"{i:032x}" for i in range(len(rows))], vectors)
        idx._maybe_extend_hnsw()
        idx._write_meta(CubeState([], {}, 0))
    print(f"built {folder.name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return folder


def queries_for(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    """The in-process bench's queries: a stored vector plus noise, three vocabulary words and a speaker."""
    _rows, vectors = corpus(args.rows, args.dim)
    rng = np.random.default_rng(9)
    out = []
    for _ in range(args.queries):
        q = vectors[int(rng.integers(args.rows))] + 0.3 * rng.normal(size=args.dim).astype(np.float32)
        out.append((f"Ann {' '.join(rng.choice(WORDS, size=3))}", q / np.linalg.norm(q)))
    return out


def child(folder: Path, mode: str, engine: str, args: argparse.Namespace) -> None:
    """One measured process: load the index as ``query`` does, rank the queries, print a JSON line."""
    from memos_cli.cube.bundle import Cube

    queries = json.loads(sys.stdin.read())
    queries = [(t, np.asarray(v, dtype=np.float32)) for t, v in queries]
    configure_threads()
    settings = ranking.RankSettings(exact_limit=args.rows + 1) if mode == "exact" else ranking.DEFAULT_SETTINGS
    idx = index.CubeIndex(Cube.open(folder), args.dim, EMBEDDER)
    began = time.perf_counter()
    assert idx._load()
    ranker = idx.ranker()
    load_s = time.perf_counter() - began
    times, actors, blank, ranked, fixed = [], [], 0.0, [], 0.0
    if engine == "local":
        base = current_rss()
        for text, q in queries:
            began = time.perf_counter()
            ranked.append([r for r, _ in ranker.rank(text, q, k=10, settings=settings)])
            times.append(time.perf_counter() - began)
    else:
        import ray

        from memos_cli.engine.distributed import EngineOptions, RayEngine
        from memos_cli.engine.shard_actors import rank_sharded

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            blank = ray.get(ray.remote(num_cpus=0)(_Blank).remote().rss.remote()) / 2**20
            base = current_rss()
            eng = RayEngine(EngineOptions("ray"), fingerprint=EMBEDDER, dim=args.dim)
            eng._ray = ray
            mask = np.ones(len(idx.rows), dtype=bool)
            plans = [(t, [], 10) for t, _q in queries]
            vectors = np.stack([q for _t, q in queries])
            began = time.perf_counter()
            result = rank_sharded(eng, ranker, mask, vectors, plans, "hybrid")
            fixed = eng.stats.fixed_seconds  # starting the shard actors and loading their shards
            times = [(time.perf_counter() - began - fixed) / len(queries)]  # a batch: time per query
            ranked = [[r for r, _ in rows] for rows in result]
            actors = [b / 2**20 for b in eng.shard_peak_rss]
        finally:
            ray.shutdown()
    from memos_cli.engine.shard_actors import peak_rss

    peak = peak_rss() / 2**20
    out = {"peak_mib": peak, "base_mib": base / 2**20, "p50_ms": 1000 * float(np.median(times)), "load_s": load_s}
    digest = hashlib.sha256(json.dumps(ranked).encode()).hexdigest()[:16]
    print(json.dumps({**out, "actors": actors, "blank_actor_mib": blank, "fixed_s": fixed, "ranked": digest}))


def current_rss() -> int:
    """This process's resident memory now (VmRSS), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _Blank:
    """An actor with a shard actor's imports and no shard: the baseline of a shard actor's memory."""

    def rss(self) -> int:
        from memos_cli.engine.plaintext import shard_store  # noqa: F401 - what a shard actor imports
        from memos_cli.engine.shard_actors import peak_rss

        return peak_rss()


def memory(args: argparse.Namespace) -> None:
    args.memory.mkdir(parents=True, exist_ok=True)
    cubes = {
        "unsharded": build(args.memory / f"unsharded-{args.rows}", 0, args),
        "sharded": build(args.memory / f"sharded-{args.rows}-{args.shard_rows}", args.shard_rows, args),
    }
    payload = json.dumps([(t, q.tolist()) for t, q in queries_for(args)])
    cases = [(name, mode, "local") for mode in ("exact", "approximate") for name in cubes]
    if args.ray:
        cases.append(("sharded", "approximate", "ray"))  # rank_batch ranks with the default settings
    base = [sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, {args.rows:,} rows x {args.dim} "
        f"({args.rows * args.dim * 4 / 2**20:.0f} MiB of vectors), shards of {args.shard_rows:,}, "
        f"{args.queries} queries, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| load | index | mode | engine | driver peak RSS MiB | driver RSS before the queries MiB | query p50 ms "
        "| shard actors' peak RSS MiB (an actor without a shard) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    digests: dict[tuple[str, str, str], str] = {}
    for load in ("quiet", "one competing process"):
        rival = None
        if load != "quiet":
            rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for name, mode, engine in cases:
                cmd = [*base, "--child", str(cubes[name]), mode, engine]
                done = subprocess.run(cmd, input=payload, capture_output=True, text=True, env=env, check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                if digests.setdefault((name, mode, engine), r["ranked"]) != r["ranked"]:
                    raise SystemExit(f"{name} {mode} {engine}: the rankings changed between runs")
                if engine == "ray":
                    print(f"ray: starting the shard actors and loading the shards took {r['fixed_s']:.1f} s")
                actors = ", ".join(f"{a:.0f}" for a in r["actors"])
                actors = f"{actors} ({r['blank_actor_mib']:.0f})" if actors else "-"
                print(
                    f"| {load} | {name} | {mode} | {engine} | {r['peak_mib']:.0f} | {r['base_mib']:.0f} "
                    f"| {r['p50_ms']:.1f} | {actors} |",
                    flush=True,
                )
        finally:
            if rival is not None:
                rival.kill()
                rival.wait()
    same = digests[("sharded", "exact", "local")] == digests[("unsharded", "exact", "local")]
    print(f"exact rankings, sharded == unsharded: {same}")
    if args.ray:
        same_ray = digests[("sharded", "approximate", "ray")] == digests[("sharded", "approximate", "local")]
        print(f"rankings through the shard actors == local sharded: {same_ray}")


if __name__ == "__main__":
    main()
