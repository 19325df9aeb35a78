"""Fuse two cubes of N memories each with a given overlap, through the CLI (whole process timed).

The overlap is real shared content: the same records (same text, same source) ingested into both
cubes, plus near-duplicates (the same fact reworded) at a smaller rate.

    .venv/bin/python bench/fuse_bench.py [--n 10000] [--overlap 0.2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import corpus  # noqa: E402

MEMOS = [sys.executable, "-m", "memos_cli"]


def memos(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([*MEMOS, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"memos {args[0]} failed: {result.stderr.strip()}")
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--overlap", type=float, default=0.2)
    args = parser.parse_args()
    shared = int(args.n * args.overlap)
    records = corpus(2 * args.n - shared, seed=3)
    a_records = records[: args.n]
    b_records = records[:shared] + records[args.n :]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, recs in (("a", a_records), ("b", b_records)):
            shared_file = root / f"{name}-shared.jsonl"
            own_file = root / f"{name}-own.jsonl"
            # shared records come from one file name in both cubes: the same content from the same source
            (root / "shared").mkdir(exist_ok=True)
            shared_path = root / "shared" / "common.jsonl"
            shared_path.write_text("".join(json.dumps(r) + "\n" for r in recs[:shared]))
            own = recs[shared:] if name == "a" else recs[shared:]
            own_file.write_text("".join(json.dumps(r) + "\n" for r in own))
            memos("init", str(root / name), "--name", name)
            memos("ingest", str(root / name), str(shared_path), str(own_file))
            del shared_file
        seconds, out = memos("fuse", str(root / "a"), str(root / "b"), "-o", str(root / "ab"), "--json")
        report = json.loads(out)
        _, verify_out = memos("verify", str(root / "ab"), "--json")
        print(f"fuse of two cubes of {args.n:,} memories, {args.overlap:.0%} shared ({shared:,} records)")
        print(f"memos fuse (whole process): {seconds:.1f}s")
        print(
            f"fused memories: {report['memories']:,} (expected {2 * args.n - shared:,}); "
            f"shared versions stored once {report['shared_versions']}, exact duplicates {report['exact_duplicates']}, "
            f"near duplicates merged {report['near_duplicate_count']}"
        )
        print(f"verify ok: {json.loads(verify_out)['ok']}")


if __name__ == "__main__":
    main()
