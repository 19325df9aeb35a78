"""A sharded index, for cubes whose index outgrows one node's memory: the same ranking as unsharded.

Rows are cut into shards by row range. Each shard holds what is heavy and per-row: its vectors, its BM25
postings (a ``LexicalIndex`` of its own rows, numbered from 0) and, past ``index.HNSW_MIN_ROWS`` rows,
its hnswlib graph. What is small and global stays with the coordinator (the driver): the rows'
metadata (speaker, source, time) for the context links (``ranking.structure``) and the speaker boost,
and the global BM25 statistics: the number of documents, their total length and, per term, the sum of
the shards' document frequencies, so every shard scores with the idf and average length of the whole
cube, exactly as the unsharded index does.

A hybrid query is two rounds, so that no shard needs another's data:

1. every shard scores its allowed rows (dense cosine and BM25 with the global statistics) and returns
   the cosines of its allowed rows and the float64 partial sums of the BM25 leg (count, sum, sum of
   squares): the coordinator adds the neighbours' share to each cosine (``ranking.dense_with_context``:
   a neighbour may live in another shard) and adds the partials into the z-score statistics of the
   whole cube (``ranking.moments`` / ``ranking.zscore_from``, which the unsharded ranking uses too);
2. every shard returns the weighted BM25 z-scores of its candidates, which in exact mode are all its
   allowed rows; the coordinator adds them to the dense z-scores, adds the neighbour and episode
   context and the speaker boost (``ranking._with_context``), and takes the top k, ties broken by row id.

Exact mode (every allowed row scored, what ``rank`` does up to ``RankSettings.exact_limit`` rows) gives
the same ranking as the unsharded index; scores agree to float rounding of the statistics. Shards are
plain objects here; on a cluster each would live in one actor (not done yet: see bench/RESULTS.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memos_cli.cube.io import atomic_write_bytes, atomic_write_text
from memos_cli.engine import ranking
from memos_cli.engine.lexical import LexicalIndex, tokenize

SHARDS_DIR = "shards"


@dataclass
class LexicalStats:
    """Global BM25 statistics, from the shards' sums."""

    n_docs: int
    total_length: int
    df: dict[str, int]  # term -> documents containing it, summed over the shards


class Shard:
    """Rows ``start .. start + len(vectors) - 1`` of the index: vectors and BM25 postings (and a graph)."""

    def __init__(self, start: int, vectors: np.ndarray, lexical: LexicalIndex) -> None:
        self.start = start
        self.vectors = vectors
        self.lexical = lexical
        self._legs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # round 1's scores, for round 2

    def __len__(self) -> int:
        return len(self.vectors)

    # ---- global statistics
    def term_counts(self) -> tuple[int, int, dict[str, int]]:
        lex = self.lexical
        return len(lex), int(lex._doc_len.sum()), {t: int(lex._df[i]) for i, t in enumerate(lex._terms)}

    # ---- round 1
    def score(
        self, query: str, q: np.ndarray, mask: np.ndarray, stats: LexicalStats
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, float, float]]:
        """Score the allowed rows; return their global ids, their cosines and the partial sums of the
        BM25 leg."""
        idx = np.flatnonzero(mask)
        dense = ranking._dense(self.vectors, idx, q)
        lex = self._bm25(query, stats)[idx]
        self._legs = (idx, lex)
        return idx + self.start, dense, ranking.moments(lex)

    def _bm25(self, query: str, stats: LexicalStats) -> np.ndarray:
        """``LexicalIndex.scores`` with the global idf and average length (same arithmetic, same order)."""
        lex = self.lexical
        out = np.zeros(len(lex), dtype=np.float32)
        if not stats.n_docs:
            return out
        avgdl = max(float(stats.total_length) / stats.n_docs, 1e-9)
        k1, b = lex.k1, lex.b
        for token in dict.fromkeys(tokenize(query)):
            global_df = stats.df.get(token)
            if global_df is None:
                continue  # unknown to the whole cube: the unsharded index skips it too
            w = float(np.log1p((stats.n_docs - global_df + 0.5) / (global_df + 0.5)))
            tid = lex._vocab.get(token)
            if tid is None:
                continue
            for seg in (lex._main, lex._delta):
                docs, tf = seg.postings(tid)
                if not len(docs):
                    continue
                tf = tf.astype(np.float32)
                norm = k1 * (1.0 - b + b * lex._doc_len[docs] / avgdl)
                out[docs] += np.float32(w * (k1 + 1.0)) * tf / (tf + norm)
        return out

    # ---- round 2
    def lexical_z(self, lex_stats: tuple[int, float, float], weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Global row ids and weighted BM25 z-scores of this shard's candidates (exact mode: all
        allowed rows)."""
        assert self._legs is not None, "round 1 first"
        idx, lex = self._legs
        self._legs = None
        return idx + self.start, weight * ranking.zscore_from(lex, lex_stats)

    # ---- persistence
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / "vectors.f32", np.ascontiguousarray(self.vectors, dtype=np.float32).tobytes())
        self.lexical.save(directory / "lexical")
        atomic_write_text(directory / "shard.json", json.dumps({"start": self.start, "rows": len(self)}))

    @classmethod
    def load(cls, directory: Path, dim: int) -> Shard:
        meta = json.loads((directory / "shard.json").read_text())
        vectors = np.fromfile(directory / "vectors.f32", dtype=np.float32)
        if vectors.size != int(meta["rows"]) * dim:
            raise ValueError(f"shard {directory.name}: vectors do not match shard.json")
        lexical = LexicalIndex.load(directory / "lexical")
        if len(lexical) != int(meta["rows"]):
            raise ValueError(f"shard {directory.name}: postings do not match shard.json")
        return cls(int(meta["start"]), vectors.reshape(-1, dim), lexical)


class ShardedIndex:
    """The coordinator: global row metadata and statistics, and the shards (local objects here)."""

    def __init__(self, rows: list[ranking.Row], shards: list[Shard]) -> None:
        self.rows = rows
        self.shards = shards
        n_docs, length = 0, 0
        df: dict[str, int] = {}
        for shard in shards:
            n, total, counts = shard.term_counts()
            n_docs, length = n_docs + n, length + total
            for term, count in counts.items():
                df[term] = df.get(term, 0) + count
        self.stats = LexicalStats(n_docs, length, df)
        # Rows' metadata only (no vectors, no postings): what the context and the speaker boost need.
        self._meta = ranking.RankInputs(
            vectors=np.zeros((0, shards[0].vectors.shape[1] if shards else 0), dtype=np.float32),
            lexical=LexicalIndex(),
            rows=rows,
            structure=ranking.structure(rows),
        )

    @classmethod
    def split(cls, vectors: np.ndarray, rows: list[ranking.Row], rows_per_shard: int) -> ShardedIndex:
        """Shard an index's rows by range (the BM25 postings of each shard built from its rows)."""
        shards = []
        for start in range(0, len(rows), rows_per_shard):
            part = rows[start : start + rows_per_shard]
            lexical = LexicalIndex()
            lexical.add([ranking.lexical_text(r) for r in part])
            shards.append(Shard(start, np.ascontiguousarray(vectors[start : start + len(part)]), lexical))
        return cls(rows, shards)

    def save(self, directory: Path) -> None:
        for i, shard in enumerate(self.shards):
            shard.save(directory / f"{i:05d}")

    @classmethod
    def load(cls, directory: Path, rows: list[ranking.Row], dim: int) -> ShardedIndex:
        shards = [Shard.load(d, dim) for d in sorted(directory.iterdir()) if d.is_dir()]
        expected = 0
        for shard in shards:
            if shard.start != expected:
                raise ValueError("shards do not cover the rows in order")
            expected += len(shard)
        if expected != len(rows):
            raise ValueError("shards do not cover every row")
        return cls(rows, shards)

    def rank(
        self,
        query: str,
        query_vec: np.ndarray,
        *,
        k: int,
        mask: np.ndarray | None = None,
        settings: ranking.RankSettings = ranking.DEFAULT_SETTINGS,
    ) -> list[tuple[int, float]]:
        """Hybrid ranking in exact mode: the same rows, in the same order, as ``ranking.rank``."""
        n = len(self.rows)
        if k <= 0 or n == 0:
            return []
        q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        allowed = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)[:n]
        if not allowed.any():
            return []
        # Round 1: the cosines and the BM25 partial sums from every shard.
        ids, dense_parts, lex_parts = [], [], []
        for shard in self.shards:
            i, d, lx = shard.score(query, q, allowed[shard.start : shard.start + len(shard)], self.stats)
            ids.append(i)
            dense_parts.append(d)
            lex_parts.append(lx)
        idx = np.concatenate(ids)
        dense = np.concatenate(dense_parts)
        if settings.context_dense:
            dense = ranking.dense_with_context(self._meta.structure, idx, dense, allowed, settings.context_dense)
        z_dense = ranking.zscore_from(dense, ranking.moments(dense))
        lex_stats = _sum(lex_parts)
        # Round 2: weighted BM25 z-scores of the candidates, then fusion, context and boost here.
        pieces = [shard.lexical_z(lex_stats, settings.lexical_weight) for shard in self.shards]
        assert np.array_equal(np.concatenate([p[0] for p in pieces]), idx)
        fused = (z_dense + np.concatenate([p[1] for p in pieces])).astype(np.float32)
        score = ranking._with_context(self._meta, idx, fused, settings)
        if settings.speaker:
            named = ranking._named_speakers(self._meta, query)
            if len(named):
                score = score + settings.speaker * np.isin(ranking._speakers(self._meta).ids[idx], named)
        return ranking._top(idx, score, k)


def _sum(parts: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
