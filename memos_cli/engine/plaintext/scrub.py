"""``forget --purge``'s share of the index: every derived copy of the purged text removed."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
from filelock import Timeout

from memos_cli.config import lock_timeout
from memos_cli.cube import io
from memos_cli.cube.bundle import Cube
from memos_cli.cube.io import atomic_write_bytes, atomic_write_text
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.plaintext import ranking
from memos_cli.engine.plaintext.index import MAX_META_BYTES, CubeIndex, clear_index_dir, row_for, row_key
from memos_cli.engine.plaintext.index_location import INDEX_REL, readonly_cache_root, safe_id
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.errors import InvalidCube, LockTimeout


def scrub(cube: Cube, purged: list[MemoryRecord], kept: list[MemoryRecord]) -> None:
    """Remove every derived copy of the ``purged`` versions' text from the index (``forget --purge``).

    The rows, vectors and BM25 statistics are rewritten from the rows that stay (no model is needed);
    the hnswlib graph is dropped (rebuilt when the cube is large enough to need it); indexes of this
    cube kept in the read-only cache are removed. A row whose text a ``kept`` version still indexes
    stays (that text is still in the cube). Killed midway, the index is left empty and is rebuilt by
    the next query; the purged text is gone either way. Every access is confined to the cube (cube.io)."""
    import shutil

    for folder in readonly_cache_root().glob(f"{safe_id(cube.manifest.id)}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    if io.kind(cube.path, INDEX_REL) is None:
        return
    doomed_ids = {r.id for r in purged}
    doomed = {row_key(row_for(r)) for r in purged} - {row_key(row_for(r)) for r in kept}
    lock = cube.file_lock("index.lock")
    lock.timeout = lock_timeout()
    directory = cube.path / INDEX_REL
    try:
        with lock:
            try:
                raw = io.read_bytes(cube.path, f"{INDEX_REL}/meta.json", limit=MAX_META_BYTES)
                meta = json.loads(raw or b"")
                index = CubeIndex(cube, int(meta["dim"]), str(meta["embedder"]))
                loaded = index.root == cube.path and index._load()
            except (OSError, ValueError, TypeError, KeyError, InvalidCube, RecursionError):
                loaded = False
            clear_index_dir(
                directory
            )  # every file goes (a link in its place too), torn tails and temporary files included
            if not loaded:
                return  # nothing usable was there: the next query builds the index afresh
            keep = [i for i, key in enumerate(index.keys) if key not in doomed]
            moved = {old: new for new, old in enumerate(keep)}
            rows = [index.rows[i] for i in keep]
            meta_out = {**asdict(index.meta), "rows": 0, "hnsw_rows": 0, "records_size": -1, "records_mtime_ns": -1}
            io.mkdirs(cube.path, f"{INDEX_REL}/lexical")
            atomic_write_bytes(directory / "vectors.f32", np.ascontiguousarray(index.vectors[keep]).tobytes())
            atomic_write_text(directory / "keys.txt", "".join(index.keys[i] + "\n" for i in keep))
            atomic_write_text(
                directory / "rows.jsonl",
                "".join(json.dumps(vars(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
            )
            lexical = LexicalIndex()
            lexical.add([ranking.lexical_text(r) for r in rows])
            lexical.save(directory / "lexical")
            current = {m: moved[row] for m, row in index.current.items() if m not in doomed_ids and row in moved}
            atomic_write_text(directory / "current.json", json.dumps(current, sort_keys=True))
            # meta.json last: until it is written there is no index (the next query builds one, never wrong).
            meta_out["rows"] = len(keep)
            atomic_write_text(directory / "meta.json", json.dumps(meta_out, sort_keys=True))
    except Timeout:
        raise LockTimeout(directory, lock_timeout()) from None
