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
unsharded ranking uses too). Round 2: every shard returns the weighted BM25 z-scores of its allowed
rows; the coordinator fuses them with the dense leg's, adds the neighbour and episode context and the
boosts (``ranking._with_context``) and takes the top k, ties broken by row id. The ranking is the
unsharded one (scores agree to float rounding of the statistics; tests/test_shards.py, tests/test_query.py
check it through the CLI).

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
neighbours) is not shard-local, since a row's neighbour may live in another shard: the coordinator scores
every row from the shards' postings of the query's terms (which it holds: postings are small beside the
vectors) with ``lexical.neighbour_scores`` (the function the unsharded index uses) and hands each shard
its slice in round 1.

The coordinator never runs a shard's work itself: ``ShardedIndex.steps`` yields each round's calls (one
per shard) and ``run_steps`` drives many queries' steps in lockstep. In one process
(``ShardedIndex.rank``) the calls run on the shards here, one shard at a time, each one's mapped vectors
released after its work (shard_store.py), so a query holds about one shard's vectors at once. With
``query --batch --engine ray`` each shard is held by a shard actor that loads it once and answers a whole
batch's rounds (engine/shard_actors.py): the driver keeps only the rows' metadata and the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.engine.plaintext import ranking
from memos_cli.engine.plaintext.lexical import (
    LexicalIndex,
    Neighbours,
    bm25_idf,
    lent_lengths,
    neighbour_scores,
    tokenize,
)
from memos_cli.engine.plaintext.shards import LexicalStats, Shard, build_shard

_SAMPLE = 4096  # rows of the fixed sample for the dense moments (ranking._dense_moments)

# One round of a query: per shard, a call (method, args) or None; the answers come back in the same order.
Round = list[tuple[str, tuple[Any, ...]] | None]
Steps = Generator[Round, list[Any], list[tuple[int, float]]]


class ShardedIndex:
    """The coordinator: global row metadata and statistics, and the shards (local objects; ``source``:
    the index folder they were loaded from, as ``(root, rel)``, from which a shard actor gets its shard)."""

    def __init__(
        self,
        rows: list[ranking.Row],
        shards: list[Shard],
        structure: ranking.Structure | None = None,
        *,
        source: tuple[Path, str] | None = None,
    ) -> None:
        self.rows = rows
        self.shards = shards
        self.source = source
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
        return any(s.hnsw_rows for s in self.shards)

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
        """``ranking.rank`` over the shards, in this process: in exact mode the same rows, in the same order."""
        steps = self.steps(0, query, query_vec, k=k, mode=mode, mask=mask, settings=settings, periods=periods)
        return run_steps([steps], self._run_local)[0]

    def _run_local(self, rounds: list[tuple[int, Round]]) -> list[list[Any]]:
        """Each query's round on the shards here, one shard at a time, each one's vectors released after
        its work: resident memory holds about one shard's vectors (the mapped pages) at a time."""
        answers: list[list[Any]] = [[None] * len(self.shards) for _ in rounds]
        for number, shard in enumerate(self.shards):
            try:
                for answer, (token, calls) in zip(answers, rounds, strict=True):
                    call = calls[number]
                    if call is not None:
                        answer[number] = shard.call(token, *call)
            finally:
                shard.release()
        return answers

    def steps(
        self,
        token: int,
        query: str,
        query_vec: np.ndarray,
        *,
        k: int,
        mode: str = "hybrid",
        mask: np.ndarray | None = None,
        settings: ranking.RankSettings = ranking.DEFAULT_SETTINGS,
        periods: list[tuple[str, str]] | None = None,
    ) -> Steps:
        """The coordinator's side of one query: it yields each round's calls (one per shard, run by
        ``run_steps`` here or on shard actors) and returns the ranking. ``token`` names the query to the
        shards between its rounds."""
        prepared = ranking.prepare(len(self.rows), mode, k, query_vec, mask)
        if prepared is None:
            return []
        q, allowed, n_allowed = prepared
        parts = [allowed[s.start : s.end] for s in self.shards]
        stats = self._stats_for(query)
        if mode == "lexical":
            found = yield [("lexical_top", (query, stats, p, k)) for p in parts]
            ids, scores = _concat(found)
            order = np.lexsort((ids, -scores))[:k]
            return [(int(ids[i]), float(scores[i])) for i in order]
        exact = n_allowed <= settings.exact_limit or not self.has_graph
        if mode == "dense":
            want = k if exact else max(k, settings.pool)
            method = "dense_top" if exact else "dense_candidates"
            found = yield [(method, (q, p, want)) for p in parts]
            return ranking._top(*_concat(found), k)
        lex = self._lexical_with_neighbours(query, allowed, settings.context_lexical)
        if exact:
            idx, fused = yield from self._fused_exact(query, q, allowed, parts, stats, settings, lex)
        else:
            idx, fused = yield from self._fused_approximate(query, q, allowed, parts, stats, settings, lex)
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
            w = float(bm25_idf(stats.n_docs, df))
            docs, tf = _concat([s.postings(token) for s in self.shards])
            terms.append((w, docs, tf))
        st, lex = self._meta.structure, self.shards[0].lexical
        if self._lengths is None or len(self._lengths[0]) != len(self.rows):
            lengths = np.concatenate([s.lexical._doc_len for s in self.shards])
            self._lengths = (lengths, lent_lengths(lengths, st.prev, st.next))
        lengths, lent = self._lengths
        return neighbour_scores(terms, lengths, Neighbours(st.prev, st.next, allowed, share, lent), lex.k1, lex.b)

    def _stats_for(self, query: str) -> LexicalStats:
        """The global statistics a shard needs for ``query``: the document frequencies of its terms only."""
        df = {t: self.stats.df[t] for t in dict.fromkeys(tokenize(query)) if t in self.stats.df}
        return LexicalStats(self.stats.n_docs, self.stats.total_length, df)

    def _fused_exact(
        self,
        query: str,
        q: np.ndarray,
        allowed: np.ndarray,
        parts: list[np.ndarray],
        stats: LexicalStats,
        settings: ranking.RankSettings,
        lex: np.ndarray | None = None,
    ) -> Generator[Round, list[Any], tuple[np.ndarray, np.ndarray]]:
        # Round 1: the cosines and the BM25 partial sums from every shard.
        found = yield [
            ("score", (query, q, p, stats, None if lex is None else lex[s.start : s.end]))
            for s, p in zip(self.shards, parts, strict=True)
        ]
        idx, dense = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
        if settings.context_dense:
            dense = ranking.dense_with_context(self._meta.structure, idx, dense, allowed, settings.context_dense)
        z_dense = ranking.zscore_from(dense, ranking.moments(dense))
        # Round 2: the weighted BM25 z-scores of the allowed rows; fused here.
        lex_stats = _sum([f[2] for f in found])
        z_lex = yield [("lexical_z", (lex_stats, settings.lexical_weight)) for _ in parts]
        return idx, (z_dense + np.concatenate(z_lex)).astype(np.float32)

    def _fused_approximate(
        self,
        query: str,
        q: np.ndarray,
        allowed: np.ndarray,
        parts: list[np.ndarray],
        stats: LexicalStats,
        settings: ranking.RankSettings,
        lex: np.ndarray | None = None,
    ) -> Generator[Round, list[Any], tuple[np.ndarray, np.ndarray]]:
        n = len(self.rows)
        pool = settings.pool
        st = self._meta.structure
        sample = np.unique(np.linspace(0, n - 1, num=min(_SAMPLE, n)).astype(np.int64))
        # Round 1: candidates with their scores, and the statistics' partial sums.
        calls: Round = []
        for s, p in zip(self.shards, parts, strict=True):
            mine = sample[(sample >= s.start) & (sample < s.end)]
            context = (st.prev[mine], st.next[mine], settings.context_dense) if settings.context_dense else None
            own = None if lex is None else lex[s.start : s.end]
            calls.append(("candidates", (query, q, p, stats, pool, mine - s.start, context, own)))
        found = yield calls
        lex_ids = np.concatenate([f["lex_ids"] for f in found])
        lex_top = np.concatenate([f["lex_top"] for f in found])
        if len(lex_ids) > pool:  # the global BM25 pool, rows tied with its last kept (as unsharded)
            kth = np.partition(lex_top, len(lex_top) - pool)[len(lex_top) - pool]
            lex_ids = lex_ids[lex_top >= kth]
        cand = np.union1d(np.concatenate([f["dense_ids"] for f in found]), lex_ids)
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
        wanted = [
            (
                np.flatnonzero(~known & (idx >= s.start) & (idx < s.end)),
                np.flatnonzero((extra >= s.start) & (extra < s.end)),
            )
            for s in self.shards
        ]
        got = yield [("finish", (np.concatenate([idx[m], extra[e]]), q)) for m, e in wanted]
        extra_dense = np.zeros(len(extra), dtype=np.float32)
        for (missing, more), (d, lx) in zip(wanted, got, strict=True):
            dense[missing], lex[missing] = d[: len(missing)], lx[: len(missing)]
            extra_dense[more] = d[len(missing) :]
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


def run_steps(
    steps: list[Steps], run: Callable[[list[tuple[int, Round]]], list[list[Any]]]
) -> list[list[tuple[int, float]]]:
    """Drive many queries' ``ShardedIndex.steps`` in lockstep: ``run`` gets every live query's round as
    ``(position in steps, calls)`` and returns their answers; a query's position is its token."""
    results: list[list[tuple[int, float]]] = [[] for _ in steps]
    live: dict[int, Round] = {}
    for token, gen in enumerate(steps):
        try:
            live[token] = next(gen)
        except StopIteration as stop:
            results[token] = stop.value
    while live:
        tokens = list(live)
        answers = run([(t, live[t]) for t in tokens])
        for token, answer in zip(tokens, answers, strict=True):
            try:
                live[token] = steps[token].send(answer)
            except StopIteration as stop:
                results[token] = stop.value
                del live[token]
    return results


def _concat(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pieces:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def _sum(parts: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
