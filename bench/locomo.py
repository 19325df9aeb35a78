"""LoCoMo retrieval through the command line, as a user would run it.

For each conversation of the development split: `memos init`, `memos ingest` of one JSONL record per turn
(source_id = dia_id, speaker, the session date as time; image turns carry their photo caption), then all
category 1-4 questions in one `memos query --batch` per retrieval mode. Scored with recall_any@k and
recall_all@k for k = 5, 10, 20, overall, per category and for the temporal questions whose evidence dates
the event relative to when it was said ("2-relative": yesterday, last week, three years ago, ...; rules:
the data folder's README).

    .venv/bin/python bench/locomo.py [--data PATH] [--modes hybrid,dense,lexical]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from locomo_proto import CATEGORIES, DATA, KS, load_locomo  # noqa: E402

MEMOS = [sys.executable, "-m", "memos_cli"]


def memos(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run([*MEMOS, *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"memos {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--modes", default="hybrid,dense,lexical")
    args = parser.parse_args()
    modes = args.modes.split(",")
    conversations = load_locomo(args.data)
    # per mode: list of (category, evidence, ranked source_ids, evidence dated relatively)
    results: dict[str, list[tuple[int, set[str], list[str], bool]]] = {m: [] for m in modes}
    timings: dict[str, float] = {}
    ingest_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for conv in conversations:
            cube = os.path.join(tmp, conv.name)
            records = os.path.join(tmp, f"{conv.name}.jsonl")
            with open(records, "w", encoding="utf-8") as handle:
                for row in conv.rows:
                    record = {
                        "text": row.text,
                        "speaker": row.speaker,
                        "time": row.time,
                        "id": row.source_id,
                        "type": "dialogue",
                    }
                    handle.write(json.dumps(record) + "\n")
            memos("init", cube, "--name", conv.name)
            started = time.perf_counter()
            memos("ingest", cube, records)
            ingest_s += time.perf_counter() - started
            questions = [q for q in conv.questions if q.evidence]
            batch = "".join(" ".join(q.text.split()) + "\n" for q in questions)
            for mode in modes:
                started = time.perf_counter()
                out = memos(
                    "query", cube, "--batch", "-", "-k", str(max(KS)), "--retrieval", mode, "--no-usage", stdin=batch
                )
                timings[mode] = timings.get(mode, 0.0) + time.perf_counter() - started
                lines = out.splitlines()
                assert len(lines) == len(questions), (len(lines), len(questions))
                for q, line in zip(questions, lines, strict=True):
                    ranked = [h["source_id"] for h in json.loads(line)["hits"]]
                    results[mode].append((q.category, q.evidence, ranked, q.relative))
            print(f"{conv.name}: {len(conv.rows)} turns, {len(questions)} questions", file=sys.stderr)
    n_questions = len(results[modes[0]])
    print(f"LoCoMo dev, categories 1-4, {len(conversations)} conversations, {n_questions} questions, via the CLI")
    print(f"ingest total {ingest_s:.1f}s; batch query wall time (whole process, models loaded once):")
    for mode in modes:
        print(f"  {mode}: {timings[mode]:.1f}s for {n_questions} queries")
    header = f"{'mode':8} {'subset':12} {'n':>5} " + " ".join(f"any@{k:<3} all@{k:<3}" for k in KS)
    print(header)
    for mode in modes:
        subsets = [("overall", None)] + [(f"{c}-{name}", c) for c, name in CATEGORIES.items()]
        # temporal questions whose evidence dates the event relative to when it was said
        subsets.append(("2-relative", -2))
        for label, cat in subsets:
            rows = [r for r in results[mode] if cat is None or r[0] == cat or (cat == -2 and r[0] == 2 and r[3])]
            cells = []
            for k in KS:
                anyk = sum(bool(ev & set(ranked[:k])) for _, ev, ranked, _ in rows) / len(rows)
                allk = sum(ev <= set(ranked[:k]) for _, ev, ranked, _ in rows) / len(rows)
                cells.append(f"{anyk:7.3f} {allk:7.3f}")
            print(f"{mode:8} {label:12} {len(rows):5d} " + " ".join(cells))


if __name__ == "__main__":
    main()
