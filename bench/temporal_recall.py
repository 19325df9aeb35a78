"""Time-aware retrieval on chats nobody tuned on, through the CLI, beside a baseline checkout.

`bench/data/temporal/` holds three multi-session chats between two people (one JSONL record per turn:
id, speaker, time = the session's date, text) and 60 questions written with them by someone who had not
seen memos's rules: 40 ask with an absolute date or period about an event the evidence turn dates
relative to when it was said ("relative": "What did Dana do on 16 May 2023?" for "...yesterday" said on
17 May), 10 about events the turn dates absolutely ("absolute"), 10 name no time ("nodate").
`bench/data/temporal2/` is a second such set, written from a brief that named no time expressions.

For each chat: `memos init`, `memos ingest`, all questions in one `memos query --batch -k 20`; scored
with recall_any@k (an evidence turn in the top k). With `--baseline DIR` (another checkout of memos, e.g.
a `git worktree` of an older commit) the same runs are made with that code, side by side.

    PYTHONPATH=. .venv/bin/python bench/temporal_recall.py [--baseline DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "temporal"
ROOT = Path(__file__).resolve().parents[1]
KS = (1, 5, 10, 20)
KINDS = ("relative", "absolute", "nodate")


def memos(code: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(code)}
    result = subprocess.run(
        [sys.executable, "-m", "memos_cli", *args], input=stdin, capture_output=True, text=True, env=env, cwd=code
    )
    if result.returncode != 0:
        raise SystemExit(f"memos {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def run(code: Path, data: Path, tmp: Path) -> list[tuple[str, str, set[str], list[str]]]:
    """(conversation, kind, evidence, ranked source ids) for every question."""
    questions = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for conv in sorted({q["conv"] for q in questions}):
        cube = tmp / f"{code.name}-{conv}"
        records = tmp / f"{conv}.jsonl"
        rows = [json.loads(line) for line in (data / f"{conv}.jsonl").read_text().splitlines() if line.strip()]
        records.write_text("".join(json.dumps({**row, "type": "dialogue"}) + "\n" for row in rows), encoding="utf-8")
        memos(code, "init", str(cube), "--name", conv)
        memos(code, "ingest", str(cube), str(records))
        asked = [q for q in questions if q["conv"] == conv]
        batch = "".join(" ".join(q["question"].split()) + "\n" for q in asked)
        lines = memos(code, "query", str(cube), "--batch", "-", "-k", str(max(KS)), "--no-usage", stdin=batch)
        for q, line in zip(asked, lines.splitlines(), strict=True):
            ranked = [h["source_id"] for h in json.loads(line)["hits"]]
            out.append((conv, q["kind"], set(q["evidence"]), ranked))
    return out


def table(label: str, results: list[tuple[str, str, set[str], list[str]]]) -> None:
    for subset in ("all", *KINDS):
        rows = [r for r in results if subset in ("all", r[1])]
        if not rows:
            continue
        cells = " ".join(f"{sum(bool(ev & set(ranked[:k])) for _, _, ev, ranked in rows) / len(rows):7.3f}" for k in KS)
        print(f"{label:10} {subset:9} {len(rows):4d} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--baseline", type=Path, help="another checkout of memos to run side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("this", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
        results = {label: run(code, args.data, Path(tmp)) for label, code in runs}
    print(f"{'code':10} {'subset':9} {'n':>4} " + " ".join(f"any@{k:<3}" for k in KS))
    for label, rows in results.items():
        table(label, rows)
    if args.baseline:
        print("\nquestions answered in the top 10 by one and not the other:")
        for (conv, kind, ev, now), (_, _, _, before) in zip(results["this"], results["baseline"], strict=True):
            a, b = bool(ev & set(now[:10])), bool(ev & set(before[:10]))
            if a != b:
                print(
                    f"  {conv} {kind:8} {sorted(ev)}: this {'hit' if a else 'miss'}, baseline {'hit' if b else 'miss'}"
                )


if __name__ == "__main__":
    main()
