"""Prompts for activation memory and chat: the memory preamble and the question rendered through the
model's own chat template (where a preamble sits is probed once per model), fitted to a token budget,
and prefilled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from memos_cli.cube.records import MemoryRecord
from memos_cli.errors import (
    ActivationError,
)
from memos_cli.models.lm import LanguageModel

PREAMBLE_HEADER = "You are a helpful assistant. Use these memories about the user when they are relevant.\nMemories:"
RETRIEVED_HEADER = "Relevant memories:"
Layout = Literal["system", "user", "plain"]
Mode = Literal["kv", "recompute", "none"]
# Used only to probe where a chat template puts things; never part of a real prompt.
_PROBE = "\u2063memos-probe-{}\u2063"


@dataclass
class Prompt:
    """A rendered prompt: its token ids and how many of them are the memory preamble (``prefix_len``).

    ``aligned`` is False when tokenizing the whole text would have merged tokens across the preamble's
    end; the ids are then the preamble's ids followed by the rest's, in every mode alike.
    """

    text: str
    token_ids: list[int]
    prefix_len: int
    aligned: bool = True


# ---------------------------------------------------------------------------------------------------------
# Rendering


def memory_line(record: MemoryRecord) -> str:
    """One memory as one preamble line: ``- (2024-05-01, alice) text``.

    Whitespace is collapsed so every memory is one line, and the line never ends in whitespace (a clean
    token boundary for the text that follows it).
    """
    text = " ".join(record.text.split())
    tags = [t for t in ((record.time or "")[:10], record.speaker or "") if t]
    return f"- ({', '.join(tags)}) {text}" if tags else f"- {text}"


def render_preamble(memories: Sequence[MemoryRecord]) -> str:
    return "\n".join([PREAMBLE_HEADER, *(memory_line(m) for m in memories)])


def _user_content(question: str, retrieved: Sequence[MemoryRecord]) -> str:
    if not retrieved:
        return question
    lines = "\n".join(memory_line(m) for m in retrieved)
    return f"{RETRIEVED_HEADER}\n{lines}\n\n{question}"


def _messages(
    layout: Layout | None, preamble: str | None, history: Sequence[dict[str, str]], user: str
) -> list[dict[str, str]]:
    messages = [{"role": m["role"], "content": m["content"]} for m in history]
    messages.append({"role": "user", "content": user})
    if preamble is None:
        return messages
    if layout == "system":
        return [{"role": "system", "content": preamble}, *messages]
    first = messages[0]  # layout "user": the preamble opens the first user message
    messages[0] = {"role": first["role"], "content": f"{preamble}\n\n{first['content']}"}
    return messages


def _render(
    lm: LanguageModel, layout: Layout | None, preamble: str | None, history: Sequence[dict[str, str]], user: str
) -> str:
    if layout == "plain" or (layout is None and not lm.has_chat_template):
        turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in history)
        head = f"{preamble}\n\n" if preamble is not None else ""
        return f"{head}{turns}User: {user}\nAssistant:"
    messages = _messages(layout, preamble, history, user)
    return str(lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _prefix_text(lm: LanguageModel, layout: Layout, preamble: str) -> str:
    """The rendered text up to the end of the preamble (what a snapshot covers)."""
    text = _render(lm, layout, preamble, (), _PROBE.format(0))
    at = text.find(preamble)
    if at < 0:
        raise ActivationError(f"the chat template of {lm.name} does not keep the memory preamble verbatim")
    return text[: at + len(preamble)]


def detect_layout(lm: LanguageModel) -> Layout:
    """Where this model's chat template lets a memory preamble be a fixed prefix of every prompt.

    A layout qualifies when the text before the end of the preamble is the same whatever follows (other
    questions, conversation history): then a cache of it is valid for every turn.
    """
    if lm.prompt_layout is not None:
        return lm.prompt_layout  # type: ignore[return-value]
    layout: Layout = "plain"
    if lm.has_chat_template:
        preamble = f"{PREAMBLE_HEADER}\n- {_PROBE.format('m')}"
        history = [{"role": "user", "content": _PROBE.format(1)}, {"role": "assistant", "content": _PROBE.format(2)}]
        for candidate in ("system", "user"):
            try:
                prefix = _prefix_text(lm, candidate, preamble)
                renders = [
                    _render(lm, candidate, preamble, (), _PROBE.format(3)),
                    _render(lm, candidate, preamble, history, _PROBE.format(4)),
                ]
            except Exception:  # noqa: BLE001 - a template may raise anything (jinja errors) for a role it refuses
                continue
            if all(r.startswith(prefix) for r in renders):
                layout = candidate
                break
        else:
            raise ActivationError(
                f"the chat template of {lm.name} has no place for a fixed memory preamble",
                hint="use a model whose chat template accepts a system message",
            )
    lm.prompt_layout = layout
    return layout


def prefix_ids(lm: LanguageModel, layout: Layout, preamble: str) -> tuple[str, list[int]]:
    text = _prefix_text(lm, layout, preamble)
    return text, lm.encode(text, special=layout == "plain")


def render_prompt(
    lm: LanguageModel,
    question: str,
    *,
    preamble: str | None = None,
    layout: Layout | None = None,
    prefix_ids: Sequence[int] | None = None,
    retrieved: Sequence[MemoryRecord] = (),
    history: Sequence[dict[str, str]] = (),
) -> Prompt:
    """Render preamble + history + (retrieved memories + question) + generation prompt, in one template call.

    With ``prefix_ids`` (a snapshot's), checks the token boundary: the full text's tokens must start with
    them; where the tokenizer would merge across the boundary, the prompt is the prefix ids followed by
    the rest's ids (``aligned=False``), so that a snapshot and a re-prefill see the very same tokens.
    """
    if preamble is None:  # no fixed prefix needed: any template renders it
        text = _render(lm, None, None, history, _user_content(question, retrieved))
        return Prompt(text, lm.encode(text, special=not lm.has_chat_template), 0)
    layout = layout or detect_layout(lm)
    prefix_text = _prefix_text(lm, layout, preamble)
    text = _render(lm, layout, preamble, history, _user_content(question, retrieved))
    if not text.startswith(prefix_text):
        raise ActivationError(f"the chat template of {lm.name} moved the memory preamble for this conversation")
    special = layout == "plain"
    head = list(prefix_ids) if prefix_ids is not None else lm.encode(prefix_text, special=special)
    ids = lm.encode(text, special=special)
    if ids[: len(head)] == head:
        return Prompt(text, ids, len(head))
    rest = lm.encode(text[len(prefix_text) :], special=False)
    return Prompt(text, head + rest, len(head), aligned=False)


# ---------------------------------------------------------------------------------------------------------
# Building and extending snapshots


def fit_memories(
    lm: LanguageModel, layout: Layout, lines_before: list[str], candidates: Sequence[MemoryRecord], budget: int | None
) -> int:
    """How many of ``candidates`` (in order) fit in ``budget`` tokens after ``lines_before``.

    The token count grows with every memory added, so a binary search finds the first one that would
    overflow with O(log n) renderings instead of n.
    """
    if budget is None:
        return len(candidates)

    def tokens(k: int) -> int:
        preamble = "\n".join([*lines_before, *(memory_line(m) for m in candidates[:k])])
        return len(prefix_ids(lm, layout, preamble)[1])

    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tokens(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_length(lm: LanguageModel, n_tokens: int, *, snapshot: bool = True) -> None:
    window = lm.sliding_window
    if snapshot and window is not None and n_tokens >= window - 1:
        # A sliding-window cache keeps only the last window-1 tokens: a longer snapshot could not be
        # restored with its true positions.
        raise ActivationError(
            f"a {n_tokens}-token snapshot does not fit {lm.name}'s sliding window ({window})",
            hint="lower {budget}",
            options=("budget",),
        )
    limit = lm.max_positions
    if limit is not None and n_tokens >= limit:
        raise ActivationError(
            f"{n_tokens} tokens exceed {lm.name}'s context ({limit})",
            hint="lower {budget} or {max_new_tokens}",
            options=("budget", "max_new_tokens"),
        )


def prefill(lm: LanguageModel, ids: Sequence[int], cache: Any | None) -> Any:
    import torch

    with torch.inference_mode():
        out = lm.model(
            input_ids=torch.tensor([list(ids)], dtype=torch.long),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return out
