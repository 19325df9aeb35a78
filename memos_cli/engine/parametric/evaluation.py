"""Measuring parametric memory: closed-book recall of the training questions and held-out text loss
(forgetting), with a model or an adapted one."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memos_cli.engine.parametric.examples import BATCH_SIZE, Example, Probe, Progress, pad_id, qa_example
from memos_cli.models.lm import LanguageModel


@dataclass
class Recall:
    """Closed-book recall of a set of probes: the model answers each question with nothing else."""

    exact: float  # fraction of answers that contain the expected answer (case and punctuation aside)
    answer_loss: float  # mean per-token loss of the expected answer given the question (teacher-forced)
    answers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"exact": round(self.exact, 4), "answer_loss": round(self.answer_loss, 4), "answers": self.answers}


# A batch whose rows all begin with the same unscored prompt (the chat template's system turn and the
# start of the user turn: 27 of SmolLM2's ~45 tokens in a question-answer example) runs that prefix once
# and the rows' remainders on its key/value cache: the same losses and gradients (tests/test_distill.py
# checks them equal), a third fewer tokens through the model.
MIN_SHARED_PREFIX = 8


def shared_prefix(batch: Sequence[Example]) -> int:
    """The number of leading tokens every row of ``batch`` has in common and takes no loss on (nor on the
    token after them), or 0 where that is under ``MIN_SHARED_PREFIX`` or the batch has one row."""
    if len(batch) < 2:
        return 0
    first = batch[0].ids
    n = min(len(e.ids) for e in batch) - 1
    for example in batch:
        ids, labels = example.ids, example.labels
        limit = next((i for i, label in enumerate(labels[: n + 1]) if label != -100), n + 1) - 1
        n = min(n, limit)
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return n if n >= MIN_SHARED_PREFIX else 0


def scored(model: Any, batch: Sequence[Example], pad_id: int, *, share: bool = True) -> tuple[Any, Any, Any]:
    """(logits where a loss is taken, their targets, the [batch, width-1] mask of those positions). With
    ``share``, a prefix common to every row (``shared_prefix``) is computed once; the mask is then over
    the rows' remainders."""
    import torch

    prefix = shared_prefix(batch) if share else 0
    width = max(len(e.ids) for e in batch) - prefix
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.ids) - prefix
        ids[row, :n] = torch.tensor(example.ids[prefix:])
        labels[row, :n] = torch.tensor(example.labels[prefix:])
        mask[row, :n] = 1
    target = labels[:, 1:]
    keep = target != -100
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = causal.config.get_text_config(decoder=True)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if prefix:
        head = torch.tensor([batch[0].ids[:prefix]])
        cache = causal.base_model(input_ids=head, use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(batch))
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.cat([torch.ones((len(batch), prefix), dtype=torch.long), mask], dim=1),
            "past_key_values": cache,
            "use_cache": True,
        }
    else:
        inputs["use_cache"] = False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        logits = causal(**inputs).logits[:, :-1][keep]
    else:
        # The output layer only where a loss is taken: a question-and-answer example has a loss on its
        # few answer tokens, and the vocabulary projection is a fifth of a small model's compute.
        hidden = causal.base_model(**inputs).last_hidden_state
        logits = causal.get_output_embeddings()(hidden[:, :-1][keep])
    return logits, target[keep], keep


def row_means(per_token: Any, keep: Any) -> Any:
    """The mean of ``per_token`` (one value per scored position, as ``scored`` returns them: row by row)
    over each row of ``keep``, 0 for a row with no scored position."""
    import torch

    sums = torch.zeros(keep.shape[0], dtype=per_token.dtype).index_add(0, keep.nonzero()[:, 0], per_token)
    return sums / keep.sum(dim=1).clamp(min=1)


def token_losses(model: Any, batch: Sequence[Example], pad_id: int) -> Any:
    """Mean loss per example (each example counts the same, whatever its length), as a tensor. The rows
    that open with the same prompt are scored together (``shared_prefix``), the others apart."""
    import torch
    import torch.nn.functional as F

    groups = _prefix_groups(batch)
    out = torch.zeros(len(batch))
    for rows in groups:
        part = [batch[i] for i in rows]
        logits, target, keep = scored(model, part, pad_id)
        losses = row_means(F.cross_entropy(logits.float(), target, reduction="none"), keep)
        if len(groups) == 1:
            return losses
        out = out.index_put((torch.tensor(rows),), losses)
    return out


def _prefix_groups(batch: Sequence[Example]) -> list[list[int]]:
    """The rows of ``batch`` as groups: those that share a prompt prefix with another row (by their first
    ``MIN_SHARED_PREFIX`` tokens), and the rest together."""
    by_head: dict[tuple[int, ...], list[int]] = {}
    for i, example in enumerate(batch):
        by_head.setdefault(tuple(example.ids[:MIN_SHARED_PREFIX]), []).append(i)
    shared = [rows for rows in by_head.values() if len(rows) > 1 and shared_prefix([batch[i] for i in rows])]
    rest = sorted(i for rows in by_head.values() if rows not in shared for i in rows)
    return shared + ([rest] if rest else [])


def greedy_recalled(model: Any, examples: Sequence[Example], pad_id: int, *, batch: int = BATCH_SIZE) -> list[bool]:
    """For each question-answer example: would greedy decoding write its answer? (Teacher-forced: the
    most likely next token is the answer's at every answer position but the closing stop token, which is
    exactly when greedy generation starts with the answer.) Forward passes of ``batch`` examples, no
    generation."""
    import torch

    out: list[bool] = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch):
            part = examples[start : start + batch]
            logits, target, keep = scored(model, part, pad_id)
            right = (logits.argmax(dim=-1) == target).tolist()
            at = 0
            for row in range(len(part)):
                n = int(keep[row].sum())
                tokens = right[at : at + n]
                at += n
                out.append(bool(tokens) and all(tokens[: max(1, n - 1)]))
    return out


def mean_loss(model: Any, examples: Sequence[Example], pad_id: int, *, token_weighted: bool = False) -> float:
    """Mean loss over ``examples`` without gradients: per example, or per token with ``token_weighted``."""
    import torch

    total, weight = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), BATCH_SIZE):
            batch = examples[start : start + BATCH_SIZE]
            losses = token_losses(model, batch, pad_id)
            for example, loss in zip(batch, losses.tolist(), strict=True):
                w = sum(1 for x in example.labels[1:] if x != -100) if token_weighted else 1
                total += loss * w
                weight += w
    return total / max(weight, 1)


def normalise_answer(text: str) -> str:
    """Case, punctuation and the articles a/an/the aside (as SQuAD's scoring normalises answers)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(w for w in re.sub(r"[^\w]+", " ", text).split() if w not in ("a", "an", "the"))


def answer_matches(expected: str, answer: str) -> bool:
    """The expected answer appears in the model's answer, word for word (case, punctuation and articles
    aside: "Glass Orchard" answers "The Glass Orchard")."""
    want = normalise_answer(expected)
    return bool(want) and f" {want} " in f" {normalise_answer(answer)} "


# Questions answered together when recall is measured (``generation.greedy_batch``; float32 SmolLM2, 64
# probes: 19.9 s in batches of 8, 14.9 s of 16, the same answers).
ANSWER_BATCH = 16


def measure_recall(
    lm: LanguageModel, probes: Sequence[Probe], *, stage: str = "recall", progress: Progress | None = None
) -> Recall:
    """Ask every probe closed-book (greedy, no retrieval, no snapshot; ``generation.greedy_batch``) and
    score the answers."""
    import torch

    from memos_cli.models.generation import greedy_batch

    pad = pad_id(lm)
    examples = [qa_example(lm, p.question, p.answer) for p in probes]
    losses = []
    with torch.inference_mode():
        for start in range(0, len(examples), ANSWER_BATCH):
            losses.extend(token_losses(lm.model, examples[start : start + ANSWER_BATCH], pad).tolist())
    budgets = [min(len(lm.encode(p.answer)) + 12, 96) for p in probes]

    def done(n: int) -> None:
        if progress is not None:
            progress(stage, n, len(probes), None)

    replies = greedy_batch(lm, [p.question for p in probes], budgets, batch=ANSWER_BATCH, done=done)
    answers = []
    hits = 0
    for probe, loss, reply in zip(probes, losses, replies, strict=True):
        hit = answer_matches(probe.answer, reply)
        hits += hit
        answers.append(
            {
                "ref": probe.ref,
                "question": probe.question,
                "expected": probe.answer,
                "answer": reply,
                "hit": hit,
                "loss": round(loss, 4),
            }
        )
    n = max(len(probes), 1)
    return Recall(exact=hits / n, answer_loss=sum(losses) / n, answers=answers)
