"""Recall on corpora shaped unlike LoCoMo: a check that ranking changes tuned on chat do not hurt notes.

Two in-process corpora (hand-written, in ``bench/data``), ranked with ``memos_cli.engine.plaintext.ranking.rank``
as the engine ranks a cube ingested from those files (source = the file, time as written):

* ``notes``: 42 chunks of personal notes documents (home server, meetings, recipes, travel, health,
  car, reading, garden; consecutive chunks of one file are neighbours) plus the 100 standalone facts
  of ``bench/data/distill/*.jsonl`` as distractors; 36 questions written the way a user would ask
  (``bench/data/notes/questions.jsonl``), each with the chunk(s) that answer it.
* ``facts``: the 100 standalone facts alone (each file's facts unrelated to each other, yet neighbours
  by file order, so neighbour context can only add noise), with their 100 natural questions.

Reports recall_any@1/3/5/10 and MRR for the default settings and for those before issue 15's
neighbour-text field (``before``: window 0.5, dense context 0.25, no neighbour text).

    PYTHONPATH=. python bench/notes_recall.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locomo_proto import embed_cached  # noqa: E402

from memos_cli.engine.plaintext import temporal  # noqa: E402
from memos_cli.engine.plaintext.lexical import LexicalIndex  # noqa: E402
from memos_cli.engine.plaintext.ranking import (  # noqa: E402
    DEFAULT_SETTINGS,
    RankInputs,
    RankSettings,
    Row,
    embed_rows,
    lexical_text,
    rank,
    structure,
)

DATA = Path(__file__).resolve().parent / "data"
SETS = ("codes", "dates", "mixed", "people", "prefs")
KS = (1, 3, 5, 10)
BEFORE = RankSettings(window=0.5, context_dense=0.25, context_lexical=0.0)  # before the neighbour-text field


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _row(rec: dict, source: str) -> Row:
    when = rec.get("time")
    event = [i.to_dict() for i in temporal.find(rec["text"], when)] if when else None
    return Row(text=rec["text"], time=when, source=source, source_id=rec["id"], type="note", event=event or None)


def corpora() -> dict[str, tuple[list[Row], list[tuple[str, set[str]]]]]:
    facts: list[Row] = []
    fact_questions: list[tuple[str, set[str]]] = []
    for name in SETS:
        facts += [_row(r, f"{name}.jsonl") for r in _read(DATA / "distill" / f"{name}.jsonl")]
        fact_questions += [(q["question"], {q["id"]}) for q in _read(DATA / "distill" / f"{name}.questions.jsonl")]
    notes = [_row(r, r["source"]) for r in _read(DATA / "notes" / "memories.jsonl")]
    note_questions = [(q["q"], set(q["ev"])) for q in _read(DATA / "notes" / "questions.jsonl")]
    return {"notes": (notes + facts, note_questions), "facts": (facts, fact_questions)}


def evaluate(rows: list[Row], questions: list[tuple[str, set[str]]], settings: RankSettings) -> dict[str, float]:
    lex = LexicalIndex()
    lex.add([lexical_text(r) for r in rows])
    inputs = RankInputs(vectors=embed_rows(rows, embed_cached), lexical=lex, rows=rows, structure=structure(rows))
    qvecs = embed_cached([q for q, _ in questions])
    latest = max((r.time for r in rows if r.time), default=None)
    ids = [r.source_id for r in rows]
    hits = {k: 0 for k in KS}
    rr = 0.0
    for (text, evidence), qv in zip(questions, qvecs, strict=True):
        periods, lexical = temporal.query_plan(text, latest)
        got = [ids[r] for r, _ in rank(inputs, lexical, qv, k=len(rows), settings=settings, periods=periods)]
        first = min(got.index(e) for e in evidence)
        rr += 1.0 / (first + 1)
        for k in KS:
            hits[k] += first < k
    n = len(questions)
    return {**{f"any@{k}": hits[k] / n for k in KS}, "MRR": rr / n}


def main() -> None:
    print(
        f"{'corpus':8} {'settings':8} {'rows':>5} {'q':>4} "
        + " ".join(f"{c:>7}" for c in [*map("any@{}".format, KS), "MRR"])
    )
    for name, (rows, questions) in corpora().items():
        for label, settings in (("before", BEFORE), ("default", DEFAULT_SETTINGS)):
            m = evaluate(rows, questions, settings)
            print(f"{name:8} {label:8} {len(rows):5d} {len(questions):4d} " + " ".join(f"{v:7.3f}" for v in m.values()))


if __name__ == "__main__":
    main()
