"""LoCoMo retrieval benchmark, in process (no CLI): the ranker of ``memos_cli.engine.plaintext.ranking`` on the
development split, one cube per conversation, scored with recall_any@k / recall_all@k.

Rows are built the way the engine gets them from a JSONL ingest of a conversation: one memory per turn,
the turn text (plus ``[shares a photo: <caption>]`` for image turns), the speaker, the session date as
the memory's time, the conversation's file as source and the dia_id as source_id.

Also runs leave-one-conversation-out validation of the ranker settings: for each conversation, pick the
settings of a small grid that score best on the other four, and report that choice on the held-out one.

    .venv/bin/python bench/locomo_proto.py            # table for dense, lexical, hybrid + LOO
    .venv/bin/python bench/locomo_proto.py --no-loo   # table only

Embeddings are cached in the temp folder (memos-locomo-cache) (keyed by embedder fingerprint and text), so only the
first run pays for the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

# The data lives beside the repository (../shared/data), never copied into it.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo-dev.json"
CACHE = Path(tempfile.gettempdir()) / "memos-locomo-cache"
KS = (5, 10, 20)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
MODES = ("dense", "lexical", "hybrid")


@dataclass
class Question:
    text: str
    category: int
    evidence: set[str]
    relative: bool = False  # some evidence turn dates an event relative to when it was said


@dataclass
class Conversation:
    name: str
    rows: list[Row]
    questions: list[Question]


def _session_iso(stamp: str) -> str:
    """'1:56 pm on 8 May, 2023' -> '2023-05-08T13:56:00'."""
    return datetime.strptime(stamp.strip(), "%I:%M %p on %d %B, %Y").isoformat()


_RELATIVE = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|ago|(last|next|this|past) (week|month|year|weekend|night|summer|winter|"
    r"spring|fall|autumn)|the other day|recently|"
    r"(for|in) (a|an|one|two|three|four|five|six|\d+|a few|a couple of|several) (days?|weeks?|months?|years?)|"
    r"(on|last|this) (monday|tuesday|wednesday|thursday|friday|saturday|sunday))\b",
    re.IGNORECASE,
)


def _relative(text: str) -> bool:
    """Whether a turn dates something relative to when it was said (an independent, broad pattern,
    not the engine's, so that the subset does not depend on what the engine resolves)."""
    return _RELATIVE.search(text) is not None


def normalise_evidence(entries: Iterable[str], known: set[str]) -> set[str]:
    """The README's rules: split on ';' and whitespace, 'D:11:26' -> 'D11:26', 'D30:05' -> 'D30:5',
    drop ids absent from the dialogue."""
    out: set[str] = set()
    for entry in entries:
        for part in re.split(r"[;\s]+", entry):
            m = re.fullmatch(r"D:?(\d+):(\d+)", part.strip())
            if m:
                dia = f"D{int(m.group(1))}:{int(m.group(2))}"
                if dia in known:
                    out.add(dia)
    return out


def load_locomo(path: Path = DATA) -> list[Conversation]:
    convs = []
    for sample in json.loads(path.read_text(encoding="utf-8")):
        conv = sample["conversation"]
        source = f"{sample['sample_id']}.jsonl"
        sessions = sorted(
            (int(k.split("_")[1]), k) for k in conv if re.fullmatch(r"session_\d+", k) and isinstance(conv[k], list)
        )
        rows: list[Row] = []
        for _num, key in sessions:
            when = _session_iso(conv[f"{key}_date_time"])
            for turn in conv[key]:
                text = turn["text"]
                if turn.get("blip_caption"):
                    text = f"{text} [shares a photo: {turn['blip_caption']}]"
                rows.append(
                    Row(
                        text=text,
                        speaker=turn["speaker"],
                        time=when,
                        source=source,
                        source_id=turn["dia_id"],
                        type="dialogue",
                        tags=[],
                        event=[i.to_dict() for i in temporal.find(text, when)] or None,
                    )
                )
        known = {r.source_id for r in rows if r.source_id}
        by_id = {r.source_id: r for r in rows}
        questions = []
        for qa in sample["qa"]:
            if qa.get("category") not in CATEGORIES:
                continue
            ev = normalise_evidence(qa.get("evidence", []), known)
            if ev:
                relative = any(_relative(by_id[e].text) for e in ev)
                questions.append(Question(qa["question"], int(qa["category"]), ev, relative))
        convs.append(Conversation(sample["sample_id"], rows, questions))
    return convs


def embed_cached(texts: list[str]) -> np.ndarray:
    """Embed with the real embedder, caching per (fingerprint, text list) in the temp folder."""
    from memos_cli.models.embedder import load_embedder

    CACHE.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:24]
    hits = list(CACHE.glob(f"*-{key}.npy"))
    if hits:
        return np.load(hits[0], allow_pickle=False)
    emb = load_embedder()
    vecs = emb.encode(texts)
    tag = hashlib.sha256(emb.fingerprint.encode()).hexdigest()[:8]
    np.save(CACHE / f"{tag}-{key}.npy", vecs, allow_pickle=False)
    return vecs


@dataclass
class Prepared:
    conv: Conversation
    inputs: RankInputs
    qvecs: np.ndarray
    plans: list[tuple[list[tuple[str, str]], str]] = dataclasses.field(default_factory=list)


def prepare(convs: list[Conversation]) -> list[Prepared]:
    out = []
    for conv in convs:
        lex = LexicalIndex()
        lex.add([lexical_text(r) for r in conv.rows])
        vectors = embed_rows(conv.rows, embed_cached)
        qvecs = embed_cached([q.text for q in conv.questions])
        inputs = RankInputs(vectors=vectors, lexical=lex, rows=conv.rows, structure=structure(conv.rows))
        latest = max(r.time for r in conv.rows if r.time)
        plans = [temporal.query_plan(q.text, latest) for q in conv.questions]
        out.append(Prepared(conv, inputs, qvecs, plans))
    return out


@dataclass
class Hits:
    """Per question: category, whether any / all evidence is in the top k, for each k."""

    category: list[int] = dataclasses.field(default_factory=list)
    relative: list[bool] = dataclasses.field(default_factory=list)
    any: dict[int, list[bool]] = dataclasses.field(default_factory=lambda: {k: [] for k in KS})
    all: dict[int, list[bool]] = dataclasses.field(default_factory=lambda: {k: [] for k in KS})
    ms: list[float] = dataclasses.field(default_factory=list)

    def extend(self, other: Hits) -> None:
        self.category += other.category
        self.relative += other.relative
        self.ms += other.ms
        for k in KS:
            self.any[k] += other.any[k]
            self.all[k] += other.all[k]

    def recall(self, kind: str, k: int, category: int | None = None, relative: bool = False) -> float:
        vals = getattr(self, kind)[k]
        sel = [
            v
            for v, c, r in zip(vals, self.category, self.relative, strict=True)
            if (category is None or c == category) and (r or not relative)
        ]
        return float(np.mean(sel)) if sel else float("nan")


def run(prep: Prepared, mode: str, settings: RankSettings) -> Hits:
    hits = Hits()
    ids = [r.source_id for r in prep.conv.rows]
    for q, qv, (periods, lexical) in zip(prep.conv.questions, prep.qvecs, prep.plans, strict=True):
        t0 = time.perf_counter()
        ranked = rank(prep.inputs, lexical, qv, k=max(KS), mode=mode, settings=settings, periods=periods)
        hits.ms.append((time.perf_counter() - t0) * 1000)
        got = [ids[r] for r, _ in ranked]
        hits.category.append(q.category)
        hits.relative.append(q.relative)
        for k in KS:
            top = set(got[:k])
            hits.any[k].append(bool(q.evidence & top))
            hits.all[k].append(q.evidence <= top)
    return hits


def table(results: dict[str, Hits]) -> str:
    cols = [f"{kind}@{k}" for kind in ("any", "all") for k in KS]
    lines = [f"{'mode':<8} {'category':<12} {'n':>4} " + " ".join(f"{c:>7}" for c in cols) + "   ms/rank"]
    for mode, h in results.items():
        for cat in [None, *CATEGORIES]:
            name = "all" if cat is None else f"{cat} {CATEGORIES[cat]}"
            n = len(h.category) if cat is None else h.category.count(cat)
            vals = [h.recall(kind, k, cat) for kind in ("any", "all") for k in KS]
            ms = f"   {np.mean(h.ms):.2f}" if cat is None else ""
            lines.append(f"{mode:<8} {name:<12} {n:>4} " + " ".join(f"{v:7.3f}" for v in vals) + ms)
        n = sum(1 for c, r in zip(h.category, h.relative, strict=True) if c == 2 and r)
        vals = [h.recall(kind, k, 2, relative=True) for kind in ("any", "all") for k in KS]
        lines.append(f"{mode:<8} {'2 relative':<12} {n:>4} " + " ".join(f"{v:7.3f}" for v in vals))
    return "\n".join(lines)


# A small grid of the few explainable knobs (BM25 b fixed at 0.4: every fold chose it before; time and
# dated at the values the issue-15 grid chose); LOO picks on 4 conversations at a time and reports the
# choice on the fifth.
GRID = {
    "b": (0.4,),
    "window": (0.25, 0.5),
    "episode": (0.5, 1.0),
    "speaker": (1.0, 2.0),
    "lexical_weight": (0.7, 1.0),
    "context_dense": (0.0, 0.25, 0.5),
    "context_lexical": (0.0, 0.1),
    "time": (0.0, 1.0),
    "dated": (0.5, 1.0),
}


def with_b(preps: list[Prepared], b: float) -> list[Prepared]:
    """The same cubes with their BM25 index rebuilt for another length normalisation ``b``."""
    out = []
    for p in preps:
        lex = LexicalIndex(b=b)
        lex.add([lexical_text(r) for r in p.conv.rows])
        inputs = dataclasses.replace(p.inputs, lexical=lex, _cache={})
        out.append(Prepared(p.conv, inputs, p.qvecs, p.plans))
    return out


def loo(preps: list[Prepared]) -> tuple[float, list[str], Hits]:
    """Leave-one-conversation-out recall_any@10 of the hybrid ranker over GRID, the choice of each fold,
    and the held-out hits (each conversation ranked with the settings chosen on the other four)."""
    combos = [dict(zip(GRID, vals, strict=True)) for vals in itertools.product(*GRID.values())]
    by_b = {b: with_b(preps, b) for b in GRID["b"]}
    per: dict[int, list[Hits]] = {}
    for ci, combo in enumerate(combos):
        knobs = {key: val for key, val in combo.items() if key != "b"}
        s = dataclasses.replace(DEFAULT_SETTINGS, **knobs)
        per[ci] = [run(p, "hybrid", s) for p in by_b[combo["b"]]]
    held = Hits()
    notes = []
    for i, p in enumerate(preps):

        def train_score(ci: int, held_out: int = i) -> float:
            h = Hits()
            for j, hj in enumerate(per[ci]):
                if j != held_out:
                    h.extend(hj)
            return h.recall("any", 10)

        best = max(range(len(combos)), key=train_score)
        held.extend(per[best][i])
        notes.append(
            f"  held out {p.conv.name}: chose {combos[best]} (train {train_score(best):.3f}), "
            f"held-out any@10 {per[best][i].recall('any', 10):.3f}"
        )
    return held.recall("any", 10), notes, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-loo", action="store_true", help="skip leave-one-conversation-out validation")
    args = ap.parse_args()
    preps = prepare(load_locomo())
    results: dict[str, Hits] = {}
    for mode in MODES:
        h = Hits()
        for p in preps:
            h.extend(run(p, mode, DEFAULT_SETTINGS))
        results[mode] = h
    print(
        f"LoCoMo dev: {len(preps)} conversations, {sum(len(p.conv.rows) for p in preps)} turns, "
        f"{len(results['hybrid'].category)} questions (categories 1-4)"
    )
    print(table(results))
    if not args.no_loo:
        fig, notes, held = loo(preps)
        print("\nleave-one-conversation-out (hybrid, recall_any@10):", f"{fig:.3f}")
        print("\n".join(notes))
        print(table({"LOO": held}))


if __name__ == "__main__":
    main()
