"""The fusion ranker on small hand-made cubes: structure, modes, masks, context and the ANN path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from memos_cli.engine.plaintext.lexical import LexicalIndex, Neighbours, neighbour_scores, tokenize
from memos_cli.engine.plaintext.ranking import (
    DEFAULT_SETTINGS,
    RankInputs,
    RankSettings,
    Row,
    _dense_moments,
    dense_with_context,
    embed_rows,
    embed_text,
    lexical_scores,
    lexical_text,
    rank,
    structure,
)

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def make_inputs(rows: list[Row], vectors: np.ndarray | None = None, seed: int = 0) -> RankInputs:
    if vectors is None:
        vectors = unit(np.random.default_rng(seed).normal(size=(len(rows), DIM)))
    lex = LexicalIndex()
    lex.add([lexical_text(r) for r in rows])
    return RankInputs(vectors=vectors, lexical=lex, rows=rows, structure=structure(rows))


def chat(
    texts: list[str], source: str = "a.jsonl", day: str = "2024-03-01", speakers: tuple[str, ...] = ("Ann", "Bob")
) -> list[Row]:
    return [
        Row(
            text=t,
            speaker=speakers[i % len(speakers)],
            time=f"{day}T10:{i:02d}:00",
            source=source,
            source_id=f"D1:{i + 1}",
            type="dialogue",
            tags=[],
        )
        for i, t in enumerate(texts)
    ]


FILLER = [f"filler sentence number {w} about weather" for w in ("one", "two", "three", "four", "five", "six")]


def test_lexical_text_names_speaker_and_date_and_vectors_embed_the_bare_text() -> None:
    row = Row(text="I adopted a cat.", speaker="Ann", time="2023-05-08T13:56:00")
    assert lexical_text(row) == "Ann (8 May 2023): I adopted a cat."
    assert embed_text(row) == "I adopted a cat."
    assert lexical_text(Row(text="plain")) == "plain"
    assert lexical_text(Row(text="x", time="2023-05-08")) == "(8 May 2023): x"
    assert lexical_text(Row(text="x", time="last spring")) == "(last spring): x"
    seen: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(list(texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    assert embed_rows([row, Row(text="plain")], encode).shape == (2, 4)
    assert seen == [["I adopted a cat.", "plain"]]


def test_structure_links_neighbours_within_each_source_and_groups_by_date() -> None:
    rows = [
        Row(text="a1", source="a", time="2024-01-01"),
        Row(text="b1", source="b", time="2024-01-01"),
        Row(text="a2", source="a", time="2024-01-01T09:00:00"),
        Row(text="a3", source="a", time="2024-01-02"),
        Row(text="loose"),
        Row(text="b2", source="b", time="2024-01-01"),
    ]
    st = structure(rows)
    assert st.prev.tolist() == [-1, -1, 0, 2, -1, 1]
    assert st.next.tolist() == [2, 5, 3, -1, -1, -1]
    g = st.group.tolist()
    assert g[0] == g[2] != g[3]  # same source and day; a new day is a new episode
    assert g[1] == g[5] != g[0]  # same day, other source
    assert g[4] == -1
    assert structure([]).prev.shape == (0,)


def test_empty_index_and_nonpositive_k() -> None:
    inputs = make_inputs([], vectors=np.zeros((0, DIM), dtype=np.float32))
    assert rank(inputs, "anything", unit(np.ones(DIM)), k=5) == []
    inputs = make_inputs(chat(FILLER))
    assert rank(inputs, "weather", unit(np.ones(DIM)), k=0) == []


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_k_limit_order_and_mask(mode: str) -> None:
    inputs = make_inputs(chat([*FILLER, "weather weather report"]))
    q = inputs.vectors[2]
    hits = rank(inputs, "weather", q, k=3, mode=mode)
    assert len(hits) == 3
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    mask = np.zeros(len(inputs.rows), dtype=bool)
    mask[[1, 4]] = True
    masked = rank(inputs, "weather", q, k=5, mode=mode, mask=mask)
    assert {r for r, _ in masked} == {1, 4}
    assert rank(inputs, "weather", q, k=5, mode=mode, mask=np.zeros(len(inputs.rows), dtype=bool)) == []


def test_modes_differ_sensibly() -> None:
    texts = ["the zeppelin landed at noon", *FILLER, "nothing in common here"]
    vectors = unit(np.random.default_rng(1).normal(size=(len(texts), DIM)))
    inputs = make_inputs(chat(texts), vectors)
    query_vec = vectors[-1]  # the query means what the last row means, but shares its words with row 0
    assert rank(inputs, "zeppelin", query_vec, k=1, mode="dense")[0][0] == len(texts) - 1
    assert rank(inputs, "zeppelin", query_vec, k=1, mode="lexical")[0][0] == 0
    lexical_hits = rank(inputs, "zeppelin", query_vec, k=10, mode="lexical")
    assert [r for r, _ in lexical_hits] == [0]  # only rows that share a word
    # the two legs alone (no context: with it, the dense winner's neighbour may rightly come second)
    legs = RankSettings(window=0.0, episode=0.0, context_dense=0.0)
    hybrid = [r for r, _ in rank(inputs, "zeppelin", query_vec, k=2, mode="hybrid", settings=legs)]
    assert set(hybrid) == {0, len(texts) - 1}
    with pytest.raises(ValueError):
        rank(inputs, "zeppelin", query_vec, k=2, mode="semantic")


def test_neighbour_context_lifts_the_reply_to_a_matching_turn() -> None:
    # Two equally relevant replies; the later one follows the turn that matches the query.
    texts = ["at a small shop downtown", *FILLER, "where did you buy the violin", "at a small shop uptown"]
    rng = np.random.default_rng(2)
    vectors = unit(np.tile(np.eye(DIM)[0], (len(texts), 1)) + 0.01 * rng.normal(size=(len(texts), DIM)))
    vectors[0] = vectors[-1] = unit(np.eye(DIM)[1])
    inputs = make_inputs(chat(texts), vectors)
    q = unit(np.eye(DIM)[1] + np.eye(DIM)[0] * 0.2)
    last = len(texts) - 1

    def order(window: float) -> list[int]:
        # The window alone: the neighbour-text field would lend the reply "violin" too (tested below).
        s = dataclasses.replace(DEFAULT_SETTINGS, window=window, episode=0.0, context_lexical=0.0)
        return [r for r, _ in rank(inputs, "violin shop", q, k=len(texts), settings=s)]

    assert order(0.0).index(0) < order(0.0).index(last)  # a tie: the earlier row wins
    assert order(0.5).index(last) < order(0.5).index(0)  # its neighbour asked about the violin


def test_neighbours_do_not_cross_sources_or_masks() -> None:
    a = chat(["violin violin violin"], source="a.jsonl")
    b = chat(["unrelated words here", "more unrelated words"], source="b.jsonl")
    inputs = make_inputs([*a, *b])
    st = inputs.structure
    assert st.prev[1] == -1 and st.next[0] == -1 and st.prev[2] == 1


def test_episode_prior_prefers_rows_of_a_matching_session() -> None:
    other = chat(["tea please", "filler sentence number one about weather"], day="2024-01-01")
    party = chat(["we planned the garden party", "the garden party menu", "tea please"], day="2024-02-01")
    rows = [*other, *party]
    vectors = unit(np.ones((len(rows), DIM)))  # dense says nothing: only words and context decide
    inputs = make_inputs(rows, vectors)

    def order(episode: float) -> list[int]:
        s = dataclasses.replace(DEFAULT_SETTINGS, window=0.0, speaker=0.0, episode=episode, context_lexical=0.0)
        return [r for r, _ in rank(inputs, "garden party tea", vectors[0], k=5, settings=s)]

    assert order(0.0).index(0) < order(0.0).index(4)  # identical text: the earlier row wins a tie
    assert order(1.0).index(4) < order(1.0).index(0)  # row 4's session is about the party


def test_speaker_named_in_query_is_boosted() -> None:
    rows = chat(["I love hiking", "I love hiking"], speakers=("Caroline Smith", "Melanie"))
    vectors = unit(np.ones((2, DIM)))
    inputs = make_inputs(rows, vectors)
    off = dataclasses.replace(DEFAULT_SETTINGS, speaker=0.0, window=0.0, episode=0.0)
    on = dataclasses.replace(off, speaker=1.0)
    assert rank(inputs, "What does Melanie love?", vectors[0], k=1, settings=on)[0][0] == 1
    assert rank(inputs, "What does caroline love?", vectors[0], k=1, settings=on)[0][0] == 0
    # The name is also in the indexed text (so BM25 alone leans the same way); the boost adds to it.
    gap = lambda s: (lambda hits: hits[0][1] - hits[1][1])(rank(inputs, "Melanie?", vectors[0], k=2, settings=s))  # noqa: E731
    assert gap(on) == pytest.approx(gap(off) + 1.0, abs=1e-4)
    # The speaker table follows appended rows.
    inputs.rows.append(Row(text="I love hiking", speaker="Zoe", source="a.jsonl"))
    inputs.vectors = np.vstack([vectors, vectors[:1]])
    inputs.lexical.add([lexical_text(inputs.rows[-1])])
    inputs.structure = structure(inputs.rows)
    assert rank(inputs, "What does Zoe love?", vectors[0], k=1, settings=on)[0][0] == 2


def test_ann_path_matches_exact_and_respects_mask() -> None:
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(50)]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(400)]
    rows = [
        Row(
            text=t,
            speaker=None,
            time=f"2024-01-{1 + i // 40:02d}",
            source=f"s{i // 100}",
            source_id=str(i),
            type="note",
        )
        for i, t in enumerate(texts)
    ]
    inputs = make_inputs(rows, unit(rng.normal(size=(400, DIM))))
    calls: list[int] = []

    def ann(q: np.ndarray, n: int) -> np.ndarray:
        calls.append(n)
        return np.argsort(-(inputs.vectors @ q))[:n]

    small = dataclasses.replace(DEFAULT_SETTINGS, exact_limit=50, pool=120)
    q = inputs.vectors[7]
    exact = rank(inputs, texts[7], q, k=5)
    approx = rank(inputs, texts[7], q, k=5, ann=ann, settings=small)
    assert calls and approx[0][0] == exact[0][0] == 7
    assert len({r for r, _ in approx} & {r for r, _ in exact}) >= 4
    mask = np.zeros(400, dtype=bool)
    mask[200:] = True
    hits = rank(inputs, texts[7], q, k=10, ann=ann, mask=mask, settings=small)
    assert len(hits) == 10 and all(r >= 200 for r, _ in hits)
    dense = rank(inputs, texts[7], q, k=10, mode="dense", ann=ann, mask=mask, settings=small)
    assert len(dense) == 10 and all(r >= 200 for r, _ in dense)


def test_ann_that_only_finds_masked_rows_falls_back_to_exact() -> None:
    rng = np.random.default_rng(4)
    rows = [Row(text=f"note {i}", source="n.md") for i in range(100)]
    inputs = make_inputs(rows, unit(rng.normal(size=(100, DIM))))
    mask = np.zeros(100, dtype=bool)
    mask[90:] = True
    useless = lambda q, n: np.arange(min(n, 10))  # noqa: E731  (always rows the mask excludes)
    small = dataclasses.replace(DEFAULT_SETTINGS, exact_limit=5)
    for mode in ("hybrid", "dense"):
        hits = rank(inputs, "note", inputs.vectors[95], k=3, mode=mode, mask=mask, ann=useless, settings=small)
        assert len(hits) == 3 and all(r >= 90 for r, _ in hits)
    assert (
        rank(inputs, "note", inputs.vectors[95], k=1, mode="dense", mask=mask, ann=useless, settings=small)[0][0] == 95
    )


def test_dense_context_adds_a_share_of_the_neighbours_mean_cosine() -> None:
    rows = chat(["a", "b", "c"]) + [Row(text="alone", source="other.md")]
    st = structure(rows)
    idx = np.arange(4)
    dense = np.array([0.8, 0.1, 0.4, 0.3], dtype=np.float32)
    got = dense_with_context(st, idx, dense, np.ones(4, dtype=bool), 0.5)
    # row 0: its one neighbour (0.1); row 1: mean of 0.8 and 0.4; row 3 has none and counts itself
    np.testing.assert_allclose(got, [0.8 + 0.05, 0.1 + 0.3, 0.4 + 0.05, 0.3 + 0.15], rtol=1e-6)
    # a masked-out neighbour lends nothing: row 1 then only sees row 2
    allowed = np.array([False, True, True, True])
    got = dense_with_context(st, idx[1:], dense[1:], allowed, 0.5)
    np.testing.assert_allclose(got, [0.1 + 0.2, 0.4 + 0.05, 0.3 + 0.15], rtol=1e-6)


def test_dense_context_scores_missing_neighbours_from_the_vectors() -> None:
    rows = chat([f"t{i}" for i in range(6)])
    vectors = unit(np.random.default_rng(5).normal(size=(6, DIM)))
    st, q, allowed = structure(rows), vectors[2], np.ones(6, dtype=bool)
    full = dense_with_context(st, np.arange(6), vectors @ q, allowed, 0.25)
    some = np.array([1, 4])  # the approximate path: candidates only, their neighbours scored on demand
    got = dense_with_context(st, some, vectors[some] @ q, allowed, 0.25, vectors, q)
    np.testing.assert_allclose(got, full[some], rtol=1e-6)


def test_dense_context_moments_match_the_context_cosines() -> None:
    rows = chat([f"t{i}" for i in range(40)]) + [Row(text=f"n{i}", source="n.md") for i in range(20)]
    vectors = unit(np.random.default_rng(6).normal(size=(60, DIM)))
    inputs = make_inputs(rows, vectors)
    q = unit(np.random.default_rng(7).normal(size=DIM))
    ctx = dense_with_context(inputs.structure, np.arange(60), vectors @ q, np.ones(60, dtype=bool), 0.25)
    mu, cov = _dense_moments(inputs, 0.25)
    assert float(q @ mu) == pytest.approx(float(ctx.mean()), abs=1e-5)
    assert float(np.sqrt(q @ cov @ q)) == pytest.approx(float(ctx.std()), abs=1e-5)
    mu0, _ = _dense_moments(inputs, 0.0)  # the cache is keyed by the share too
    assert float(q @ mu0) == pytest.approx(float((vectors @ q).mean()), abs=1e-5)


def test_dense_context_lifts_a_contentless_reply_to_a_matching_question() -> None:
    # "sounds fun, I'm in" says nothing alone; its turn before is what the query is about
    texts = [*FILLER, "want to go kayaking on the lake on saturday?", "sounds fun, I'm in", *FILLER]
    rng = np.random.default_rng(8)
    vectors = unit(rng.normal(size=(len(texts), DIM)))
    q = vectors[6].copy()
    vectors[7] = unit(0.35 * q + rng.normal(size=DIM) * 0.2)  # the reply is only loosely related
    inputs = make_inputs(chat(texts), vectors)
    plain = RankSettings(window=0.0, episode=0.0, context_dense=0.0, speaker=0.0)
    with_ctx = dataclasses.replace(plain, context_dense=0.5)
    before = [r for r, _ in rank(inputs, "zzz", q, k=len(texts), settings=plain)]
    after = [r for r, _ in rank(inputs, "zzz", q, k=len(texts), settings=with_ctx)]
    assert after.index(7) < before.index(7)


def test_neighbour_text_is_a_second_bm25_field() -> None:
    texts = ["where did you buy the violin", "at a small shop downtown", "unrelated words", "violin strings"]
    rows = chat(texts) + [Row(text="a violin alone", source="other.md")]
    inputs = make_inputs(rows)
    lex, st = inputs.lexical, inputs.structure
    everyone = np.ones(len(rows), dtype=bool)
    plain = lexical_scores(inputs, "violin", everyone, 0.0)
    ctx = lexical_scores(inputs, "violin", everyone, 0.1)
    assert plain[1] == 0 < ctx[1] < ctx[0]  # the reply borrows its question's word, at a tenth of the weight
    assert plain[2] == 0 < ctx[2]  # row 2 sits before "violin strings"
    # BM25F by hand for row 1: tf 0.1 (from row 0), length its own plus a tenth of both neighbours'
    n_tok = [len(tokenize(lexical_text(r))) for r in rows]
    lengths = [n_tok[i] + 0.1 * sum(n_tok[j] for j in (i - 1, i + 1) if 0 <= j < 4) for i in range(4)] + [n_tok[4]]
    idf = float(np.log1p((5 - 3 + 0.5) / (3 + 0.5)))
    norm = lex.k1 * (1 - lex.b + lex.b * lengths[1] / np.mean(lengths))
    assert ctx[1] == pytest.approx(idf * (lex.k1 + 1) * 0.1 / (0.1 + norm), rel=1e-5)
    # a masked-out row lends nothing: row 1 then has no violin neighbour
    assert lexical_scores(inputs, "violin", np.arange(len(rows)) != 0, 0.1)[1] == 0
    # with no share, the BM25F arithmetic is plain BM25's
    tids = lex.query_terms("violin shop")
    terms = [(float(w), *lex.postings(t)) for t, w in zip(tids, lex.idf(tids), strict=True)]
    none = neighbour_scores(terms, lex._doc_len, Neighbours(st.prev, st.next, everyone, 0.0), lex.k1, lex.b)
    np.testing.assert_allclose(none, lex.scores("violin shop"), rtol=1e-6)
