"""A sharded index's shards on disk, read so that no process holds the whole vectors matrix.

A shard lives in folder ``<index>/shards/<5-digit number>/``: ``lexical/`` (its postings), ``hnsw.bin``
(its graph, if any) and ``shard.json`` (``{start, rows, hnsw_rows}``, written last). Its vectors are its
row range of the index's append-only ``vectors.f32``, never copied: the loader maps the file read-only
(``MappedRows``), so a page of vectors is read when a query first touches it and is dropped from the
process again when the shard is done with the query (``Shard.release``). Resident memory is then about one
shard's vectors however large the index is; the page cache (the kernel's, reclaimable) may keep the rest.

A shard actor on a Ray cluster (engine/shard_actors.py) loads its shard where it is (``open_source``: the
files the driver saw, on the same machine or shared storage; its vectors mapped), so the driver reads no
vectors at all. Where the actor cannot see them, ``pack_shard`` reads that one shard's files and vector
rows as bytes on the driver (one shard at a time, never the matrix) and ``unpack_shard`` loads them on
the actor, through the same checks as a shard loaded from the cube.

Every file access goes through cube.io, relative to a trusted root (no link followed, regular files only).
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.cube import io
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.engine.plaintext.shards import GraphSettings, Shard
from memos_cli.errors import InvalidCube, UnsafePath

SHARDS_DIR = "shards"
SHARD_META = "shard.json"
GRAPH_FILE = "hnsw.bin"
VECTORS_FILE = "vectors.f32"
_MAX_SHARD_META = 1 << 16


def shard_rel(index_rel: str, number: int) -> str:
    return f"{index_rel}/{SHARDS_DIR}/{number:05d}"


# ---------------------------------------------------------------------------------- the vectors
class MappedRows:
    """Rows ``0 .. rows - 1`` of a float32 vectors file, mapped read-only: ``array`` is a view of the file
    (nothing is read until it is used), and ``release`` drops a row range's pages from this process."""

    def __init__(self, root: Path, rel: str, rows: int, dim: int) -> None:
        self.row_bytes = dim * 4
        self.size = rows * self.row_bytes
        self._map: mmap.mmap | None = None
        if not self.size:
            self.array = np.zeros((rows, dim), dtype=np.float32)
            return
        with io.open_read(root, rel) as handle:  # confined: a regular file, no link followed
            if os.fstat(handle.fileno()).st_size < self.size:
                raise ValueError(f"{rel} is shorter than its {rows} rows")
            self._map = mmap.mmap(handle.fileno(), self.size, access=mmap.ACCESS_READ)
        self.array = np.frombuffer(self._map, dtype=np.float32, count=rows * dim).reshape(rows, dim)

    def release(self, start: int, stop: int) -> None:
        """Drop rows ``start .. stop - 1`` from this process's memory (the next use reads them again)."""
        if self._map is None or not hasattr(self._map, "madvise") or stop <= start:
            return
        first = start * self.row_bytes // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(stop * self.row_bytes, self.size)
        if end > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, end - first)


def read_rows(root: Path, rel: str, start: int, count: int, dim: int) -> bytes:
    """The bytes of rows ``start .. start + count - 1`` of a vectors file (ValueError if it is short)."""
    size = count * dim * 4
    with io.open_read(root, rel) as handle:
        handle.seek(start * dim * 4)
        data = handle.read(size)
    if len(data) != size:
        raise ValueError(f"{rel} is shorter than its rows")
    return data


# ---------------------------------------------------------------------------------- the shard's folder
def save_shard(root: Path, rel: str, shard: Shard, *, lexical: bool = True, graph: bool = False) -> None:
    """Write the shard's postings (and graph), then ``shard.json``: a shard cut off between the two is
    found inconsistent by ``load_shard`` and rebuilt (derived data)."""
    io.mkdirs(root, rel)
    if lexical:
        shard.lexical.save_to(root, f"{rel}/lexical")
    if graph and shard.hnsw is not None:
        tmp = f"{GRAPH_FILE}.{os.getpid()}.tmp"
        io.remove(root, f"{rel}/{tmp}")  # whatever was there (a link included) goes: hnswlib opens by name
        if io.kind(root, rel) != "dir":
            raise UnsafePath(root, rel, "is not a folder")
        shard.hnsw.save_index(str(root / rel / tmp))
        with io.open_read(root, f"{rel}/{tmp}") as handle:
            os.fsync(handle.fileno())
        io.rename(root, f"{rel}/{tmp}", f"{rel}/{GRAPH_FILE}")
    meta = {"start": shard.start, "rows": len(shard), "hnsw_rows": shard.hnsw_rows}
    io.atomic_write(root, f"{rel}/{SHARD_META}", json.dumps(meta, sort_keys=True).encode())


def load_shard(
    root: Path, rel: str, start: int, vectors: np.ndarray, graph: GraphSettings, pages: MappedRows | None = None
) -> Shard | None:
    """The shard saved at ``rel`` if it holds exactly rows ``start .. start + len(vectors) - 1``; None if
    it is missing, another range, inconsistent, a link or too large (the caller rebuilds it). ``vectors``
    are its rows (a view of ``pages`` when mapped); its graph is loaded when a query first needs it."""
    try:
        meta = json.loads(io.read_bytes(root, f"{rel}/{SHARD_META}", limit=_MAX_SHARD_META) or b"")
        if not isinstance(meta, dict) or meta.get("start") != start or meta.get("rows") != len(vectors):
            return None
        hnsw_rows = meta.get("hnsw_rows", 0)
        if not isinstance(hnsw_rows, int) or not 0 <= hnsw_rows <= len(vectors):
            return None
        lexical = LexicalIndex.load_from(root, f"{rel}/lexical")
    except (OSError, ValueError, KeyError, TypeError, RecursionError, InvalidCube):
        return None
    if len(lexical) != len(vectors):
        return None
    at = f"{rel}/{GRAPH_FILE}"
    if not hnsw_rows or not _plausible_graph(root, at, hnsw_rows, vectors.shape[1], graph):
        return Shard(start, vectors, lexical, pages=pages)
    dim = vectors.shape[1]
    return Shard(
        start,
        vectors,
        lexical,
        hnsw_rows=hnsw_rows,
        pages=pages,
        load_graph=lambda: _load_graph(root, at, hnsw_rows, dim, graph),
    )


def _plausible_graph(root: Path, rel: str, count: int, dim: int, settings: GraphSettings) -> bool:
    """Whether ``rel`` is a plain file no larger than ``count`` elements can need (checked before the
    graph is loaded: a stranger's file never makes hnswlib allocate beyond that)."""
    st = io.lstat(root, rel)
    # An element is its vector, its label and its level-0 links (2M); upper levels add ~1/M of that.
    bound = count * (dim * 4 + 8 + 4 + 2 * settings.m * 4) * 2 + (1 << 20)
    return st is not None and io.kind(root, rel) == "file" and st.st_size <= bound


def _load_graph(root: Path, rel: str, count: int, dim: int, settings: GraphSettings) -> Any:
    """The graph at ``rel`` if it is a plain file of a plausible size holding ``count`` elements, else None."""
    import hnswlib

    if not _plausible_graph(root, rel, count, dim, settings):
        return None
    graph = hnswlib.Index(space="ip", dim=dim)
    try:
        graph.load_index(str(root / rel), max_elements=max(count, 1))
    except (RuntimeError, OSError, ValueError):
        return None
    if graph.get_current_count() != count:
        return None
    graph.set_ef(settings.ef)
    return graph


# ---------------------------------------------------------------------------------- to a shard actor
@dataclass
class ShardSource:
    """Where a shard actor finds shard ``number`` of the index folder ``root/index_rel`` itself, and what
    the files looked like to the driver (``identity``): an actor on a node that sees other files there, or
    none, refuses to load (``open_source`` gives None) and is sent the shard's bytes instead."""

    root: str
    index_rel: str
    number: int
    start: int
    rows: int
    dim: int
    identity: list[tuple[str, int, int, int]]  # (name, inode, size, mtime_ns) of the shard's files


def locate_shard(root: Path, index_rel: str, number: int, shard: Shard) -> ShardSource:
    rel = shard_rel(index_rel, number)
    return ShardSource(
        str(root), index_rel, number, shard.start, len(shard), shard.vectors.shape[1], _identity(root, rel)
    )


def _identity(root: Path, rel: str) -> list[tuple[str, int, int, int]]:
    out = []
    for name in io.check_tree(root, rel):
        st = io.lstat(root, name)
        if st is not None:
            out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return out


def open_source(source: ShardSource, graph: GraphSettings) -> Shard | None:
    """The shard ``source`` names, read where it is (its vectors mapped, its graph loaded now), if its files
    are the ones the driver saw; None otherwise (another node without them, or they changed)."""
    root, rel = Path(source.root), shard_rel(source.index_rel, source.number)
    try:
        if not root.is_dir() or _identity(root, rel) != source.identity:
            return None
        pages = MappedRows(root, f"{source.index_rel}/{VECTORS_FILE}", source.start + source.rows, source.dim)
    except (OSError, ValueError, InvalidCube):
        return None
    vectors = pages.array[source.start :]
    shard = load_shard(root, rel, source.start, vectors, graph, pages)
    if shard is not None:
        shard.hnsw  # noqa: B018 - loaded once, with the shard
    return shard


@dataclass
class PackedShard:
    """One shard as bytes, for a process that cannot read the cube (a Ray actor on another node)."""

    start: int
    rows: int
    dim: int
    files: dict[str, bytes]  # the shard folder's files, by name relative to it
    vectors: bytes


def pack_shard(root: Path, index_rel: str, number: int, shard: Shard) -> PackedShard:
    """Read shard ``number``'s files and its rows of ``vectors.f32`` (only those) as bytes."""
    rel = shard_rel(index_rel, number)
    files = {name[len(rel) + 1 :]: io.read_bytes(root, name) or b"" for name in io.check_tree(root, rel)}
    dim = shard.vectors.shape[1]
    vectors = read_rows(root, f"{index_rel}/{VECTORS_FILE}", shard.start, len(shard), dim)
    return PackedShard(shard.start, len(shard), dim, files, vectors)


def unpack_shard(packed: PackedShard, graph: GraphSettings) -> Shard:
    """The shard from ``pack_shard``'s bytes, loaded by ``load_shard`` from a private temporary folder
    (its graph loaded now, so the folder can go). ValueError if it does not load."""
    vectors = np.frombuffer(packed.vectors, dtype=np.float32).reshape(packed.rows, packed.dim)
    folder = Path(tempfile.mkdtemp(prefix="memos-shard-"))
    try:
        for name, data in packed.files.items():
            io.check_rel(name)
            io.mkdirs(folder, str(Path("s", name).parent))
            io.write_new(folder, f"s/{name}", data)
        shard = load_shard(folder, "s", packed.start, vectors, graph)
        if shard is None:
            raise ValueError(f"the shard of rows from {packed.start} does not load")
        shard.hnsw  # noqa: B018 - load the graph while its file is here
        return shard
    finally:
        shutil.rmtree(folder, ignore_errors=True)
