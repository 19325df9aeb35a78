"""Ingest throughput and query latency, measured side by side in one run.

1. Ingest: `memos ingest` (the whole process, model load included) of N short memories, beside the raw
   embedder's throughput on the same texts in this process (batch 64, length-sorted, as memos does).
2. Query latency, warm, in batch mode: p50/p95 of single queries through the engine's Searcher (what
   `query --batch` runs) on cubes of 10,000 and 100,000 memories, plus the `query --batch` process.
3. Cold: the wall time of a one-shot `memos query` and of `memos --help`.

    .venv/bin/python bench/throughput.py [--ingest-n 20000] [--sizes 10000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMOS = [sys.executable, "-m", "memos_cli"]

NAMES = [
    "Ana",
    "Bob",
    "Chen",
    "Dara",
    "Eli",
    "Femi",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kira",
    "Lars",
    "Mina",
    "Noor",
    "Omar",
    "Pia",
    "Quin",
    "Rosa",
    "Sam",
    "Tara",
    "Uma",
    "Vic",
    "Wes",
    "Xia",
    "Yara",
    "Zed",
]
VERBS = [
    "visited",
    "booked",
    "cancelled",
    "recommended",
    "painted",
    "repaired",
    "photographed",
    "reviewed",
    "organised",
    "sold",
    "borrowed",
    "planned",
    "finished",
    "started",
    "lost",
    "found",
    "cooked",
    "taught",
]
OBJECTS = [
    "a vintage bicycle",
    "the quarterly report",
    "a sourdough loaf",
    "the garden shed",
    "a jazz concert",
    "the team offsite",
    "a hiking trip",
    "the kitchen tiles",
    "a chess tournament",
    "the grant proposal",
    "a pottery class",
    "the wedding playlist",
    "a second-hand piano",
    "the climbing gym pass",
    "an old sailboat",
    "the neighbourhood cleanup",
    "a birthday cake",
    "the conference talk",
]
PLACES = [
    "in Lisbon",
    "near the harbour",
    "at the library",
    "in the mountains",
    "downtown",
    "at the office",
    "by the river",
    "in Porto",
    "at grandma's house",
    "in a small village",
    "at the university",
    "online",
]
WHEN = [
    "last Monday",
    "yesterday",
    "two weeks ago",
    "this morning",
    "over the weekend",
    "in early spring",
    "after work",
    "during the holidays",
    "on her birthday",
    "before the storm",
    "last summer",
    "at dawn",
]
EXTRA = [
    "and it went better than expected",
    "with an old friend",
    "despite the rain",
    "for the first time",
    "because it was on sale",
    "to celebrate the promotion",
    "",
    "",
    "",
    "and wants to do it again",
]


def corpus(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    seen: set[str] = set()
    records = []
    while len(records) < n:
        who = rng.choice(NAMES)
        text = (
            " ".join(
                w
                for w in (
                    who,
                    rng.choice(VERBS),
                    rng.choice(OBJECTS),
                    rng.choice(PLACES),
                    rng.choice(WHEN),
                    rng.choice(EXTRA),
                )
                if w
            )
            + f" (note {len(records)})."
        )
        if text in seen:
            continue
        seen.add(text)
        day = 1 + rng.randrange(28)
        records.append(
            {
                "text": text,
                "speaker": who,
                "time": f"2024-{1 + rng.randrange(12):02d}-{day:02d}",
                "id": str(len(records)),
            }
        )
    return records


def queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    forms = ["what did {n} do {p}?", "who {v} {o}?", "when did {n} {v2} {o}?", "{o} {p}"]
    out = []
    for _ in range(n):
        form = rng.choice(forms)
        out.append(
            form.format(
                n=rng.choice(NAMES),
                p=rng.choice(PLACES),
                v=rng.choice(VERBS),
                o=rng.choice(OBJECTS),
                v2=rng.choice(["visit", "book", "sell", "plan", "fix"]),
            )
        )
    return out


def run(*args: str, stdin: str | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run([*MEMOS, *args], input=stdin, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"memos {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return elapsed


def write_records(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-n", type=int, default=20_000)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    biggest = max([args.ingest_n, *sizes])
    records = corpus(biggest)
    qs = queries(args.queries)

    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.plaintext.query import Searcher
    from memos_cli.models.embedder import load_embedder

    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # --- 1. ingest vs raw embedder, same texts
        texts = [r["text"] for r in records[: args.ingest_n]]
        embedder = load_embedder()
        embedder.encode(texts[:64])  # warm-up
        started = time.perf_counter()
        embedder.encode(texts, batch_size=64)
        raw_s = time.perf_counter() - started
        src = root / "ingest.jsonl"
        write_records(src, records[: args.ingest_n])
        run("init", str(root / "ingest-cube"))
        ingest_s = run("ingest", str(root / "ingest-cube"), str(src))
        raw_rate, ingest_rate = len(texts) / raw_s, len(texts) / ingest_s
        print(f"\n## ingest of {len(texts):,} short memories")
        print(f"raw embedder (in process, batch 64):   {raw_rate:8.1f} texts/s ({raw_s:.1f}s)")
        print(f"memos ingest (whole process):          {ingest_rate:8.1f} memories/s ({ingest_s:.1f}s)")
        print(f"ratio memos/raw:                       {ingest_rate / raw_rate:8.2f}")

        # --- 2. warm query latency
        print(f"\n## warm query latency ({len(qs)} queries, hybrid, k=10)")
        print(f"{'memories':>9} {'p50 ms':>8} {'p95 ms':>8} {'batch process s':>16} {'per query ms':>13}")
        for size in sizes:
            cube_dir = root / f"cube-{size}"
            if size == args.ingest_n:
                cube_dir = root / "ingest-cube"
            else:
                part = root / f"part-{size}.jsonl"
                write_records(part, records[:size])
                run("init", str(cube_dir))
                run("ingest", str(cube_dir), str(part))
            with Searcher([Cube.open(cube_dir)], record_usage=False) as searcher:
                for q in qs[:10]:
                    searcher.search(q, k=10)
                times = []
                for q in qs:
                    started = time.perf_counter()
                    searcher.search(q, k=10)
                    times.append((time.perf_counter() - started) * 1000)
            batch_s = run("query", str(cube_dir), "--batch", "-", "-k", "10", "--no-usage", stdin="\n".join(qs) + "\n")
            print(
                f"{size:9,d} {statistics.median(times):8.2f} {percentile(times, 0.95):8.2f} {batch_s:16.2f} "
                f"{batch_s * 1000 / len(qs):13.1f}"
            )

        # --- 3. cold process times
        if not sizes:
            return
        cube_dir = root / f"cube-{sizes[0]}" if sizes[0] != args.ingest_n else root / "ingest-cube"
        one_shot = [run("query", str(cube_dir), qs[0], "-k", "5", "--no-usage") for _ in range(3)]
        lexical = [
            run("query", str(cube_dir), qs[0], "-k", "5", "--no-usage", "--retrieval", "lexical") for _ in range(3)
        ]
        helps = [run("--help") for _ in range(5)]
        print(f"\n## cold, whole process (median), cube of {sizes[0]:,}")
        print(f"memos query (one shot, hybrid):  {statistics.median(one_shot):.2f}s")
        print(f"memos query --retrieval lexical: {statistics.median(lexical):.2f}s")
        print(f"memos --help:                    {statistics.median(helps):.3f}s")


if __name__ == "__main__":
    main()
