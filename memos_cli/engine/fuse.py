"""fuse: several cubes -> one new cube, deduplicated, conflicts resolved by versions, lineage kept.

- plaintext: the union of every memory version. The same memory (same id) in several parents keeps
  all its versions (two different versions with one number are both kept, renumbered as the git merge
  driver does). The same text from different sources is stored once, its other provenances listed in
  ``metadata.also_from``. Near-duplicates (cosine >= ``dedup_threshold`` between active memories) are
  merged: the newer stays current and lists the other in ``metadata.merged_from``; the other gets a
  final ``superseded`` version pointing to it, so no version is lost. Memories with the same ``key``
  are resolved by time, as ingest does.
- lineage: the new manifest names each parent (id, name, format version, sha256 of its memories).
- activation: each parent snapshot made for the fused cube's model is rebuilt from the fused
  memories; snapshots with the same name in several parents are combined by prefilling the next
  parent's memories on top of the first's cache (never by concatenating caches).
- parametric: adapters with the same name in several parents are combined with peft's weighted
  combination ``cat`` (the fused update is exactly the sum of the parents' updates). No peft method
  alone keeps enough: updates learned apart interfere once summed (bench/fuse_lora_bench.py: 0-33% of
  each parent's facts, ``ties_svd`` the best). So by default (``adapters="consolidate"``) the combined
  adapter then trains two short passes over the parents' memories, which are in the fused cube (92-96%
  of each parent's facts; starting from ``cat`` kept more than from ``ties_svd``). ``adapters="combine"``
  stops after peft's combination and ``adapters="drop"`` leaves adapters out. Recall of each parent's
  facts (closed-book, distill's measure) is measured after each step and recorded in the manifest
  entry. A single parent's adapter is copied as it is.

Vectors come from the parents' indexes (same embedder), so fusing does not re-embed what is indexed.
"""

from __future__ import annotations

import glob
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from memos_cli.config import actor as resolve_actor
from memos_cli.cube import io as cube_io
from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import KvEntry, LoraEntry
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.activation.fusion import rebuild_snapshots
from memos_cli.engine.claim import claim_model
from memos_cli.engine.distributed import RayEngine
from memos_cli.engine.embedding import EmbedderHandle
from memos_cli.engine.parametric.fusion import carry_adapters, method_name
from memos_cli.engine.plaintext.dedup import (
    merge_near_duplicates,
    near_duplicates,
    parent_vectors,
    store_exact_duplicates_once,
)
from memos_cli.engine.plaintext.index import open_index
from memos_cli.errors import CubeExists, IncompatibleModel, UsageError
from memos_cli.words import plural

E = TypeVar("E", KvEntry, LoraEntry)
Plan = dict[str, list[tuple[Cube, E]]]  # entry name -> (parent, its entry) for each parent that has it

if TYPE_CHECKING:
    from memos_cli.engine.parametric.examples import Progress

ADAPTER_MODES = ("consolidate", "combine", "drop")


@dataclass
class FuseReport:
    output: str
    parents: list[dict[str, Any]]
    memories: int = 0
    versions: int = 0
    exact_duplicates: int = 0  # the same text under different ids (sources), stored once
    shared_versions: int = 0  # the same memory version present in several parents, stored once
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    version_conflicts: int = 0
    superseded_by_key: int = 0
    kv: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    engine: dict[str, Any] | None = None  # --engine ray: nodes, actors, fixed seconds, rate

    def to_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["near_duplicates"] = self.near_duplicates[:100]
        data["near_duplicate_count"] = len(self.near_duplicates)
        return data


def _lineage(cube: Cube) -> dict[str, Any]:
    data = cube_io.read_bytes(cube.path, layout.MEMORIES, missing_ok=True) or b""
    return {
        "id": cube.manifest.id,
        "name": cube.manifest.name,
        "format_version": cube.manifest.format_version,
        "content_sha256": hashlib.sha256(data).hexdigest(),
    }


def _union_versions(
    parents: list[list[MemoryRecord]], actor: str | None
) -> tuple[dict[str, list[MemoryRecord]], int, int]:
    """All versions per memory id across parents, merged as histories of one cube (engine/plaintext/merge.py:
    the same version in several parents kept once, the earliest; a memory changed in several parents
    merged field by field, a field changed two ways kept both ways and marked). Returns (versions by
    id, memories with a conflict, versions found in several parents)."""
    from memos_cli.engine.plaintext.merge import merge_histories

    merged, conflicts = merge_histories(parents, actor=actor, key_rules=False)
    out: dict[str, list[MemoryRecord]] = {}
    for record in merged:
        out.setdefault(record.id, []).append(record)
    for records in out.values():
        records.sort(key=lambda r: r.version)
    written = sum(len(p) for p in parents)
    unique = len({(r.id, r.content_key()) for p in parents for r in p})
    return out, len(conflicts), written - unique


def fuse(
    cube_paths: list[Path],
    output: Path,
    *,
    name: str | None = None,
    dedup_threshold: float = 0.95,
    dry_run: bool = False,
    reembed: bool = False,
    drop_incompatible: bool = False,
    adapters: str = "consolidate",
    model: str | None = None,
    actor: str | None = None,
    progress: Progress | None = None,
    engine: RayEngine | None = None,
) -> FuseReport:
    """Fuse ``cube_paths`` into a new cube at ``output``: each step below is a function of its own."""
    started = time.perf_counter()
    _check_arguments(cube_paths, output, adapters, dedup_threshold)
    parents = [Cube.open(p) for p in cube_paths]
    actor = resolve_actor(actor)  # the creator: the fused cube's owner, and the actor of its versions
    for parent in parents:
        parent.check(actor, "read")
    embedder = EmbedderHandle(engine=engine)  # --engine ray: re-embedding runs on the cluster
    _check_embedders(parents, embedder.identity.fingerprint, reembed)
    lm, target_print = _language_model(parents, model, drop_incompatible)

    report = FuseReport(output=str(output), parents=[_lineage(p) for p in parents], dry_run=dry_run)
    states = [p.read_state() for p in parents]
    versions, report.version_conflicts, report.shared_versions = _union_versions([s.versions for s in states], actor)
    vectors = parent_vectors(parents, states, embedder, engine, _indexing(progress), reembed)
    origin: dict[str, str] = {}
    for parent, state in zip(parents, states, strict=True):
        for memory_id in state.current:
            origin.setdefault(memory_id, parent.manifest.name)

    now = utc_now()
    current = {i: recs[-1] for i, recs in versions.items()}
    moved = store_exact_duplicates_once(current, versions, origin, parents)
    report.exact_duplicates = len(moved)
    from memos_cli.engine.plaintext.merge import apply_key_rules  # the git merge's rule: one implementation

    extra_versions = [replace(gone, created=now) for gone in apply_key_rules(current, actor=actor, op="fuse")]
    report.superseded_by_key = len(extra_versions)
    superseded = {r.id for r in extra_versions}
    active = [i for i, r in current.items() if r.status == "active" and i not in superseded]
    merged_into, report.near_duplicates = near_duplicates(
        current, active, vectors, origin, dedup_threshold, embedder.identity.dim
    )
    moved.update(merged_into)
    extra_versions += merge_near_duplicates(current, merged_into, origin, actor, now)
    records = _fused_records(versions, current, extra_versions)
    report.versions = len(records)
    report.memories = len(versions)

    # --- snapshots and adapters to carry over
    kv_plan = _plan(parents, "kv", lambda p: p.manifest.kv, lambda e: e.model_fingerprint, target_print, report)
    lora_plan = _plan(
        parents, "lora", lambda p: p.manifest.lora, lambda e: e.base_model_fingerprint, target_print, report
    )
    if lora_plan and adapters == "drop":
        for lora_name, sources in lora_plan.items():
            report.dropped.append(
                f"lora {lora_name} of {', '.join(p.manifest.name for p, _ in sources)} (--adapters drop)"
            )
        lora_plan = {}
    if dry_run:
        _dry_run_plans(report, kv_plan, lora_plan, adapters)
    else:
        fused = _Fused(records, lm, kv_plan, lora_plan, vectors, moved, adapters)
        _build_then_rename(output, name, actor, parents, fused, report, embedder, progress)
    report.seconds = time.perf_counter() - started
    if engine is not None:
        engine.clear_stage()
        report.engine = engine.stats.to_dict()
    return report


def _check_arguments(cube_paths: list[Path], output: Path, adapters: str, dedup_threshold: float) -> None:
    if adapters not in ADAPTER_MODES:
        raise UsageError(f"{{adapters}} must be one of {', '.join(ADAPTER_MODES)}", options=("adapters",))
    if len(cube_paths) < 2:
        raise UsageError("fuse needs at least two cubes")
    if not 0 < dedup_threshold <= 1:
        raise UsageError("{dedup_threshold} must be in (0, 1]", options=("dedup_threshold",))
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CubeExists(output)
    if len({p.resolve() for p in cube_paths}) != len(cube_paths):
        raise UsageError("the same cube is named twice")


def _check_embedders(parents: list[Cube], fingerprint: str, reembed: bool) -> None:
    prints = {p.manifest.name: (p.manifest.embedder or {}).get("fingerprint") for p in parents}
    foreign = {n: str(f) for n, f in prints.items() if f not in (None, fingerprint)}
    if foreign and not reembed:
        name0, fp = next(iter(foreign.items()))
        raise IncompatibleModel(
            f"cube {name0}",
            fp,
            fingerprint,
            hint="pass {reembed} to index every memory again with this embedder",
            options=("reembed",),
        )


def _language_model(parents: list[Cube], model: str | None, drop_incompatible: bool) -> tuple[Any, str | None]:
    """The model the parents' snapshots and adapters are rebuilt and combined with (None when they have
    none); parts made for another model are refused, or with ``drop_incompatible`` left out later."""
    # a snapshot made with adapters applied records its base model apart (promote --lora)
    found = {e.base_model_fingerprint or e.model_fingerprint for p in parents for e in p.manifest.kv.values()}
    found |= {e.base_model_fingerprint for p in parents for e in p.manifest.lora.values()}
    model_prints = {str(fp) for fp in found if fp is not None}
    if not model_prints:
        return None, None
    from memos_cli.models.lm import load_lm

    lm = load_lm(model)
    strangers = model_prints - {lm.fingerprint}
    if strangers and not drop_incompatible:
        raise IncompatibleModel(
            "a parent's KV snapshot or adapter",
            sorted(strangers)[0],
            lm.fingerprint,
            hint="pass {model} with the model they were made for, or {drop_incompatible} to leave them out",
            options=("model", "drop_incompatible"),
        )
    return lm, lm.fingerprint


def _fused_records(
    versions: dict[str, list[MemoryRecord]], current: dict[str, MemoryRecord], extra: list[MemoryRecord]
) -> list[MemoryRecord]:
    """All versions, with the metadata edits applied to each memory's last version, in creation order."""
    records: list[MemoryRecord] = []
    for memory_id, recs in versions.items():
        records.extend(recs[:-1])
        records.append(current.get(memory_id, recs[-1]))
    records.extend(extra)
    records.sort(key=lambda r: (r.created, r.id, r.version))
    return records


def _dry_run_plans(report: FuseReport, kv_plan: Plan[KvEntry], lora_plan: Plan[LoraEntry], adapters: str) -> None:
    report.kv = {n: {"from": [p.manifest.name for p, _ in plan]} for n, plan in kv_plan.items()}
    report.lora = {
        n: {
            "from": [p.manifest.name for p, _ in plan],
            "method": method_name(len(plan), consolidated=adapters == "consolidate"),
        }
        for n, plan in lora_plan.items()
    }


@dataclass
class _Fused:
    """What the fused cube is made of, once decided."""

    records: list[MemoryRecord]
    lm: Any
    kv_plan: Plan[KvEntry]
    lora_plan: Plan[LoraEntry]
    vectors: dict[str, np.ndarray]
    moved: dict[str, str]
    adapters: str


def _build_then_rename(
    output: Path,
    name: str | None,
    actor: str,
    parents: list[Cube],
    fused: _Fused,
    report: FuseReport,
    embedder: EmbedderHandle,
    progress: Progress | None,
) -> None:
    """Build next to the output and rename at the end: a killed fuse leaves no half-made cube at OUT."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{glob.escape(output.name)}.fusing-*"):
        if stale.is_dir() and not stale.is_symlink():  # left by a fuse that was killed: never a cube yet
            cube_io.remove(output.parent, stale.name)
    building = Path(tempfile.mkdtemp(prefix=f".{output.name}.fusing-", dir=output.parent))
    try:
        _write_fused(building, output, name, actor, parents, fused, report, embedder, progress)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if output.exists():
        output.rmdir()  # an empty directory was allowed as the target
    cube_io.rename(output.parent, building.name, output.name)  # the one step that makes the cube appear


def _write_fused(
    building: Path,
    output: Path,
    name: str | None,
    actor: str | None,
    parents: list[Cube],
    plan: _Fused,
    report: FuseReport,
    embedder: EmbedderHandle,
    progress: Progress | None,
) -> None:
    """The fused cube in ``building``: its records, rebuilt snapshots and carried adapters in one
    transaction, then its index from the parents' vectors."""
    ident = embedder.identity
    records, lm = plan.records, plan.lm
    fused = Cube.init(
        building,
        name=name or output.resolve().name,
        owner=actor,
        description="fused from " + ", ".join(p.manifest.name for p in parents),
    )
    final: dict[str, MemoryRecord] = {}
    for record in records:
        if record.id not in final or record.version > final[record.id].version:
            final[record.id] = record
    snapshots = rebuild_snapshots(lm, plan.kv_plan, final) if plan.kv_plan else {}
    combined = (
        carry_adapters(lm, plan.lora_plan, final, plan.moved, building, plan.adapters, progress)
        if plan.lora_plan
        else {}
    )
    with fused.transaction(actor=actor, op="fuse") as tx:
        tx.rewrite_memories = records
        tx.manifest.lineage = report.parents
        tx.manifest.embedder = {"name": ident.name, "dim": ident.dim, "fingerprint": ident.fingerprint}
        if lm is not None and (snapshots or combined):
            claim_model(tx.manifest, lm, what=f"cube {output}")
        for kv_name, (snap, entry) in snapshots.items():
            from memos_cli.engine.activation.snapshots import save_snapshot

            rel = f"{layout.KV_DIR}/{kv_name}.safetensors"
            entry.sha256 = save_snapshot(tx.stage_file(rel), snap)
            tx.manifest.kv[kv_name] = entry
            report.kv[kv_name] = {"tokens": entry.tokens, "memories": len(entry.memories)}
        for lora_name, (folder, adapter) in combined.items():
            staged = tx.stage_file(f"{layout.LORA_DIR}/{lora_name}")
            shutil.copytree(folder, staged)
            tx.manifest.lora[lora_name] = adapter
            report.lora[lora_name] = {
                "from": adapter.fused_from,
                "method": adapter.method,
                "memories": len(adapter.memories),
                **({"recall": adapter.recall} if adapter.recall is not None else {}),
                **({"consolidation": adapter.consolidation} if adapter.consolidation is not None else {}),
            }
        tx.touch_manifest()
        tx.log(
            sorted(final),
            f"fused {len(parents)} cubes: {plural(report.memories, 'memory')}, {report.exact_duplicates} "
            f"exact and {len(report.near_duplicates)} near duplicates merged",
            parents=[p["id"] for p in report.parents],
        )
    shutil.rmtree(building / layout.DERIVED_DIR / "fuse-lora", ignore_errors=True)
    # The fused cube's index, from the parents' vectors: nothing indexed is embedded again.
    open_index(
        fused,
        fused.read_state(),
        embedder.load,
        dim=ident.dim,
        embedder_name=ident.fingerprint,
        known_vectors=plan.vectors,
        progress=_indexing(progress),
    )


def _plan(
    parents: list[Cube],
    kind: str,
    entries: Callable[[Cube], dict[str, E]],
    fingerprint: Callable[[E], str | None],
    target_print: str | None,
    report: FuseReport,
) -> Plan[E]:
    """The snapshots (``kind`` "kv") or adapters ("lora") to carry over, by name, with their parents;
    those made for another model than ``target_print`` are left out and named in the report."""
    plan: Plan[E] = {}
    for parent in parents:
        for entry_name, entry in entries(parent).items():
            if target_print and fingerprint(entry) != target_print:
                report.dropped.append(f"{parent.manifest.name}: {kind} {entry_name} (another model)")
                continue
            plan.setdefault(entry_name, []).append((parent, entry))
    return plan


def _indexing(progress: Progress | None) -> Callable[[int, int], None] | None:
    """The (done, total) callback the index takes, as the "indexing" stage of ``progress``."""
    if progress is None:
        return None
    return lambda done, total: progress("indexing", done, total, None)
