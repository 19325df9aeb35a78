"""chat: a local model answers with retrieved memories, an injected KV snapshot and LoRA adapters,
and remembers the conversation as dialogue memories in the working tier (``engine/plaintext/working.py``).

Each turn: retrieve plaintext memories (hybrid, from every cube given), render one prompt through the
model's chat template (snapshot preamble, history, retrieved memories + question), generate, then store
the user's turn (and the answer) in the first cube. A snapshot's stored cache is never modified.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine import ops
from memos_cli.engine.plaintext.ingest import ingest_drafts
from memos_cli.engine.plaintext.query import Filters, Searcher
from memos_cli.engine.plaintext.sources import Draft
from memos_cli.engine.plaintext.working import ANSWER_TAG, WORKING_TAG
from memos_cli.errors import AdaptersMismatch, IncompatibleModel, InvalidSnapshot, UsageError


@dataclass
class ChatOptions:
    kv: str | None = None  # snapshot name in the first cube that has it
    loras: list[str] = field(default_factory=list)
    recompute: bool = False  # prefill the snapshot's text instead of injecting its cache
    retrieval: bool = True
    k: int = 5
    remember: bool = True
    remember_answers: bool = True
    greedy: bool = False
    max_new_tokens: int = 128
    seed: int | None = None
    model: str | None = None
    actor: str | None = None


@dataclass
class TurnResult:
    answer: str
    memories_used: list[str]
    kv: str | None
    ttft_ms: float
    new_tokens: int
    tokens_per_s: float
    mode: str
    stale: list[str] = field(default_factory=list)  # warnings: snapshot/adapter memories that changed
    remembered: list[str] = field(default_factory=list)
    retrieved: list[MemoryRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "memories_used": self.memories_used,
            "kv": self.kv,
            "ttft_ms": round(self.ttft_ms, 2),
            "new_tokens": self.new_tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "mode": self.mode,
            "stale": self.stale,
            "remembered": self.remembered,
        }


class ChatSession:
    """One conversation over one or more cubes; models, snapshot and index are loaded once."""

    def __init__(self, cubes: Sequence[Cube], options: ChatOptions) -> None:
        from memos_cli.config import actor as default_actor
        from memos_cli.models.lm import load_lm

        if not cubes:
            raise UsageError("name at least one cube")
        self.cubes = list(cubes)
        self.options = options
        self.actor = default_actor(options.actor)
        for cube in self.cubes:
            cube.check(self.actor, "read")
        self.stale: list[str] = []
        if options.remember and not self.cubes[0].writable():
            # A read-only cube (a mounted release, another user's checkout) still answers; it cannot
            # remember the conversation, and says so instead of failing.
            options.remember = False
            self.stale.append(f"cube {self.cubes[0].path} is read-only: this conversation is not remembered")
        if options.remember:
            self.cubes[0].check(self.actor, "write")
        self.session_id = "chat-" + utc_now().replace(":", "").replace("-", "")[:15] + "-" + secrets.token_hex(2)
        self.history: list[dict[str, str]] = []
        self.turns = 0
        # The snapshot's bytes, header and model fingerprint are checked before the model loads, so a
        # damaged or foreign snapshot fails in milliseconds rather than after seconds of model loading.
        found = self._read_snapshot(options.kv) if options.kv else None
        self.lm = load_lm(options.model)
        self.snapshot = None
        self.kv_name: str | None = None
        if options.loras:
            from memos_cli.engine.parametric.adapters import load_adapters

            self.lm = load_adapters(self.lm, self.cubes[0], options.loras)
            state = self.cubes[0].read_state()
            for name, refs in ops.stale_entries(self.cubes[0], state)["lora"].items():
                if name in options.loras:
                    self.stale.append(f"adapter {name}: {len(refs)} of its memories changed since it was trained")
        if found is not None:  # after the adapters: a snapshot holds the cache of the model it was made with
            self.snapshot = self._load_snapshot(*found)
        if options.greedy:
            from memos_cli.models import speculative

            # The half-precision draft of the (adapted) model, made once per session rather than in a turn.
            if speculative.wanted(self.lm, greedy=True, max_new_tokens=options.max_new_tokens):
                speculative.draft_for(self.lm.model)
        self.searcher = Searcher(self.cubes, actor=self.actor) if options.retrieval else None

    def _read_snapshot(self, name: str) -> tuple[Cube, str, Any]:
        from memos_cli.engine.activation.snapshots import read_snapshot, snapshot_problem
        from memos_cli.errors import SnapshotMissing
        from memos_cli.models.lm import model_fingerprint, resolve_model_dir

        for cube in self.cubes:
            entry = cube.manifest.kv.get(name)
            if entry is None:
                continue
            made_with = list(entry.adapters)
            if made_with != list(dict.fromkeys(self.options.loras)):
                raise AdaptersMismatch(cube.path, name, made_with, list(self.options.loras))
            # the file's shape first (truncated, a link, a broken header: named with the rebuild command),
            # then its sha256 and, for the bare model, its fingerprint: all before the model loads
            problem = snapshot_problem(cube.path, cube.committed_rel(layout.kv_rel(name)))
            if problem:
                raise InvalidSnapshot(layout.kv_rel(name), problem, cube=cube.path, name=name)
            file = read_snapshot(cube.committed_path(layout.kv_rel(name)), expected_sha256=entry.sha256)
            if not made_with:  # an adapted model's fingerprint is known once the adapters load (load_snapshot)
                made_for = file.meta.get("model_fingerprint", "unknown")
                current = model_fingerprint(resolve_model_dir(self.options.model)[1])  # no model load needed
                if made_for != current:
                    raise IncompatibleModel(f"KV snapshot {file.path.name}", made_for, current)
            return cube, name, file
        raise SnapshotMissing(self.cubes[0].path, name, list(self.cubes[0].manifest.kv))

    def _load_snapshot(self, cube: Cube, name: str, file: Any) -> Any:
        from memos_cli.engine.activation.snapshots import load_snapshot

        snap = load_snapshot(file, self.lm)
        stale = ops.stale_entries(cube, cube.read_state())["kv"].get(name)
        if stale:
            self.stale.append(
                f"snapshot {name}: {len(stale)} of its memories changed since it was made "
                f"(memos promote {cube.path} --refresh {name})"
            )
        self.kv_name = name
        return snap

    def ask(self, question: str, *, on_token: Callable[[str], None] | None = None) -> TurnResult:
        from memos_cli.models.generation import generate

        if not question.strip():
            raise UsageError("empty message")
        retrieved: list[MemoryRecord] = []
        if self.searcher is not None:
            in_snapshot = set(self.snapshot.memory_refs) if self.snapshot is not None else set()
            # earlier turns (the working tier) come in below long-term memories; answers never as facts
            hits = self.searcher.search(question, k=self.options.k, filters=Filters(include_working=True))
            for hit in hits:
                if f"{hit.id}@{hit.version}" in in_snapshot:
                    continue  # already in the preamble: do not spend tokens twice
                state_record = self.searcher.record(hit.cube_path, hit.id)
                if state_record is not None:
                    retrieved.append(state_record)
        mode = "none"
        if self.snapshot is not None:
            mode = "recompute" if self.options.recompute else "kv"
        result = generate(
            self.lm,
            question,
            snapshot=self.snapshot,
            mode=mode,  # type: ignore[arg-type]
            retrieved=retrieved,
            history=self.history,
            greedy=self.options.greedy,
            max_new_tokens=self.options.max_new_tokens,
            seed=self.options.seed,
            on_token=on_token,
        )
        self.turns += 1
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": result.answer}]
        remembered = self._remember(question, result.answer) if self.options.remember else []
        used = [r.id for r in retrieved]
        if self.snapshot is not None:
            used = [ref.split("@")[0] for ref in self.snapshot.memory_refs] + used
        return TurnResult(
            answer=result.answer,
            memories_used=used,
            kv=self.kv_name,
            ttft_ms=result.ttft_ms,
            new_tokens=result.new_tokens,
            tokens_per_s=result.tokens_per_s,
            mode=result.mode,
            stale=list(self.stale),
            remembered=remembered,
            retrieved=retrieved,
        )

    def _remember(self, question: str, answer: str) -> list[str]:
        """Store the turn (and the answer, if asked) in the working tier of the first cube, through the
        engine's ingest of drafts; only that cube's view is refreshed for the next turn."""
        now = utc_now()
        turn = f"{self.session_id}:{self.turns}"

        def draft(text: str, speaker: str, part: str, tags: list[str]) -> Draft:
            return Draft(
                text=text,
                source=self.session_id,
                line=1,
                end_line=1,
                source_id=f"{turn}:{part}",
                speaker=speaker,
                time=now,
                type="dialogue",
                tags=tags,
                metadata={"session": self.session_id},
            )

        drafts = [draft(question, "user", "user", ["chat", WORKING_TAG])]
        if self.options.remember_answers and answer.strip():
            drafts.append(draft(answer, "assistant", "assistant", ["chat", WORKING_TAG, ANSWER_TAG]))
        report = ingest_drafts(
            self.cubes[0],
            self.session_id,
            drafts,
            actor=self.actor,
            embedder=self.searcher.embedder if self.searcher else None,
        )
        if self.searcher is not None:  # the next turn can retrieve what was just said
            self.searcher.flush_usage()
            self.searcher.refresh(self.cubes[0])
        return report.ids

    def close(self) -> None:
        if self.searcher is not None:
            self.searcher.flush_usage()
