"""The sharded index ranks exactly like the unsharded one (exact mode), ties broken by row id; the CLI
uses it when MEMOS_INDEX_SHARD_ROWS is set, keeps it under .memos/index/shards/ and extends it on ingest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memos_cli.cli.app import app
from memos_cli.engine.plaintext import ranking, shard_store
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.engine.plaintext.sharded import ShardedIndex, run_steps
from memos_cli.engine.plaintext.shards import GraphSettings, Shard, build_shard
from memos_cli.errors import UsageError

WORDS = "launch budget cat hiking parser adoption peanut allergy meeting paris guitar recipe".split()
runner = CliRunner()


def _corpus(n: int, seed: int = 7, dim: int = 32) -> tuple[list[ranking.Row], np.ndarray]:
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
                event=[{"start": "2024-02-01", "end": "2024-02-29"}] if i % 11 == 0 else None,
            )
        )
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[5] = vectors[9]  # an exact tie: row 5 must win it
    rows[9] = ranking.Row(**{**vars(rows[5]), "source_id": "9"})
    return rows, vectors


def _unsharded(rows: list[ranking.Row], vectors: np.ndarray) -> ranking.RankInputs:
    lexical = LexicalIndex()
    lexical.add([ranking.lexical_text(r) for r in rows])
    return ranking.RankInputs(vectors=vectors, lexical=lexical, rows=rows, structure=ranking.structure(rows))


QUERIES = ("Ann on the launch budget", "hiking with Bo", "paris guitar recipe note", "zzz unknown", "when was the cat")


@pytest.mark.parametrize("per_shard", [1000, 97, 250])
def test_sharded_top_k_equals_unsharded(per_shard: int, tmp_path: Path) -> None:
    rows, vectors = _corpus(600)
    whole = _unsharded(rows, vectors)
    sharded = ShardedIndex.split(vectors, rows, per_shard)
    graph = GraphSettings(20_000, 16, 100, 128)
    for number, shard in enumerate(sharded.shards):  # through the files: saved and loaded, confined
        shard_store.save_shard(tmp_path, f"idx/shards/{number:05d}", shard)
    loaded = [
        shard_store.load_shard(tmp_path, f"idx/shards/{i:05d}", s.start, vectors[s.start : s.end], graph)
        for i, s in enumerate(sharded.shards)
    ]
    assert all(s is not None for s in loaded)
    sharded = ShardedIndex(rows, loaded)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    periods = [("2024-02-01", "2024-02-15")]
    for query in QUERIES:
        for mask in (None, np.arange(600) % 3 != 0):
            for mode in ranking.MODES:
                qv = vectors[int(rng.integers(600))] + 0.1 * rng.normal(size=32).astype(np.float32)
                expected = ranking.rank(whole, query, qv, k=20, mask=mask, mode=mode, periods=periods)
                got = sharded.rank(query, qv, k=20, mask=mask, mode=mode, periods=periods)
                assert [r for r, _ in got] == [r for r, _ in expected], (query, mode)
                np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-5)


def test_a_damaged_or_foreign_shard_is_not_loaded(tmp_path: Path) -> None:
    rows, vectors = _corpus(120)
    shard = ShardedIndex.split(vectors, rows, 100).shards[0]
    graph = GraphSettings(20_000, 16, 100, 128)
    shard_store.save_shard(tmp_path, "s", shard)
    assert shard_store.load_shard(tmp_path, "s", 0, vectors[:100], graph) is not None
    assert shard_store.load_shard(tmp_path, "s", 100, vectors[100:], graph) is None  # another range
    (tmp_path / "s" / "shard.json").write_text('{"start": 0, "rows": 100, "hnsw_rows": 5}')
    assert shard_store.load_shard(tmp_path, "s", 0, vectors[:100], graph) is not None  # no graph file: no graph
    (tmp_path / "s" / "lexical" / "lexical.npz").unlink()
    (tmp_path / "s" / "lexical" / "lexical.npz").symlink_to(tmp_path / "elsewhere.npz")
    assert shard_store.load_shard(tmp_path, "s", 0, vectors[:100], graph) is None  # a link is never followed


def test_approximate_mode_uses_each_shard_s_graph() -> None:
    rows, vectors = _corpus(3000, dim=16)
    graph = GraphSettings(min_rows=500, m=16, ef_construction=100, ef=128)
    sharded = ShardedIndex.split(vectors, rows, 1000)
    for shard in sharded.shards:
        assert shard.extend_graph(graph) and shard.hnsw_rows == len(shard)
    assert sharded.has_graph
    whole = _unsharded(rows, vectors)
    approx = ranking.RankSettings(exact_limit=100)  # past it, candidates come from the graphs
    rng = np.random.default_rng(2)
    overlap = []
    for query in QUERIES:
        qv = vectors[int(rng.integers(3000))] + 0.05 * rng.normal(size=16).astype(np.float32)
        exact = [r for r, _ in ranking.rank(whole, query, qv, k=10)]
        got = [r for r, _ in sharded.rank(query, qv, k=10, settings=approx)]
        assert len(got) == 10
        overlap.append(len(set(exact) & set(got)) / 10)
        dense_exact = [r for r, _ in ranking.rank(whole, query, qv, k=10, mode="dense")]
        dense_got = [r for r, _ in sharded.rank(query, qv, k=10, mode="dense", settings=approx)]
        assert len(set(dense_exact) & set(dense_got)) >= 9
    assert np.mean(overlap) >= 0.8, overlap


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


# ---------------------------------------------------------------------------------- through the CLI
TOPICS = ("the launch plan", "a budget review", "Caroline's adoption", "the hiking trip", "a parser bug", "paris")


def _records(start: int, count: int) -> str:
    lines = []
    for i in range(start, start + count):
        lines.append(
            json.dumps(
                {
                    "text": f"Note {i}: we talked about {TOPICS[i % 6]}" + " again" * (i % 3),
                    "speaker": ["Ann", "Bo", "Cy"][i % 3],
                    "time": f"2024-0{1 + i % 4}-{10 + i % 9}",
                    "source_id": f"D{i // 20}:{i % 20}",
                }
            )
            + "\n"
        )
    return "".join(lines)


def _answers(cube: Path, questions: Path, *extra: str) -> list[dict]:
    result = runner.invoke(app, ["query", str(cube), "--batch", str(questions), "-k", "8", "--no-usage", *extra])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _ids(lines: list[dict]) -> list[list[str]]:
    return [[h["id"] for h in line["hits"]] for line in lines]


def test_cli_sharded_index_gives_the_unsharded_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jsonl").write_text(_records(0, 130))
    (tmp_path / "b.jsonl").write_text(_records(130, 60))  # fills the third shard, then starts a fourth
    questions = tmp_path / "q.txt"
    questions.write_text("what about the launch?\nBo on the budget\nwhen was the hiking trip\nparis in March 2024\n")
    filters = ["--speaker", "Ann", "--since", "2024-02-01"]
    answers: dict[str, list] = {}
    for name, shard_rows in (("plain", None), ("sharded", "50")):
        cube = tmp_path / name
        if shard_rows is None:
            monkeypatch.delenv("MEMOS_INDEX_SHARD_ROWS", raising=False)
        else:
            monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", shard_rows)
        assert runner.invoke(app, ["init", str(cube)]).exit_code == 0
        out = []
        for source in ("a.jsonl", "b.jsonl"):  # the second ingest extends the index incrementally
            assert runner.invoke(app, ["ingest", str(cube), str(tmp_path / source)]).exit_code == 0
            out.append(_answers(cube, questions))
            out.append(_answers(cube, questions, *filters))
            out.append(_answers(cube, questions, "--retrieval", "lexical"))
            out.append(_answers(cube, questions, "--retrieval", "dense"))
        answers[name] = out
    for lines in answers.values():
        for line in (ln for block in lines for ln in block):
            for hit in line["hits"]:
                hit.pop("cube"), hit.pop("cube_path")
                hit["score"] = round(hit["score"], 4)  # the statistics' float rounding differs
    assert answers["plain"] == answers["sharded"]
    index = tmp_path / "sharded" / ".memos" / "index"
    assert sorted(p.name for p in (index / "shards").iterdir()) == ["00000", "00001", "00002", "00003"]
    assert json.loads((index / "shards" / "00003" / "shard.json").read_text()) == {
        "start": 150,
        "rows": 40,
        "hnsw_rows": 0,
    }
    assert json.loads((index / "meta.json").read_text())["shard_rows"] == 50
    assert not (index / "lexical").exists()  # the shards' postings replace the global ones
    # The layout is kept without the setting; 0 turns it back into one index (nothing re-embedded).
    monkeypatch.delenv("MEMOS_INDEX_SHARD_ROWS")
    assert _ids(_answers(tmp_path / "sharded", questions)) == _ids(answers["plain"][4])
    assert (index / "shards").is_dir()
    monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", "0")
    back = _answers(tmp_path / "sharded", questions)
    assert not (index / "shards").exists() and (index / "lexical").is_dir()
    assert _ids(back) == _ids(answers["plain"][4])
    monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", "many")
    for command in (["query", str(tmp_path / "sharded"), "launch"], ["ingest", str(tmp_path / "sharded"), "-"]):
        result = runner.invoke(app, command, input="a new memory\n")
        assert isinstance(result.exception, UsageError) and "MEMOS_INDEX_SHARD_ROWS" in result.exception.message
    assert "a new memory" not in (tmp_path / "sharded" / "memories.jsonl").read_text()  # refused before writing


def test_cli_sharded_index_heals_and_follows_a_purge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", "40")
    cube = tmp_path / "c"
    (tmp_path / "a.jsonl").write_text(_records(0, 100))
    assert runner.invoke(app, ["init", str(cube)]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(cube), str(tmp_path / "a.jsonl")]).exit_code == 0
    shards_dir = cube / ".memos" / "index" / "shards"
    first = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage"])
    assert first.exit_code == 0, first.output
    # A shard cut off by a crash, a stray folder and a link in a shard's place: rebuilt, removed, not followed.
    (shards_dir / "00001" / "shard.json").write_text('{"start": 40, "rows": 39, "hnsw_rows": 0}')
    (shards_dir / "00009").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    import shutil

    shutil.rmtree(shards_dir / "00002")
    (shards_dir / "00002").symlink_to(outside)
    again = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert sorted(p.name for p in shards_dir.iterdir()) == ["00000", "00001", "00002"]
    assert not (shards_dir / "00002").is_symlink() and not any(outside.iterdir())
    victim = json.loads(first.stdout)["hits"][0]
    assert runner.invoke(app, ["forget", str(cube), victim["id"], "--purge", "--yes"]).exit_code == 0
    after = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage", "--status", "all"])
    assert after.exit_code == 0, after.output
    assert victim["id"] not in {h["id"] for h in json.loads(after.stdout)["hits"]}
    text = victim["text"].encode()
    assert not any(text in p.read_bytes() for p in (cube / ".memos" / "index").rglob("*") if p.is_file())
    assert runner.invoke(app, ["verify", str(cube)]).exit_code == 0


# ---------------------------------------------------------------------------------- memory: one shard at a time
def _mapped_rss(path: Path) -> int:
    """Bytes of ``path``'s pages resident in this process (its mappings' Rss in /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            inside = line.endswith(str(path))
        elif inside and head == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_a_sharded_query_holds_about_one_shard_of_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n, dim, per = 10_000, 512, 2000  # shards of 4 MB in a 20 MB file
    rows, vectors = _corpus(n, dim=dim)
    (tmp_path / "vectors.f32").write_bytes(vectors.tobytes())
    path = (tmp_path / "vectors.f32").resolve()
    pages = shard_store.MappedRows(tmp_path, "vectors.f32", n, dim)
    index = ShardedIndex(rows, [build_shard(pages.array, rows, start, per, pages) for start in range(0, n, per)])
    seen: list[int] = []
    release = Shard.release

    def measured(shard: Shard) -> None:  # resident just before each shard lets go of its pages
        seen.append(_mapped_rss(path))
        release(shard)

    monkeypatch.setattr(Shard, "release", measured)
    whole = _unsharded(rows, vectors)
    rng = np.random.default_rng(4)
    for mode in ranking.MODES:
        qv = vectors[int(rng.integers(n))] + 0.1 * rng.normal(size=dim).astype(np.float32)
        got = index.rank("Ann on the launch budget", qv, k=10, mode=mode)
        expected = ranking.rank(whole, "Ann on the launch budget", qv, k=10, mode=mode)
        assert [r for r, _ in got] == [r for r, _ in expected], mode
    shard_bytes = per * dim * 4
    assert max(seen) >= shard_bytes * 0.9  # an exact query pages a whole shard in (the probe sees it) ...
    # ... but never much more than one: the kernel maps file pages in folios of up to 2 MB, one may reach
    # past each end of the shard.
    assert max(seen) <= shard_bytes + (4 << 20) < n * dim * 4 // 2
    assert _mapped_rss(path) <= 256 << 10  # and nothing stays resident after the query


def test_queries_in_lockstep_rank_as_one_at_a_time() -> None:
    """What a Ray shard actor does (many queries' rounds at once, state kept per query) ranks each query
    exactly as ``rank`` does alone."""
    rows, vectors = _corpus(3000, dim=16)
    index = ShardedIndex.split(vectors, rows, 700)
    for shard in index.shards:
        shard.extend_graph(GraphSettings(min_rows=500, m=16, ef_construction=100, ef=128))
    rng = np.random.default_rng(6)
    for settings in (ranking.RankSettings(exact_limit=5000), ranking.RankSettings(exact_limit=100)):
        for mode in ranking.MODES:
            qvs = [vectors[int(rng.integers(3000))] + 0.05 * rng.normal(size=16).astype(np.float32) for _ in QUERIES]
            alone = [index.rank(t, qv, k=8, mode=mode, settings=settings) for t, qv in zip(QUERIES, qvs, strict=True)]
            steps = [
                index.steps(token, t, qv, k=8, mode=mode, settings=settings)
                for token, (t, qv) in enumerate(zip(QUERIES, qvs, strict=True))
            ]
            assert run_steps(steps, index._run_local) == alone, (mode, settings.exact_limit)
            assert not any(s._legs or s._lex for s in index.shards)  # every query's state was dropped


def test_the_sharded_index_never_reads_the_whole_vectors_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a sharded index maps vectors.f32 (shard_store.MappedRows) instead of reading it; the guard
    on np.fromfile (the unsharded loader's read of vectors.f32, memos' only use of it) shows that it would
    notice a whole read."""
    monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", "30")
    cube = tmp_path / "c"
    (tmp_path / "a.jsonl").write_text(_records(0, 100))
    assert runner.invoke(app, ["init", str(cube)]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(cube), str(tmp_path / "a.jsonl")]).exit_code == 0

    def guarded(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the whole vectors file was read")

    monkeypatch.setattr(np, "fromfile", guarded)
    sharded = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage"])
    assert sharded.exit_code == 0, sharded.output
    monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", "0")
    assert runner.invoke(app, ["query", str(cube), "parser bug", "--no-usage"]).exit_code == 0  # re-cut: mapped
    unsharded = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage"])
    assert isinstance(unsharded.exception, AssertionError)  # the unsharded loader reads it whole


DATA = Path(__file__).resolve().parent / "data" / "sharded_index_v1"


def test_an_index_sharded_by_the_previous_version_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/data/sharded_index_v1: a cube of 40 memories and its index in shards of 15 rows, written by
    the version before shards mapped their vectors (commit 7fef704). The format did not change: its
    shards load without a rebuild and answer as an index this version builds afresh from the same
    records. (The ranking's defaults have changed since, so that version's own answers are not the bar.)"""
    import shutil

    def answers(cube: Path) -> list[dict]:
        result = runner.invoke(
            app, ["query", str(cube), "--batch", str(DATA / "questions.txt"), "-k", "5", "--no-usage"]
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        for line in lines:
            for hit in line["hits"]:
                hit.pop("cube"), hit.pop("cube_path")
                hit["score"] = round(hit["score"], 4)
        return lines

    cube, fresh = tmp_path / "cube", tmp_path / "fresh"
    for folder in (cube, fresh):
        folder.mkdir()
        for name in ("cube.yaml", "memories.jsonl", "audit.jsonl"):
            shutil.copy(DATA / name, folder / name)
    shutil.copytree(DATA / "index", cube / ".memos" / "index")  # copy2: the files keep their times
    shards_dir = cube / ".memos" / "index" / "shards"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in shards_dir.rglob("*") if p.is_file()}
    got = answers(cube)
    monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", "15")
    assert got == answers(fresh) and all(line["hits"] for line in got)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in shards_dir.rglob("*") if p.is_file()}
    assert after == before  # no shard was rebuilt or rewritten


def test_a_sharded_index_s_vectors_file_is_mapped_only_when_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vectors.f32 cut short or replaced by a link: the sharded loader neither maps past its end (which
    would kill the process with SIGBUS on use) nor follows the link; the index is rebuilt."""
    monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", "40")
    cube = tmp_path / "c"
    (tmp_path / "a.jsonl").write_text(_records(0, 100))
    assert runner.invoke(app, ["init", str(cube)]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(cube), str(tmp_path / "a.jsonl")]).exit_code == 0
    first = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage"])
    assert first.exit_code == 0, first.output
    vectors = cube / ".memos" / "index" / "vectors.f32"
    whole = vectors.read_bytes()
    vectors.write_bytes(whole[: len(whole) // 2])
    again = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert vectors.stat().st_size == len(whole)  # rebuilt whole
    outside = tmp_path / "outside.f32"
    outside.write_bytes(whole)
    vectors.unlink()
    vectors.symlink_to(outside)
    third = runner.invoke(app, ["query", str(cube), "parser bug", "--json", "--no-usage"])
    assert third.exit_code == 0, third.output
    assert json.loads(third.stdout) == json.loads(first.stdout)
    assert not vectors.is_symlink() and outside.read_bytes() == whole
