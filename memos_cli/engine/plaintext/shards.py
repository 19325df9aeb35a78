"""One shard of a sharded index (``Shard``): a row range's vectors, BM25 postings and hnswlib graph, and the
work a query asks of it in each round (sharded.py is the coordinator; shard_store.py keeps shards on disk)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.engine.plaintext import ranking
from memos_cli.engine.plaintext.lexical import LexicalIndex, bm25_idf, tokenize

if TYPE_CHECKING:
    from memos_cli.engine.plaintext.shard_store import MappedRows


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
    over its first ``hnsw_rows`` rows (rows past it are scored exactly, as in the unsharded index).

    ``vectors`` may be a view of the mapped ``vectors.f32`` (``pages``): ``release`` then drops its rows
    from memory once a query is done with them. The graph may be given, or loaded by ``load_graph`` when a
    query first needs it (one that does not load counts as none). What a query's first round leaves for
    its second is kept per ``token`` (one per query in flight: a Ray shard actor serves a batch at once)."""

    def __init__(
        self,
        start: int,
        vectors: np.ndarray,
        lexical: LexicalIndex,
        hnsw: Any = None,
        hnsw_rows: int = 0,
        *,
        load_graph: Callable[[], Any] | None = None,
        pages: MappedRows | None = None,
    ) -> None:
        self.start = start
        self.vectors = vectors
        self.lexical = lexical
        self._hnsw = hnsw
        self._load_graph = load_graph if hnsw is None else None
        self.hnsw_rows = hnsw_rows if hnsw is not None or load_graph is not None else 0
        self.pages = pages
        self._legs: dict[int, np.ndarray] = {}  # round 1's BM25 scores of the allowed rows (exact mode)
        self._lex: dict[int, np.ndarray] = {}  # round 1's BM25 scores of every row (approximate mode)
        self._sample: tuple[tuple[float, ...], tuple[int, np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def end(self) -> int:
        return self.start + len(self)

    @property
    def hnsw(self) -> Any:
        if self._load_graph is not None:
            load, self._load_graph = self._load_graph, None
            self._hnsw = load()
            if self._hnsw is None:
                self.hnsw_rows = 0
        return self._hnsw

    def release(self) -> None:
        """Drop this shard's vectors from memory (mapped pages only; read again when next used)."""
        if self.pages is not None:
            self.pages.release(self.start, self.end)

    def call(self, token: int, method: str, args: tuple[Any, ...]) -> Any:
        """One round's work for the query ``token`` (``ShardedIndex.steps`` says which)."""
        if method not in ROUND_METHODS:
            raise ValueError(f"not a shard round: {method}")
        fn = getattr(self, method)
        return fn(token, *args) if method in _STATEFUL else fn(*args)

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
            w = float(bm25_idf(stats.n_docs, global_df))
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
        graph = self.hnsw
        if graph is not None and allowed:
            labels, _ = graph.knn_query(q.reshape(1, -1), k=min(n, self.hnsw_rows))
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
        self,
        token: int,
        query: str,
        q: np.ndarray,
        mask: np.ndarray,
        stats: LexicalStats,
        lex: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, float, float]]:
        """Score the allowed rows; return their global ids, their cosines (the coordinator adds the
        neighbours' share: a neighbour may live in another shard) and the partial sums of the BM25 leg.
        ``lex``: this shard's rows' BM25 scores when the coordinator computed them (neighbour text)."""
        idx = np.flatnonzero(mask)
        dense = ranking._dense(self.vectors, idx, q)
        lex = (self.bm25(query, stats) if lex is None else lex)[idx]
        self._legs[token] = lex
        return idx + self.start, dense, ranking.moments(lex)

    # ---- hybrid, exact mode: round 2
    def lexical_z(self, token: int, lex_stats: tuple[int, float, float], weight: float) -> np.ndarray:
        """The weighted BM25 z-scores of this shard's allowed rows (in the order round 1 gave them)."""
        return weight * ranking.zscore_from(self._legs.pop(token), lex_stats)

    # ---- hybrid, approximate mode: round 1
    def candidates(
        self,
        token: int,
        query: str,
        q: np.ndarray,
        mask: np.ndarray,
        stats: LexicalStats,
        pool: int,
        sample: np.ndarray,
        context: tuple[np.ndarray, np.ndarray, float] | None = None,
        lex: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Dense and BM25 candidates with both legs' scores, the BM25 partial sums over the allowed rows,
        and the sums of this shard's rows of the dense sample (local ids ``sample``; ``context``: their
        previous and next rows' global ids and the dense context's share); ``lex`` as in :meth:`score`."""
        lex = self.bm25(query, stats) if lex is None else lex
        self._lex[token] = lex
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
        self, sample: np.ndarray, context: tuple[np.ndarray, np.ndarray, float] | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Sums of the sample rows' vectors; with a dense ``context`` (prev, next, share), of the vectors
        ``v + share * mean of the neighbours' v`` (``ranking._dense_moments``; a neighbour in another
        shard is left out of the mean, which moves the estimated spread by a hair)."""
        share = context[2] if context else 0.0
        key = (len(sample), int(sample[0]) if len(sample) else -1, int(sample[-1]) if len(sample) else -1, share)
        if self._sample is not None and self._sample[0] == key:
            return self._sample[1]
        x = self.vectors[sample].astype(np.float64)
        if context is not None and share:
            total, count = np.zeros_like(x), np.zeros(len(sample))
            for links in context[:2]:
                nb = np.asarray(links, dtype=np.int64)
                ok = (nb >= self.start) & (nb < self.end)
                total[ok] += self.vectors[nb[ok] - self.start]
                count += ok
            x = x + share * np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], x)
        sums = (len(x), x.sum(axis=0), x.T @ x)
        self._sample = (key, sums)
        return sums

    # ---- hybrid, approximate mode: round 2
    def finish(self, token: int, rows: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both legs of the global ``rows`` (this shard's: the neighbours round 1 did not score, and the
        rows only the dense context needs); the query's round-1 state is dropped."""
        lex = self._lex.pop(token)
        local = np.asarray(rows, dtype=np.int64) - self.start
        return (self.vectors[local] @ q).astype(np.float32), lex[local]

    # ---- the graph
    def extend_graph(self, settings: GraphSettings) -> bool:
        """Build or extend the graph by the unsharded index's rule (at least ``min_rows`` rows, and a tail
        past the graph of 1,000 rows or 5%); True if it changed (then the caller saves it)."""
        total = len(self)
        if total < settings.min_rows or total - self.hnsw_rows < max(1000, total // 20):
            return False
        import hnswlib

        graph = self.hnsw  # loaded only now that it is to grow

        if graph is None or self.hnsw_rows == 0:
            graph = hnswlib.Index(space="ip", dim=self.vectors.shape[1])
            graph.init_index(max_elements=total, ef_construction=settings.ef_construction, M=settings.m, random_seed=42)
            begin = 0
        else:
            graph.resize_index(total)
            begin = self.hnsw_rows
        graph.add_items(self.vectors[begin:total], np.arange(begin, total))
        graph.set_ef(settings.ef)
        self._hnsw, self.hnsw_rows = graph, total
        self.release()
        return True


# What a coordinator may ask of a shard (``Shard.call``); the stateful ones take the query's token first.
ROUND_METHODS = frozenset(
    {"dense_top", "dense_candidates", "lexical_top", "score", "lexical_z", "candidates", "finish"}
)
_STATEFUL = frozenset({"score", "lexical_z", "candidates", "finish"})


def build_shard(
    vectors: np.ndarray, rows: list[ranking.Row], start: int, count: int, pages: MappedRows | None = None
) -> Shard:
    """The shard of rows ``start .. start + count - 1`` (fewer at the end), its postings built from them
    (``vectors`` are the whole index's, ``pages`` their mapping if they are mapped)."""
    part = rows[start : start + count]
    lexical = LexicalIndex()
    lexical.add([ranking.lexical_text(r) for r in part])
    return Shard(start, vectors[start : start + len(part)], lexical, pages=pages)
