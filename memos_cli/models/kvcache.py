"""A KV cache of a memory preamble, in memory (``Snapshot``), and how a model takes it: checked against
the model's fingerprint and injected as a fresh cache. The file format is the engine's
(engine/activation/snapshots.py); generation (models/generation.py) only needs this much."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memos_cli.errors import IncompatibleModel
from memos_cli.models.lm import LanguageModel
from memos_cli.models.prompt import Layout


@dataclass
class Snapshot:
    """A KV cache of a memory preamble, in memory.

    ``keys[i]``/``values[i]`` are layer ``i``'s ``[1, heads, tokens, dim]`` tensors in ``dtype``.
    ``skipped_refs`` (not saved) names the selected memories left out because of the token budget.
    """

    keys: list[Any]
    values: list[Any]
    token_ids: list[int]
    memory_refs: list[str]
    preamble: str
    layout: Layout
    model_fingerprint: str
    model_family: str
    dtype: str
    skipped_refs: list[str] = field(default_factory=list)
    sha256: str | None = None
    # LoRA adapters applied to the model the cache was computed with: {name: sha256 of its weights}.
    # The fingerprint is then the adapted model's (distill.load_adapters), so no other combination loads it.
    adapters: dict[str, str] = field(default_factory=dict)
    # Half-precision copies of keys and values for a speculative draft (models/speculative.py), made once
    # per session and dtype rather than on every turn; never saved.
    half: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def token_count(self) -> int:
        return len(self.token_ids)

    @property
    def layer_count(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def inject(lm: LanguageModel, snap: Snapshot) -> Any:
    """A fresh DynamicCache holding a *copy* of the snapshot, in the model's dtype.

    transformers' ``DynamicLayer.update`` concatenates into new tensors and ``generate`` grows the cache
    it is given, so the snapshot's own tensors are never handed over to be grown.
    """
    import torch
    from transformers import DynamicCache

    target = lm.model.dtype
    # No explicit clone: DynamicLayer.update concatenates onto an empty tensor, which allocates the copy
    # (tests check that the snapshot's tensors are unchanged after generating).
    data = [(k.to(target), v.to(target)) for k, v in zip(snap.keys, snap.values, strict=True)]
    with torch.inference_mode():
        return DynamicCache(ddp_cache_data=data, config=lm.model.config)


def check_compatible(lm: LanguageModel, snap: Snapshot, *, what: str = "KV snapshot") -> None:
    if snap.model_fingerprint != lm.fingerprint:
        raise IncompatibleModel(what, snap.model_fingerprint, lm.fingerprint)
