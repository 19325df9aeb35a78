"""Training data of parametric memory as model inputs: the questions asked of each memory
(``distill_data``) rendered through the model's chat template, the memory's own statements, and replay
and held-out text."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.parametric.distill_data import memory_data
from memos_cli.models.lm import LanguageModel

# (stage, done, total, loss): stage names the step ("recall before", "training", "recall after"; fuse
# adds "indexing", "consolidating" and its recall stages); loss is the training loss of the last step
# (None outside training).
Progress = Callable[[str, int, int, "float | None"], None]
BATCH_SIZE = 8
REPLAY_TOKENS = 48  # longest replay sequence
HELDOUT_TOKENS = 256  # longest held-out sequence
STATEMENT_TOKENS = 128  # longest statement sequence (a longer memory trains as several)


# ---------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Probe:
    """A question about one memory and the answer that counts as recalled."""

    ref: str
    question: str
    answer: str
    source: str  # metadata, key, speaker, time or cue


@dataclass
class Example:
    """One training sequence; ``labels`` is -100 where no loss is taken (the question, the prompt)."""

    ids: list[int]
    labels: list[int]
    kind: str  # statement, qa or replay
    ref: str = ""  # the memory it was built from ("" for replay and held-out text)


# ---------------------------------------------------------------------------------------------------------
# Training data, built from the memories without any LLM


def probes_for(record: MemoryRecord) -> list[Probe]:
    """The questions recall is measured on: the memory's own ``metadata.question`` first when it has one,
    then one held-out question per salient span, in a template family training never uses
    (``engine.distill_data``)."""
    return [Probe(record.ref, p.question, p.answer, p.form) for p in memory_data(record).heldout]


def _answer_tokens(lm: LanguageModel, prompt_text: str, question: str, answer: str) -> list[int]:
    """The answer as the model's chat template ends an assistant turn (``answer<|im_end|>`` for ChatML),
    so that a trained model also learns to stop."""
    if lm.has_chat_template and lm.prompt_layout != "plain":
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        try:
            full = str(lm.tokenizer.apply_chat_template(messages, tokenize=False))
        except Exception:  # noqa: BLE001 - a template may refuse anything; fall back to answer + EOS
            full = ""
        if full.startswith(prompt_text) and answer in full[len(prompt_text) :]:
            return lm.encode(full[len(prompt_text) :].rstrip())
    eos = lm.tokenizer.eos_token or ""
    lead = "" if prompt_text.endswith((" ", "\n")) else " "
    return lm.encode(f"{lead}{answer}{eos}")


def qa_example(lm: LanguageModel, question: str, answer: str, *, kind: str = "qa", ref: str = "") -> Example:
    """Question in the chat template (no loss) followed by the answer turn (loss): exactly the prompt
    that closed-book ``chat`` and the recall measurement give the model."""
    from memos_cli.models.prompt import render_prompt

    prompt = render_prompt(lm, question)
    target = _answer_tokens(lm, prompt.text, question, answer)
    return Example(prompt.token_ids + target, [-100] * len(prompt.token_ids) + target, kind, ref)


def text_examples(lm: LanguageModel, text: str, max_tokens: int, kind: str) -> list[Example]:
    """Plain text in paragraphs, each cut into windows of at most ``max_tokens`` tokens (loss on all)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        ids = lm.encode(" ".join(paragraph.split()))
        for start in range(0, len(ids), max_tokens):
            window = ids[start : start + max_tokens]
            if len(window) > 1:
                out.append(Example(window, list(window), kind))
    return out


@dataclass
class TrainingSet:
    """What distill trains and measures: ``examples`` (statements and question-answer turns), ``checks``
    (short-answer training questions whose recall stops training) and ``probes`` (held-out questions,
    never trained on, that the report's recall is measured on)."""

    examples: list[Example]
    checks: list[Probe]
    probes: list[Probe]


def training_set(lm: LanguageModel, memories: Sequence[MemoryRecord]) -> TrainingSet:
    """The training examples, stopping checks and held-out probes of ``memories`` (``engine.distill_data``
    builds them from the text, speaker, time and metadata of each memory, with no model)."""
    out = TrainingSet([], [], [])
    for record in memories:
        data = memory_data(record)
        for statement in data.statements:
            for example in text_examples(lm, statement, STATEMENT_TOKENS, "statement"):
                example.ref = record.ref
                out.examples.append(example)
        out.examples.extend(qa_example(lm, p.question, p.answer, kind=p.form, ref=record.ref) for p in data.pairs)
        out.checks.extend(Probe(record.ref, p.question, p.answer, p.form) for p in data.checks)
        out.probes.extend(Probe(record.ref, p.question, p.answer, p.form) for p in data.heldout)
    return out


def build_examples(lm: LanguageModel, memories: Sequence[MemoryRecord]) -> tuple[list[Example], list[Probe]]:
    """Training examples for ``memories`` and the held-out probes recall is measured on."""
    data = training_set(lm, memories)
    return data.examples, data.probes


def read_text_resource(name: str) -> str:
    return resources.files("memos_cli.data").joinpath(name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# Losses, recall, training


def replay_examples(lm: LanguageModel, text: str | None = None) -> list[Example]:
    """Replay sequences (general prose mixed into training to limit forgetting): ``text``, or the
    built-in ``data/replay.txt``."""
    return text_examples(lm, read_text_resource("replay.txt") if text is None else text, REPLAY_TOKENS, "replay")


def pad_id(lm: LanguageModel) -> int:
    for value in (lm.tokenizer.pad_token_id, lm.tokenizer.eos_token_id, 0):
        if isinstance(value, int):
            return value
    return 0
