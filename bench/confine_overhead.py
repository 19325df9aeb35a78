"""Cost of the confinement rule (issue 11): ingest and warm query, this checkout against another one.

Runs `memos ingest` of N short memories (whole process) and a warm in-process query p50 for each source
tree given, interleaved ROUNDS times so that a loaded machine hits both alike; prints medians.

    .venv/bin/python bench/confine_overhead.py --trees /path/to/main,/path/to/branch [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = r"""
import json, statistics, sys, time
from memos_cli.cube.bundle import Cube
try:
    from memos_cli.engine.plaintext.query import Searcher
except ImportError:  # a tree from before engine/ was grouped by memory kind
    from memos_cli.engine.query import Searcher
cube = Cube.open(sys.argv[1])
with Searcher([cube], record_usage=False) as s:
    s.search("warm up", k=10)
    times = []
    for i in range(60):
        t = time.perf_counter(); s.search(f"who moved to city {i % 17}", k=10); times.append(time.perf_counter() - t)
print(json.dumps({"p50_ms": statistics.median(times) * 1000}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trees", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    results: dict[str, dict[str, list[float]]] = {str(t): {"ingest_s": [], "p50_ms": []} for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "records.jsonl"
        src.write_text(
            "".join(
                json.dumps({"text": f"person {i} moved to city {i % 17} in year {1990 + i % 30}", "speaker": "ana"})
                + "\n"
                for i in range(args.n)
            )
        )
        for round_ in range(args.rounds):
            for tree in trees:
                env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
                cube = Path(tmp) / f"cube-{round_}-{tree.name}"
                subprocess.run(
                    [sys.executable, "-m", "memos_cli", "init", str(cube)], env=env, check=True, capture_output=True
                )
                started = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "memos_cli", "ingest", str(cube), str(src)],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                results[str(tree)]["ingest_s"].append(time.perf_counter() - started)
                out = subprocess.run(
                    [sys.executable, "-c", QUERY, str(cube)], env=env, check=True, capture_output=True, text=True
                ).stdout
                results[str(tree)]["p50_ms"].append(json.loads(out)["p50_ms"])
    print(f"ingest of {args.n:,} memories (whole process) and warm query p50 (60 queries), {args.rounds} rounds")
    for tree, figures in results.items():
        ingest = statistics.median(figures["ingest_s"])
        print(
            f"{Path(tree).name:>14}: ingest {ingest:6.1f}s ({args.n / ingest:6.1f}/s), "
            f"query p50 {statistics.median(figures['p50_ms']):6.2f} ms   "
            f"(all: {[round(x, 1) for x in figures['ingest_s']]}, {[round(x, 2) for x in figures['p50_ms']]})"
        )


if __name__ == "__main__":
    main()
