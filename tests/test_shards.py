"""The sharded index ranks exactly like the unsharded one (exact mode), ties broken by row id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memos_cli.engine.plaintext import ranking
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.engine.plaintext.shards import ShardedIndex

WORDS = "launch budget cat hiking parser adoption peanut allergy meeting paris guitar recipe".split()


def _corpus(n: int, seed: int = 7) -> tuple[list[ranking.Row], np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))))
        rows.append(
            ranking.Row(
                text=f"note {i} {words}",
                speaker=["Ann", "Bo", None][i % 3],
                time=f"2024-0{1 + i % 3}-1{i % 7}",
                source=f"s{i % 4}.jsonl",
                source_id=str(i),
            )
        )
    vectors = rng.normal(size=(n, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[5] = vectors[9]  # an exact tie: row 5 must win it
    rows[9] = ranking.Row(**{**vars(rows[5]), "source_id": "9"})
    return rows, vectors


def _unsharded(rows: list[ranking.Row], vectors: np.ndarray) -> ranking.RankInputs:
    lexical = LexicalIndex()
    lexical.add([ranking.lexical_text(r) for r in rows])
    return ranking.RankInputs(vectors=vectors, lexical=lexical, rows=rows, structure=ranking.structure(rows))


@pytest.mark.parametrize("per_shard", [1000, 97, 250])
def test_sharded_top_k_equals_unsharded(per_shard: int, tmp_path: Path) -> None:
    rows, vectors = _corpus(600)
    whole = _unsharded(rows, vectors)
    sharded = ShardedIndex.split(vectors, rows, per_shard)
    sharded.save(tmp_path / "shards")
    sharded = ShardedIndex.load(tmp_path / "shards", rows, vectors.shape[1])
    rng = np.random.default_rng(1)
    masks = [None, np.arange(600) % 3 != 0]
    for query in ("Ann on the launch budget", "hiking with Bo", "paris guitar recipe note", "zzz unknown"):
        for mask in masks:
            qv = vectors[int(rng.integers(600))] + 0.1 * rng.normal(size=32).astype(np.float32)
            expected = ranking.rank(whole, query, qv, k=20, mask=mask)
            got = sharded.rank(query, qv, k=20, mask=mask)
            assert [r for r, _ in got] == [r for r, _ in expected]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-5)


def test_ties_go_to_the_earlier_row() -> None:
    idx = np.arange(10)
    score = np.array([1, 5, 5, 5, 2, 5, 0, 5, 3, 5], dtype=np.float32)
    assert [r for r, _ in ranking._top(idx, score, 3)] == [1, 2, 3]
    assert [r for r, _ in ranking._top(idx[::-1].copy(), score[::-1].copy(), 3)] == [1, 2, 3]
    lexical = LexicalIndex()
    lexical.add(["cat"] * 50)  # 50 equal scores
    rows, _ = lexical.top("cat", 5)
    assert rows.tolist() == [0, 1, 2, 3, 4]


def test_zscore_statistics_add_up_across_parts() -> None:
    x = np.random.default_rng(3).normal(size=1001).astype(np.float32)
    parts = [ranking.moments(x[:100]), ranking.moments(x[100:700]), ranking.moments(x[700:])]
    summed = tuple(sum(p[i] for p in parts) for i in range(3))
    np.testing.assert_allclose(ranking.zscore_from(x, summed), ranking._zscore(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ranking._zscore(x), (x - x.mean()) / x.std(), rtol=1e-4, atol=1e-4)
