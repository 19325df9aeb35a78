"""promote: move memories between kinds.

- up to **activation**: the selected memories are rendered as the model's memory preamble, prefilled
  once, and saved as ``kv/NAME.safetensors``; the manifest records model fingerprint, dtype, tokens,
  the memory refs (id@version) and the file's sha256;
- up to **parametric**: the same as ``distill`` (one code path, see ``distill.py``);
- down to **archive**: the selected memories are archived (as ``forget`` does);
- ``drop`` removes a snapshot; ``refresh`` rebuilds one from the selection it was made with.

The prefill (the slow part) runs before the cube lock is taken; the transaction only moves the
finished file into place and records it.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import KvEntry, LoraEntry, ref_ids
from memos_cli.engine import ops
from memos_cli.engine.claim import claim_model
from memos_cli.engine.select import Selection, select
from memos_cli.errors import InvalidCube, SnapshotExists, UsageError, shorten
from memos_cli.words import plural

KV_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class PromoteReport:
    name: str
    kind: str
    memories: list[str] = field(default_factory=list)  # refs included
    skipped: list[str] = field(default_factory=list)  # refs left out by the token budget
    tokens: int = 0
    dtype: str | None = None
    bytes: int = 0
    sha256: str | None = None
    model: str | None = None
    seconds: float = 0.0
    adapters: dict[str, str] = field(default_factory=dict)  # name -> sha256 of the adapter's weights
    budget: int | None = None  # the token budget the snapshot was built with (refresh reuses the old one)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


def check_name(name: str) -> str:
    """Snapshot and adapter names become file names: plain names only (no '/', no '..')."""
    if not layout.valid_name(name):
        raise UsageError(
            f"name {shorten(name)!r} must be 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


def kv_path(name: str) -> str:
    return f"{layout.KV_DIR}/{check_name(name)}.safetensors"


def promote_to_activation(
    cube: Cube,
    selection: Selection,
    *,
    name: str,
    model: str | None = None,
    budget: int | None = None,
    dtype: str = "float32",
    actor: str | None = None,
    replace: bool = False,
    op: str = "promote",
    loras: Sequence[str] = (),
) -> PromoteReport:
    """Prefill the selected memories into ``kv/<name>.safetensors``. With ``loras``, the model is the one
    chat uses with those adapters (``distill.load_adapters``): the snapshot's header and manifest entry
    record each adapter's sha256, and it is refused for any other combination (its fingerprint is the
    adapted model's)."""
    from memos_cli.engine.activation.snapshots import build_snapshot, save_snapshot
    from memos_cli.models.lm import load_lm

    started = time.perf_counter()
    if dtype not in KV_DTYPES:
        raise UsageError(f"{{dtype}} must be one of {', '.join(KV_DTYPES)}", options=("dtype",))
    rel = kv_path(name)
    actor = cube.check(actor, "write")
    if name in cube.manifest.kv and not replace:
        raise SnapshotExists(cube.path, name)
    memories = select(cube, selection)
    lm = base = load_lm(model)
    adapters: dict[str, str] = {}
    if loras:
        from memos_cli.engine.parametric.adapters import adapter_digests, load_adapters

        lm = load_adapters(base, cube, loras)
        adapters = adapter_digests(cube, loras)
    claim_model(copy.copy(cube.manifest), base, replacing=("kv", name), what=f"cube {cube.path}")  # fail early
    snap = build_snapshot(lm, memories, dtype=dtype, budget=budget)
    snap.adapters = adapters
    if not snap.memory_refs:
        raise UsageError(f"not even the first memory fits in {{budget}} {budget} tokens", options=("budget",))
    with cube.transaction(actor=actor, op=op) as tx:
        staged = tx.stage_file(rel)
        digest = save_snapshot(staged, snap)
        tx.manifest.kv[name] = KvEntry(
            name=name,
            sha256=digest,
            model=lm.name,
            model_fingerprint=lm.fingerprint,
            dtype=dtype,
            adapters=adapters,
            base_model_fingerprint=base.fingerprint if adapters else None,
            tokens=snap.token_count,
            memories=list(snap.memory_refs),
            skipped=list(snap.skipped_refs),
            selection=selection.describe(),
            budget=budget,
            created=utc_now(),
        )
        claim_model(tx.manifest, base, replacing=("kv", name), what=f"cube {cube.path}")
        tx.touch_manifest()
        ids = ref_ids(snap.memory_refs)
        with_adapters = f", with adapters {', '.join(adapters)}" if adapters else ""
        tx.log(
            ids,
            f"promoted {plural(len(ids), 'memory')} to activation memory kv/{name} "
            f"({snap.token_count} tokens, {dtype}{with_adapters})",
        )
    return PromoteReport(
        name=name,
        kind="activation",
        memories=list(snap.memory_refs),
        skipped=list(snap.skipped_refs),
        tokens=snap.token_count,
        dtype=dtype,
        adapters=adapters,
        bytes=os.path.getsize(cube.path / rel),
        sha256=digest,
        model=lm.name,
        seconds=time.perf_counter() - started,
        budget=budget,
    )


def refresh(cube: Cube, name: str, *, model: str | None = None, actor: str | None = None) -> PromoteReport:
    """Rebuild a snapshot from the selection it was made with, against the current memories."""
    entry = cube.manifest.kv.get(name)
    if entry is None:
        raise UsageError(f"no snapshot named {name!r}", hint="the cube's stats list its snapshots")
    try:
        selection = Selection.from_description(entry.selection or {})
    except ValueError as exc:
        raise InvalidCube(cube.path, f"cube.yaml kv.{name}: {exc}") from None
    if selection.empty():
        selection = Selection(ids=entry.ids())
    state = cube.read_state()
    selection.ids = [i for i in selection.ids if i in state.current and state.current[i].status == "active"]
    if selection.empty():
        raise UsageError(
            f"none of the memories of snapshot {name!r} is still active",
            hint=f"drop it: {{drop}} {name}",
            options=("drop",),
        )
    return promote_to_activation(
        cube,
        selection,
        name=name,
        model=model,
        budget=entry.budget,
        dtype=entry.dtype,
        actor=actor,
        replace=True,
        loras=list(entry.adapters),
    )


def drop(cube: Cube, name: str, *, actor: str | None = None) -> PromoteReport:
    """Remove a KV snapshot or a LoRA adapter (the audit log records it)."""
    with cube.transaction(actor=actor, op="demote") as tx:
        entry: KvEntry | LoraEntry
        if name in tx.manifest.kv:
            entry = tx.manifest.kv.pop(name)
            tx.delete_file(kv_path(name))
            kind = "activation"
        elif name in tx.manifest.lora:
            entry = tx.manifest.lora.pop(name)
            tx.delete_file(layout.lora_rel(name))
            kind = "parametric"
        else:
            raise UsageError(f"no snapshot or adapter named {name!r}")
        tx.touch_manifest()
        tx.log(entry.ids(), f"dropped {kind} memory {name}")
    return PromoteReport(name=name, kind=f"dropped {kind}", memories=list(entry.memories))


def archive(cube: Cube, selection: Selection, *, actor: str | None = None) -> PromoteReport:
    """Demote the selected memories to the archive (kept, out of default queries)."""
    memories = select(cube, selection)
    report = ops.forget(cube, [m.id for m in memories], actor=actor)
    return PromoteReport(name="archive", kind="archive", memories=report.archived)
