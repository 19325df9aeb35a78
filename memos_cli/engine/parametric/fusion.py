"""fuse's parametric part: adapters of one name in several parents combined with peft ``cat`` and, in
mode "consolidate", trained two short passes on the parents' memories; recall of each parent's facts is
measured after each step (see engine/fuse.py for why)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import LoraEntry
from memos_cli.cube.records import MemoryRecord

if TYPE_CHECKING:
    from memos_cli.engine.parametric.examples import Progress

COMBINATION = "cat"  # peft combination_type: the best start for consolidation in bench/fuse_lora_bench.py
RECALL_MEMORIES = 64  # recall of each parent's facts is measured on at most this many of its memories


def parent_facts(entry: LoraEntry, final: dict[str, MemoryRecord], moved: dict[str, str]) -> list[MemoryRecord]:
    """The fused cube's active memories that a parent's adapter was trained on (following memories that
    fuse stored once or merged into another)."""
    out: dict[str, MemoryRecord] = {}
    for memory_id in entry.ids():
        hops = set()
        while memory_id in moved and memory_id not in hops:
            hops.add(memory_id)
            memory_id = moved[memory_id]
        record = final.get(memory_id)
        if record is not None and record.status == "active":
            out.setdefault(memory_id, record)
    return list(out.values())


def method_name(parents: int, *, consolidated: bool) -> str:
    """How an adapter of the fused cube was made, as the manifest and the report name it."""
    if parents == 1:
        return "copy"
    return f"{COMBINATION}+consolidate" if consolidated else COMBINATION


def sample(records: list[MemoryRecord], limit: int) -> list[MemoryRecord]:
    """At most ``limit`` records, evenly spread and deterministic."""
    if len(records) <= limit:
        return records
    return [records[i * len(records) // limit] for i in range(limit)]


def carry_adapters(
    lm: Any,
    plan: dict[str, list[tuple[Cube, LoraEntry]]],
    final: dict[str, MemoryRecord],
    moved: dict[str, str],
    building: Path,
    mode: str,
    progress: Progress | None,
) -> dict[str, tuple[Path, LoraEntry]]:
    """Each adapter name once: a parent's adapter as it is, or several parents' combined (peft ``cat``)
    and, in mode "consolidate", trained two short passes on the parents' memories; recall of each
    parent's facts is measured after each step."""
    from memos_cli.cube.io import sha256_file

    work = building / layout.DERIVED_DIR / "fuse-lora"
    out: dict[str, tuple[Path, LoraEntry]] = {}
    for lora_name, sources in plan.items():
        folder = work / lora_name
        folders = [p.committed_path(layout.lora_rel(lora_name)) for p, _entry in sources]
        facts = {p.manifest.name: parent_facts(entry, final, moved) for p, entry in sources}
        refs = list(dict.fromkeys(r.ref for records in facts.values() for r in records))
        entry = LoraEntry(
            name=lora_name,
            base_model_fingerprint=lm.fingerprint,
            model=lm.name,
            memories=refs,
            fused_from=[p.manifest.name for p, _ in sources],
            created=utc_now(),
        )
        if len(sources) == 1:
            folder.mkdir(parents=True, exist_ok=True)
            for name in layout.ADAPTER_FILES:
                data = cube_io.read_bytes(folders[0], name)  # never through a link or special file
                (folder / name).write_bytes(data or b"")
            entry.method = method_name(1, consolidated=False)
            parent_entry = sources[0][1]
            entry.hyperparameters, entry.metrics = parent_entry.hyperparameters, parent_entry.metrics
            entry.selection = parent_entry.selection
        else:
            entry.method, entry.recall, entry.consolidation = fuse_adapters(
                lm, folders, sources, facts, folder, mode, progress
            )
        entry.files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
        out[lora_name] = (folder, entry)
    return out


def fuse_adapters(
    lm: Any,
    folders: list[Path],
    sources: list[tuple[Cube, LoraEntry]],
    facts: dict[str, list[MemoryRecord]],
    folder: Path,
    mode: str,
    progress: Progress | None,
) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """Combine several parents' adapters into ``folder``; returns how (the manifest's ``method``), the
    recall of each parent's facts after peft's combination (and after consolidation), and the
    consolidation passes (None without)."""
    from memos_cli.engine.parametric.adapters import check_adapter_bounds, combine_adapters, save_combined
    from memos_cli.engine.parametric.examples import build_examples, probes_for, replay_examples
    from memos_cli.engine.parametric.training import CONSOLIDATE_EPOCHS, CONSOLIDATE_LR, consolidate_adapter

    for (cube, _entry), parent_folder in zip(sources, folders, strict=True):  # bounded before peft allocates
        check_adapter_bounds(cube, folder.name, parent_folder)  # folder: <work>/<adapter name>
    model = combine_adapters(lm, folders, method=COMBINATION)
    probes = {
        parent: [p for r in sample(records, RECALL_MEMORIES) for p in probes_for(r)]
        for parent, records in facts.items()
    }
    recall: dict[str, dict[str, Any]] = {
        p.manifest.name: {"own": e.metrics.get("recall_after"), "probes": len(probes[p.manifest.name])}
        for p, e in sources
    }
    for parent, score in fused_recall(lm, model, probes, "combined", progress).items():
        recall[parent]["combined"] = score
    method = method_name(len(folders), consolidated=False)
    consolidation: dict[str, Any] | None = None
    union = list({r.id: r for records in facts.values() for r in records}.values())
    examples = build_examples(lm, union)[0] if mode == "consolidate" else []
    if examples:  # none when every memory the parents learned was forgotten or deleted
        replay = replay_examples(lm)
        started = time.perf_counter()
        steps, loss = consolidate_adapter(lm, model, examples, replay, progress=progress)
        method = method_name(len(folders), consolidated=True)
        consolidation = {
            "epochs": CONSOLIDATE_EPOCHS,
            "lr": CONSOLIDATE_LR,
            "steps": steps,
            "examples": len(examples),
            "final_loss": round(loss, 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        for parent, score in fused_recall(lm, model, probes, "consolidated", progress).items():
            recall[parent]["consolidated"] = score
    save_combined(model, folder, lm.name)
    return method, recall, consolidation


def fused_recall(
    lm: Any, model: Any, probes: dict[str, list[Any]], stage: str, progress: Progress | None
) -> dict[str, float]:
    """Closed-book recall of each parent's probes with ``model`` (distill's measure)."""
    from memos_cli.engine.parametric.evaluation import measure_recall

    adapted = replace(lm, model=model, fingerprint=f"{lm.fingerprint}+fuse-{stage}")
    return {
        parent: round(
            measure_recall(adapted, questions, stage=f"recall {stage} ({parent})", progress=progress).exact, 4
        )
        for parent, questions in probes.items()
    }
