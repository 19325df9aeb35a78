"""Hybrid ranking: dense + BM25 fused at the score level, with context from neighbours and episodes.

Why this shape (measured on LoCoMo, see ``bench/locomo_proto.py``):

* Rank fusion (RRF) throws away how *much* better a hit is than the rest; z-scoring each leg over the
  rows being ranked and adding them keeps that, and beats RRF by ~15 points of recall.
* A memory is rarely self-contained: a chat reply answers the turn before it, a document chunk
  continues the previous one. Rather than embedding concatenated windows at ingest (several times the
  embedding work), each row also receives a share of its *best neighbour's* fused score at query time.
* Memories come in episodes (a session, a day of notes, one source on one date). A row in an episode
  that matches the query well as a whole is more likely relevant, so each row gets a share of its
  episode's best score.
* Dense context (issue 15): a row's cosine also takes ``context_dense`` of the mean cosine of its
  neighbours before the legs are z-scored, as if the memory had been embedded with its neighbours (a
  reply such as "Thanks! I'm excited, it's been a wild ride" says little alone) but at no ingest cost.
  Unlike the window, which shares the *fused* score, this works inside the dense leg, where a short
  turn's own cosine is noisiest. LOO on LoCoMo dev: 0.868 -> 0.884 recall_any@10 (every fold chose 0.25;
  with the neighbour-text field below, 0.5); see bench/RESULTS.md.
* Neighbour text (issue 15): the BM25 leg is BM25F over two fields, a memory's own unit and its
  neighbours' units at ``context_lexical`` of the weight (term frequencies and lengths; see
  ``lexical.neighbour_scores``): a reply matches the words of the turn it answers with BM25's
  saturation over the sum, where sharing a neighbour's *score* (tried) did not help. With it, every
  leave-one-out fold chose 0.1, a smaller window (0.25) and more dense context (0.5): LoCoMo dev
  0.884 -> 0.889, LOO 0.882 -> 0.886.
* When the query names someone who speaks in the cube, their memories get a fixed boost.
* The speaker and date are part of the text that is embedded and indexed: questions say who and when.
* Time (issue 15): a memory's event time (``Row.event``, resolved at ingest from "yesterday", "three
  years ago", ...) joins its said date in the BM25 unit; rows whose event or said time falls in a
  period the query names get ``time``; when the question asks "when/how long/which year", rows that
  date something get ``dated``. LOO on LoCoMo dev chose ``dated`` 1.0 in 4 of 5 folds (temporal
  recall_any@10 0.949 -> 0.955); ``time`` is neutral on dev (its questions rarely name a date; folds
  chose 0 or 2) and is set to 1.0 for the questions that do ("what did Jon do in January 2023?").

Everything here is plain numpy so that a query does not pay for importing torch. The few settings are
in :class:`RankSettings`; their defaults were chosen by leave-one-conversation-out validation.

Why one module of ~600 lines: the legs, their fusion, the context and the boosts are one scoring
function whose parts the sharded coordinator (sharded.py) reuses one by one; splitting them would
separate each setting from the arithmetic it tunes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from memos_cli.engine.plaintext.lexical import LexicalIndex, Neighbours, lent_lengths, tokenize

MODES = ("hybrid", "dense", "lexical")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


@dataclass
class Row:
    """What the ranker knows of one indexed memory; rows are in ingestion order."""

    text: str
    speaker: str | None = None
    time: str | None = None  # ISO-8601 date or datetime
    source: str | None = None  # file the memory came from, "-" for stdin; None if unknown
    source_id: str | None = None  # e.g. a dialogue turn id "D3:12"
    type: str = "note"
    tags: list[str] = field(default_factory=list)
    event: list[dict[str, str]] | None = None  # the record's event_time intervals (engine/plaintext/temporal.py)


@dataclass(frozen=True)
class RankSettings:
    """The knobs of the hybrid ranker, in units of standard deviations of the fused score."""

    window: float = 0.25  # share of the best neighbour's score a row receives
    episode: float = 1.0  # share of its episode's best score a row receives
    speaker: float = 2.0  # boost for rows whose speaker the query names
    lexical_weight: float = 0.7  # weight of the BM25 leg relative to the dense leg
    context_dense: float = 0.5  # share of the mean cosine of a row's neighbours added to its own cosine
    context_lexical: float = 0.1  # weight of the neighbours' text as a second BM25 field (BM25F)
    time: float = 1.0  # boost for rows whose event or said time falls in a period the query names
    dated: float = 1.0  # boost for rows with an event time when the query asks "when ...?"
    pool: int = 200  # candidates taken from each leg on the approximate path
    exact_limit: int = 20_000  # up to this many allowed rows, score every one exactly


DEFAULT_SETTINGS = RankSettings()


def _readable_date(time: str | None) -> str | None:
    """'2023-05-08T13:56:00' -> '8 May 2023' (locale-independent), so that words in a question such
    as 'May' or '2023' can match; unparseable times are used as written."""
    if not time:
        return None
    try:
        dt = datetime.fromisoformat(time.strip())
    except ValueError:
        return time.strip() or None
    return f"{dt.day} {_MONTHS[dt.month - 1]} {dt.year}"


def _unit_text(row: Row) -> str:
    head = _head(row)
    return f"{head}: {row.text}" if head else row.text


def embed_text(row: Row) -> str:
    """The text a memory's vector is computed from (see :func:`embed_rows` for why the bare text)."""
    return row.text


def _head(row: Row) -> str:
    date = _readable_date(row.time)
    when = date
    if row.event:  # when what it says happened, in the words a question would use
        from memos_cli.engine.plaintext.temporal import intervals_of, readable

        events = " ".join(dict.fromkeys(readable(i) for i in intervals_of(row.event)))
        when = f"{date}; {events}" if date and events else date or events
    return " ".join(part for part in (row.speaker, f"({when})" if when else None) if part)


def embed_rows(rows: list[Row], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """The vectors of the rows: the embedding of each memory's bare text.

    Why not the whole unit, speaker and date included? Measured on LoCoMo (recall_any@10): embedding
    the unit lifts dense-only retrieval (0.34 -> 0.64) but not the default hybrid (0.861 vs 0.859),
    whose BM25 leg indexes the unit and whose speaker boost and episode share carry who and when;
    embedding speaker and date apart and mixing them in (0.857-0.861) does not either. The bare text
    keeps ingest at exactly the embedder's speed: one embedding of what the memory says.
    """
    return encode([row.text for row in rows]).astype(np.float32, copy=False)


def lexical_text(row: Row) -> str:
    """The text added to the BM25 index for a memory: who said it and when, then what."""
    return _unit_text(row)


@dataclass
class Structure:
    """Context links between rows (int32 [n], -1 = none).

    ``prev``/``next``: the adjacent row of the same source in ingestion order.
    ``group``: the episode, i.e. rows of the same source and the same date.
    """

    prev: np.ndarray
    next: np.ndarray
    group: np.ndarray


def structure(rows: list[Row]) -> Structure:
    """Neighbours within each source, and episodes of (source, date). Rows with neither a source nor a
    time have no neighbours and are an episode of their own. Cheap enough to recompute wholesale."""
    n = len(rows)
    prev = np.full(n, -1, dtype=np.int32)
    nxt = np.full(n, -1, dtype=np.int32)
    group = np.full(n, -1, dtype=np.int32)
    last: dict[str, int] = {}
    groups: dict[tuple[str | None, str | None], int] = {}
    for i, row in enumerate(rows):
        if row.source is not None:
            j = last.get(row.source)
            if j is not None:
                prev[i], nxt[j] = j, i
            last[row.source] = i
        day = row.time[:10] if row.time else None
        if row.source is None and day is None:
            continue
        group[i] = groups.setdefault((row.source, day), len(groups))
    return Structure(prev=prev, next=nxt, group=group)


@dataclass
class RankInputs:
    """Everything ``rank`` reads; the engine appends to all of it in step as memories arrive."""

    vectors: np.ndarray  # float32 [n, d], unit vectors of embed_rows (each memory's bare text)
    lexical: LexicalIndex
    rows: list[Row]
    structure: Structure
    _cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class _Speakers:
    """Per-row speaker ids and each speaker's name tokens: built once per row count, not per query."""

    n_rows: int
    ids: np.ndarray  # int32 [n], -1 = no speaker
    tokens: list[frozenset[str]]


def _speakers(inputs: RankInputs) -> _Speakers:
    cached = inputs._cache.get("speakers")
    n = len(inputs.rows)
    if isinstance(cached, _Speakers) and cached.n_rows == n:
        return cached
    # Rows are append-only, so an older table is extended rather than rebuilt.
    if isinstance(cached, _Speakers) and cached.n_rows < n:
        start, ids, names = cached.n_rows, list(cached.ids), list(cached.tokens)
    else:
        start, ids, names = 0, [], []
    index = {tok: i for i, tok in enumerate(names)}
    for row in inputs.rows[start:]:
        if not row.speaker:
            ids.append(-1)
            continue
        toks = frozenset(tokenize(row.speaker))
        if not toks:
            ids.append(-1)
            continue
        if toks not in index:
            index[toks] = len(names)
            names.append(toks)
        ids.append(index[toks])
    table = _Speakers(n, np.asarray(ids, dtype=np.int32), names)
    inputs._cache["speakers"] = table
    return table


def _named_speakers(inputs: RankInputs, query: str) -> np.ndarray:
    """Ids of speakers the query names (any of a speaker's name tokens, e.g. a first name)."""
    q = set(tokenize(query))
    table = _speakers(inputs)
    return np.asarray([i for i, toks in enumerate(table.tokens) if toks & q], dtype=np.int32)


# --- shared with engine/plaintext/sharded.py (the sharded index): z-score statistics from float64 partial sums, so a
# sharded ranking can combine per-shard partials into the same statistics; ties broken by row id.
def moments(x: np.ndarray) -> tuple[int, float, float]:
    """``(count, sum, sum of squares)`` of ``x`` in float64: partials that add up across shards."""
    x64 = np.asarray(x, dtype=np.float64)
    return len(x64), float(x64.sum()), float(np.dot(x64, x64))


def zscore_from(x: np.ndarray, stats: tuple[int, float, float]) -> np.ndarray:
    """Standardise ``x`` by the mean and spread that ``stats`` (summed ``moments``) describe."""
    n, total, squares = stats
    if n == 0:
        return np.zeros_like(x)
    mean = total / n
    sd = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
    if sd < 1e-9:
        return np.zeros_like(x)
    return (x - mean) / sd


def _zscore(x: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Standardise ``x`` by the mean and spread of ``ref`` (default: of ``x`` itself)."""
    return zscore_from(x, moments(x if ref is None else ref))


def _top(idx: np.ndarray, score: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Best ``k`` of ``idx`` by ``score``; ties go to the earlier row, so results are deterministic
    (also at the k-th place: every row tied with the k-th is kept before the final sort)."""
    if len(idx) > k:
        kth = np.partition(score, len(score) - k)[len(score) - k]
        keep = np.flatnonzero(score >= kth)
        idx, score = idx[keep], score[keep]
    order = np.lexsort((idx, -score))[:k]
    return [(int(idx[i]), float(score[i])) for i in order]


def _dense_moments(inputs: RankInputs, share: float = 0.0, size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean vector and covariance of the stored vectors (from a fixed spread of at most ``size``
    rows), cached per row count; with a context ``share``, of the vectors ``v + share * mean of the
    neighbours' v`` whose cosines :func:`dense_with_context` computes (it is linear in the vectors).

    The mean and variance of the dense scores over the cube are then ``q @ mu`` and ``q @ cov @ q``:
    O(d^2) per query instead of scoring a sample of rows (a matrix product that BLAS threads make
    slow on a busy machine).
    """
    n = len(inputs.rows)
    cached = inputs._cache.get(f"moments:{share}")
    if isinstance(cached, tuple) and cached[0] == n:
        return cached[1], cached[2]
    sample = np.unique(np.linspace(0, n - 1, num=min(size, n)).astype(np.int64))
    x = inputs.vectors[sample].astype(np.float64)
    if share:
        st = inputs.structure
        total, count = np.zeros_like(x), np.zeros(len(sample))
        for links in (st.prev, st.next):
            nb = links[sample]
            ok = nb >= 0
            total[ok] += inputs.vectors[nb[ok]]
            count += ok
        x = x + share * np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], x)
    mu = x.mean(axis=0)
    cov = np.cov(x, rowvar=False, bias=True) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
    inputs._cache[f"moments:{share}"] = (n, mu, cov)
    return mu, cov


@dataclass
class _Times:
    """Per-row days (since 1970-01-01) for the time prior: when said, and the event intervals flat."""

    n_rows: int
    said: np.ndarray  # int32 [n], a sentinel far outside any period when unknown
    ev_row: np.ndarray  # int32 [m]
    ev_start: np.ndarray  # int32 [m]
    ev_end: np.ndarray  # int32 [m]


_NO_DAY = -(10**8)
_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()


def _asks_when(query: str) -> bool:
    from memos_cli.engine.plaintext.temporal import asks_when

    return asks_when(query)


def _day_number(value: str | None) -> int:
    if not value:
        return _NO_DAY
    try:
        return datetime.fromisoformat(value.strip()[:10]).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return _NO_DAY


def _times(inputs: RankInputs) -> _Times:
    n = len(inputs.rows)
    cached = inputs._cache.get("times")
    if isinstance(cached, _Times) and cached.n_rows == n:
        return cached
    said = np.fromiter((_day_number(r.time) for r in inputs.rows), dtype=np.int32, count=n)
    ev_row, ev_start, ev_end = [], [], []
    for i, row in enumerate(inputs.rows):
        for item in row.event or ():
            if not isinstance(item, dict):
                continue
            start, end = _day_number(item.get("start")), _day_number(item.get("end"))
            if start != _NO_DAY and end != _NO_DAY:
                ev_row.append(i)
                ev_start.append(start)
                ev_end.append(end)
    table = _Times(
        n,
        said,
        np.asarray(ev_row, dtype=np.int32),
        np.asarray(ev_start, dtype=np.int32),
        np.asarray(ev_end, dtype=np.int32),
    )
    inputs._cache["times"] = table
    return table


def in_periods(inputs: RankInputs, periods: list[tuple[str, str]], field: str = "either") -> np.ndarray:
    """Rows whose said time (``field`` said), event time (event) or either falls in one of the
    inclusive ISO-date ``periods``: a boolean array over all rows."""
    table = _times(inputs)
    hit = np.zeros(table.n_rows, dtype=bool)
    for start_iso, end_iso in periods:
        start, end = _day_number(start_iso), _day_number(end_iso)
        if field in ("said", "either"):
            hit |= (table.said >= start) & (table.said <= end)
        if field in ("event", "either") and len(table.ev_row):
            overlap = (table.ev_start <= end) & (table.ev_end >= start)
            hit[table.ev_row[overlap]] = True
    return hit


def rank(
    inputs: RankInputs,
    query: str,
    query_vec: np.ndarray,
    *,
    k: int,
    mode: str = "hybrid",
    mask: np.ndarray | None = None,
    ann: Callable[[np.ndarray, int], np.ndarray] | None = None,
    settings: RankSettings = DEFAULT_SETTINGS,
    periods: list[tuple[str, str]] | None = None,
) -> list[tuple[int, float]]:
    """The best ``k`` rows for ``query`` as ``(row, score)``, best first; rows outside ``mask`` never
    appear. ``ann(query_vec, n)`` returns approximate nearest rows; it is used instead of scoring every
    vector when more than ``settings.exact_limit`` rows are allowed.

    Scores are comparable within one call only: cosine in ``dense`` mode, BM25 in ``lexical`` mode, the
    fused score (in standard deviations) in ``hybrid`` mode. ``periods`` (inclusive ISO-date pairs,
    from :func:`memos_cli.engine.plaintext.temporal.query_intervals`) add ``settings.time`` to rows whose event
    or said time falls in one of them (hybrid mode).
    """
    prepared = prepare(len(inputs.rows), mode, k, query_vec, mask)
    if prepared is None:
        return []
    q, allowed, n_allowed = prepared

    if mode == "lexical":
        rows, scores = inputs.lexical.top(query, k, mask=allowed)
        return [(int(r), float(s)) for r, s in zip(rows, scores, strict=True)]

    exact = ann is None or n_allowed <= settings.exact_limit
    if mode == "dense":
        idx = (
            np.flatnonzero(allowed) if exact or ann is None else _ann_candidates(ann, q, allowed, max(k, settings.pool))
        )
        if idx is None:
            idx = np.flatnonzero(allowed)
        return _top(idx, _dense(inputs.vectors, idx, q), k)

    lex_all = lexical_scores(inputs, query, allowed, settings.context_lexical)
    if exact:
        idx = np.flatnonzero(allowed)
        dense = _dense(inputs.vectors, idx, q)
        if settings.context_dense:
            dense = dense_with_context(inputs.structure, idx, dense, allowed, settings.context_dense)
        lex = lex_all[idx]
        z_dense, z_lex = _zscore(dense), _zscore(lex)
    else:
        idx = _hybrid_candidates(inputs, q, lex_all, allowed, ann, max(k, settings.pool))
        dense = inputs.vectors[idx] @ q
        if settings.context_dense:
            dense = dense_with_context(inputs.structure, idx, dense, allowed, settings.context_dense, inputs.vectors, q)
        lex = lex_all[idx]
        # Standardise by each leg's spread over the cube, not over the candidates (which are all
        # good): BM25 is already computed for every row; the dense moments are cached.
        mu, cov = _dense_moments(inputs, settings.context_dense)
        qd = q.astype(np.float64)
        sd = float(np.sqrt(max(qd @ cov @ qd, 0.0)))
        z_dense = (dense - float(qd @ mu)) / sd if sd > 1e-9 else np.zeros_like(dense)
        z_lex = _zscore(lex, lex_all[allowed])
    fused = (z_dense + settings.lexical_weight * z_lex).astype(np.float32)
    score = _with_context(inputs, idx, fused, settings)
    if settings.speaker:
        named = _named_speakers(inputs, query)
        if len(named):
            score = score + settings.speaker * np.isin(_speakers(inputs).ids[idx], named)
    if settings.time and periods:
        score = score + settings.time * in_periods(inputs, periods)[idx]
    if settings.dated and _asks_when(query):
        table = _times(inputs)
        dated = np.zeros(table.n_rows, dtype=bool)
        dated[table.ev_row] = True
        score = score + settings.dated * dated[idx]
    return _top(idx, score, k)


def prepare(
    n: int, mode: str, k: int, query_vec: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The query vector as float32, the allowed rows of ``n`` and their count; None when nothing can be
    ranked (k < 1, no rows, none allowed). ValueError for an unknown ``mode``. Shared by ``rank`` and the
    sharded index, so both refuse and filter alike."""
    if mode not in MODES:
        raise ValueError(f"unknown ranking mode {mode!r}; expected one of {', '.join(MODES)}")
    if k <= 0 or n == 0:
        return None
    q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
    allowed = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)[:n]
    n_allowed = int(allowed.sum())
    if n_allowed == 0:
        return None
    return q, allowed, n_allowed


def lexical_scores(inputs: RankInputs, query: str, allowed: np.ndarray, share: float) -> np.ndarray:
    """The BM25 leg over every row; with a ``share``, each row's neighbours' text counts as a second
    field (``lexical.neighbour_scores``), lent only by allowed rows."""
    if not share:
        return inputs.lexical.scores(query)
    st, n = inputs.structure, len(inputs.rows)
    cached = inputs._cache.get("lent")
    if not (isinstance(cached, np.ndarray) and len(cached) == n):
        cached = inputs._cache["lent"] = lent_lengths(inputs.lexical._doc_len, st.prev, st.next)
    return inputs.lexical.scores(query, neighbours=Neighbours(st.prev, st.next, allowed, share, cached))


def _dense(vectors: np.ndarray, idx: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosine of the rows ``idx``: gathering most of a large matrix costs more than scoring it all."""
    scores: np.ndarray = (vectors @ q)[idx] if len(idx) * 4 > len(vectors) else vectors[idx] @ q
    return scores


def dense_with_context(
    st: Structure,
    idx: np.ndarray,
    dense: np.ndarray,
    allowed: np.ndarray,
    share: float,
    vectors: np.ndarray | None = None,
    q: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's cosine plus ``share`` of the mean cosine of its allowed neighbours (prev/next in its
    source); a row with no allowed neighbour counts its own cosine instead, so every row is on the
    same scale. ``dense`` holds the cosines of the rows ``idx``; a neighbour outside ``idx`` is scored
    from ``vectors`` and ``q`` (the approximate path), or must be allowed-and-scored (exact paths,
    where ``idx`` is every allowed row). Rows outside ``allowed`` never lend context.
    """
    # Neighbour scores are looked up in the scored rows by binary search: no array as long as the cube.
    keys, vals = np.asarray(idx, dtype=np.int64), np.asarray(dense, dtype=np.float32)
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
    links = [st.prev[idx].astype(np.int64), st.next[idx].astype(np.int64)]
    oks = []
    for nb in links:
        ok = nb >= 0
        ok[ok] = allowed[nb[ok]]
        oks.append(ok)

    def lookup(nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(keys, nb), max(len(keys) - 1, 0))
        return keys[pos] == nb, vals[pos]

    if vectors is not None and q is not None:
        want = np.concatenate([nb[ok] for nb, ok in zip(links, oks, strict=True)])
        missing = np.unique(want[~lookup(want)[0]]) if len(want) else want
        if len(missing):
            keys = np.concatenate([keys, missing])
            vals = np.concatenate([vals, (vectors[missing] @ q).astype(np.float32)])
            order = np.argsort(keys, kind="stable")
            keys, vals = keys[order], vals[order]
    total = np.zeros(len(idx), dtype=np.float32)
    count = np.zeros(len(idx), dtype=np.float32)
    for nb, ok in zip(links, oks, strict=True):
        found, val = lookup(nb)
        ok = ok & found
        total += np.where(ok, val, 0.0).astype(np.float32)
        count += ok
    mean = np.where(count > 0, total / np.maximum(count, 1.0), dense)
    return (dense + np.float32(share) * mean).astype(np.float32)


def _ann_candidates(
    ann: Callable[[np.ndarray, int], np.ndarray], q: np.ndarray, allowed: np.ndarray, want: int
) -> np.ndarray | None:
    """Allowed rows among the ANN hits, or None when the mask leaves too few of them (then the caller
    scores exactly: a filter must never make results silently worse)."""
    hits = np.asarray(ann(q, want), dtype=np.int64).reshape(-1)
    hits = hits[(hits >= 0) & (hits < len(allowed))]
    hits = np.unique(hits[allowed[hits]])
    return hits if len(hits) >= min(want, int(allowed.sum())) // 2 else None


def _hybrid_candidates(
    inputs: RankInputs,
    q: np.ndarray,
    lex_all: np.ndarray,
    allowed: np.ndarray,
    ann: Callable[[np.ndarray, int], np.ndarray] | None,
    pool: int,
) -> np.ndarray:
    """Rows worth scoring exactly: the best of each leg, plus their neighbours (for the window)."""
    dense_hits = _ann_candidates(ann, q, allowed, pool) if ann is not None else None
    if dense_hits is None:
        dense_hits = np.flatnonzero(allowed)  # exact fallback: score all allowed rows
    lex = np.where(allowed, lex_all, 0.0)
    lex_hits = np.flatnonzero(lex > 0)
    if len(lex_hits) > pool:  # rows tied with the pool's last are kept: the candidates never depend on luck
        kth = np.partition(lex[lex_hits], len(lex_hits) - pool)[len(lex_hits) - pool]
        lex_hits = lex_hits[lex[lex_hits] >= kth]
    cand = np.union1d(dense_hits, lex_hits)
    st = inputs.structure
    nbrs = np.concatenate([st.prev[cand], st.next[cand]]).astype(np.int64)
    nbrs = nbrs[nbrs >= 0]
    nbrs = nbrs[allowed[nbrs]]
    return np.union1d(cand, nbrs)


def _with_context(inputs: RankInputs, idx: np.ndarray, fused: np.ndarray, settings: RankSettings) -> np.ndarray:
    """Add the best neighbour's and the episode's best score to each row's fused score.

    Only rows in ``idx`` (allowed rows) lend context: a filtered-out or deleted memory never
    influences a ranking. A row with no scored neighbour gets no window share.
    """
    st = inputs.structure
    out = fused.copy()
    if settings.window:
        # Scores scattered into a full-length array make a neighbour's score one lookup away.
        full = np.full(len(inputs.rows), -np.inf, dtype=np.float32)
        full[idx] = fused
        best = np.full(len(idx), -np.inf, dtype=np.float32)
        for links in (st.prev, st.next):
            nb = links[idx]
            best = np.maximum(best, np.where(nb >= 0, full[nb], -np.inf))
        out += settings.window * np.where(np.isfinite(best), best, 0.0).astype(np.float32)
    if settings.episode:
        groups = st.group[idx]
        solo = groups < 0
        g = np.where(solo, 0, groups).astype(np.int64)
        gmax = np.full(int(g.max()) + 1 if len(g) else 0, -np.inf, dtype=np.float32)
        np.maximum.at(gmax, g[~solo], out[~solo])
        prior = np.where(solo, out, gmax[g])
        out = out + settings.episode * prior
    return out


__all__ = [
    "DEFAULT_SETTINGS",
    "MODES",
    "RankInputs",
    "RankSettings",
    "Row",
    "Structure",
    "dense_with_context",
    "embed_text",
    "lexical_text",
    "rank",
    "structure",
]
