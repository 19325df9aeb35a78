"""`memos schedule` on a large cube with nothing due: the wall time of the whole process.

Builds a cube of N memories (records written directly through the engine's record class: the scheduler
reads no index, so none is built), a usage log of U lines spread over 30 days, and a policy with every
rule on: archive by type time-to-live, unused-for and `expires`, working memories, activation and
parametric. The hot snapshot's manifest entry holds exactly the current hot set (its file is not made:
planning reads the manifest only), and the parametric threshold is not reached, so nothing is due.
Then it times `memos schedule CUBE` (and `--dry-run`, and `stats --json`) as separate processes.

    .venv/bin/python bench/schedule_bench.py [--n 100000] [--uses 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import KvEntry
from memos_cli.cube.records import MemoryRecord, content_hash, memory_id_for

MEMOS = [sys.executable, "-m", "memos_cli"]
POLICY = """\
schedule:
  activation:
    enabled: true
    name: hot
    max_memories: 50
  parametric:
    enabled: true
    name: stable
    min_uses: 5
    min_days: 7
    min_new: 1000000
  archive:
    ttl_days: {event: 3650, dialogue: 3650}
    unused_days: 3650
  working:
    idle_days: 3650
"""
TYPES = ("fact", "event", "preference", "dialogue", "document", "note")


def build(root: Path, n: int, uses: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    cube = Cube.init(root / "cube", owner="bench")
    now = utc_now()
    lines = []
    ids = []
    for i in range(n):
        text = f"memory {i}: {rng.choice(['Ana', 'Bob', 'Chen', 'Dara'])} noted item {rng.randrange(10**6)}"
        chash = content_hash(text, "bench.jsonl", str(i))
        record = MemoryRecord(
            id=memory_id_for(chash),
            version=1,
            text=text,
            type=TYPES[i % len(TYPES)],
            created=now,
            source="bench.jsonl",
            source_id=str(i),
            tags=["working"] if i % 50 == 0 else [],
            hash=chash,
            actor="bench",
        )
        if i % 100 == 1:
            record.metadata["expires"] = "2999-01-01T00:00:00Z"
        ids.append(record.id)
        lines.append(record.to_json() + "\n")
    (cube.path / layout.MEMORIES).write_text("".join(lines), encoding="utf-8")
    t_end = time.time()
    usage = []
    for _ in range(uses):
        stamp = t_end - rng.random() * 30 * 86400
        usage.append(json.dumps({"t": round(stamp, 3), "ids": rng.sample(ids[:5000], 5)}) + "\n")
    cube.derived.joinpath(layout.USAGE_FILE).write_text("".join(usage), encoding="utf-8")
    with open(cube.manifest_path, "a", encoding="utf-8") as handle:
        handle.write(POLICY)
    # The snapshot entry holds the current hot set: rebuilding it is not due.
    from memos_cli.engine.schedule import make_plan

    cube = Cube.open(cube.path)
    plan = make_plan(cube)
    state = cube.read_state()
    with cube.transaction(actor="bench", op="bench") as tx:
        tx.manifest.kv["hot"] = KvEntry(
            name="hot", memories=[state.current[i].ref for i in plan.hot], selection={"ids": plan.hot}, tokens=0
        )
        tx.touch_manifest()
    return cube.path


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(MEMOS + args, capture_output=True, text=True, check=False)
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--uses", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--conditions", default="quiet,loaded", help="quiet, and/or loaded (a busy loop the bench starts)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = build(Path(tmp), args.n, args.uses)
        print(f"built {args.n} memories, {args.uses} usage lines in {time.perf_counter() - started:.1f}s")
        report = {}
        for condition in args.conditions.split(","):
            competitor = None
            if condition == "loaded":  # one CPU-bound process, started and stopped by the bench itself
                competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                report[condition] = measure(path, args.repeat, condition)
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
        print(json.dumps({"n": args.n, "uses": args.uses, **report}, indent=1))


def measure(path: Path, repeat: int, condition: str) -> dict[str, dict[str, float]]:
    results = {}
    for label, extra in (("schedule", []), ("schedule --dry-run", ["--dry-run"]), ("stats", [])):
        command = ["stats", str(path), "--json"] if label == "stats" else ["schedule", str(path), "--json", *extra]
        times = []
        for _ in range(repeat):
            seconds, done = timed(command)
            if done.returncode != 0:
                sys.exit(f"{label} failed ({done.returncode}): {done.stderr}")
            times.append(seconds)
        if label.startswith("schedule"):
            steps = json.loads(done.stdout)["steps"]
            assert steps == [], f"something was due: {steps}"
        results[label] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}
        print(f"{condition} {label}: median {statistics.median(times):.2f}s, best {min(times):.2f}s over {repeat} runs")
    return results


if __name__ == "__main__":
    main()
