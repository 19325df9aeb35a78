"""fuse's plaintext part: the parents' vectors, and duplicates across parents stored once (the same
text) or merged (near-duplicates by cosine), every version kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from memos_cli.cube.bundle import Cube
from memos_cli.cube.records import MemoryRecord, normalise_text
from memos_cli.engine.distributed import RayEngine
from memos_cli.engine.embedding import EmbedderHandle
from memos_cli.engine.plaintext.index import open_index, row_for, row_key


def provenance(record: MemoryRecord, cube: str) -> dict[str, Any]:
    return {
        k: v
        for k, v in {"cube": cube, "id": record.id, "source": record.source, "source_id": record.source_id}.items()
        if v is not None
    }


def parent_vectors(
    parents: list[Cube],
    states: list[Any],
    embedder: EmbedderHandle,
    engine: RayEngine | None,
    indexing: Callable[[int, int], None] | None,
    reembed: bool,
) -> dict[str, np.ndarray]:
    """Vectors of every current memory, from the parents' indexes (embedding only what is missing)."""
    ident = embedder.identity
    vectors: dict[str, np.ndarray] = {}
    for parent, state in zip(parents, states, strict=True):
        if engine is not None:
            engine.stage_in(parent.path)
        index = open_index(
            parent,
            state,
            embedder.load,
            dim=ident.dim,
            embedder_name=ident.fingerprint,
            progress=indexing,
            any_embedder=reembed,
        )
        for row in index.current.values():
            vectors[index.keys[row]] = index.vectors[row]
    return vectors


def store_exact_duplicates_once(
    current: dict[str, MemoryRecord],
    versions: dict[str, list[MemoryRecord]],
    origin: dict[str, str],
    parents: list[Cube],
) -> dict[str, str]:
    """The same text from different sources is stored once (the first parent's), the others named in its
    ``also_from``; returns {dropped memory: the memory that now holds it}."""
    by_text: dict[str, str] = {}
    moved: dict[str, str] = {}
    rank = {p.manifest.name: n for n, p in enumerate(parents)}
    for memory_id in sorted(current, key=lambda i: (rank[origin[i]], current[i].created, i)):  # first parent wins
        record = current[memory_id]
        if record.status == "deleted":
            continue
        text_key = normalise_text(record.text)
        keeper = by_text.get(text_key)
        if keeper is None:
            by_text[text_key] = memory_id
            continue
        kept = current[keeper]
        also = list(kept.metadata.get("also_from", [])) + [provenance(record, origin[memory_id])]
        current[keeper] = replace(kept, metadata={**kept.metadata, "also_from": also})
        moved[memory_id] = keeper
    for memory_id in moved:
        del current[memory_id]
        del versions[memory_id]
    return moved


def near_duplicates(
    current: dict[str, MemoryRecord],
    active: list[str],
    vectors: dict[str, np.ndarray],
    origin: dict[str, str],
    threshold: float,
    dim: int,
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Pairs of active memories from different parents at cosine >= ``threshold`` (and no different
    keys): {older: newer} and a line for each pair, in blocks of 2,048 rows so memory stays bounded."""
    merged_into: dict[str, str] = {}
    pairs: list[dict[str, Any]] = []
    if len(active) < 2 or threshold >= 1:
        return merged_into, pairs
    matrix = np.stack([vectors[row_key(row_for(current[i]))] for i in active]) if active else np.zeros((0, dim))
    names = sorted({origin[i] for i in active})
    parent_of = np.array([names.index(origin[i]) for i in active])
    block = 2048
    for start in range(0, len(active), block):
        sims = matrix[start : start + block] @ matrix.T
        for offset in range(sims.shape[0]):
            i = start + offset
            row = sims[offset]
            row[: i + 1] = -1  # each pair once
            row[parent_of == parent_of[i]] = -1  # within one parent, dedup is ingest's business
            for j in np.nonzero(row >= threshold)[0]:
                a, b = active[i], active[int(j)]
                if a in merged_into or b in merged_into:
                    continue
                if current[a].key and current[b].key and current[a].key != current[b].key:
                    continue  # statements about different subjects are not duplicates
                ra, rb = current[a], current[b]
                newer, older = (a, b) if (ra.time or ra.created, a) >= (rb.time or rb.created, b) else (b, a)
                merged_into[older] = newer
                pairs.append(
                    {
                        "kept": newer,
                        "merged": older,
                        "similarity": round(float(row[j]), 4),
                        "kept_text": current[newer].text[:120],
                        "merged_text": current[older].text[:120],
                    }
                )
    return merged_into, pairs


def merge_near_duplicates(
    current: dict[str, MemoryRecord], merged_into: dict[str, str], origin: dict[str, str], actor: str, now: str
) -> list[MemoryRecord]:
    """The kept memory records what it absorbed (``merged_from``) and keeps a key; the merged one gets a
    ``superseded`` version naming the memory it went into."""
    out = []
    for older, newer in merged_into.items():
        keep = current[newer]
        merged_from = list(keep.metadata.get("merged_from", [])) + [provenance(current[older], origin[older])]
        # the kept memory states what the merged one did: it keeps its key (the key rules still hold)
        current[newer] = replace(
            keep, key=keep.key or current[older].key, metadata={**keep.metadata, "merged_from": merged_from}
        )
        gone = current[older]
        out.append(
            replace(
                gone,
                version=gone.version + 1,
                status="superseded",
                op="fuse",
                actor=actor,
                created=now,
                metadata={**gone.metadata, "merged_into": newer},
            )
        )
    return out
