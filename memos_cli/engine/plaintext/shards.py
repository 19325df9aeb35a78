"""A sharded index, for cubes whose index outgrows one node's memory: the same ranking as unsharded.

Rows are cut into shards by row range (``MEMOS_INDEX_SHARD_ROWS`` rows each, the last one partial). Each
shard holds what is heavy and per-row: its vectors (its row range of the index's append-only
``vectors.f32``), its BM25 postings (a ``LexicalIndex`` of its own rows, numbered from 0) and, once it has
``index.HNSW_MIN_ROWS`` rows, its own hnswlib graph. What is small and global stays with the coordinator
(the driver): the rows' metadata (speaker, source, time) for the context links (``ranking.structure``),
the speaker, time and "when" boosts, and the global BM25 statistics: the number of documents, their total
length and, per term, the sum of the shards' document frequencies, so every shard scores with the idf
and average length of the whole cube, exactly as the unsharded index does.

A hybrid query is two rounds, so that no shard needs another's data:

*Exact mode* (at most ``RankSettings.exact_limit`` allowed rows, or no shard has a graph: the unsharded
rule). Round 1: every shard scores its allowed rows (dense cosine, BM25 with the global statistics) and
returns the float64 partial sums of each leg (count, sum, sum of squares); the coordinator adds them into
the z-score statistics of the whole cube (``ranking.moments`` / ``ranking.zscore_from``, which the
unsharded ranking uses too). Round 2: every shard returns the fused scores of its allowed rows; the
coordinator scatters them, adds the neighbour and episode context and the boosts (``ranking._with_context``)
and takes the top k, ties broken by row id. The ranking is the unsharded one (scores agree to float
rounding of the statistics; tests/test_shards.py, tests/test_query.py check it through the CLI).

*Approximate mode* (more allowed rows, graphs present). Round 1: every shard returns its dense candidates
(its graph's nearest rows plus an exact scan of the rows past its graph; an exact top of its allowed rows
when it has no graph or a filter leaves too few), its BM25 top ``pool`` (ties kept), both legs' scores of
those rows, the partial sums of its allowed rows' BM25 scores, and the float64 sums (count, sum, X^T X)
of its rows in the unsharded ranking's fixed sample, from which the coordinator gets the mean and
covariance of the stored vectors (the spread of the dense leg over the cube). The coordinator keeps the
global BM25 top ``pool`` and every dense candidate, adds their neighbours, and in round 2 asks each shard
for the two legs of the neighbours it has not scored yet. Then as above. Like the unsharded graph, this
is approximate: bench/RESULTS.md gives its recall against exact.

The BM25 leg with the neighbour-text field (``RankSettings.context_lexical``, BM25F over a row and its
neighbours) is not shard-local, since a row's neighbour may live in another shard: the coordinator gathers
the shards' postings of the query's terms, scores every row with ``lexical.neighbour_scores`` (the
function the unsharded index uses) and hands each shard its slice in round 1.

Shards are plain objects; with ``query --batch --engine ray`` the whole sharded index is the payload each
actor ranks its queries with (the actors parallelise queries, not shards: see bench/RESULTS.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.cube import io
from memos_cli.engine.plaintext import ranking
from memos_cli.engine.plaintext.lexical import LexicalIndex, Neighbours, lent_lengths, neighbour_scores, tokenize
from memos_cli.errors import InvalidCube, UnsafePath

SHARDS_DIR = "shards"
SHARD_META = "shard.json"
GRAPH_FILE = "hnsw.bin"
_MAX_SHARD_META = 1 << 16
_SAMPLE = 4096  # rows of the fixed sample for the dense moments (ranking._dense_moments)


@dataclass
class LexicalStats:
    """Global BM25 statistics, from the shards' sums."""

    n_docs: int
    total_length: int
    df: dict[str, int]  # term -> documents containing it, summed over the shards


@dataclass(frozen=True)
class GraphSettings:
    """When and how a shard's hnswlib graph is built (index.py passes the unsharded index's settings)."""

    min_rows: int
    m: int
    ef_construction: int
    ef: int


class Shard:
    """Rows ``start .. start + len(vectors) - 1`` of the index: vectors, BM25 postings and maybe a graph
    over its first ``hnsw_rows`` rows (rows past it are scored exactly, as in the unsharded index)."""

    def __init__(
        self, start: int, vectors: np.ndarray, lexical: LexicalIndex, hnsw: Any = None, hnsw_rows: int = 0
    ) -> None:
        self.start = start
        self.vectors = vectors
        self.lexical = lexical
        self.hnsw = hnsw
        self.hnsw_rows = hnsw_rows if hnsw is not None else 0
        self._legs: tuple[np.ndarray, np.ndarray] | None = None  # round 1's scores, for round 2
        self._lex: np.ndarray | None = None  # round 1's BM25 scores of every row (approximate mode)
        self._sample: tuple[tuple[float, ...], tuple[int, np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def end(self) -> int:
        return self.start + len(self)

    # ---- global statistics
    def term_counts(self) -> tuple[int, int, dict[str, int]]:
        lex = self.lexical
        return len(lex), int(lex._doc_len.sum()), {t: int(lex._df[i]) for i, t in enumerate(lex._terms)}

    def bm25(self, query: str, stats: LexicalStats) -> np.ndarray:
        """``LexicalIndex.scores`` with the global idf and average length (same arithmetic, same order)."""
        lex = self.lexical
        out = np.zeros(len(lex), dtype=np.float32)
        if not stats.n_docs:
            return out
        avgdl = max(float(stats.total_length) / stats.n_docs, 1e-9)
        for token in dict.fromkeys(tokenize(query)):
            global_df = stats.df.get(token)
            if global_df is None:
                continue  # unknown to the whole cube: the unsharded index skips it too
            w = float(np.log1p((stats.n_docs - global_df + 0.5) / (global_df + 0.5)))
            tid = lex._vocab.get(token)
            if tid is not None:
                lex.add_term(out, tid, w, avgdl)
        return out

    def postings(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        """The global rows of this shard that hold ``token`` (ascending) and its frequency there."""
        tid = self.lexical._vocab.get(token)
        if tid is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
        docs, tf = self.lexical.postings(tid)
        return docs.astype(np.int64) + self.start, tf

    # ---- one-round queries (dense or lexical mode)
    def dense_top(self, q: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact best ``n`` allowed rows by cosine (global ids and scores), ties to the earlier row."""
        idx = np.flatnonzero(mask)
        if not len(idx):
            return idx.astype(np.int64), np.zeros(0, dtype=np.float32)
        picked = ranking._top(idx, ranking._dense(self.vectors, idx, q), n)
        return (
            np.asarray([r for r, _ in picked], dtype=np.int64) + self.start,
            np.asarray([s for _, s in picked], dtype=np.float32),
        )

    def dense_candidates(self, q: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate nearest allowed rows (graph + exact tail), with their cosine; the exact best ``n``
        when there is no graph or the filter leaves too few graph hits (never silently worse)."""
        allowed = int(mask.sum())
        if self.hnsw is not None and allowed:
            labels, _ = self.hnsw.knn_query(q.reshape(1, -1), k=min(n, self.hnsw_rows))
            hits = labels[0].astype(np.int64)
            if self.hnsw_rows < len(self):
                tail = self.vectors[self.hnsw_rows :] @ q
                take = min(n, len(tail))
                hits = np.concatenate([hits, np.argpartition(-tail, take - 1)[:take] + self.hnsw_rows])
            hits = hits[(hits >= 0) & (hits < len(self))]
            hits = np.unique(hits[mask[hits]])
            if len(hits) >= min(n, allowed) // 2:
                return hits + self.start, (self.vectors[hits] @ q).astype(np.float32)
        return self.dense_top(q, mask, n)

    def lexical_top(
        self,
        query: str,
        stats: LexicalStats,
        mask: np.ndarray,
        n: int,
        *,
        ties: bool = False,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``n`` allowed rows with a positive BM25 score (``LexicalIndex.top`` with the global
        statistics): global ids and scores; with ``ties``, every row tied with the n-th too. ``scores``:
        this shard's BM25 scores for ``query`` if already computed."""
        s = np.where(mask, self.bm25(query, stats) if scores is None else scores, 0.0).astype(np.float32)
        hits = np.flatnonzero(s > 0)
        if len(hits) > n:
            kth = np.partition(s[hits], len(hits) - n)[len(hits) - n]
            hits = hits[s[hits] >= kth]
        order = np.lexsort((hits, -s[hits]))
        hits = hits[order] if ties else hits[order[:n]]
        return hits.astype(np.int64) + self.start, s[hits]

    # ---- hybrid, exact mode: round 1
    def score(
        self, query: str, q: np.ndarray, mask: np.ndarray, stats: LexicalStats, lex: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, float, float]]:
        """Score the allowed rows; return their global ids, their cosines (the coordinator adds the
        neighbours' share: a neighbour may live in another shard) and the partial sums of the BM25 leg.
        ``lex``: this shard's rows' BM25 scores when the coordinator computed them (neighbour text)."""
        idx = np.flatnonzero(mask)
        dense = ranking._dense(self.vectors, idx, q)
        lex = (self.bm25(query, stats) if lex is None else lex)[idx]
        self._legs = (idx, lex)
        return idx + self.start, dense, ranking.moments(lex)

    # ---- hybrid, exact mode: round 2
    def lexical_z(self, lex_stats: tuple[int, float, float], weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Global row ids and weighted BM25 z-scores of this shard's allowed rows."""
        assert self._legs is not None, "round 1 first"
        idx, lex = self._legs
        self._legs = None
        return idx + self.start, weight * ranking.zscore_from(lex, lex_stats)

    # ---- hybrid, approximate mode: round 1
    def candidates(
        self,
        query: str,
        q: np.ndarray,
        mask: np.ndarray,
        stats: LexicalStats,
        pool: int,
        sample: np.ndarray,
        context: tuple[ranking.Structure, float] | None = None,
        lex: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Dense and BM25 candidates with both legs' scores, the BM25 partial sums over the allowed rows,
        and the sums of this shard's rows of the dense sample (local ids ``sample``); ``lex`` as in
        :meth:`score`."""
        lex = self.bm25(query, stats) if lex is None else lex
        self._lex = lex
        dense_ids, _ = self.dense_candidates(q, mask, pool)
        lex_ids, lex_scores = self.lexical_top(query, stats, mask, pool, ties=True, scores=lex)
        ids = np.union1d(dense_ids, lex_ids) - self.start
        return {
            "dense_ids": dense_ids,
            "lex_ids": lex_ids,
            "lex_top": lex_scores,
            "ids": ids + self.start,
            "dense": (self.vectors[ids] @ q).astype(np.float32),
            "lex": lex[ids],
            "lex_moments": ranking.moments(lex[mask]),
            "sample": self._sample_sums(sample, context),
        }

    def _sample_sums(
        self, sample: np.ndarray, context: tuple[ranking.Structure, float] | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Sums of the sample rows' vectors; with a dense ``context`` (structure, share), of the vectors
        ``v + share * mean of the neighbours' v`` (``ranking._dense_moments``; a neighbour in another
        shard is left out of the mean, which moves the estimated spread by a hair)."""
        share = context[1] if context else 0.0
        key = (len(sample), int(sample[0]) if len(sample) else -1, int(sample[-1]) if len(sample) else -1, share)
        if self._sample is not None and self._sample[0] == key:
            return self._sample[1]
        x = self.vectors[sample].astype(np.float64)
        if context is not None and share:
            st = context[0]
            total, count = np.zeros_like(x), np.zeros(len(sample))
            for links in (st.prev, st.next):
                nb = links[sample + self.start].astype(np.int64)
                ok = (nb >= self.start) & (nb < self.end)
                total[ok] += self.vectors[nb[ok] - self.start]
                count += ok
            x = x + share * np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], x)
        sums = (len(x), x.sum(axis=0), x.T @ x)
        self._sample = (key, sums)
        return sums

    # ---- hybrid, approximate mode: round 2
    def scores_of(self, rows: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both legs of the global ``rows`` (this shard's), for the neighbours round 1 did not score."""
        assert self._lex is not None, "round 1 first"
        local = np.asarray(rows, dtype=np.int64) - self.start
        return (self.vectors[local] @ q).astype(np.float32), self._lex[local]

    def done(self) -> None:
        self._legs = self._lex = None

    # ---- the graph
    def extend_graph(self, settings: GraphSettings) -> bool:
        """Build or extend the graph by the unsharded index's rule (at least ``min_rows`` rows, and a tail
        past the graph of 1,000 rows or 5%); True if it changed (then the caller saves it)."""
        total = len(self)
        if total < settings.min_rows or total - self.hnsw_rows < max(1000, total // 20):
            return False
        import hnswlib

        if self.hnsw is None or self.hnsw_rows == 0:
            graph = hnswlib.Index(space="ip", dim=self.vectors.shape[1])
            graph.init_index(max_elements=total, ef_construction=settings.ef_construction, M=settings.m, random_seed=42)
            begin = 0
        else:
            graph = self.hnsw
            graph.resize_index(total)
            begin = self.hnsw_rows
        graph.add_items(self.vectors[begin:total], np.arange(begin, total))
        graph.set_ef(settings.ef)
        self.hnsw, self.hnsw_rows = graph, total
        return True


class ShardedIndex:
    """The coordinator: global row metadata and statistics, and the shards (local objects)."""

    def __init__(
        self, rows: list[ranking.Row], shards: list[Shard], structure: ranking.Structure | None = None
    ) -> None:
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
        # Rows' metadata only (no vectors, no postings): what the context and the boosts need.
        self._meta = ranking.RankInputs(
            vectors=np.zeros((0, shards[0].vectors.shape[1] if shards else 0), dtype=np.float32),
            lexical=LexicalIndex(),
            rows=rows,
            structure=structure if structure is not None else ranking.structure(rows),
        )
        # Every row's BM25 length and what it lends (lexical.lent_lengths), for the neighbour-text field.
        self._lengths: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def split(cls, vectors: np.ndarray, rows: list[ranking.Row], rows_per_shard: int) -> ShardedIndex:
        """Shard an index's rows by range (the BM25 postings of each shard built from its rows)."""
        return cls(
            rows, [build_shard(vectors, rows, start, rows_per_shard) for start in range(0, len(rows), rows_per_shard)]
        )

    @property
    def has_graph(self) -> bool:
        return any(s.hnsw is not None for s in self.shards)

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
        """``ranking.rank`` over the shards: in exact mode the same rows, in the same order."""
        prepared = ranking.prepare(len(self.rows), mode, k, query_vec, mask)
        if prepared is None:
            return []
        q, allowed, n_allowed = prepared
        parts = [allowed[s.start : s.end] for s in self.shards]
        if mode == "lexical":
            ids, scores = _concat(
                [s.lexical_top(query, self.stats, p, k) for s, p in zip(self.shards, parts, strict=True)]
            )
            order = np.lexsort((ids, -scores))[:k]
            return [(int(ids[i]), float(scores[i])) for i in order]
        exact = n_allowed <= settings.exact_limit or not self.has_graph
        if mode == "dense":
            want = k if exact else max(k, settings.pool)
            pieces = [
                s.dense_top(q, p, want) if exact else s.dense_candidates(q, p, want)
                for s, p in zip(self.shards, parts, strict=True)
            ]
            return ranking._top(*_concat(pieces), k)
        lex = self._lexical_with_neighbours(query, allowed, settings.context_lexical)
        if exact:
            idx, fused = self._fused_exact(query, q, allowed, parts, settings, lex)
        else:
            idx, fused = self._fused_approximate(query, q, allowed, parts, settings, lex)
        score = ranking._with_context(self._meta, idx, fused, settings)
        score = self._boosts(idx, score, query, settings, periods)
        return ranking._top(idx, score, k)

    def _lexical_with_neighbours(self, query: str, allowed: np.ndarray, share: float) -> np.ndarray | None:
        """With a ``share`` of neighbour text (``RankSettings.context_lexical``), the BM25 leg of every row,
        computed here from the shards' postings of the query's terms: a row's neighbour may live in
        another shard. None without it (each shard scores its own rows)."""
        if not share or not self.shards:
            return None
        stats, terms = self.stats, []
        for token in dict.fromkeys(tokenize(query)):
            df = stats.df.get(token)
            if df is None:
                continue
            w = float(np.log1p((stats.n_docs - df + 0.5) / (df + 0.5)))
            docs, tf = _concat([s.postings(token) for s in self.shards])
            terms.append((w, docs, tf))
        st, lex = self._meta.structure, self.shards[0].lexical
        if self._lengths is None or len(self._lengths[0]) != len(self.rows):
            lengths = np.concatenate([s.lexical._doc_len for s in self.shards])
            self._lengths = (lengths, lent_lengths(lengths, st.prev, st.next))
        lengths, lent = self._lengths
        return neighbour_scores(terms, lengths, Neighbours(st.prev, st.next, allowed, share, lent), lex.k1, lex.b)

    def _fused_exact(
        self,
        query: str,
        q: np.ndarray,
        allowed: np.ndarray,
        parts: list[np.ndarray],
        settings: ranking.RankSettings,
        lex: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        # Round 1: the cosines and the BM25 partial sums from every shard.
        ids, dense_parts, lex_parts = [], [], []
        for shard, part in zip(self.shards, parts, strict=True):
            i, d, lx = shard.score(query, q, part, self.stats, None if lex is None else lex[shard.start : shard.end])
            ids.append(i)
            dense_parts.append(d)
            lex_parts.append(lx)
        idx, dense = np.concatenate(ids), np.concatenate(dense_parts)
        if settings.context_dense:
            dense = ranking.dense_with_context(self._meta.structure, idx, dense, allowed, settings.context_dense)
        z_dense = ranking.zscore_from(dense, ranking.moments(dense))
        # Round 2: the weighted BM25 z-scores of the allowed rows; fused here.
        pieces = [s.lexical_z(_sum(lex_parts), settings.lexical_weight) for s in self.shards]
        return idx, (z_dense + np.concatenate([p[1] for p in pieces])).astype(np.float32)

    def _fused_approximate(
        self,
        query: str,
        q: np.ndarray,
        allowed: np.ndarray,
        parts: list[np.ndarray],
        settings: ranking.RankSettings,
        lex: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.rows)
        pool = settings.pool
        sample = np.unique(np.linspace(0, n - 1, num=min(_SAMPLE, n)).astype(np.int64))
        # Round 1: candidates with their scores, and the statistics' partial sums.
        context = (self._meta.structure, settings.context_dense) if settings.context_dense else None
        found = [
            s.candidates(
                query,
                q,
                p,
                self.stats,
                pool,
                sample[(sample >= s.start) & (sample < s.end)] - s.start,
                context,
                None if lex is None else lex[s.start : s.end],
            )
            for s, p in zip(self.shards, parts, strict=True)
        ]
        lex_ids = np.concatenate([f["lex_ids"] for f in found])
        lex_top = np.concatenate([f["lex_top"] for f in found])
        if len(lex_ids) > pool:  # the global BM25 pool, rows tied with its last kept (as unsharded)
            kth = np.partition(lex_top, len(lex_top) - pool)[len(lex_top) - pool]
            lex_ids = lex_ids[lex_top >= kth]
        cand = np.union1d(np.concatenate([f["dense_ids"] for f in found]), lex_ids)
        st = self._meta.structure
        nbrs = np.concatenate([st.prev[cand], st.next[cand]]).astype(np.int64)
        nbrs = nbrs[nbrs >= 0]
        idx = np.union1d(cand, nbrs[allowed[nbrs]])
        dense = np.zeros(len(idx), dtype=np.float32)
        lex = np.zeros(len(idx), dtype=np.float32)
        known = np.zeros(len(idx), dtype=bool)
        for f in found:
            pos = np.searchsorted(idx, f["ids"])
            hit = (pos < len(idx)) & (idx[np.minimum(pos, len(idx) - 1)] == f["ids"])
            dense[pos[hit]], lex[pos[hit]], known[pos[hit]] = f["dense"][hit], f["lex"][hit], True
        # Round 2: the legs of the neighbours no shard has scored yet, from the shard that holds them, and
        # the cosines of the rows only the dense context needs (a neighbour of a neighbour).
        extra = np.zeros(0, dtype=np.int64)
        if settings.context_dense:
            hop = np.concatenate([st.prev[idx], st.next[idx]]).astype(np.int64)
            hop = hop[hop >= 0]
            extra = np.setdiff1d(hop[allowed[hop]], idx)
        extra_dense = np.zeros(len(extra), dtype=np.float32)
        for shard in self.shards:
            missing = np.flatnonzero(~known & (idx >= shard.start) & (idx < shard.end))
            if len(missing):
                dense[missing], lex[missing] = shard.scores_of(idx[missing], q)
            more = np.flatnonzero((extra >= shard.start) & (extra < shard.end))
            if len(more):
                extra_dense[more] = shard.scores_of(extra[more], q)[0]
            shard.done()
        if settings.context_dense:
            with_extra = ranking.dense_with_context(
                st, np.concatenate([idx, extra]), np.concatenate([dense, extra_dense]), allowed, settings.context_dense
            )
            dense = with_extra[: len(idx)]
        # The dense leg's spread over the cube from the sample's sums; the BM25 leg's over the allowed rows.
        count = sum(f["sample"][0] for f in found)
        mu = sum(f["sample"][1] for f in found) / count
        cov = sum(f["sample"][2] for f in found) / count - np.outer(mu, mu)
        qd = q.astype(np.float64)
        sd = float(np.sqrt(max(qd @ cov @ qd, 0.0)))
        z_dense = (dense - float(qd @ mu)) / sd if sd > 1e-9 else np.zeros_like(dense)
        z_lex = ranking.zscore_from(lex, _sum([f["lex_moments"] for f in found]))
        return idx, (z_dense + settings.lexical_weight * z_lex).astype(np.float32)

    def _boosts(
        self,
        idx: np.ndarray,
        score: np.ndarray,
        query: str,
        settings: ranking.RankSettings,
        periods: list[tuple[str, str]] | None,
    ) -> np.ndarray:
        """The speaker, time and "when" boosts of ``ranking.rank``, from the rows' metadata."""
        meta = self._meta
        if settings.speaker:
            named = ranking._named_speakers(meta, query)
            if len(named):
                score = score + settings.speaker * np.isin(ranking._speakers(meta).ids[idx], named)
        if settings.time and periods:
            score = score + settings.time * ranking.in_periods(meta, periods)[idx]
        if settings.dated and ranking._asks_when(query):
            table = ranking._times(meta)
            dated = np.zeros(table.n_rows, dtype=bool)
            dated[table.ev_row] = True
            score = score + settings.dated * dated[idx]
        return score


def build_shard(vectors: np.ndarray, rows: list[ranking.Row], start: int, count: int) -> Shard:
    """The shard of rows ``start .. start + count - 1`` (fewer at the end), its postings built from them."""
    part = rows[start : start + count]
    lexical = LexicalIndex()
    lexical.add([ranking.lexical_text(r) for r in part])
    return Shard(start, vectors[start : start + len(part)], lexical)


# ---------------------------------------------------------------------------------- persistence
# A shard lives in folder ``<index>/shards/<5-digit number>/``: ``lexical/`` (its postings), ``hnsw.bin``
# (its graph, if any) and ``shard.json`` ({start, rows, hnsw_rows}, written last). Its vectors are its
# row range of the index's ``vectors.f32``. Every access goes through cube.io, relative to a trusted root.
def shard_rel(index_rel: str, number: int) -> str:
    return f"{index_rel}/{SHARDS_DIR}/{number:05d}"


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


def load_shard(root: Path, rel: str, start: int, vectors: np.ndarray, graph: GraphSettings) -> Shard | None:
    """The shard saved at ``rel`` if it holds exactly rows ``start .. start + len(vectors) - 1``; None if
    it is missing, another range, inconsistent, a link or too large (the caller rebuilds it)."""
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
    hnsw = _load_graph(root, f"{rel}/{GRAPH_FILE}", hnsw_rows, vectors.shape[1], graph) if hnsw_rows else None
    return Shard(start, vectors, lexical, hnsw, hnsw_rows if hnsw is not None else 0)


def _load_graph(root: Path, rel: str, count: int, dim: int, settings: GraphSettings) -> Any:
    """The graph at ``rel`` if it is a plain file of a plausible size holding ``count`` elements, else None."""
    import hnswlib

    st = io.lstat(root, rel)
    # An element is its vector, its label and its level-0 links (2M); upper levels add ~1/M of that.
    bound = count * (dim * 4 + 8 + 4 + 2 * settings.m * 4) * 2 + (1 << 20)
    if st is None or io.kind(root, rel) != "file" or st.st_size > bound:
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


def _concat(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pieces:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def _sum(parts: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
