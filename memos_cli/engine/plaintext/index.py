"""The derived retrieval index under ``.memos/index/``: vectors, BM25 statistics and an hnswlib graph.

Nothing here is required from git: a fresh clone has no index, and the first query builds it (with a
progress bar). The index is kept in step with ``memories.jsonl`` incrementally:

- one *row* per distinct indexed content (the exact texts embedded and BM25-indexed); rows are only
  appended, so vectors and keys are append-only files, and a memory whose text is unchanged by a new
  version (forget, a tag edit) keeps its row and its embedding;
- ``current.json`` maps each memory id to the row of its current version;
- ``meta.json`` names how many rows are valid and which state of ``memories.jsonl`` the index
  reflects (size, mtime, sha256), so staleness costs one ``stat``. It is written on both sides of
  ``current.json``: first with the new row count and no claim on the records, last with the claim, so
  a writer killed at any point leaves an index that is consistent and at worst behind;
- the hnswlib graph may lag behind the rows: rows past ``hnsw_rows`` are scored exactly, and are
  folded into the graph once the tail grows (saving the graph rewrites it, so it is not done per ingest).

All index reads and writes hold ``.memos/index.lock`` (separate from the cube's write lock, so queries
never wait for a long ingest's embedding work).

Why one module of ~590 lines: ``CubeIndex`` writes and checks its files (vectors, keys, rows, BM25,
graph, current.json, meta.json) together, in the order the paragraph above depends on; where the index
lives is index_location.py, purging text from it scrub.py, shards shards.py/sharded.py/shard_store.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from memos_cli.config import index_shard_rows, lock_timeout
from memos_cli.cube import io
from memos_cli.cube.bundle import Cube, CubeState
from memos_cli.cube.io import append_bytes, atomic_write_text
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.plaintext import ranking, shard_store
from memos_cli.engine.plaintext import shards as shards_mod
from memos_cli.engine.plaintext.index_location import index_location
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.engine.plaintext.sharded import ShardedIndex
from memos_cli.errors import IncompatibleModel, InvalidCube, LockTimeout

MAX_META_BYTES = 1 << 20

INDEX_VERSION = 2  # 2: vectors of the bare text (ranking.embed_rows)
HNSW_MIN_ROWS = 20_000  # below this, exact scoring is as fast as the graph and always exact
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
HNSW_EF = 128


@dataclass
class IndexMeta:
    version: int
    embedder: str
    dim: int
    rows: int
    hnsw_rows: int
    records_size: int
    records_mtime_ns: int
    shard_rows: int = 0  # rows per shard (engine/plaintext/sharded.py); 0: one unsharded index

    @classmethod
    def empty(cls, embedder: str, dim: int) -> IndexMeta:
        return cls(INDEX_VERSION, embedder, dim, 0, 0, -1, -1)


def graph_settings() -> shards_mod.GraphSettings:
    """The hnswlib settings, for the unsharded graph and each shard's alike."""
    return shards_mod.GraphSettings(HNSW_MIN_ROWS, HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF)


@dataclass
class Unsharded:
    """What ranks an unsharded index: ``ranking.rank`` over its inputs and graph (``CubeIndex.ranker``)."""

    inputs: ranking.RankInputs
    ann: Callable[[np.ndarray, int], np.ndarray] | None

    def rank(
        self,
        query: str,
        query_vec: np.ndarray,
        *,
        k: int,
        mode: str = "hybrid",
        mask: np.ndarray | None = None,
        settings: ranking.RankSettings = ranking.DEFAULT_SETTINGS,
        periods: list[tuple[str, str]] | None = None,
    ) -> list[tuple[int, float]]:
        return ranking.rank(
            self.inputs, query, query_vec, k=k, mode=mode, mask=mask, ann=self.ann, settings=settings, periods=periods
        )


Ranker = Unsharded | ShardedIndex


def row_for(record: MemoryRecord) -> ranking.Row:
    return ranking.Row(
        text=record.text,
        speaker=record.speaker,
        time=record.time,
        source=record.source,
        source_id=record.source_id,
        type=record.type,
        tags=list(record.tags),
        event=record.event_time,
    )


def row_key(row: ranking.Row) -> str:
    """Identity of what a row indexes: rows are reused exactly when these texts are unchanged."""
    payload = ranking.embed_text(row) + "\x1e" + ranking.lexical_text(row)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


# embeds rows (ranking.embed_rows), calling the tick with the count of texts done after each batch
EmbedFn = Callable[[list[ranking.Row], Callable[[int], None]], np.ndarray]


class CubeIndex:
    """The loaded index of one cube, in step with a given ``CubeState``."""

    def __init__(self, cube: Cube, dim: int, embedder_name: str) -> None:
        self.cube = cube
        # The index is the folder ``root/rel``: .memos/index of the cube, or MEMOS_HOME's cache for a
        # read-only cube (index_location). Every access goes through cube.io, relative to ``root``.
        self.root, self.rel = index_location(cube)
        self.dir = self.root / self.rel
        self.meta = IndexMeta.empty(embedder_name, dim)
        self.keys: list[str] = []
        self.rows: list[ranking.Row] = []
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.lexical = LexicalIndex()
        self.current: dict[str, int] = {}
        self.hnsw: Any = None
        self._inputs: ranking.RankInputs | None = None
        # Sharded layout (meta.shard_rows > 0): the shards replace the global postings and graph.
        self.shards: list[shards_mod.Shard] = []
        self._sharded: ShardedIndex | None = None
        # Sharded, the vectors are mapped, not read (shard_store.MappedRows): each shard's rows are paged
        # in when a query uses them and released after, so no step holds the whole matrix.
        self.pages: shard_store.MappedRows | None = None

    # ------------------------------------------------------------------ loading
    @property
    def lock(self) -> FileLock:
        if self.root == self.cube.path:
            lock = self.cube.file_lock("index.lock")
        else:
            lock = FileLock(str(self.root / "index.lock"))
        lock.timeout = lock_timeout()
        return lock

    def _subdir(self, sub: str = "") -> None:
        """Create the index folder (or ``sub`` in it), following no link."""
        io.mkdirs(self.root, f"{self.rel}/{sub}" if sub else self.rel)

    def _read(self, name: str, limit: int | None = None) -> bytes:
        data = io.read_bytes(self.root, f"{self.rel}/{name}", limit=limit)
        assert data is not None
        return data

    def _load(self) -> bool:
        """Load what is on disk; False if there is nothing usable (then the caller rebuilds): a link or
        special file in the index is unusable too (it is derived data: the rebuild removes it)."""
        try:
            return self._load_checked()
        except InvalidCube:
            return False

    def _load_checked(self) -> bool:
        try:
            meta = IndexMeta(**json.loads(self._read("meta.json", MAX_META_BYTES)))
        except (OSError, ValueError, TypeError):
            return False
        if meta.version != INDEX_VERSION or meta.embedder != self.meta.embedder or meta.dim != self.meta.dim:
            return False
        if not all(isinstance(v, int) and v >= 0 for v in (meta.rows, meta.dim, meta.hnsw_rows, meta.shard_rows)):
            return False
        n = meta.rows
        try:
            if meta.shard_rows:
                self.pages = shard_store.MappedRows(self.root, f"{self.rel}/{shard_store.VECTORS_FILE}", n, meta.dim)
                vectors = self.pages.array
            else:
                with io.open_read(self.root, f"{self.rel}/{shard_store.VECTORS_FILE}") as raw:
                    vectors = np.fromfile(raw, dtype=np.float32, count=n * meta.dim)
            keys = self._read("keys.txt").decode("utf-8").split("\n")[:n]
            lines = self._read("rows.jsonl").decode("utf-8").split("\n")
            rows = [ranking.Row(**json.loads(lines[i])) for i in range(n)]
            current = json.loads(self._read("current.json"))
        except (OSError, ValueError, TypeError, IndexError, RecursionError):  # derived: rebuilt
            return False
        if vectors.size != n * meta.dim or len(keys) != n:
            return False
        self.meta, self.keys, self.rows, self.current = meta, keys, rows, current
        self.vectors = vectors.reshape(n, meta.dim)
        if meta.shard_rows:
            self.meta.hnsw_rows = 0
            self._load_shards()
            return True
        try:
            self._subdir("lexical")
            lexical = LexicalIndex.load(self.dir / "lexical")
            if len(lexical) != n:
                raise ValueError("lexical rows differ")
        except (OSError, ValueError, KeyError):
            lexical = LexicalIndex()
            lexical.add([ranking.lexical_text(r) for r in rows])
            self._subdir("lexical")
            lexical.save(self.dir / "lexical")
        self.lexical = lexical
        self.hnsw = None
        if meta.hnsw_rows:
            self.hnsw = self._load_hnsw(meta.hnsw_rows)
            if self.hnsw is None:
                self.meta.hnsw_rows = 0
        return True

    # ------------------------------------------------------------------ shards
    @property
    def sharded(self) -> ShardedIndex | None:
        """The coordinator over the shards (None when the index is unsharded)."""
        if not self.meta.shard_rows:
            return None
        if self._sharded is None:
            self._sharded = ShardedIndex(self.rows, self.shards, source=(self.root, self.rel))
        return self._sharded

    def _shard_rel(self, number: int) -> str:
        return shard_store.shard_rel(self.rel, number)

    def _load_shards(self) -> None:
        """Load every shard; one that is missing, cut off by a crash or damaged is rebuilt from the rows
        (no embedding: its vectors are its rows' range of vectors.f32), and anything else under
        ``shards/`` (and an unsharded layout's postings and graph) is removed."""
        per, n = self.meta.shard_rows, self.meta.rows
        graph = graph_settings()
        self.shards = []
        for number, start in enumerate(range(0, n, per)):
            vectors = self.vectors[start : min(start + per, n)]
            shard = shard_store.load_shard(self.root, self._shard_rel(number), start, vectors, graph, self.pages)
            if shard is None:
                shard = shards_mod.build_shard(self.vectors, self.rows, start, per, self.pages)
                self._save_shard(number, shard)
            self.shards.append(shard)
        self._drop_extra_shards()
        for name in ("lexical", "hnsw.bin"):
            io.remove(self.root, f"{self.rel}/{name}")
        self._sharded = None

    def _save_shard(self, number: int, shard: shards_mod.Shard, *, lexical: bool = True, graph: bool = False) -> None:
        rel = self._shard_rel(number)
        if io.kind(self.root, rel) not in (None, "dir"):
            io.remove(self.root, rel)  # a link or file in a shard's place: derived, removed, never followed
        shard_store.save_shard(self.root, rel, shard, lexical=lexical, graph=graph)

    def _drop_extra_shards(self) -> None:
        folder = f"{self.rel}/{shard_store.SHARDS_DIR}"
        kind = io.kind(self.root, folder)
        if kind is None:
            return
        if kind != "dir":
            io.remove(self.root, folder)
            return
        wanted = {f"{i:05d}" for i in range(len(self.shards))}
        for name in io.listdir(self.root, folder):
            if name not in wanted:
                io.remove(self.root, f"{folder}/{name}")

    def relayout(self, shard_rows: int) -> None:
        """Switch to ``shard_rows`` rows per shard (0: unsharded), from the rows and vectors at hand: nothing
        is embedded again. The new meta.json is written by the next ``sync``; until then a crash leaves the
        old layout's meta, whose missing parts the loader rebuilds."""
        if shard_rows == self.meta.shard_rows:
            return
        self._subdir()
        io.remove(self.root, f"{self.rel}/{shard_store.SHARDS_DIR}")
        for name in ("lexical", "hnsw.bin"):
            io.remove(self.root, f"{self.rel}/{name}")
        self.meta.shard_rows, self.meta.hnsw_rows = shard_rows, 0
        self.hnsw, self._inputs, self._sharded, self.shards = None, None, None, []
        if shard_rows:
            self.lexical = LexicalIndex()
            self._load_shards()
        else:
            self.pages = None  # the vectors stay as they are (mapped or read); only shards release pages
            self.lexical = LexicalIndex()
            self.lexical.add([ranking.lexical_text(r) for r in self.rows])
            self._subdir("lexical")
            self.lexical.save(self.dir / "lexical")

    def _extend_shards(self, first: int) -> None:
        """Fold rows ``first ..`` into the shards: the last shard is filled up (its postings extended
        and saved), then new shards are cut; full shards are not touched."""
        per, n = self.meta.shard_rows, len(self.rows)
        for shard in self.shards:  # re-point every shard at the grown vectors array
            shard.vectors, shard.pages = self.vectors[shard.start : shard.end], self.pages
        if self.shards and len(self.shards[-1]) < per:
            last = self.shards[-1]
            end = min(last.start + per, n)
            if end > last.end:
                last.lexical.add([ranking.lexical_text(r) for r in self.rows[last.end : end]])
                last.vectors = self.vectors[last.start : end]
                self._save_shard(len(self.shards) - 1, last)
        start = self.shards[-1].end if self.shards else 0
        while start < n:
            shard = shards_mod.build_shard(self.vectors, self.rows, start, per, self.pages)
            self.shards.append(shard)
            self._save_shard(len(self.shards) - 1, shard)
            start = shard.end
        self._sharded = None

    def _load_hnsw(self, count: int) -> Any:
        import hnswlib

        graph = hnswlib.Index(space="ip", dim=self.meta.dim)
        if io.kind(self.root, f"{self.rel}/hnsw.bin") != "file":
            return None
        try:
            graph.load_index(str(self.dir / "hnsw.bin"), max_elements=max(count, 1))
        except (RuntimeError, OSError):
            return None
        if graph.get_current_count() != count:
            return None
        graph.set_ef(HNSW_EF)
        return graph

    # ------------------------------------------------------------------ syncing
    def fresh_for(self, cube_file: Path) -> bool:
        try:
            stat = cube_file.stat()
        except FileNotFoundError:
            return self.meta.records_size == 0
        return stat.st_size == self.meta.records_size and stat.st_mtime_ns == self.meta.records_mtime_ns

    def sync(
        self,
        state: CubeState,
        embed: Callable[[], EmbedFn],
        *,
        known_vectors: dict[str, np.ndarray] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Bring the index in step with ``state``; returns the number of rows embedded.

        ``embed`` is a factory, called only if something must be embedded (so a query on a fresh
        index never loads the embedder for the index's sake).
        ``known_vectors`` maps row keys to vectors already computed (by ingest), to skip re-embedding.
        """
        wanted: dict[str, int] = {}
        new_rows: list[ranking.Row] = []
        new_keys: list[str] = []
        key_to_row = {k: i for i, k in enumerate(self.keys)}
        for memory_id, record in state.current.items():
            if record.status == "deleted":
                continue
            row = row_for(record)
            key = row_key(row)
            index = key_to_row.get(key)
            if index is None:
                index = len(self.keys) + len(new_keys)
                key_to_row[key] = index
                new_rows.append(row)
                new_keys.append(key)
            wanted[memory_id] = index
        embedded = 0
        if new_rows:
            vectors = np.zeros((len(new_rows), self.meta.dim), dtype=np.float32)
            missing = []
            for i, key in enumerate(new_keys):
                vector = (known_vectors or {}).get(key)
                if vector is None:
                    missing.append(i)
                else:
                    vectors[i] = vector
            if missing:
                fn = embed()
                todo = [new_rows[i] for i in missing]
                done = 0

                def tick(count: int) -> None:
                    nonlocal done
                    done += count
                    if progress is not None:
                        progress(min(done, len(todo)), len(todo))

                vectors[missing] = fn(todo, tick)
                embedded = len(missing)
            self._append_rows(new_rows, new_keys, vectors)
        self.current = wanted
        self._maybe_extend_hnsw()
        self._write_meta(state)
        self._inputs = None
        return embedded

    def _append_rows(self, rows: list[ranking.Row], keys: list[str], vectors: np.ndarray) -> None:
        self._subdir()
        n = self.meta.rows
        # Drop anything a crashed writer appended past the valid rows before appending ours.
        _truncate(self.dir / "vectors.f32", n * self.meta.dim * 4)
        for name in ("keys.txt", "rows.jsonl"):
            _truncate_lines(self.dir / name, n)
        append_bytes(self.dir / "vectors.f32", np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        append_bytes(self.dir / "keys.txt", "".join(k + "\n" for k in keys).encode())
        append_bytes(
            self.dir / "rows.jsonl",
            "".join(json.dumps(vars(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8"),
        )
        if self.meta.shard_rows:  # mapped again, grown: the rows written are not kept in memory
            self.pages = shard_store.MappedRows(
                self.root, f"{self.rel}/{shard_store.VECTORS_FILE}", n + len(rows), self.meta.dim
            )
            self.vectors = self.pages.array
        else:
            self.vectors = np.concatenate([self.vectors, vectors]) if n else vectors.copy()
        self.keys.extend(keys)
        self.rows.extend(rows)
        if self.meta.shard_rows:
            self._extend_shards(n)
        else:
            self.lexical.add([ranking.lexical_text(r) for r in rows])
            self._subdir("lexical")
            self.lexical.save(self.dir / "lexical")
        self.meta.rows = len(self.keys)

    def _maybe_extend_hnsw(self) -> None:
        if self.meta.shard_rows:  # each shard's own graph, by the same rule
            graph = graph_settings()
            for number, shard in enumerate(self.shards):
                if shard.extend_graph(graph):
                    self._save_shard(number, shard, lexical=False, graph=True)
            return
        total = self.meta.rows
        tail = total - self.meta.hnsw_rows
        if total < HNSW_MIN_ROWS or tail < max(1000, total // 20):
            return
        import hnswlib

        if self.hnsw is None or self.meta.hnsw_rows == 0:
            graph = hnswlib.Index(space="ip", dim=self.meta.dim)
            graph.init_index(max_elements=total, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=42)
            start = 0
        else:
            graph = self.hnsw
            graph.resize_index(total)
            start = self.meta.hnsw_rows
        graph.add_items(self.vectors[start:total], np.arange(start, total))
        graph.set_ef(HNSW_EF)
        self._subdir()
        tmp = f"hnsw.bin.{os.getpid()}.tmp"
        io.remove(self.dir, tmp)  # whatever was there (a link included) goes: hnswlib opens by name
        graph.save_index(str(self.dir / tmp))
        with io.open_read(self.dir, tmp) as handle:
            os.fsync(handle.fileno())
        io.rename(self.dir, tmp, "hnsw.bin")
        self.hnsw = graph
        self.meta.hnsw_rows = total

    def _write_meta(self, state: CubeState) -> None:
        try:
            stat = self.cube.memories_path.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None and stat.st_size == state.size:
            self.meta.records_size, self.meta.records_mtime_ns = stat.st_size, stat.st_mtime_ns
        else:  # the file moved on (or is mid-transaction): record nothing, the next open re-checks
            self.meta.records_size, self.meta.records_mtime_ns = -1, -1
        self._subdir()
        # Three writes, so that a writer killed between any two leaves an index that is at worst behind:
        # the row count first, claiming no records (current.json may point only into rows that exist),
        # then the mapping into those rows, then the claim that they match the records.
        meta = asdict(self.meta)
        unclaimed = {**meta, "records_size": -1, "records_mtime_ns": -1}
        atomic_write_text(self.dir / "meta.json", json.dumps(unclaimed, sort_keys=True))
        atomic_write_text(self.dir / "current.json", json.dumps(self.current, sort_keys=True))
        atomic_write_text(self.dir / "meta.json", json.dumps(meta, sort_keys=True))

    # ------------------------------------------------------------------ ranking
    def inputs(self) -> ranking.RankInputs:
        if self._inputs is None:
            self._inputs = ranking.RankInputs(
                vectors=self.vectors,
                lexical=self.lexical,
                rows=self.rows,
                structure=ranking.structure(self.rows),
            )
        return self._inputs

    def ranker(self) -> Ranker:
        """What ranks this index: the sharded coordinator, or ``ranking.rank`` over the whole index."""
        sharded = self.sharded
        if sharded is not None:
            return sharded
        return Unsharded(self.inputs(), self.ann())

    def ann(self) -> Callable[[np.ndarray, int], np.ndarray] | None:
        """Approximate dense candidates: the hnswlib graph plus an exact scan of the rows not in it."""
        if self.hnsw is None:
            return None
        graph, start, vectors = self.hnsw, self.meta.hnsw_rows, self.vectors

        def candidates(query_vec: np.ndarray, n: int) -> np.ndarray:
            labels, _ = graph.knn_query(query_vec.reshape(1, -1), k=min(n, start))
            found = labels[0].astype(np.int64)
            if start < len(vectors):
                tail = vectors[start:] @ query_vec
                take = min(n, len(tail))
                best = np.argpartition(-tail, take - 1)[:take] + start
                found = np.concatenate([found, best])
            return np.asarray(found)

        return candidates


def open_index(
    cube: Cube,
    state: CubeState,
    embedder_factory: Callable[[], Any],
    *,
    dim: int,
    embedder_name: str,
    known_vectors: dict[str, np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
    any_embedder: bool = False,
    shard_rows: int | None = None,
) -> CubeIndex:
    """Load the cube's index and bring it in step with ``state`` (building it if missing or stale).

    A cube whose manifest names another embedder is refused unless ``any_embedder`` (fuse --reembed):
    its index is then rebuilt with this one. ``shard_rows`` (default: ``MEMOS_INDEX_SHARD_ROWS`` or
    config.yaml ``index_shard_rows``) sets the layout: that many rows per shard, 0 unsharded, None the
    layout the index has (a new index: unsharded). A change of layout embeds nothing."""
    if shard_rows is None:
        shard_rows = index_shard_rows()
    expected = cube.manifest.embedder
    if not any_embedder and expected and expected.get("fingerprint") not in (None, embedder_name):
        raise IncompatibleModel(
            f"cube {cube.path}",
            str(expected.get("fingerprint")),
            embedder_name,
            hint="use the embedder the cube was built with (MEMOS_EMBEDDER), or re-embed it",
        )
    index = CubeIndex(cube, dim, embedder_name)
    try:
        with index.lock:
            loaded = index._load()
            layout_ok = shard_rows is None or shard_rows == index.meta.shard_rows
            if loaded and layout_ok and index.meta.records_size == state.size and index.fresh_for(cube.memories_path):
                return index
            if not loaded:
                index = CubeIndex(cube, dim, embedder_name)
                clear_index_dir(index.dir)
            if shard_rows is not None:
                index.relayout(shard_rows)

            def factory() -> EmbedFn:
                embedder = embedder_factory()
                return lambda rows, tick: ranking.embed_rows(rows, lambda texts: embedder.encode(texts, progress=tick))

            index.sync(state, factory, known_vectors=known_vectors, progress=progress)
    except Timeout:
        raise LockTimeout(index.dir, lock_timeout()) from None
    return index


def _truncate(path: Path, size: int) -> None:
    io.truncate(path.parent, path.name, size)


def _truncate_lines(path: Path, lines: int) -> None:
    data = io.read_bytes(path.parent, path.name, missing_ok=True)
    if data is None:
        return
    offset = 0
    for _ in range(lines):
        offset = data.index(b"\n", offset) + 1
    _truncate(path, offset)


def clear_index_dir(directory: Path) -> None:
    """Empty the index folder; a link or file in its place is removed (never followed)."""
    root, rel = directory.parent.parent, f"{directory.parent.name}/{directory.name}"
    if io.kind(root, rel) not in (None, "dir"):
        io.remove(root, rel)
        return
    # meta.json first: without it there is no index (the loader and verify both say so), whatever else
    # a stop between two removals leaves behind.
    for name in sorted(io.listdir(root, rel), key=lambda n: n != "meta.json"):
        io.remove(root, f"{rel}/{name}")
