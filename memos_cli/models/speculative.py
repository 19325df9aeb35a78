"""Self-speculative greedy decoding: a half-precision copy of the model drafts, the float32 model decides.

A decode step of a small model on a CPU is memory-bound: each token reads every weight once. The draft,
the same network in float16 (or bfloat16), reads half the bytes per token and proposes ``k`` tokens one by
one; the float32 model then checks all of them in **one** forward pass over ``[last token, d1..dk]``
(reading its weights once for the lot), keeps the longest prefix of proposals equal to its own greedy
choices, and adds its own next token. Both caches are cropped back to the kept tokens.

Every token handed out is the float32 model's argmax at its position, so the answer is the one the plain
float32 greedy loop gives: the proposals only decide how many positions one verifying pass covers. The
draft can be wrong, stale or even broken without changing an answer, only the speed. (The verifying pass
computes several positions at once, so its logits differ from the one-token loop's by float rounding,
~1e-5, like a snapshot's cache against a re-prefill; answers are compared token by token in the tests.)

The draft is made once per model (``draft_for``) and its cache starts as a half copy of the float32
cache after the prompt's prefill, so the draft never prefills anything itself. Sampling keeps the plain
loop (``generate`` calls this module for greedy decoding only).

Whether half precision is faster than float32 on this CPU is measured once (``half_dtype``, a few
milliseconds of matrix-vector products, remembered in the model cache per CPU and torch version); where it
is not, ``generate`` decodes as before. ``MEMOS_SPECULATIVE=0`` turns the draft off, ``=1`` turns it on
for any model size, ``=float16``/``=bfloat16`` also choose the draft's dtype.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

SPECULATIVE_ENV = "MEMOS_SPECULATIVE"
PROBE_FILE = "speculative-probe.json"
PROBE_VERSION = 1
MIN_PARAMS = 50_000_000  # below this a decode step is not memory-bound and a draft cannot pay off
MIN_NEW_TOKENS = 4
K_START, K_MIN, K_MAX = 4, 2, 6
SKINNY_MAX_ROWS = 8
HALF_SPEEDUP = 0.75  # half precision is used when its matrix-vector time is at most this share of float32's

# One draft per model object, dropped with the model.
_DRAFTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


@dataclass
class Stats:
    drafted: int = 0  # tokens proposed by the draft
    accepted: int = 0  # of those, equal to the float32 model's choice
    cycles: int = 0  # verifying passes


def setting() -> str:
    return os.environ.get(SPECULATIVE_ENV, "").strip().lower()


def _cpu_key() -> str:
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def _probe() -> dict[str, float]:
    """Milliseconds for 24 matrix-vector products of 1536x576 weights (~85 MB in float32, more than a
    cache holds) per dtype, best of 5: the shape and the memory-bound regime of a SmolLM2 decode step."""
    import torch

    out: dict[str, float] = {}
    base = [torch.randn(1536, 576) for _ in range(24)]
    for name in ("float32", "float16", "bfloat16"):
        dtype = getattr(torch, name)
        weights = [w.to(dtype) for w in base]
        x = torch.randn(1, 576, dtype=dtype)
        best = float("inf")
        with torch.inference_mode():
            for _ in range(5):
                started = time.perf_counter()
                for w in weights:
                    torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - started)
        out[name] = best * 1000.0
    return out


@lru_cache(maxsize=1)
def half_dtype() -> str | None:
    """``"float16"`` or ``"bfloat16"``, whichever decodes fastest here, or None when neither is clearly
    faster than float32 (then drafting cannot pay). Measured once per CPU, torch version and thread count."""
    from memos_cli.config import model_cache

    forced = setting()
    if forced in ("float16", "bfloat16"):
        return forced
    key = _cpu_key()
    path = model_cache() / PROBE_FILE
    try:
        saved = json.loads(path.read_text())
        if saved.get("version") != PROBE_VERSION:
            saved = {}
    except (OSError, ValueError):
        saved = {}
    times = saved.get("probes", {}).get(key)
    if not isinstance(times, dict):
        times = _probe()
        probes = dict(saved.get("probes", {}))
        probes[key] = times
        tmp = path.with_name(f".{PROBE_FILE}.{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps({"version": PROBE_VERSION, "probes": probes}, indent=1) + "\n")
            os.replace(tmp, path)
    name = min(("float16", "bfloat16"), key=lambda n: float(times[n]))
    return name if float(times[name]) <= HALF_SPEEDUP * float(times["float32"]) else None


def wanted(lm: Any, *, greedy: bool, max_new_tokens: int) -> bool:
    """Whether ``generate`` should draft by default: greedy decoding of a model large enough to be
    memory-bound, on a CPU where half precision is faster, unless ``MEMOS_SPECULATIVE=0``."""
    value = setting()
    if value in ("0", "off", "no", "false") or not greedy or max_new_tokens < MIN_NEW_TOKENS:
        return False
    if type(lm.model).__module__.startswith("peft"):
        return False  # adapters not merged (distill's training model): its weights change under us
    if value not in ("1", "on", "yes", "true", "float16", "bfloat16"):
        if sum(p.numel() for p in lm.model.parameters()) < MIN_PARAMS:
            return False
    return half_dtype() is not None or value in ("1", "on", "yes", "true")


def draft_for(model: Any, dtype_name: str | None = None) -> Any:
    """A half-precision copy of ``model`` (its parameters converted, its float32 buffers such as rotary
    frequencies kept), made once per model object. Tied weights stay tied."""
    import torch

    name = dtype_name or half_dtype() or "bfloat16"
    dtype = getattr(torch, name)
    found = _DRAFTS.get(model)
    if found is not None and found.dtype == dtype:
        return found
    with torch.no_grad():
        # deepcopy with the parameters pre-converted in the memo: no float32 copy of the weights is made.
        memo: dict[int, Any] = {
            id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in model.parameters()
        }
        draft = copy.deepcopy(model, memo)
    draft.eval()
    _DRAFTS[model] = draft
    return draft


def nbytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# Caches


def half_copy(cache: Any, config: Any, dtype: Any, head: Sequence[tuple[Any, Any]] = ()) -> Any:
    """A new cache holding ``cache``'s keys and values in ``dtype``. ``head``: per layer, tensors already
    converted for the first tokens (a snapshot's, converted once per session); only the rest is converted."""
    import torch
    from transformers import DynamicCache

    out = DynamicCache(config=config)
    out.activate_past_recording()  # type: ignore[no-untyped-call]
    for i, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        if i < len(head):
            done = int(head[i][0].shape[-2])
            keys = torch.cat([head[i][0], keys[..., done:, :].to(dtype)], dim=-2)
            values = torch.cat([head[i][1], values[..., done:, :].to(dtype)], dim=-2)
        else:
            keys, values = keys.to(dtype), values.to(dtype)
        out.update(keys, values, i)
    return out


# ---------------------------------------------------------------------------------------------------------
# Verifying several positions in one pass


def _skinny_forward(self: Any, x: Any) -> Any:
    """``nn.Linear`` for a few rows as ``W @ x.T``: MKL's small-M float32 GEMM reads the weights about once
    per row, this reads them once in all (3 rows cost ~1.2 one-row products instead of ~2)."""
    import torch

    rows = x.numel() // x.shape[-1]
    if rows > SKINNY_MAX_ROWS or self.in_features > self.out_features or x.dtype != self.weight.dtype:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, x.shape[-1])
    y = torch.mm(self.weight, flat.t()).t().contiguous()
    if self.bias is not None:
        y = y + self.bias
    return y.view(*x.shape[:-1], self.out_features)


@contextlib.contextmanager
def skinny_linears(model: Any) -> Iterator[None]:
    """Run ``model``'s ``nn.Linear`` layers as ``_skinny_forward`` inside the block (instance attributes,
    removed afterwards; nothing else sees them)."""
    import torch

    linears = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__]
    for module in linears:
        module.forward = types.MethodType(_skinny_forward, module)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in linears:
            del module.forward


# ---------------------------------------------------------------------------------------------------------
# The loop


def greedy_loop(
    model: Any,
    draft: Any,
    cache: Any,
    draft_cache: Any,
    token: int,
    take: Callable[[int], bool],
    room: Callable[[], int],
    stats: Stats,
    *,
    k: int = K_START,
    adaptive: bool = True,
) -> None:
    """Continue greedy decoding after ``token`` (already taken, in neither cache) until ``take`` says stop.

    ``take(t)`` records a chosen token and returns False when generation ends with it (a stop token, or
    the token budget reached); ``room()`` is how many more tokens ``take`` will accept. Must be called
    under ``torch.inference_mode``.
    """
    import torch

    cache.activate_past_recording()  # sliding-window layers keep what a crop may need
    pending = [token]  # tokens the draft has not seen yet
    while True:
        j = min(k, room() - 1)  # one verifying pass yields at most j + 1 tokens
        drafts: list[int] = []
        if j > 0:
            out = draft(
                input_ids=torch.tensor([pending]), past_key_values=draft_cache, use_cache=True, logits_to_keep=1
            )
            for i in range(j):
                drafts.append(int(torch.argmax(out.logits[0, -1])))
                if i + 1 < j:
                    out = draft(
                        input_ids=torch.tensor([[drafts[-1]]]),
                        past_key_values=draft_cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
        with skinny_linears(model):
            out = model(
                input_ids=torch.tensor([[token, *drafts]]), past_key_values=cache, use_cache=True, logits_to_keep=j + 1
            )
        choices = torch.argmax(out.logits[0].float(), dim=-1).tolist()
        a = 0
        while a < j and choices[a] == drafts[a]:
            a += 1
        stats.cycles += 1
        stats.drafted += j
        stats.accepted += a
        for t in (*drafts[:a], choices[a]):
            if not take(t):
                return
        if j > a:
            cache.crop(-(j - a))  # the float32 cache keeps token + the accepted drafts
        if j > 0:
            seen = min(a, j - 1)  # the draft has seen pending + drafts[: j - 1]
            if j - 1 > seen:
                draft_cache.crop(-(j - 1 - seen))
            pending = [*drafts[seen:a], choices[a]]
        else:
            pending = [*pending, choices[a]]
        token = choices[a]
        if adaptive:
            k = min(k + 1, K_MAX) if a == j else max(K_MIN, a + 1)
