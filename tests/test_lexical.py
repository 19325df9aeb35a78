"""The BM25 index: tokenization, scoring, appends that keep idf exact, persistence without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memos_cli.engine.plaintext.lexical import INDEX_FILE, VOCAB_FILE, LexicalIndex, tokenize

DOCS = [
    "The cat sat on the mat",
    "Dogs are running in the park",
    "A cat and a dog played together",
    "Quantum chromodynamics lecture notes",
    "The park was closed for the festival",
]


def build(docs: list[str], **kw: float) -> LexicalIndex:
    index = LexicalIndex(**kw)
    index.add(docs)
    return index


def test_tokenize_lowercases_drops_stopwords_and_stems() -> None:
    assert tokenize("The Dogs were Running!") == ["dog", "run"]
    assert tokenize("") == []
    assert tokenize("the of and") == []


def test_tokenize_keeps_unicode_words_and_splits_underscores() -> None:
    assert tokenize("Café in Zürich") == ["cafe", "zurich"]  # accents folded: "cafe" finds "café"
    assert tokenize("memory_id") == ["memori", "id"]


def test_bm25_prefers_rare_terms_and_matching_docs() -> None:
    index = build(DOCS)
    s = index.scores("cat park")
    assert s.shape == (5,)
    assert s[3] == 0.0  # shares no term with the query
    assert s[0] > 0 and s[1] > 0 and s[2] > 0 and s[4] > 0
    # "quantum" occurs once in the corpus, "cat" twice: a match on the rarer term weighs more.
    rare = index.scores("quantum cat")
    assert rare[3] > rare[0]


def test_term_frequency_saturates_and_raises_score() -> None:
    index = build(["apple banana", "apple apple banana", "banana cherry"])
    s = index.scores("apple")
    assert s[1] > s[0] > 0 and s[2] == 0


def test_idf_follows_appends() -> None:
    index = build(["zebra stripes", "lion mane"])
    before = index.scores("zebra")[0]
    index.add(["zebra crossing", "zebra herd", "zebra"])
    after = index.scores("zebra")[0]
    assert after < before  # zebra became common, so it says less
    assert len(index) == 5


def test_incremental_equals_batch_build_across_compaction() -> None:
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(300)]
    docs = [" ".join(rng.choice(words, size=8)) for _ in range(3000)]
    batch = build(docs)
    incremental = LexicalIndex()
    for start in range(0, len(docs), 250):
        incremental.add(docs[start : start + 250])
    # 24k postings pass the compaction threshold: main and delta segments are both exercised.
    for query in ("word1 word2", "word299 word17 word3", "unknownword"):
        np.testing.assert_allclose(incremental.scores(query), batch.scores(query), rtol=1e-5)


def test_scores_for_given_rows() -> None:
    index = build(DOCS)
    rows = np.array([4, 0, 2])
    np.testing.assert_array_equal(index.scores("cat park", rows), index.scores("cat park")[rows])


def test_top_orders_limits_and_masks() -> None:
    index = build(DOCS)
    rows, scores = index.top("cat park dog", 10)
    assert list(scores) == sorted(scores, reverse=True)
    assert 3 not in rows  # no positive score, not a hit
    rows2, _ = index.top("cat park dog", 2)
    assert list(rows2) == list(rows[:2])
    mask = np.ones(5, dtype=bool)
    mask[rows[0]] = False
    rows3, _ = index.top("cat park dog", 10, mask=mask)
    assert rows[0] not in rows3 and len(rows3) == len(rows) - 1


def test_empty_index_and_unknown_words() -> None:
    index = LexicalIndex()
    assert index.scores("anything").shape == (0,)
    rows, scores = index.top("anything", 5)
    assert len(rows) == 0 and len(scores) == 0
    index.add(DOCS)
    assert not index.scores("xylophone").any()
    assert index.scores("").shape == (5,)


def test_save_load_round_trip_then_append(tmp_path: Path) -> None:
    index = build(DOCS[:3], k1=1.1, b=0.6)
    index.add(DOCS[3:])
    index.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    assert (loaded.k1, loaded.b, len(loaded)) == (1.1, 0.6, 5)
    for query in ("cat park", "festival lecture", "dog"):
        np.testing.assert_array_equal(loaded.scores(query), index.scores(query))
    # Appending after a load gives what a fresh build of all documents gives.
    loaded.add(["cat festival"])
    fresh = build([*DOCS, "cat festival"], k1=1.1, b=0.6)
    np.testing.assert_allclose(loaded.scores("cat festival"), fresh.scores("cat festival"), rtol=1e-6)
    # No pickled objects in the archive.
    with np.load(tmp_path / INDEX_FILE, allow_pickle=False) as z:
        assert all(z[name].dtype != object for name in z.files)


def test_load_rejects_other_tokenizer_or_mismatched_files(tmp_path: Path) -> None:
    build(DOCS).save(tmp_path)
    meta = json.loads((tmp_path / VOCAB_FILE).read_text())
    meta["tokenizer"] = "something-else"
    (tmp_path / VOCAB_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        LexicalIndex.load(tmp_path)
    build(DOCS).save(tmp_path)
    meta = json.loads((tmp_path / VOCAB_FILE).read_text())
    meta["terms"] = meta["terms"][:-1]
    (tmp_path / VOCAB_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        LexicalIndex.load(tmp_path)
