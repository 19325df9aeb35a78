"""Lexical retrieval: a tokenizer and an append-only BM25 index over a cube's memories.

Why written here rather than taken from ``bm25s`` or ``tantivy``: a cube grows by appends (ingest,
chat turns that are remembered), and both of those build an immutable index; ``bm25s`` even bakes the
idf into its stored scores, so every append would mean re-indexing the whole cube. This index stores
raw term frequencies and document frequencies and computes idf and length normalisation at query
time, so an append only tokenizes the new documents and the scores stay exactly those of a fresh
build. Stemming comes from PyStemmer (the Snowball English stemmer, in C).

Postings live in two CSR segments, like a tiny LSM tree: ``main`` (older documents) and ``delta``
(recent appends). An append rebuilds only the small delta; the delta is folded into main when it
grows past a fraction of main, so appends stay cheap and queries touch two contiguous slices per term.
Persistence is an ``.npz`` (loaded with ``allow_pickle=False``) plus the vocabulary as JSON.

Why one module of ~440 lines: the postings layout, BM25 and its neighbour-text field (BM25F) read the
same arrays; the field is a few functions beside the plain score.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import Stemmer

from memos_cli.cube import io as cube_io

# Bump when tokenize() changes: an index saved by another tokenizer must be rebuilt, not reused.
TOKENIZER_VERSION = "snowball-english-2-folded-cjk"
FORMAT_VERSION = 1
INDEX_FILE = "lexical.npz"
# BM25 parameters. Memories are short and of similar length, so length normalisation (b) matters less
# than for web pages; b=0.4 and a gentler tf saturation (k1=0.9) are the usual short-text settings
# (Anserini's defaults) and measured best on LoCoMo, on a flat plateau (b 0.3-0.5 all within 0.3 points).
K1 = 0.9
B = 0.4
VOCAB_FILE = "lexical.json"
MAX_FILE_BYTES = 1 << 34  # 16 GiB: a bound on what a (derived, maybe hostile) index file makes memos read

# English function words (the classic Snowball/NLTK list, trimmed of words that carry meaning in
# memories such as "may" the month, "will", "before"/"after", "not"). Applied before stemming.
STOPWORDS = frozenset(
    """
    a about above again against all am an and any are as at be because been being below between both
    but by can could did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why with would you your yours yourself
    yourselves s t d ll m re ve also
    """.split()
)

_WORD = re.compile(r"\w+", re.UNICODE)
# Han and kana: written without spaces, so a "word" is a whole clause. Indexed as characters and
# character bigrams (the CJK analysers of Lucene and Elasticsearch do the same), so "東京" finds
# "東京タワーは赤い".
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def _fold(text: str) -> str:
    """Lowercase with accents removed ("Café" -> "cafe"), so a query typed without them still matches."""
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _words(text: str) -> list[str]:
    out: list[str] = []
    for word in _WORD.findall(_fold(text).replace("_", " ")):
        if not _CJK.search(word):
            out.append(word)
            continue
        position = 0
        for run in _CJK.finditer(word):
            if run.start() > position:
                out.append(word[position : run.start()])
            chars = run.group()
            out.extend(chars)
            out.extend(chars[i : i + 2] for i in range(len(chars) - 1))
            position = run.end()
        if position < len(word):
            out.append(word[position:])
    return out


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    # PyStemmer keeps its own word cache, so repeated words cost a dict lookup.
    return Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    """Lowercased, accent-folded unicode word tokens (CJK as characters and bigrams), stopwords
    dropped, Snowball-stemmed.

    Underscores split words (``\\w`` matches them, but ``foo_bar`` is two words in prose and in ids).
    """
    words = [w for w in _words(text) if w not in STOPWORDS]
    stems: list[str] = _stemmer().stemWords(words)
    return stems


@dataclass
class _Segment:
    """Postings of a run of documents in CSR form: term t's postings are ``docs/tfs[indptr[t]:indptr[t+1]]``.

    ``docs`` are ascending within a term. The term arrays are kept too so a segment can be merged.
    """

    indptr: np.ndarray  # int64 [n_terms_at_build + 1]
    terms: np.ndarray  # int32 [nnz]
    docs: np.ndarray  # int32 [nnz]
    tfs: np.ndarray  # int32 [nnz]

    @classmethod
    def empty(cls) -> _Segment:
        z = np.zeros(0, dtype=np.int32)
        return cls(np.zeros(1, dtype=np.int64), z, z.copy(), z.copy())

    @classmethod
    def build(cls, terms: np.ndarray, docs: np.ndarray, tfs: np.ndarray, n_terms: int) -> _Segment:
        # A stable sort by term keeps the docs of each term in ascending (ingestion) order.
        order = np.argsort(terms, kind="stable")
        terms, docs, tfs = terms[order], docs[order], tfs[order]
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(np.bincount(terms, minlength=n_terms), out=indptr[1:])
        return cls(indptr, terms.astype(np.int32), docs.astype(np.int32), tfs.astype(np.int32))

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        if term + 1 >= len(self.indptr):
            return self.docs[:0], self.tfs[:0]
        lo, hi = self.indptr[term], self.indptr[term + 1]
        return self.docs[lo:hi], self.tfs[lo:hi]

    def __len__(self) -> int:
        return len(self.docs)


@dataclass(frozen=True)
class Neighbours:
    """A second BM25 field for each row: the text of its neighbours (the memories before and after it
    in its source), at ``share`` of the weight of its own. Arrays over all rows; -1 = no neighbour; only
    rows in ``lends`` (the query's allowed rows) lend their text."""

    prev: np.ndarray
    next: np.ndarray
    lends: np.ndarray
    share: float
    lent: np.ndarray | None = None  # each row's length times its number of neighbours: see lent_lengths


def lent_lengths(lengths: np.ndarray, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Each row's length times its number of neighbours (float64 [n]): the length it lends in all, from
    which the average combined length follows; callers cache it per row count (it is O(n))."""
    degree = (np.asarray(prev) >= 0).astype(np.float64) + (np.asarray(nxt) >= 0)
    return np.asarray(lengths, dtype=np.float64) * degree


def bm25_idf(n_docs: Any, df: Any) -> Any:
    """BM25's idf of a term in ``df`` of ``n_docs`` documents (scalars or arrays): one formula for the
    index, its shards and the sharded coordinator, so their scores agree."""
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def neighbour_scores(
    terms: list[tuple[float, np.ndarray, np.ndarray]],
    lengths: np.ndarray,
    nb: Neighbours,
    k1: float = K1,
    b: float = B,
) -> np.ndarray:
    """BM25F (float32 [n]) of every row for query terms given as ``(idf, rows, tf)``: a row's term
    frequency is its own plus ``nb.share`` of each lending neighbour's, its length likewise, and the
    average length is that of these combined lengths. A short reply ("Same here! It's my go-to for
    stress relief") then matches the terms of the turn it answers, and a turn the words of its reply,
    with BM25's saturation applied to the sum (unlike adding a share of the neighbours' scores, which
    measured no better on LoCoMo). Written once for the index and the sharded coordinator.
    """
    n = len(lengths)
    out = np.zeros(n, dtype=np.float32)
    if not n or not terms:
        return out
    share, lends = float(nb.share), np.asarray(nb.lends, dtype=bool)
    links = (np.asarray(nb.prev, dtype=np.int64), np.asarray(nb.next, dtype=np.int64))
    dl = np.asarray(lengths, dtype=np.float64)
    # Each lending row adds share * its length to each of its neighbours: the average combined length
    # without building it for every row (only the rows a term reaches need theirs).
    lent = nb.lent if nb.lent is not None else lent_lengths(lengths, *links)
    lent_total = float(lent.sum()) if lends.all() else float(lent[lends].sum())
    avgdl = max((float(dl.sum()) + share * lent_total) / n, 1e-9)
    for w, docs, tf in terms:
        if not len(docs):
            continue
        docs = np.asarray(docs, dtype=np.int64)
        lend = lends[docs]
        lent_tf = share * tf[lend].astype(np.float64)
        # Row r receives from the row before it (next[d] == r) and from the row after it (prev[d] == r).
        receivers = np.concatenate([docs, links[1][docs[lend]], links[0][docs[lend]]])
        amounts = np.concatenate([tf.astype(np.float64), lent_tf, lent_tf])
        keep = receivers >= 0
        receivers, amounts = receivers[keep], amounts[keep]
        if len(receivers) * 8 < n:  # few rows: sort them and sum each row's run
            order = np.argsort(receivers, kind="stable")
            receivers, amounts = receivers[order], amounts[order]
            starts = np.flatnonzero(np.concatenate([[True], receivers[1:] != receivers[:-1]]))
            rows, freq = receivers[starts], np.add.reduceat(amounts, starts)
        else:  # else one pass over the cube is cheaper (the rows reached found in a boolean array)
            reached = np.zeros(n, dtype=bool)
            reached[receivers] = True
            rows = np.flatnonzero(reached)
            freq = np.bincount(receivers, weights=amounts, minlength=n)[rows]
        length = dl[rows].copy()
        for link in links:
            nbr = link[rows]
            ok = nbr >= 0
            ok[ok] = lends[nbr[ok]]
            length[ok] += share * dl[nbr[ok]]
        f = freq.astype(np.float32)
        norm = (k1 * (1.0 - b + b * length / avgdl)).astype(np.float32)
        out[rows] += np.float32(w * (k1 + 1.0)) * f / (f + norm)
    return out


class LexicalIndex:
    """Okapi BM25 over documents numbered 0.. in order of addition.

    Rows are never removed (the engine masks archived or deleted memories), so numbering is stable.
    """

    def __init__(self, k1: float = K1, b: float = B) -> None:
        self.k1 = k1
        self.b = b
        self._vocab: dict[str, int] = {}
        self._terms: list[str] = []
        self._df = np.zeros(0, dtype=np.int64)
        self._doc_len = np.zeros(0, dtype=np.int32)
        self._main = _Segment.empty()
        self._delta = _Segment.empty()

    def __len__(self) -> int:
        return len(self._doc_len)

    @property
    def n_terms(self) -> int:
        return len(self._terms)

    # ---- building -----------------------------------------------------------------------------

    def add(self, texts: list[str]) -> None:
        """Append documents; their rows are ``len(self) .. len(self) + len(texts) - 1``."""
        if not texts:
            return
        start = len(self)
        term_ids: list[int] = []
        doc_ids: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.int32)
        vocab, terms = self._vocab, self._terms
        for i, text in enumerate(texts):
            tokens = tokenize(text)
            lengths[i] = len(tokens)
            for tok in tokens:
                tid = vocab.get(tok)
                if tid is None:
                    tid = vocab[tok] = len(terms)
                    terms.append(tok)
                term_ids.append(tid)
            doc_ids.extend([start + i] * len(tokens))
        n_terms = len(terms)
        # One (doc, term) key per token; unique with counts gives the term frequencies.
        keys = np.asarray(doc_ids, dtype=np.int64) * n_terms + np.asarray(term_ids, dtype=np.int64)
        keys, tf = np.unique(keys, return_counts=True)
        new_docs, new_terms = keys // n_terms, keys % n_terms

        df = np.zeros(n_terms, dtype=np.int64)
        df[: len(self._df)] = self._df
        df += np.bincount(new_terms, minlength=n_terms)
        self._df = df
        self._doc_len = np.concatenate([self._doc_len, lengths])

        d = self._delta
        self._delta = _Segment.build(
            np.concatenate([d.terms, new_terms.astype(np.int32)]),
            np.concatenate([d.docs, new_docs.astype(np.int32)]),
            np.concatenate([d.tfs, tf.astype(np.int32)]),
            n_terms,
        )
        # Fold the delta into main once it is a sizeable fraction of it: amortised O(1) per posting.
        if len(self._delta) > max(20_000, len(self._main) // 4):
            self._compact()

    def _compact(self) -> None:
        m, d = self._main, self._delta
        if not len(d):
            return
        self._main = _Segment.build(
            np.concatenate([m.terms, d.terms]),
            np.concatenate([m.docs, d.docs]),
            np.concatenate([m.tfs, d.tfs]),
            self.n_terms,
        )
        self._delta = _Segment.empty()

    # ---- querying -----------------------------------------------------------------------------

    def query_terms(self, query: str) -> list[int]:
        """Known term ids of the query, each once (BM25 sums over distinct query terms)."""
        seen: dict[int, None] = {}
        for tok in tokenize(query):
            tid = self._vocab.get(tok)
            if tid is not None:
                seen[tid] = None
        return list(seen)

    def idf(self, term_ids: list[int]) -> np.ndarray:
        """Lucene's non-negative BM25 idf, from the current document frequencies."""
        n = len(self)
        df = self._df[np.asarray(term_ids, dtype=np.int64)].astype(np.float64)
        idf: np.ndarray = bm25_idf(n, df)
        return idf

    def add_term(self, out: np.ndarray, tid: int, w: float | np.floating[Any], avgdl: float) -> None:
        """Add term ``tid``'s BM25 contribution, with idf ``w`` and average length ``avgdl``, to every
        document's score in ``out`` (the one place the BM25 arithmetic is written: the sharded index
        passes its global statistics)."""
        k1, b = self.k1, self.b
        for seg in (self._main, self._delta):
            docs, tf = seg.postings(tid)
            if not len(docs):
                continue
            tf = tf.astype(np.float32)
            norm = k1 * (1.0 - b + b * self._doc_len[docs] / avgdl)
            out[docs] += np.float32(w * (k1 + 1.0)) * tf / (tf + norm)

    def postings(self, tid: int) -> tuple[np.ndarray, np.ndarray]:
        """Every document holding term ``tid`` (ascending) and its frequency there."""
        parts = [seg.postings(tid) for seg in (self._main, self._delta)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def scores(self, query: str, rows: np.ndarray | None = None, neighbours: Neighbours | None = None) -> np.ndarray:
        """BM25 score of every row (float32 [n]), or of the given rows only, in that order; with
        ``neighbours``, BM25F over a row and its neighbours' text (:func:`neighbour_scores`)."""
        n = len(self)
        out = np.zeros(n, dtype=np.float32)
        term_ids = self.query_terms(query)
        if neighbours is not None and neighbours.share:
            if n and term_ids:
                terms = [(float(w), *self.postings(t)) for t, w in zip(term_ids, self.idf(term_ids), strict=True)]
                out = neighbour_scores(terms, self._doc_len, neighbours, self.k1, self.b)
        elif n and term_ids:
            avgdl = max(float(self._doc_len.sum()) / n, 1e-9)
            for tid, w in zip(term_ids, self.idf(term_ids), strict=True):
                self.add_term(out, tid, w, avgdl)  # w keeps its numpy type: the arithmetic is unchanged
        if rows is not None:
            return out[np.asarray(rows, dtype=np.int64)]
        return out

    def top(self, query: str, n: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best rows with a positive score (allowed by ``mask``), best first."""
        s = self.scores(query)
        if mask is not None:
            s = np.where(mask, s, 0.0).astype(np.float32)
        hits = np.flatnonzero(s > 0)
        if len(hits) > n:  # keep every row tied with the n-th, so the tie goes to the earlier row
            kth = np.partition(s[hits], len(hits) - n)[len(hits) - n]
            hits = hits[s[hits] >= kth]
        order = np.lexsort((hits, -s[hits]))[:n]  # score desc, then earlier row first: deterministic
        hits = hits[order]
        return hits.astype(np.int64), s[hits]

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write ``lexical.npz`` and ``lexical.json`` into ``directory`` (its parent trusted; each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_to(directory.parent, directory.name)

    def save_to(self, root: Path, rel: str) -> None:
        """Write the index into folder ``rel`` of ``root``, confined (cube.io: no link followed)."""
        self._compact()
        m = self._main
        meta = {
            "format_version": FORMAT_VERSION,
            "tokenizer": TOKENIZER_VERSION,
            "k1": self.k1,
            "b": self.b,
            "n_docs": len(self),
            "terms": self._terms,
        }
        cube_io.mkdirs(root, rel)
        cube_io.atomic_write(root, f"{rel}/{VOCAB_FILE}", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        buffer = io.BytesIO()
        np.savez(buffer, indptr=m.indptr, terms=m.terms, docs=m.docs, tfs=m.tfs, df=self._df, doc_len=self._doc_len)
        cube_io.atomic_write(root, f"{rel}/{INDEX_FILE}", buffer.getvalue())

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        """Read an index written by :meth:`save`; ``ValueError`` if it is stale or inconsistent
        (the caller rebuilds it: it is derived data)."""
        directory = Path(directory)
        return cls.load_from(directory.parent, directory.name)

    @classmethod
    def load_from(cls, root: Path, rel: str, *, limit: int = MAX_FILE_BYTES) -> LexicalIndex:
        """:meth:`load` from folder ``rel`` of ``root``, confined, each file read up to ``limit`` bytes; the
        ``.npz`` must be stored uncompressed (what :meth:`save` writes), so it cannot unpack to more."""
        meta = json.loads(cube_io.read_bytes(root, f"{rel}/{VOCAB_FILE}", limit=limit) or b"")
        if not isinstance(meta, dict):
            raise ValueError("lexical index metadata is not an object; rebuild it")
        if meta.get("format_version") != FORMAT_VERSION or meta.get("tokenizer") != TOKENIZER_VERSION:
            raise ValueError("lexical index was written by another version; rebuild it")
        data = cube_io.read_bytes(root, f"{rel}/{INDEX_FILE}", limit=limit) or b""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                if any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist()):
                    raise ValueError("lexical index arrays are compressed; memos never writes that")
        except zipfile.BadZipFile:
            raise ValueError("lexical index arrays are not an .npz") from None
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {name: z[name] for name in ("indptr", "terms", "docs", "tfs", "df", "doc_len")}
        index = cls(k1=float(meta["k1"]), b=float(meta["b"]))
        index._terms = list(meta["terms"])
        index._vocab = {t: i for i, t in enumerate(index._terms)}
        index._df = arrays["df"].astype(np.int64)
        index._doc_len = arrays["doc_len"].astype(np.int32)
        index._main = _Segment(arrays["indptr"], arrays["terms"], arrays["docs"], arrays["tfs"])
        if (
            len(index._doc_len) != meta["n_docs"]
            or len(index._df) != len(index._terms)
            or len(index._main.indptr) != len(index._terms) + 1
            or int(index._main.indptr[-1]) != len(index._main.docs)
        ):
            raise ValueError("lexical index files do not match each other; rebuild it")
        return index


__all__ = [
    "STOPWORDS",
    "TOKENIZER_VERSION",
    "LexicalIndex",
    "Neighbours",
    "lent_lengths",
    "neighbour_scores",
    "tokenize",
]
