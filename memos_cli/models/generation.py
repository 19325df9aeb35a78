"""Answering: a prompt after an injected KV snapshot (or with the memories prefilled), decoded greedily
(speculatively, with a half-precision draft) or by sampling, streamed piece by piece."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memos_cli.cube.records import MemoryRecord
from memos_cli.errors import (
    ActivationError,
    UsageError,
)
from memos_cli.models.kvcache import Snapshot, check_compatible, inject
from memos_cli.models.lm import LanguageModel, TextStream
from memos_cli.models.prompt import (
    Layout,
    Mode,
    Prompt,
    check_length,
    prefill,
    render_preamble,
    render_prompt,
)


@dataclass
class GenerationResult:
    answer: str
    token_ids: list[int]  # generated ids, without the stop token
    ttft_ms: float  # from the call to the first token chosen: rendering, cache copy and prefill included
    new_tokens: int
    tokens_per_s: float  # decoding speed after the first token
    prompt_tokens: int
    reused_tokens: int  # prompt tokens served from the snapshot instead of prefilled
    mode: str
    stop_reason: str  # "eos" or "length"
    # Speculative decoding (models/speculative.py): tokens the half-precision draft proposed, and how many
    # of them the float32 model accepted; both 0 when the plain loop decoded.
    drafted: int = 0
    accepted: int = 0


# ---------------------------------------------------------------------------------------------------------
# Generation


def generate(
    lm: LanguageModel,
    question: str,
    *,
    snapshot: Snapshot | None = None,
    memories: Sequence[MemoryRecord] = (),
    mode: Mode = "kv",
    retrieved: Sequence[MemoryRecord] = (),
    history: Sequence[dict[str, str]] = (),
    greedy: bool = True,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int | None = None,
    on_token: Callable[[str], None] | None = None,
    speculative: bool | None = None,
) -> GenerationResult:
    """Answer ``question`` after a memory preamble, retrieved memories and conversation history.

    The prompt is, in one chat-template rendering: [preamble] + ``history`` (``{"role", "content"}``
    dicts) + a user message holding the ``retrieved`` memories and the question + the generation prompt.

    - ``mode="kv"``: the preamble is ``snapshot``'s; a copy of its cache is injected and only the
      rest of the prompt is prefilled. The snapshot is never modified.
    - ``mode="recompute"``: the same text (the snapshot's preamble, or one rendered from ``memories``)
      is prefilled from scratch: the reference that ``kv`` is checked against.
    - ``mode="none"``: no preamble; the template's default system message, if any, applies.

    ``on_token`` receives the answer's text as it grows, piece by piece (for streaming).

    ``speculative``: greedy decoding with a half-precision draft checked by the model itself
    (models/speculative.py; the same tokens, faster where half precision is). None decides by model size,
    CPU and ``MEMOS_SPECULATIVE``; it never applies to sampling.
    """
    import torch

    from memos_cli.config import configure_threads

    configure_threads(interactive=True)  # chat embeds its question at bulk width first: take the cores back
    started = time.perf_counter()
    prompt, cache, reused = _start(lm, question, mode, snapshot, memories, retrieved, history, max_new_tokens)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    greedy = greedy or temperature <= 0
    if speculative is None:
        from memos_cli.models import speculative as spec_mod

        speculative = spec_mod.wanted(lm, greedy=greedy, max_new_tokens=max_new_tokens)
    speculative = speculative and greedy
    answer = _Answer(lm, max_new_tokens, on_token)
    drafted = accepted = 0
    with torch.inference_mode():
        out = prefill(lm, prompt.token_ids[reused:], cache)
        if max_new_tokens > 0:
            token = _pick(out.logits[0, -1].float(), greedy, temperature, top_p, generator)
            if speculative:
                if answer.take(token):
                    room = lambda: max_new_tokens - len(answer.ids)  # noqa: E731
                    drafted, accepted = _speculate(lm, snapshot if reused else None, out, token, answer.take, room)
            else:
                while answer.take(token):
                    out = prefill(lm, [token], out.past_key_values)
                    token = _pick(out.logits[0, -1].float(), greedy, temperature, top_p, generator)
    ended = time.perf_counter()
    first_at = answer.first_at or ended
    text = answer.finish()
    decode_s = ended - first_at
    rate = (len(answer.ids) - 1) / decode_s if len(answer.ids) > 1 and decode_s > 0 else 0.0
    return GenerationResult(
        answer=text.strip(),
        token_ids=answer.ids,
        ttft_ms=(first_at - started) * 1000.0,
        new_tokens=len(answer.ids),
        tokens_per_s=rate,
        prompt_tokens=len(prompt.token_ids),
        reused_tokens=reused,
        mode=mode,
        stop_reason=answer.stop_reason,
        drafted=drafted,
        accepted=accepted,
    )


def greedy_batch(
    lm: LanguageModel,
    questions: Sequence[str],
    budgets: Sequence[int],
    *,
    batch: int = 16,
    done: Callable[[int], None] | None = None,
) -> list[str]:
    """Each question answered as ``generate(lm, question, mode="none", max_new_tokens=budgets[i])``
    answers it (greedy, the chat template's prompt, no memory), ``batch`` questions at a time: the
    prompts are left-padded under an attention mask, so each answer is the one its question alone gets
    (tests/test_distill.py checks them equal), for a fraction of the time (a question alone spends most of
    it on per-step overhead). ``done(n)`` after each batch, with the number answered so far."""
    import torch

    prompts = [render_prompt(lm, q).token_ids for q in questions]
    order = sorted(range(len(questions)), key=lambda i: len(prompts[i]))  # little padding in a batch
    out = [""] * len(questions)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # padding is masked: any id will do
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        position = (mask.cumsum(dim=1) - 1).clamp(min=0)
        answers = [_Answer(lm, budgets[i], None) for i in rows]
        open_rows = {row for row, i in enumerate(rows) if budgets[i] > 0}
        with torch.inference_mode():
            result = lm.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
            while open_rows:
                tokens = result.logits[:, -1].float().argmax(dim=-1).tolist()
                open_rows = {row for row in open_rows if answers[row].take(tokens[row])}
                if not open_rows:
                    break
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
                position = position[:, -1:] + 1
                result = lm.model(
                    input_ids=torch.tensor(tokens).unsqueeze(1),
                    attention_mask=mask,
                    position_ids=position,
                    past_key_values=result.past_key_values,
                    use_cache=True,
                )
        for row, i in enumerate(rows):
            out[i] = answers[row].finish().strip()
        if done is not None:
            done(min(start + batch, len(order)))
    return out


def _start(
    lm: LanguageModel,
    question: str,
    mode: Mode,
    snapshot: Snapshot | None,
    memories: Sequence[MemoryRecord],
    retrieved: Sequence[MemoryRecord],
    history: Sequence[dict[str, str]],
    max_new_tokens: int,
) -> tuple[Prompt, Any, int]:
    """The rendered prompt, the injected cache (None unless ``mode`` is "kv") and how many of the
    prompt's tokens that cache already holds."""
    if mode not in ("kv", "recompute", "none"):
        raise UsageError(f"mode must be kv, recompute or none, not {mode!r}")
    if mode == "kv" and snapshot is None:
        raise UsageError("mode kv needs a snapshot")
    if snapshot is not None and memories:
        raise UsageError("give either a snapshot or memories for the preamble, not both")
    preamble: str | None = None
    layout: Layout | None = None
    prefix_ids: list[int] | None = None
    if mode != "none":
        if snapshot is not None:
            check_compatible(lm, snapshot)
            preamble, layout, prefix_ids = snapshot.preamble, snapshot.layout, snapshot.token_ids
        elif memories:
            preamble = render_preamble(memories)
    prompt = render_prompt(
        lm, question, preamble=preamble, layout=layout, prefix_ids=prefix_ids, retrieved=retrieved, history=history
    )
    check_length(lm, len(prompt.token_ids) + max_new_tokens, snapshot=False)
    if mode != "kv" or snapshot is None:
        return prompt, None, 0
    if not prompt.token_ids[snapshot.token_count :]:  # the model needs at least one new token for logits
        raise ActivationError("the prompt adds nothing after the snapshot")
    return prompt, inject(lm, snapshot), snapshot.token_count


class _Answer:
    """The answer's tokens as they are chosen, streamed piece by piece to ``on_token``."""

    def __init__(self, lm: LanguageModel, max_new_tokens: int, on_token: Callable[[str], None] | None) -> None:
        self.tokenizer = lm.tokenizer
        self.stops = lm.stop_token_ids()
        self.max_new_tokens = max_new_tokens
        self.on_token = on_token
        self.stream = TextStream(lm.tokenizer) if on_token is not None else None
        self.ids: list[int] = []
        self.emitted = ""
        self.stop_reason = "length"
        self.first_at: float | None = None

    def take(self, token: int) -> bool:
        """Record one chosen token; False when the answer ends with it."""
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if token in self.stops:
            self.stop_reason = "eos"
            return False
        self.ids.append(token)
        if self.stream is not None and self.on_token is not None:
            piece = self.stream.push(token)  # decodes a few tokens, not the whole answer again
            if piece:
                self.on_token(piece)
                self.emitted += piece
        return len(self.ids) < self.max_new_tokens

    def finish(self) -> str:
        """The whole answer; what streaming has not sent yet (a last partial character) is sent now."""
        text: str = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.on_token is not None and len(text) > len(self.emitted) and text.startswith(self.emitted):
            self.on_token(text[len(self.emitted) :])
        return text


def _speculate(
    lm: LanguageModel,
    snapshot: Snapshot | None,
    out: Any,
    token: int,
    take: Callable[[int], bool],
    room: Callable[[], int],
) -> tuple[int, int]:
    """Greedy decoding after ``token`` with a half-precision draft (models/speculative.py); returns
    (tokens drafted, tokens accepted). The draft's cache is a half copy of the float32 cache after the
    prefill; an injected snapshot's part of it is converted once per session and dtype."""
    from memos_cli.models import speculative as spec

    draft = spec.draft_for(lm.model)
    dtype = draft.dtype
    head: list[tuple[Any, Any]] = []
    if snapshot is not None:
        key = str(dtype)
        if key not in snapshot.half:
            snapshot.half[key] = [
                (k.to(dtype), v.to(dtype)) for k, v in zip(snapshot.keys, snapshot.values, strict=True)
            ]
        head = snapshot.half[key]
    draft_cache = spec.half_copy(out.past_key_values, draft.config, dtype, head)
    stats = spec.Stats()
    spec.greedy_loop(lm.model, draft, out.past_key_values, draft_cache, token, take, room, stats)
    return stats.drafted, stats.accepted


def _pick(logits: Any, greedy: bool, temperature: float, top_p: float, generator: Any) -> int:
    import torch

    if greedy or temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    ordered, index = torch.sort(probs, descending=True)
    keep = torch.cumsum(ordered, dim=-1) - ordered < top_p  # the smallest set whose mass reaches top_p
    ordered = ordered * keep
    choice = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
    return int(index[choice])
