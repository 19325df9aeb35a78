"""Fused adapters keep each parent's facts: distill half the made-up facts into cube A and half into
cube B (same adapter name), fuse A and B, and measure closed-book recall of each parent's facts with the
fused adapter (the distill issue's measure), beside each parent adapter's own recall.

    .venv/bin/python bench/fuse_lora_bench.py [--facts bench/data/facts.jsonl] [--limit 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=Path, default=HERE / "data" / "facts.jsonl")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.distill import distill, load_adapters, measure_recall, probes_for
    from memos_cli.engine.fuse import fuse
    from memos_cli.engine.ingest import Source, ingest
    from memos_cli.engine.select import Selection
    from memos_cli.models.lm import load_lm

    lines = [line for line in args.facts.read_text().splitlines() if line.strip()][: args.limit]
    halves = {"a": lines[: len(lines) // 2], "b": lines[len(lines) // 2 :]}
    lm = load_lm()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        own: dict[str, float] = {}
        for name, part in halves.items():
            cube = Cube.init(root / name, name=name)
            ingest(cube, [Source(f"{name}.jsonl", ("\n".join(part) + "\n").encode())])
            started = time.perf_counter()
            report = distill(cube, Selection(all=True), name="facts", model=lm)
            own[name] = report.recall_after.exact
            print(
                f"parent {name}: {len(part)} facts, own recall {report.recall_after.exact:.0%} "
                f"({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
        started = time.perf_counter()
        fuse([root / "a", root / "b"], root / "ab", combine_adapters=True)
        fused_seconds = time.perf_counter() - started
        fused_lm = load_adapters(lm, Cube.open(root / "ab"), ["facts"])
        print(
            f"fuse (with adapter combination): {fused_seconds:.1f}s; method "
            f"{Cube.open(root / 'ab').manifest.lora['facts'].get('method')}"
        )
        for name in halves:
            records = [r for r in Cube.open(root / name).read_state().current.values()]
            probes = [p for r in records for p in probes_for(r)]
            recall = measure_recall(fused_lm, probes)
            print(
                f"fused adapter, parent {name}'s facts: recall {recall.exact:.0%} "
                f"(parent's own adapter {own[name]:.0%})",
                flush=True,
            )
        print(json.dumps({"facts": len(lines)}))


if __name__ == "__main__":
    main()
