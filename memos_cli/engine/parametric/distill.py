"""Parametric memory: memories trained into a LoRA adapter that lives in the cube as ``lora/<name>/``.

``distill`` builds its training data from the memories alone, with no LLM: each memory's statement as
plain text, and question-and-answer turns rendered through the model's own chat template (the very
rendering ``chat`` uses, see ``engine.activation.snapshots.render_prompt``), from the memory's explicit
``metadata.question``/``metadata.answer``, its ``key``, speaker and time. Replay text (general prose the
model already models well) is mixed in to limit forgetting.

Everything expensive (measuring before, training, measuring after) happens before the cube is touched;
the transaction that writes the adapter folder and its manifest entry takes a fraction of a second. An
interruption (Ctrl-C) anywhere before it leaves the cube exactly as it was.

The report is honest by construction: recall is measured closed-book (the question alone, through the
chat template, no retrieval, no KV snapshot) on the same questions before and after training, and
forgetting is the loss on held-out general text that training never sees (``data/heldout.txt``).

A trained adapter is a standard peft folder (it loads with plain ``peft.PeftModel.from_pretrained``);
``load_adapters`` checks the manifest (model fingerprint, sha256 of every file) before peft reads it,
and merges several adapters into one copy of the model for chat.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
import re
import shutil
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout, records
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import LoraEntry, ref_ids
from memos_cli.cube.io import sha256_bytes, sha256_file
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.claim import claim_model
from memos_cli.engine.parametric.distill_data import memory_data
from memos_cli.engine.select import Selection, select
from memos_cli.errors import (
    AdapterNotFound,
    IncompatibleModel,
    IntegrityError,
    InvalidCube,
    MemosError,
    UsageError,
    shorten,
)
from memos_cli.models.lm import LanguageModel, load_lm
from memos_cli.words import plural

# (stage, done, total, loss): stage names the step ("recall before", "training", "recall after"; fuse
# adds "indexing", "consolidating" and its recall stages); loss is the training loss of the last step
# (None outside training).
Progress = Callable[[str, int, int, "float | None"], None]

TARGETS = ("all-linear", "attention")
ADAPTER_FILES = layout.ADAPTER_FILES
REPORT_FILE = layout.ADAPTER_REPORT
# Training until learned (no --steps/--epochs): the model's greedy recall of at most MAX_CHECKS training
# questions is measured every CHECK_EVERY steps, never before MIN_STEPS; MAX_EPOCHS passes and
# DEFAULT_MAX_MINUTES are the caps. (3 facts: 9 steps recalled 33%, 20 steps 100%.)
MIN_STEPS = 20
CHECK_EVERY = 10
MAX_CHECKS = 96
MAX_EPOCHS = 12
WARMUP_STEPS = 10  # at most; a tenth of the steps when fewer
DEFAULT_MAX_MINUTES = 30.0
BATCH_SIZE = 8
REPLAY_RATIO = 0.5  # replay sequences per memory example
REPLAY_TOKENS = 48  # longest replay sequence
HELDOUT_TOKENS = 256  # longest held-out sequence
# fuse: after peft's combination, short passes over the parents' memories. On 10+10 facts (fuse_lora_bench):
# 1 pass at 1e-3 kept 65%/55% of each parent's facts, 2 passes 95%/95% (held-out loss -1.0%), 3 passes
# 100%/100% but held-out loss +4.1%; 2 passes at 2e-3 kept 85%/85%.
CONSOLIDATE_EPOCHS = 2.0
CONSOLIDATE_LR = 1e-3
_ATTENTION_PARENTS = re.compile(r"attn|attention", re.IGNORECASE)


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
class Recall:
    """Closed-book recall of a set of probes: the model answers each question with nothing else."""

    exact: float  # fraction of answers that contain the expected answer (case and punctuation aside)
    answer_loss: float  # mean per-token loss of the expected answer given the question (teacher-forced)
    answers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"exact": round(self.exact, 4), "answer_loss": round(self.answer_loss, 4), "answers": self.answers}


@dataclass
class DistillReport:
    name: str
    path: str  # lora/<name>, relative to the cube
    model: dict[str, str]
    memories: list[str]  # id@version
    hyperparameters: dict[str, Any]
    examples: dict[str, int]
    recall_before: Recall
    recall_after: Recall
    heldout_loss_before: float
    heldout_loss_after: float
    steps: int
    final_loss: float
    train_seconds: float
    eval_seconds: float
    created: str
    adapter_bytes: int = 0
    files: dict[str, str] = field(default_factory=dict)
    rejected: str | None = None  # why ``accept`` refused it (nothing was written)
    stopped: str = "steps given"  # why training stopped: learned, plateau, time limit, step limit, steps given
    trace: list[dict[str, Any]] = field(default_factory=list)  # {step, loss, recall} at every check

    @property
    def forgetting_pct(self) -> float:
        """How much the loss on held-out general text rose, in percent (negative: it fell)."""
        return 100.0 * (self.heldout_loss_after - self.heldout_loss_before) / self.heldout_loss_before

    def metrics(self) -> dict[str, Any]:
        """The numbers recorded in the manifest (report.json also has every answer)."""
        return {
            "recall_before": round(self.recall_before.exact, 4),
            "recall_after": round(self.recall_after.exact, 4),
            "answer_loss_before": round(self.recall_before.answer_loss, 4),
            "answer_loss_after": round(self.recall_after.answer_loss, 4),
            "heldout_loss_before": round(self.heldout_loss_before, 4),
            "heldout_loss_after": round(self.heldout_loss_after, 4),
            "forgetting_pct": round(self.forgetting_pct, 2),
            "final_loss": round(self.final_loss, 4),
            "steps": self.steps,
            "stopped": self.stopped,
            "train_seconds": round(self.train_seconds, 1),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "model": self.model,
            "memories": self.memories,
            "hyperparameters": self.hyperparameters,
            "examples": self.examples,
            "metrics": self.metrics(),
            "recall_before": self.recall_before.to_dict(),
            "recall_after": self.recall_after.to_dict(),
            "trace": self.trace,
            "eval_seconds": round(self.eval_seconds, 1),
            "adapter_bytes": self.adapter_bytes,
            "files": self.files,
            "created": self.created,
        }


@dataclass
class Example:
    """One training sequence; ``labels`` is -100 where no loss is taken (the question, the prompt)."""

    ids: list[int]
    labels: list[int]
    kind: str  # statement, qa or replay


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


def qa_example(lm: LanguageModel, question: str, answer: str, *, kind: str = "qa") -> Example:
    """Question in the chat template (no loss) followed by the answer turn (loss): exactly the prompt
    that closed-book ``chat`` and the recall measurement give the model."""
    from memos_cli.engine.activation.snapshots import render_prompt

    prompt = render_prompt(lm, question)
    target = _answer_tokens(lm, prompt.text, question, answer)
    return Example(prompt.token_ids + target, [-100] * len(prompt.token_ids) + target, kind)


def _text_examples(lm: LanguageModel, text: str, max_tokens: int, kind: str) -> list[Example]:
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
            ids = lm.encode(statement)
            out.examples.append(Example(ids, list(ids), "statement"))
        out.examples.extend(qa_example(lm, p.question, p.answer, kind=p.form) for p in data.pairs)
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
    return _text_examples(lm, read_text_resource("replay.txt") if text is None else text, REPLAY_TOKENS, "replay")


def _pad_id(lm: LanguageModel) -> int:
    for value in (lm.tokenizer.pad_token_id, lm.tokenizer.eos_token_id, 0):
        if isinstance(value, int):
            return value
    return 0


def _scored(model: Any, batch: Sequence[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """(logits where a loss is taken, their targets, the [batch, width-1] mask of those positions)."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    target = labels[:, 1:]
    keep = target != -100
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = causal.config.get_text_config(decoder=True)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        logits = causal(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][keep]
    else:
        # The output layer only where a loss is taken: a question-and-answer example has a loss on its
        # few answer tokens, and the vocabulary projection is a fifth of a small model's compute.
        hidden = causal.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = causal.get_output_embeddings()(hidden[:, :-1][keep])
    return logits, target[keep], keep


def _losses(model: Any, batch: Sequence[Example], pad_id: int) -> Any:
    """Mean loss per example (each example counts the same, whatever its length), as a tensor."""
    import torch
    import torch.nn.functional as F

    logits, target, keep = _scored(model, batch, pad_id)
    nll = F.cross_entropy(logits.float(), target, reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(len(batch), dtype=nll.dtype).index_add(0, rows, nll)
    return sums / keep.sum(dim=1).clamp(min=1)


def greedy_recalled(model: Any, examples: Sequence[Example], pad_id: int) -> list[bool]:
    """For each question-answer example: would greedy decoding write its answer? (Teacher-forced: the
    most likely next token is the answer's at every answer position but the closing stop token, which is
    exactly when greedy generation starts with the answer.) One batched forward pass, no generation."""
    import torch

    out: list[bool] = []
    with torch.inference_mode():
        for start in range(0, len(examples), BATCH_SIZE):
            batch = examples[start : start + BATCH_SIZE]
            logits, target, keep = _scored(model, batch, pad_id)
            right = (logits.argmax(dim=-1) == target).tolist()
            at = 0
            for row in range(len(batch)):
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
            losses = _losses(model, batch, pad_id)
            for example, loss in zip(batch, losses.tolist(), strict=True):
                w = sum(1 for x in example.labels[1:] if x != -100) if token_weighted else 1
                total += loss * w
                weight += w
    return total / max(weight, 1)


def normalise_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def answer_matches(expected: str, answer: str) -> bool:
    """The expected answer appears in the model's answer, word for word (case and punctuation aside)."""
    want = normalise_answer(expected)
    return bool(want) and f" {want} " in f" {normalise_answer(answer)} "


def measure_recall(
    lm: LanguageModel, probes: Sequence[Probe], *, stage: str = "recall", progress: Progress | None = None
) -> Recall:
    """Ask every probe closed-book (greedy, no retrieval, no snapshot) and score the answers."""
    from memos_cli.engine.activation.snapshots import generate

    pad = _pad_id(lm)
    answers = []
    hits = 0
    examples = [qa_example(lm, p.question, p.answer) for p in probes]
    losses = []
    import torch

    with torch.inference_mode():
        for start in range(0, len(examples), BATCH_SIZE):
            losses.extend(_losses(lm.model, examples[start : start + BATCH_SIZE], pad).tolist())
    for i, (probe, loss) in enumerate(zip(probes, losses, strict=True)):
        budget = min(len(lm.encode(probe.answer)) + 12, 96)
        result = generate(lm, probe.question, mode="none", max_new_tokens=budget)
        hit = answer_matches(probe.answer, result.answer)
        hits += hit
        answers.append(
            {
                "ref": probe.ref,
                "question": probe.question,
                "expected": probe.answer,
                "answer": result.answer,
                "hit": hit,
                "loss": round(loss, 4),
            }
        )
        if progress is not None:
            progress(stage, i + 1, len(probes), None)
    n = max(len(probes), 1)
    return Recall(exact=hits / n, answer_loss=sum(losses) / n, answers=answers)


def _batches(
    memory: list[Example], replay: list[Example], steps: int, ratio: float, rng: random.Random
) -> list[list[Example]]:
    """``steps`` batches: every memory example once per epoch (shuffled), with replay examples mixed in
    at ``ratio`` per memory example."""
    out: list[list[Example]] = []
    pool: list[Example] = []
    offset = rng.randrange(len(replay)) if replay else 0
    while len(out) < steps:
        if len(pool) < BATCH_SIZE:
            epoch = list(memory)
            if replay and ratio > 0:
                count = round(len(memory) * ratio)
                epoch += [replay[(offset + i) % len(replay)] for i in range(count)]
                offset += count
            rng.shuffle(epoch)
            pool += epoch
        out.append(pool[:BATCH_SIZE])
        pool = pool[BATCH_SIZE:]
    return out


def resolve_targets(model: Any, target_modules: str | Sequence[str]) -> str | list[str]:
    """peft ``target_modules`` for "all-linear", "attention" (the linear layers inside each attention
    block, whatever the family calls them) or an explicit list of module names."""
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return "all-linear"
        if target_modules != "attention":
            names = [t.strip() for t in target_modules.split(",") if t.strip()]
            if not names:
                raise UsageError("--target-modules is empty")
            return names
        import torch
        from transformers.pytorch_utils import Conv1D

        parents, leaves = set(), set()
        for qualified, module in model.named_modules():
            if not isinstance(module, (torch.nn.Linear, Conv1D)) or "." not in qualified:
                continue
            parent, leaf = qualified.rsplit(".", 1)
            last = parent.rsplit(".", 1)[-1]
            if _ATTENTION_PARENTS.search(last):
                parents.add(last)
                leaves.add(leaf)
        if not leaves:
            raise UsageError(
                "this model has no linear layers inside an attention block; name them with --target-modules"
            )
        return rf".*\.({'|'.join(sorted(map(re.escape, parents)))})\.({'|'.join(sorted(map(re.escape, leaves)))})"
    return list(target_modules)


def train_adapter(
    lm: LanguageModel,
    examples: list[Example],
    replay: list[Example],
    *,
    rank: int,
    alpha: float,
    target_modules: str | Sequence[str],
    steps: int,
    lr: float,
    seed: int,
    replay_ratio: float = REPLAY_RATIO,
    progress: Progress | None = None,
    until: Until | None = None,
) -> tuple[Any, Fit]:
    """A peft model (over a private copy of ``lm.model``) with a freshly trained LoRA, and how the
    training went (``Fit``). ``lm.model`` itself is never modified."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    base = copy.deepcopy(lm.model)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; a float scale is what it computes with
        lora_dropout=0.0,
        target_modules=resolve_targets(base, target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations reached through peft
            model = get_peft_model(base, config)
    except ValueError as exc:  # peft: target modules not found
        raise UsageError(f"--target-modules: {exc}") from exc
    params = [p for p in model.parameters() if p.requires_grad]
    fit = _fit(
        model,
        params,
        examples,
        replay,
        steps=steps,
        lr=lr,
        rng=rng,
        pad=_pad_id(lm),
        replay_ratio=replay_ratio,
        stage="training",
        progress=progress,
        until=until,
    )
    return model, fit


def steps_for(
    epochs: float, examples: list[Example], replay: list[Example], replay_ratio: float, *, floor: int = 1
) -> int:
    """Batches for ``epochs`` passes over ``examples``, replay mixed in at ``replay_ratio`` each, and at
    least ``floor``."""
    per_epoch = len(examples) * (1 + (replay_ratio if replay else 0))
    return max(floor, math.ceil(epochs * per_epoch / BATCH_SIZE))


def _active_adapter(model: Any) -> str:
    active = model.active_adapter
    return active if isinstance(active, str) else active[0]


@dataclass
class Until:
    """When training stops without a fixed ``--steps``/``--epochs``: every ``every`` steps the model's own
    greedy recall of ``checks`` (short-answer training questions, ``greedy_recalled``) is measured; it
    stops once that reaches ``target`` (learned), or fails to improve for ``patience`` checks in a row
    (plateau), or at ``max_seconds`` (time limit); the step count passed to ``_fit`` is the last cap."""

    checks: list[Example]
    every: int
    target: float = 1.0
    patience: int = 4
    max_seconds: float | None = None


@dataclass
class Fit:
    steps: int
    final_loss: float
    stopped: str  # learned, plateau, time limit, step limit, steps given
    trace: list[dict[str, Any]] = field(default_factory=list)  # {step, loss, recall} at every check


def _fit(
    model: Any,
    params: list[Any],
    examples: list[Example],
    replay: list[Example],
    *,
    steps: int,
    lr: float,
    rng: random.Random,
    pad: int,
    replay_ratio: float,
    stage: str,
    progress: Progress | None,
    until: Until | None = None,
) -> Fit:
    """AdamW over ``params`` for at most ``steps`` batches (linear warm-up, then linear decay to 10%,
    gradients clipped at 1), stopping early as ``until`` says; the final loss is the mean of the last 10%
    of the steps taken. Leaves ``model`` in eval mode."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, min(steps // 10, WARMUP_STEPS))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - 0.9 * (step - warmup) / max(1, steps - warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    recent: list[float] = []
    trace: list[dict[str, Any]] = []
    stopped = "steps given" if until is None else "step limit"
    best, best_loss, stale = -1.0, math.inf, 0
    started = time.perf_counter()
    model.train()
    try:
        for step, batch in enumerate(_batches(examples, replay, steps, replay_ratio, rng)):
            loss = _losses(model, batch, pad).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise MemosError("training diverged (the loss is not finite)", hint="lower --lr")
            recent.append(value)
            if progress is not None:
                progress(stage, step + 1, steps, value)
            if until is None or step + 1 == steps:
                continue
            if until.max_seconds is not None and time.perf_counter() - started > until.max_seconds:
                stopped = "time limit"
                break
            if (step + 1) % until.every or step + 1 < MIN_STEPS:
                continue
            model.eval()
            hits = sum(greedy_recalled(model, until.checks, pad))
            model.train()
            recall = hits / max(1, len(until.checks))
            window = recent[-until.every :]
            trace.append({"step": step + 1, "loss": round(sum(window) / len(window), 4), "recall": round(recall, 4)})
            if progress is not None:
                progress("recall of training questions", hits, len(until.checks), None)
            if recall >= until.target:
                stopped = "learned"
                break
            # a plateau: neither the recall nor the loss (by 3%) got better for `patience` checks
            improved = recall > best or trace[-1]["loss"] < 0.97 * best_loss
            stale = 0 if improved else stale + 1
            best, best_loss = max(best, recall), min(best_loss, trace[-1]["loss"])
            if stale >= until.patience:
                stopped = "plateau"
                break
    finally:
        model.eval()
    taken = len(recent)
    tail = recent[-max(1, taken // 10) :]
    return Fit(taken, sum(tail) / len(tail), stopped, trace)


# ---------------------------------------------------------------------------------------------------------
# distill / drop / load


def check_name(name: str) -> str:
    if not layout.valid_name(name):
        raise UsageError(f"adapter name {shorten(name)!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    return name


def _check_cube_model(cube: Cube, lm: LanguageModel, replacing: str | None) -> None:
    """A cube's kv/ and lora/ are made for one model (engine/claim.py, the one place that checks it)."""
    import copy

    claim_model(copy.copy(cube.manifest), lm, replacing=("lora", replacing or ""), what=f"cube {cube.path}")


def distill(
    cube: Cube,
    selection: Selection,
    *,
    name: str,
    model: str | LanguageModel | None = None,
    rank: int = 8,
    alpha: float = 16,
    target_modules: str | Sequence[str] = "all-linear",
    steps: int | None = None,
    epochs: float | None = None,
    lr: float = 2e-3,
    seed: int = 0,
    replay_path: Path | None = None,
    replay_ratio: float = REPLAY_RATIO,
    max_minutes: float | None = DEFAULT_MAX_MINUTES,
    max_probes: int | None = None,
    actor: str | None = None,
    progress: Progress | None = None,
    accept: Callable[[DistillReport], str | None] | None = None,
    op: str = "distill",
) -> DistillReport:
    """Train the selected memories into ``lora/<name>/`` and record it in the manifest.

    ``accept`` (the scheduler's thresholds) sees the measured report before anything is written; when it
    returns a reason, the cube is left as it was (an older adapter of that name stays) and the report
    carries the reason in ``rejected``.

    Without ``steps`` or ``epochs``, training runs until the memories are learned: every few steps the
    model answers its training questions (``Until``), and training stops when it gets them all right, when
    that stops improving, after ``max_minutes`` or after ``MAX_EPOCHS`` passes; the report says which.
    ``steps`` or ``epochs`` fix the length instead. ``max_probes`` measures recall on a seeded sample of
    the held-out questions (for large selections, where asking every one costs more than training).
    Replay text is mixed in. Raises before anything is written if the selection, the options or the model
    are wrong; an interruption before the final transaction leaves the cube unchanged.
    """
    check_name(name)
    if steps is not None and epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    if rank < 1 or alpha <= 0 or lr <= 0 or (steps is not None and steps < 1) or (epochs is not None and epochs <= 0):
        raise UsageError("--rank, --alpha, --lr, --steps and --epochs must be positive")
    if (max_minutes is not None and max_minutes <= 0) or (max_probes is not None and max_probes < 1):
        raise UsageError("--max-minutes and --max-probes must be positive")
    if isinstance(target_modules, str) and target_modules not in TARGETS and not target_modules.strip():
        raise UsageError("--target-modules is empty")
    who = cube.check(actor, "write")
    memories = select(cube, selection)
    lm = model if isinstance(model, LanguageModel) else load_lm(model)
    _check_cube_model(cube, lm, name)
    replay_text = Path(replay_path).read_text(encoding="utf-8") if replay_path else None
    started = time.perf_counter()

    data = training_set(lm, memories)
    examples, probes = data.examples, data.probes
    if max_probes is not None and len(probes) > max_probes:  # a seeded sample, recorded in the report
        probes = random.Random(seed).sample(probes, max_probes)
    replay = replay_examples(lm, replay_text)
    heldout = _text_examples(lm, read_text_resource("heldout.txt"), HELDOUT_TOKENS, "heldout")
    until = None
    if steps is None and epochs is None:
        steps = steps_for(MAX_EPOCHS, examples, replay, replay_ratio, floor=MIN_STEPS)
        checks = random.Random(seed).sample(data.checks, min(MAX_CHECKS, len(data.checks)))
        until = Until(
            [qa_example(lm, c.question, c.answer) for c in checks],
            every=CHECK_EVERY,
            max_seconds=None if max_minutes is None else 60.0 * max_minutes,
        )
    elif steps is None:
        steps = steps_for(epochs or 1, examples, replay, replay_ratio, floor=1)
    pad = _pad_id(lm)
    recall_before = measure_recall(lm, probes, stage="recall before", progress=progress)
    heldout_before = mean_loss(lm.model, heldout, pad, token_weighted=True)
    eval_seconds = time.perf_counter() - started

    train_started = time.perf_counter()
    trained, fit = train_adapter(
        lm,
        examples,
        replay,
        rank=rank,
        alpha=alpha,
        target_modules=target_modules,
        steps=steps,
        lr=lr,
        seed=seed,
        replay_ratio=replay_ratio,
        progress=progress,
        until=until,
    )
    train_seconds = time.perf_counter() - train_started

    after_started = time.perf_counter()
    adapted = replace(lm, model=trained, fingerprint=f"{lm.fingerprint}+training")
    recall_after = measure_recall(adapted, probes, stage="recall after", progress=progress)
    heldout_after = mean_loss(trained, heldout, pad, token_weighted=True)
    eval_seconds += time.perf_counter() - after_started

    counts: dict[str, int] = {}
    for example in examples:
        counts[example.kind] = counts.get(example.kind, 0) + 1
    counts["replay"] = len(replay)
    hyper = {
        "rank": rank,
        "alpha": alpha,
        "dropout": 0.0,
        "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules),
        "steps": steps if until is None else None,
        "max_steps": steps if until is not None else None,
        "max_minutes": max_minutes if until is not None else None,
        "epochs": epochs,
        "min_steps": MIN_STEPS if until is not None else None,
        "until": "learned" if until is not None else None,
        "probes": f"{len(probes)} of {len(data.probes)}",
        "lr": lr,
        "batch_size": BATCH_SIZE,
        "seed": seed,
        "replay": Path(replay_path).name if replay_path else "builtin:replay.txt",
        "replay_ratio": replay_ratio,
    }
    report = DistillReport(
        name=name,
        path=f"{layout.LORA_DIR}/{name}",
        model={"name": lm.name, "fingerprint": lm.fingerprint},
        memories=[m.ref for m in memories],
        hyperparameters=hyper,
        examples=counts,
        recall_before=recall_before,
        recall_after=recall_after,
        heldout_loss_before=heldout_before,
        heldout_loss_after=heldout_after,
        steps=fit.steps,
        final_loss=fit.final_loss,
        stopped=fit.stopped,
        trace=fit.trace,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        created=utc_now(),
    )
    if accept is not None and (why := accept(report)) is not None:
        report.rejected = why
        return report
    _commit_adapter(cube, lm, trained, report, who, selection, op=op)
    return report


def _commit_adapter(
    cube: Cube,
    lm: LanguageModel,
    trained: Any,
    report: DistillReport,
    actor: str,
    selection: Selection,
    *,
    op: str = "distill",
) -> None:
    rel = report.path
    with cube.transaction(actor=actor, op=op) as tx:
        _check_cube_model(cube, lm, report.name)  # the manifest may have changed while we trained
        staged = tx.stage_file(rel)
        _save_peft_folder(trained, staged, lm.name)
        (staged / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
        report.files = {p.name: sha256_file(p) for p in sorted(staged.iterdir())}
        report.adapter_bytes = sum(p.stat().st_size for p in staged.iterdir())
        tx.manifest.lora[report.name] = LoraEntry(
            name=report.name,
            files=report.files,
            base_model_fingerprint=lm.fingerprint,
            model=lm.name,
            memories=list(report.memories),
            selection=selection.describe(),
            hyperparameters=dict(report.hyperparameters),
            metrics=report.metrics(),
            created=report.created,
        )
        claim_model(tx.manifest, lm, replacing=("lora", report.name), what=f"cube {cube.path}")
        tx.touch_manifest()
        m = report.metrics()
        tx.log(
            ref_ids(report.memories),
            f"distilled {plural(len(report.memories), 'memory')} into {rel}: recall {m['recall_before']:.0%} -> "
            f"{m['recall_after']:.0%}, held-out loss {m['forgetting_pct']:+.1f}%",
            name=report.name,
        )


def _save_peft_folder(model: Any, folder: Path, model_name: str) -> None:
    """``save_pretrained`` plus two fixes for a bundle: no absolute path of the base model in the config
    (it becomes the model's name) and no generated README."""
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = model_name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    unexpected = sorted(p.name for p in folder.iterdir() if p.name not in ADAPTER_FILES)
    if unexpected:
        raise MemosError(f"peft wrote unexpected files into the adapter folder: {', '.join(unexpected)}")


def drop_adapter(cube: Cube, name: str, *, actor: str | None = None) -> dict[str, Any]:
    """Remove ``lora/<name>/`` and its manifest entry (one transaction); returns the removed entry."""
    with cube.transaction(actor=actor, op="distill") as tx:
        entry = tx.manifest.lora.get(name)
        if entry is None:
            raise AdapterNotFound(cube.path, name)
        tx.delete_file(layout.lora_rel(name))
        del tx.manifest.lora[name]
        tx.touch_manifest()
        tx.log(entry.ids(), f"dropped adapter lora/{name}", name=name)
    return entry.to_dict()


def verify_adapter(cube: Cube, name: str) -> Path:
    """The folder of adapter ``name`` once every file matches its recorded sha256 and nothing else is in
    it. Raises AdapterNotFound, InvalidCube or IntegrityError."""
    entry = cube.manifest.lora.get(name)
    if entry is None:
        raise AdapterNotFound(cube.path, name)
    rel = f"{layout.LORA_DIR}/{name}"  # the manifest may name no other place (cube/manifest.py)
    folder = cube.path / rel
    files = entry.files
    missing = [f for f in ADAPTER_FILES if f not in files]
    if missing:
        raise InvalidCube(cube.path, f"adapter {name} records no sha256 for {', '.join(missing)}")
    if cube_io.kind(cube.path, rel) != "dir":
        raise InvalidCube(cube.path, f"adapter folder {rel} is missing (or is not a plain folder)")
    present = set(cube_io.listdir(cube.path, rel))
    extra = sorted(present - set(files))
    if extra:
        raise InvalidCube(cube.path, f"adapter {name} holds files the manifest does not list: {', '.join(extra)}")
    for file, expected in sorted(files.items()):
        if file not in present:
            raise InvalidCube(cube.path, f"adapter {name} lacks {file}")
        found = cube_io.sha256(cube.path, f"{rel}/{file}")  # refuses links and special files
        if found != expected:
            raise IntegrityError(cube.path, f"{layout.LORA_DIR}/{name}/{file}", str(expected), found)
    return folder


_PLAIN_MODULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
# The one pattern memos itself writes for --target-modules attention: ".*\.(parents)\.(leaves)".
_MEMOS_ATTENTION = re.compile(r"\.\*\\\.\(([A-Za-z0-9_|]+)\)\\\.\(([A-Za-z0-9_|]+)\)")


def safe_adapter_config(config: Any, where: str) -> dict[str, Any]:
    r"""An adapter config whose module patterns peft can apply without evaluating a regex from the cube.

    peft treats a string ``target_modules``/``exclude_modules`` (and the keys of ``rank_pattern``,
    ``alpha_pattern``, and ``layers_pattern``) as regular expressions: one from a stranger can backtrack
    for hours. Accepted: lists of plain module names, "all-linear", and the exact ``.*\.(a|b)\.(c|d)``
    shape memos writes, which is rewritten to the equivalent list of name suffixes. Anything else is
    refused (InvalidCube), before peft sees it."""

    def refuse(problem: str) -> InvalidCube:
        return InvalidCube(Path(where), f"adapter_config.json {problem}")

    if not isinstance(config, dict):
        raise refuse("is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise refuse(f"is not a LoRA adapter (peft_type {str(config.get('peft_type'))[:40]!r})")
    config = dict(config)

    def names(key: str, value: Any) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, list) and all(isinstance(v, str) and _PLAIN_MODULE.fullmatch(v) for v in value):
            return value
        raise refuse(f"{key} must be a list of plain module names (memos evaluates no pattern from a cube)")

    target = config.get("target_modules")
    if isinstance(target, str):
        shape = _MEMOS_ATTENTION.fullmatch(target)
        if target == "all-linear":
            pass
        elif shape:
            config["target_modules"] = [f"{p}.{leaf}" for p in shape[1].split("|") for leaf in shape[2].split("|")]
        else:
            raise refuse("target_modules is a regular expression memos does not evaluate; list module names")
    else:
        config["target_modules"] = names("target_modules", target)
    for key in ("exclude_modules", "modules_to_save"):
        config[key] = names(key, config.get(key))
    layers = config.get("layers_pattern")
    if isinstance(layers, str):
        names("layers_pattern", [layers])
    else:
        names("layers_pattern", layers)
    for key in ("rank_pattern", "alpha_pattern"):
        value = config.get(key) or {}
        if not isinstance(value, dict):
            raise refuse(f"{key} must be a mapping")
        names(key, list(value))
    checked: dict[str, Any] = config
    return checked


@contextlib.contextmanager
def private_adapters(folders: Sequence[Path], expected: Sequence[dict[str, str]] | None = None) -> Any:
    """Private copies of adapter folders for peft to read: each file read once through the confined
    primitives (no link, no special file), checked against ``expected`` sha256 where given, and the
    config rewritten by ``safe_adapter_config``. Nothing of the cube is read by peft itself."""
    with tempfile.TemporaryDirectory(prefix="memos-adapter-") as tmp:
        copies = []
        for i, folder in enumerate(folders):
            out = Path(tmp) / str(i)
            out.mkdir()
            for file in ADAPTER_FILES:
                limit = layout.MAX_ADAPTER_CONFIG_BYTES if file == "adapter_config.json" else None
                data = cube_io.read_bytes(folder, file, limit=limit)
                assert data is not None
                if expected is not None and sha256_bytes(data) != expected[i].get(file):
                    raise IntegrityError(
                        folder.parent.parent,
                        f"{folder.parent.name}/{folder.name}/{file}",
                        str(expected[i].get(file)),
                        sha256_bytes(data),
                    )
                if file == "adapter_config.json":
                    try:
                        config = json.loads(data.decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        raise InvalidCube(folder, "adapter_config.json is not JSON") from None
                    data = json.dumps(safe_adapter_config(config, str(folder))).encode("utf-8")
                (out / file).write_bytes(data)
            copies.append(out)
        yield copies


def adapter_digests(cube: Cube, names: Sequence[str]) -> dict[str, str]:
    """{name: sha256 of its adapter_model.safetensors}, in the given order, as the manifest records it."""
    out = {}
    for name in dict.fromkeys(names):
        entry = cube.manifest.lora.get(name)
        if entry is None:
            raise AdapterNotFound(cube.path, name)
        out[name] = str(entry.weights_sha256)
    return out


def load_adapters(lm: LanguageModel, cube: Cube, names: Sequence[str]) -> LanguageModel:
    """``lm`` with the named adapters merged into a private copy of its weights (``lm`` is unchanged).

    Each adapter is refused, before peft reads a byte of it, if it was made for another model
    (IncompatibleModel) or any of its files differs from the manifest's sha256 (IntegrityError). Several
    adapters combine by adding their weight updates. The result's ``fingerprint`` is the base model's
    plus the adapters', so that a KV snapshot made with the bare model is refused for it (its cache was
    computed with other weights).
    """
    from peft import PeftModel

    names = list(dict.fromkeys(names))
    if not names:
        raise UsageError("name at least one adapter")
    folders = []
    for name in names:
        entry = cube.manifest.lora.get(name)
        if entry is None:
            raise AdapterNotFound(cube.path, name)
        expected = str(entry.base_model_fingerprint)
        if expected != lm.fingerprint:
            raise IncompatibleModel(f"adapter {name}", expected, lm.fingerprint)
        folder = verify_adapter(cube, name)
        check_adapter_bounds(cube, name, folder)
        folders.append(folder)
    digest = hashlib.sha256(
        "\n".join(f"{n}:{cube.manifest.lora[n].weights_sha256}" for n in names).encode()
    ).hexdigest()
    expected_files = [cube.manifest.lora[n].files for n in names]
    with warnings.catch_warnings(), private_adapters(folders, expected_files) as copies:
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(copies[0]), adapter_name=names[0])
        for name, folder in zip(names[1:], copies[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=name)
        merged = model.merge_and_unload(adapter_names=names)
    merged.eval()
    return replace(
        lm,
        name=f"{lm.name}+{'+'.join(names)}",
        model=merged,
        fingerprint=f"{lm.fingerprint}+lora-{digest[:12]}",
        _kv_shapes=None,
    )


MAX_LORA_RANK = 256  # peft allocates rank x (in + out) per target module before reading a weight


def check_adapter_bounds(cube: Cube, name: str, folder: Path) -> None:
    """Refuse an adapter whose config would make peft allocate unbounded memory (``r: 200000``), or whose
    tensors disagree with its rank, before peft reads a byte of it. Raises InvalidCube."""
    from safetensors import safe_open

    def bad(problem: str) -> InvalidCube:
        return InvalidCube(cube.path, f"adapter {shorten(name)}: {problem}")

    try:
        config = records.loads(
            cube_io.read_bytes(folder, "adapter_config.json", limit=layout.MAX_ADAPTER_CONFIG_BYTES) or b""
        )
    except ValueError as exc:
        raise bad(f"adapter_config.json is not valid ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise bad(f"not a LoRA adapter (peft_type {shorten(repr(found))})")
    rank_pattern = config.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict):
        raise bad("rank_pattern is not a mapping")
    ranks = [config.get("r"), *rank_pattern.values()]
    for rank in ranks:
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_LORA_RANK:
            raise bad(f"rank {shorten(repr(rank))} is not an integer from 1 to {MAX_LORA_RANK}")
    largest = max(ranks)
    try:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                if "lora_A" in key and (len(shape) != 2 or shape[0] > largest):
                    raise bad(f"tensor {shorten(key)} has shape {shape}, not rank <= {largest}")
                if "lora_B" in key and (len(shape) != 2 or shape[1] > largest):
                    raise bad(f"tensor {shorten(key)} has shape {shape}, not rank <= {largest}")
    except InvalidCube:
        raise
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: an unreadable file, named
        raise bad(f"adapter_model.safetensors is unreadable ({shorten(str(exc))})") from None


def stale_adapters(cube: Cube) -> dict[str, list[str]]:
    """Adapters whose memories changed since they were trained: {name: [id@version no longer current]}."""
    from memos_cli.engine.ops import stale_entries

    return stale_entries(cube, cube.read_state())["lora"]


def combine_adapters(
    lm: LanguageModel,
    folders: Sequence[Path],
    *,
    method: str = "cat",
    weights: Sequence[float] | None = None,
    **options: Any,
) -> Any:
    """A peft model over a private copy of ``lm.model`` whose one active adapter, ``fused``, is peft's
    weighted combination (``add_weighted_adapter``) of the adapters in ``folders``.

    ``cat`` concatenates the LoRA factors (ranks add up), so the fused update is exactly the weighted sum
    of the parents' updates; ``linear`` averages the factors, the ``svd`` family refactors the summed
    update to ``svd_rank``, ``ties``/``dare``/``magnitude_prune`` prune by ``density``. ``options`` go to
    peft as they are. bench/fuse_lora_bench.py compares them.
    """
    from peft import PeftModel

    if len(folders) < 2:
        raise UsageError("combining adapters needs at least two")
    names = [f"parent{i}" for i in range(len(folders))]
    weights = list(weights) if weights is not None else [1.0] * len(names)
    with warnings.catch_warnings(), private_adapters(folders) as copies:
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(copies[0]), adapter_name=names[0])
        for name, folder in zip(names[1:], copies[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=name)
        try:
            model.add_weighted_adapter(names, weights, adapter_name="fused", combination_type=method, **options)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"peft cannot combine these adapters with {method!r}: {exc}") from exc
        model.set_adapter("fused")
        for name in names:
            model.delete_adapter(name)
    model.eval()
    return model


def consolidate_adapter(
    lm: LanguageModel,
    model: Any,
    examples: list[Example],
    replay: list[Example],
    *,
    epochs: float = CONSOLIDATE_EPOCHS,
    lr: float = CONSOLIDATE_LR,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[int, float]:
    """Go on training the active adapter of ``model`` (a combination) for ``epochs`` short passes over
    ``examples`` (the parents' memories, built as distill builds them) with replay mixed in, and at least
    ``MIN_STEPS``: the parents' updates were learned apart and interfere once summed; these passes make
    them work together.
    Returns (steps, mean loss of the last 10% of them)."""
    import torch

    torch.manual_seed(seed)
    active = _active_adapter(model)
    params = []
    for qualified, param in model.named_parameters():
        param.requires_grad = "lora_" in qualified and f".{active}." in qualified
        if param.requires_grad:
            params.append(param)
    if not params:
        raise MemosError("the combined adapter has no LoRA weights to train")
    steps = steps_for(epochs, examples, replay, REPLAY_RATIO, floor=MIN_STEPS)
    fit = _fit(
        model,
        params,
        examples,
        replay,
        steps=steps,
        lr=lr,
        rng=random.Random(seed),
        pad=_pad_id(lm),
        replay_ratio=REPLAY_RATIO,
        stage="consolidating",
        progress=progress,
    )
    for param in params:
        param.requires_grad = False
    return fit.steps, fit.final_loss


def save_combined(model: Any, out: Path, model_name: str) -> None:
    """Write the active adapter of ``model`` (from ``combine_adapters``) as a plain peft folder."""
    active = _active_adapter(model)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "could not find a config file" for a model loaded from a folder
        model.save_pretrained(tmp, selected_adapters=[active], safe_serialization=True)
        found = [p.parent for p in Path(tmp).rglob("adapter_config.json")]
        if len(found) != 1:
            raise MemosError("peft did not write one combined adapter")
        out.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(found[0] / name, out / name)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = model_name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
