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
``adapters.load_adapters`` checks the manifest (model fingerprint, sha256 of every file) before peft reads
it, and merges several adapters into one copy of the model for chat.

This module is the verb; its parts are ``distill_data`` (questions from text), ``examples`` (model
inputs), ``training`` (until learned), ``evaluation`` (recall, forgetting) and ``adapters`` (storage,
checks, loading, combination).
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import LoraEntry, ref_ids
from memos_cli.cube.io import sha256_file
from memos_cli.engine.claim import claim_model
from memos_cli.engine.parametric.adapters import REPORT_FILE, save_peft_folder
from memos_cli.engine.parametric.evaluation import Recall, mean_loss, measure_recall
from memos_cli.engine.parametric.examples import (
    BATCH_SIZE,
    HELDOUT_TOKENS,
    Progress,
    pad_id,
    qa_example,
    read_text_resource,
    replay_examples,
    text_examples,
    training_set,
)
from memos_cli.engine.parametric.training import (
    CHECK_EVERY,
    DEFAULT_LAYERS,
    DEFAULT_MAX_MINUTES,
    MAX_CHECKS,
    MAX_EPOCHS,
    MIN_STEPS,
    REPLAY_LOSS,
    REPLAY_RATIO,
    TARGETS,
    Until,
    layer_indexes,
    resolve_precision,
    steps_for,
    train_adapter,
)
from memos_cli.engine.select import Selection, select
from memos_cli.errors import (
    AdapterNotFound,
    UsageError,
    shorten,
)
from memos_cli.models.lm import LanguageModel, load_lm
from memos_cli.words import plural


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


# ---------------------------------------------------------------------------------------------------------
# distill / drop / load


def check_name(name: str) -> str:
    if not layout.valid_name(name):
        raise UsageError(f"adapter name {shorten(name)!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    return name


def _check_cube_model(cube: Cube, lm: LanguageModel, replacing: str | None) -> None:
    """A cube's kv/ and lora/ are made for one model (engine/claim.py, the one place that checks it)."""

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
    layers: str = DEFAULT_LAYERS,
    steps: int | None = None,
    epochs: float | None = None,
    lr: float = 2e-3,
    seed: int = 0,
    replay_path: Path | None = None,
    replay_ratio: float = REPLAY_RATIO,
    max_minutes: float | None = DEFAULT_MAX_MINUTES,
    max_probes: int | None = None,
    precision: str = "auto",
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
    ``precision`` is the training steps' (``training.PRECISIONS``; "auto" is bfloat16 where native).
    Replay text is mixed in. Raises before anything is written if the selection, the options or the model
    are wrong; an interruption before the final transaction leaves the cube unchanged.
    """
    # Long (~75 lines of body after the docstring) because it reads as the report it fills, top to bottom:
    # check, select, measure before, train, measure after, report, commit; each stage is one call.
    _check_options(name, rank, alpha, lr, steps, epochs, max_minutes, max_probes, target_modules)
    precision = resolve_precision(precision)
    who = cube.check(actor, "write")
    memories = select(cube, selection)
    lm = model if isinstance(model, LanguageModel) else load_lm(model)
    _check_cube_model(cube, lm, name)
    layer_indexes(lm.num_layers, layers)  # a wrong range is refused before anything is measured
    replay_text = Path(replay_path).read_text(encoding="utf-8") if replay_path else None
    started = time.perf_counter()

    data = training_set(lm, memories)
    examples, probes = data.examples, data.probes
    if max_probes is not None and len(probes) > max_probes:  # a seeded sample, recorded in the report
        probes = random.Random(seed).sample(probes, max_probes)
    replay = replay_examples(lm, replay_text)
    heldout = text_examples(lm, read_text_resource("heldout.txt"), HELDOUT_TOKENS, "heldout")
    steps, until = _length(lm, data, examples, replay, steps, epochs, replay_ratio, max_minutes, seed)
    pad = pad_id(lm)
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
        precision=precision,
        layers=layers,
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
    report = DistillReport(
        name=name,
        path=f"{layout.LORA_DIR}/{name}",
        model={"name": lm.name, "fingerprint": lm.fingerprint},
        memories=[m.ref for m in memories],
        hyperparameters=_hyperparameters(
            rank, alpha, target_modules, steps, epochs, until, max_minutes, lr, seed, replay_path, replay_ratio
        )
        | {"probes": f"{len(probes)} of {len(data.probes)}", "precision": precision, "layers": layers},
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


def _check_options(
    name: str,
    rank: int,
    alpha: float,
    lr: float,
    steps: int | None,
    epochs: float | None,
    max_minutes: float | None,
    max_probes: int | None,
    target_modules: str | Sequence[str],
) -> None:
    check_name(name)
    if steps is not None and epochs is not None:
        raise UsageError("give {steps} or {epochs}, not both", options=("steps", "epochs"))
    if rank < 1 or alpha <= 0 or lr <= 0 or (steps is not None and steps < 1) or (epochs is not None and epochs <= 0):
        raise UsageError(
            "{rank}, {alpha}, {lr}, {steps} and {epochs} must be positive",
            options=("rank", "alpha", "lr", "steps", "epochs"),
        )
    if (max_minutes is not None and max_minutes <= 0) or (max_probes is not None and max_probes < 1):
        raise UsageError("{max_minutes} and {max_probes} must be positive", options=("max_minutes", "max_probes"))
    if isinstance(target_modules, str) and target_modules not in TARGETS and not target_modules.strip():
        raise UsageError("{target_modules} is empty", options=("target_modules",))


def _length(
    lm: LanguageModel,
    data: Any,
    examples: list[Any],
    replay: list[Any],
    steps: int | None,
    epochs: float | None,
    replay_ratio: float,
    max_minutes: float | None,
    seed: int,
) -> tuple[int, Until | None]:
    """How long to train: ``steps``, or ``epochs`` passes, or (neither given) until the model answers
    its training questions (``Until``), at most ``MAX_EPOCHS`` passes and ``max_minutes``."""
    if steps is not None:
        return steps, None
    if epochs is not None:
        return steps_for(epochs, examples, replay, replay_ratio, floor=1), None
    checks = random.Random(seed).sample(data.checks, min(MAX_CHECKS, len(data.checks)))
    until = Until(
        [qa_example(lm, c.question, c.answer, ref=c.ref) for c in checks],
        every=CHECK_EVERY,
        max_seconds=None if max_minutes is None else 60.0 * max_minutes,
    )
    return steps_for(MAX_EPOCHS, examples, replay, replay_ratio, floor=MIN_STEPS), until


def _hyperparameters(
    rank: int,
    alpha: float,
    target_modules: str | Sequence[str],
    steps: int,
    epochs: float | None,
    until: Until | None,
    max_minutes: float | None,
    lr: float,
    seed: int,
    replay_path: Path | None,
    replay_ratio: float,
) -> dict[str, Any]:
    """The manifest entry's ``hyperparameters``: what a rerun needs to train the same adapter."""
    return {
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
        "lr": lr,
        "batch_size": BATCH_SIZE,
        "seed": seed,
        "replay": Path(replay_path).name if replay_path else "builtin:replay.txt",
        "replay_ratio": replay_ratio,
        "replay_loss": REPLAY_LOSS,
    }


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
        save_peft_folder(trained, staged, lm.name)
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
