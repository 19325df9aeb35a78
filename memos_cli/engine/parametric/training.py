"""Training a LoRA adapter on memory examples with replay mixed in, until the memories are recalled
(or a plateau, a time or step limit), and the short consolidation passes fuse runs after combining."""

from __future__ import annotations

import copy
import math
import random
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memos_cli.engine.parametric.adapters import active_adapter
from memos_cli.engine.parametric.evaluation import greedy_recalled, row_means, scored
from memos_cli.engine.parametric.examples import BATCH_SIZE, Example, Progress, pad_id
from memos_cli.errors import (
    MemosError,
    TrainingDiverged,
    UsageError,
)
from memos_cli.models.lm import LanguageModel

TARGETS = ("all-linear", "attention")
# Which decoder layers get LoRA weights: "all" (the default), "upper" (the upper half) or a range "A-B"
# (inclusive, 0-based). Backward stops at the lowest adapted layer, so "upper" costs about a third less a
# step (SmolLM2: 2.35 -> 1.57 s) and learns the training questions in as many steps, but answers questions
# worded otherwise far less often: on a held-out set, natural questions 42% with all layers, 17% with the
# upper half (bench/RESULTS.md, "LoRA on the upper half").
LAYERS = ("all", "upper")
DEFAULT_LAYERS = "all"
_LAYER_RANGE = re.compile(r"(\d{1,4})-(\d{1,4})")
# Training precision: "bfloat16" runs the training steps' matrix products in bfloat16 (torch autocast; the
# LoRA weights, the optimizer and every loss stay float32), about twice as fast on a CPU with native
# bfloat16 (AVX512-BF16 or AMX: 1.54 -> 0.73 s for a forward and backward pass of SmolLM2 over 8 x 48
# tokens on the 2-core box) and slower where it is emulated; "auto" chooses it only where it is native.
# The recall checks during training run on that bfloat16 copy; the report's measurements, chat and
# snapshots run on the float32 model.
PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str) -> str:
    """ "float32" or "bfloat16" for ``precision`` ("auto": bfloat16 where the CPU computes it natively)."""
    if precision not in PRECISIONS:
        raise UsageError("{precision} must be auto, float32 or bfloat16", options=("precision",))
    if precision != "auto":
        return precision
    import torch

    native = False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            native = native or bool(check and check())
        except Exception:  # noqa: BLE001 - a private probe that may change; fall back to float32
            pass
    return "bfloat16" if native else "float32"


# Training until learned (no --steps/--epochs): the model's greedy recall of at most MAX_CHECKS training
# questions is measured every CHECK_EVERY steps, never before MIN_STEPS; MAX_EPOCHS passes and
# DEFAULT_MAX_MINUTES are the caps. (3 facts: 9 steps recalled 33%, 20 steps 100%.)
MIN_STEPS = 20
CHECK_EVERY = 10
MAX_CHECKS = 96
CHECK_BATCH = 32  # checks per forward pass (bfloat16, SmolLM2, 96 checks: 2.5 s in batches of 8, 1.5 s of 32)
MAX_EPOCHS = 12
WARMUP_STEPS = 10  # at most; a tenth of the steps when fewer
DEFAULT_MAX_MINUTES = 30.0
REPLAY_RATIO = 0.5  # replay sequences per memory example
# The loss on a replay sequence is its KL divergence from the base model's own next-token distributions
# (the adapter disabled), not the cross-entropy of its tokens: the text's tokens say only which word came
# next, the base model's distribution says everything it predicted, which is what forgetting loses.
REPLAY_LOSS = "kl"
# fuse: after peft's combination, short passes over the parents' memories. On 10+10 facts (fuse_lora_bench):
# 1 pass at 1e-3 kept 65%/55% of each parent's facts, 2 passes 95%/95% (held-out loss -1.0%), 3 passes
# 100%/100% but held-out loss +4.1%; 2 passes at 2e-3 kept 85%/85%.
CONSOLIDATE_EPOCHS = 2.0
CONSOLIDATE_LR = 1e-3
_ATTENTION_PARENTS = re.compile(r"attn|attention", re.IGNORECASE)


class _Batches:
    """Batches of ``BATCH_SIZE``: every memory example once per epoch (shuffled), with replay examples
    mixed in at ``ratio`` per memory example. ``refocus(refs)`` puts another copy of those memories'
    examples (and replay in the same ratio) into the batches that come next: training spends its steps
    where the last check missed."""

    def __init__(self, memory: list[Example], replay: list[Example], ratio: float, rng: random.Random) -> None:
        self.memory, self.replay, self.ratio, self.rng = memory, replay, ratio, rng
        self.pool: list[Example] = []
        self.offset = rng.randrange(len(replay)) if replay else 0
        self.by_ref: dict[str, list[Example]] = {}
        for example in memory:
            if example.ref:
                self.by_ref.setdefault(example.ref, []).append(example)

    def next(self) -> list[Example]:
        if len(self.pool) < BATCH_SIZE:
            epoch = list(self.memory) + self._replay_for(len(self.memory))
            self.rng.shuffle(epoch)
            self.pool += epoch
        batch, self.pool = self.pool[:BATCH_SIZE], self.pool[BATCH_SIZE:]
        return batch

    def _replay_for(self, memory_examples: int) -> list[Example]:
        """The next replay examples, ``ratio`` of them per memory example (cycling through the pool)."""
        if not self.replay or self.ratio <= 0:
            return []
        count = round(memory_examples * self.ratio)
        out = [self.replay[(self.offset + i) % len(self.replay)] for i in range(count)]
        self.offset += count
        return out

    def refocus(self, refs: set[str]) -> None:
        extra = [e for ref in sorted(refs) for e in self.by_ref.get(ref, ())]
        extra += self._replay_for(len(extra))  # replay in the same ratio: forgetting stays bounded
        if extra:
            self.pool += extra
            self.rng.shuffle(self.pool)


class _BaseDistributions:
    """The base model's log-probabilities at every scored position of each replay sequence, computed once
    in float32 and kept in float16: by ``reference`` (the untouched base model) when given, else by
    ``model`` with its adapters disabled (peft's ``disable_adapter``)."""

    def __init__(self, model: Any, pad: int, reference: Any | None = None) -> None:
        self.model, self.pad, self.reference = model, pad, reference
        self.cache: dict[int, Any] = {}

    def __call__(self, example: Example) -> Any:
        import contextlib

        import torch

        key = id(example)
        if key not in self.cache:
            disabled = self.model.disable_adapter() if self.reference is None else contextlib.nullcontext()
            with torch.no_grad(), disabled, torch.autocast("cpu", enabled=False):
                model = self.model if self.reference is None else self.reference
                logits, _, _ = scored(model, [example], self.pad)
                self.cache[key] = torch.log_softmax(logits.float(), dim=-1).half()
        return self.cache[key]


def _batch_loss(model: Any, batch: list[Example], pad: int, base: _BaseDistributions | None) -> Any:
    """Mean of the per-example losses: cross-entropy on the memory examples and, with ``base``, the KL
    divergence from the base model on the replay ones (each example counts the same).

    The whole batch goes through the model in one padded pass. Scoring the rows that share a prompt apart
    from the others (``token_losses``'s groups) saves their common tokens, but a step then runs the model
    two to four times, and on a CPU at these lengths each pass costs more in per-operation overhead than
    the tokens it saves: SmolLM2, 8 rows, bfloat16, 2 threads, 1.8-2.2 s a step in groups against 1.2-1.3 s
    in one pass (bench/RESULTS.md, "A faster training step")."""
    import torch
    import torch.nn.functional as F

    logits, target, keep = scored(model, batch, pad)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    per_token = -log_probs.gather(1, target[:, None])[:, 0]  # cross-entropy, token by token
    replay = [i for i, e in enumerate(batch) if e.kind == "replay"] if base is not None else []
    if replay:
        on_replay = torch.zeros(len(batch), dtype=torch.bool)
        on_replay[replay] = True
        at = on_replay[keep.nonzero()[:, 0]]  # the scored positions (row by row) that belong to replay rows
        reference = torch.cat([base(batch[i]).float() for i in replay])  # type: ignore[misc]
        kl = F.kl_div(log_probs[at], reference, log_target=True, reduction="none").sum(dim=-1)
        per_token = per_token.masked_scatter(at, kl)
    return row_means(per_token, keep).mean()


def layer_indexes(n_layers: int, layers: str) -> list[int] | None:
    """The decoder layers ``layers`` names (``LAYERS`` or "A-B"), or None for all of them."""
    if layers == "all":
        return None
    if layers == "upper":
        return list(range(n_layers // 2, n_layers))
    match = _LAYER_RANGE.fullmatch(layers.strip())
    if not match or not int(match[1]) <= int(match[2]) < n_layers:
        raise UsageError(
            f"{{layers}} must be upper, all or a range A-B of this model's layers (0-{n_layers - 1}), not {layers!r}",
            options=("layers",),
        )
    return list(range(int(match[1]), int(match[2]) + 1))


def _linear_layers(model: Any) -> list[str]:
    """The qualified names of the model's linear layers (torch Linear and transformers' Conv1D)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return [q for q, module in model.named_modules() if isinstance(module, (torch.nn.Linear, Conv1D))]


def _block_linear_names(model: Any) -> list[str]:
    """The names of the linear layers inside the model's numbered blocks (peft's "all-linear" as names,
    which peft needs to restrict them to some layers)."""
    return sorted({q.rsplit(".", 1)[1] for q in _linear_layers(model) if re.search(r"\.\d+\.", q)})


def resolve_targets(model: Any, target_modules: str | Sequence[str], *, by_name: bool = False) -> str | list[str]:
    """peft ``target_modules`` for "all-linear", "attention" (the linear layers inside each attention
    block, whatever the family calls them) or an explicit list of module names. ``by_name``: as a list of
    names (what peft needs with ``layers_to_transform``), never a pattern."""
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return _block_linear_names(model) if by_name else "all-linear"
        if target_modules != "attention":
            names = [t.strip() for t in target_modules.split(",") if t.strip()]
            if not names:
                raise UsageError("{target_modules} is empty", options=("target_modules",))
            return names
        parents, leaves = set(), set()
        for qualified in _linear_layers(model):
            if "." not in qualified:
                continue
            parent, leaf = qualified.rsplit(".", 1)
            last = parent.rsplit(".", 1)[-1]
            if _ATTENTION_PARENTS.search(last):
                parents.add(last)
                leaves.add(leaf)
        if not leaves:
            raise UsageError(
                "this model has no linear layers inside an attention block; name them with {target_modules}",
                options=("target_modules",),
            )
        if by_name:
            return sorted(f"{parent}.{leaf}" for parent in parents for leaf in leaves)
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
    precision: str = "float32",
    layers: str = DEFAULT_LAYERS,
) -> tuple[Any, Fit]:
    """A peft model (over a private copy of ``lm.model``) with a freshly trained LoRA, and how the
    training went (``Fit``). ``lm.model`` itself is never modified."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    base = copy.deepcopy(lm.model)
    if precision == "bfloat16":
        base.to(torch.bfloat16)  # the frozen weights; peft keeps the LoRA weights in float32
        _eager_attention(base)
    indexes = layer_indexes(lm.num_layers, layers)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; a float scale is what it computes with
        lora_dropout=0.0,
        target_modules=resolve_targets(base, target_modules, by_name=indexes is not None),
        layers_to_transform=indexes,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations reached through peft
            model = get_peft_model(base, config)
    except ValueError as exc:  # peft: target modules not found
        raise UsageError(f"{{target_modules}}: {exc}", options=("target_modules",)) from exc
    params = [p for p in model.parameters() if p.requires_grad]
    fit = _fit(
        model,
        params,
        examples,
        replay,
        steps=steps,
        lr=lr,
        rng=rng,
        pad=pad_id(lm),
        replay_ratio=replay_ratio,
        stage="training",
        progress=progress,
        until=until,
        precision=precision,
        reference=lm.model,
    )
    if precision == "bfloat16":
        model = _on_float32_base(lm, model, config)
    return model, fit


def _eager_attention(model: Any) -> None:
    """Attention as plain matrix products and a softmax on ``model`` (a private training copy) instead of
    torch's fused kernel, whose backward pass in bfloat16 is the slower one on a CPU: 7.9 ms against 3.4 ms
    for one layer's forward and backward (8 rows x 9 heads x 48 tokens, 2 threads); in float32 the fused
    kernel is the faster (3.1 against 4.3 ms), so only bfloat16 training switches. A model that cannot
    switch keeps its own."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        return
    try:
        setter("eager")
    except (ValueError, NotImplementedError, AttributeError):
        pass


def _on_float32_base(lm: LanguageModel, trained: Any, config: Any) -> Any:
    """The adapter trained over a bfloat16 copy, on a float32 copy of ``lm.model``: what is measured,
    saved and later loaded by chat is the float32 model with the (float32) LoRA weights."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    state = {k: v.float() for k, v in get_peft_model_state_dict(trained).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(copy.deepcopy(lm.model), config)
    set_peft_model_state_dict(model, state)
    model.eval()
    return model


def steps_for(
    epochs: float, examples: list[Example], replay: list[Example], replay_ratio: float, *, floor: int = 1
) -> int:
    """Batches for ``epochs`` passes over ``examples``, replay mixed in at ``replay_ratio`` each, and at
    least ``floor``."""
    per_epoch = len(examples) * (1 + (replay_ratio if replay else 0))
    return max(floor, math.ceil(epochs * per_epoch / BATCH_SIZE))


@dataclass
class Until:
    """When training stops without a fixed ``--steps``/``--epochs``: every ``every`` steps the model's own
    greedy recall of ``checks`` (short-answer training questions, ``greedy_recalled``) is measured; it
    stops once that reaches ``target`` (learned), or fails to improve for ``patience`` checks in a row
    after the first pass over the data (plateau), or at ``max_seconds`` (time limit); the step count
    passed to ``_fit`` is the last cap."""

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
    precision: str = "float32",
    reference: Any | None = None,
) -> Fit:
    """AdamW over ``params`` for at most ``steps`` batches (linear warm-up, then linear decay to 10%,
    gradients clipped at 1), stopping early as ``until`` says; the final loss is the mean of the last 10%
    of the steps taken. ``precision`` "bfloat16" runs the steps under autocast (``PRECISIONS``);
    ``reference`` (the float32 base model), when given, gives the replay's KL targets. Leaves ``model`` in eval
    mode."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, min(steps // 10, WARMUP_STEPS))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - 0.9 * (step - warmup) / max(1, steps - warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    base = _BaseDistributions(model, pad, reference) if REPLAY_LOSS == "kl" and replay and replay_ratio > 0 else None
    recent: list[float] = []
    trace: list[dict[str, Any]] = []
    stopped = "steps given" if until is None else "step limit"
    best, best_loss, stale = -1.0, math.inf, 0
    epoch_steps = steps_for(1.0, examples, replay, replay_ratio)
    started = time.perf_counter()
    model.train()
    try:
        batches = _Batches(examples, replay, replay_ratio, rng)
        for step in range(steps):
            batch = batches.next()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                loss = _batch_loss(model, batch, pad, base)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged()
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
            # under the training steps' autocast: on a bfloat16 base, peft's float32 LoRA layers otherwise
            # cast every activation back and forth (96 checks: 7.5 s a check, 1.5 s under autocast)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                recalled = greedy_recalled(model, until.checks, pad, batch=CHECK_BATCH)
            hits = sum(recalled)
            # the memories whose questions were missed are trained again in the next batches
            batches.refocus({c.ref for c, hit in zip(until.checks, recalled, strict=True) if not hit and c.ref})
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
            # ... and never within the first pass over the data: before it, the checks ask about memories
            # not yet trained on (500 memories: a pass is ~900 steps; a plateau at step 190 left 3%)
            if stale >= until.patience and step + 1 >= epoch_steps:
                stopped = "plateau"
                break
    finally:
        model.eval()
    taken = len(recent)
    tail = recent[-max(1, taken // 10) :]
    return Fit(taken, sum(tail) / len(tail), stopped, trace)


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
    active = active_adapter(model)
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
        pad=pad_id(lm),
        replay_ratio=REPLAY_RATIO,
        stage="consolidating",
        progress=progress,
    )
    for param in params:
        param.requires_grad = False
    return fit.steps, fit.final_loss
