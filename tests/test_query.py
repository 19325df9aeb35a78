"""Query: hybrid retrieval, filters, statuses, batch searcher, usage counts, index staleness."""

from __future__ import annotations

import json

import pytest

from memos_cli.engine.ops import forget
from memos_cli.engine.plaintext import usage
from memos_cli.engine.plaintext.query import Filters, Searcher, query
from memos_cli.errors import UsageError

FACTS = [
    {"text": "Ana adopted a grey cat named Miso", "speaker": "Ana", "time": "2023-03-01", "tags": ["pets"]},
    {"text": "Bob started training for the Lisbon marathon", "speaker": "Bob", "time": "2023-05-10", "tags": ["sport"]},
    {"text": "The team offsite will be held in Porto in June", "speaker": "Ana", "time": "2023-04-02", "type": "event"},
    {"text": "Bob is allergic to peanuts", "speaker": "Bob", "time": "2022-11-20", "tags": ["health"]},
    {"text": "Ana's favourite book is One Hundred Years of Solitude", "speaker": "Ana", "time": "2023-01-15"},
]


@pytest.fixture(scope="module")
def facts() -> list[dict]:
    return FACTS


def test_hybrid_finds_the_right_memory(make_cube) -> None:
    cube = make_cube(FACTS)
    assert query(cube, "what pet does Ana have?", k=1)[0].text == FACTS[0]["text"]
    assert query(cube, "food allergy", k=1)[0].text == FACTS[3]["text"]
    for mode in ("dense", "lexical"):
        assert query(cube, "marathon training", k=1, mode=mode)[0].text == FACTS[1]["text"]


def test_hits_carry_the_documented_fields(make_cube) -> None:
    cube = make_cube(FACTS)
    hit = query(cube, "cat", k=1)[0].to_dict()
    for key in ("id", "version", "text", "score", "type", "time", "speaker", "tags", "source", "source_id"):
        assert key in hit
    assert hit["source"] == "records.jsonl" and hit["tags"] == ["pets"]
    json.dumps(hit)


def test_filters(make_cube) -> None:
    cube = make_cube(FACTS)
    only_bob = query(cube, "anything at all", k=10, filters=Filters(speakers=["bob"]))
    assert {h.speaker for h in only_bob} == {"Bob"} and len(only_bob) == 2
    assert [h.text for h in query(cube, "x", k=10, filters=Filters(tags=["health"]))] == [FACTS[3]["text"]]
    assert [h.type for h in query(cube, "x", k=10, filters=Filters(types=["event"]))] == ["event"]
    window = query(cube, "x", k=10, filters=Filters(since="2023-03-01", until="2023-04-30"))
    assert sorted(h.time for h in window) == ["2023-03-01", "2023-04-02"]
    with pytest.raises(UsageError):
        Filters(status="gone")
    with pytest.raises(UsageError):
        Filters(since="not a date")


def test_archived_memories_leave_default_queries(make_cube) -> None:
    cube = make_cube(FACTS)
    cat = query(cube, "grey cat", k=1)[0]
    forget(cube, [cat.id], actor="tester")
    assert all(h.id != cat.id for h in query(cube, "grey cat", k=5))
    archived = query(cube, "grey cat", k=5, filters=Filters(status="archived"))
    assert [h.id for h in archived] == [cat.id] and archived[0].version == 2
    assert cat.id in {h.id for h in query(cube, "grey cat", k=5, filters=Filters(status="all"))}


def test_searcher_answers_many_queries_and_counts_uses(make_cube) -> None:
    cube = make_cube(FACTS)
    with Searcher([cube]) as searcher:
        first = searcher.search("marathon", k=2)
        searcher.search("marathon", k=1)
    counts = usage.counts(cube)
    assert counts[first[0].id] == 2
    assert usage.hot(cube, 1) == [first[0].id]
    with Searcher([cube], record_usage=False) as searcher:
        searcher.search("marathon", k=1)
    assert usage.counts(cube)[first[0].id] == 2


def test_searching_several_cubes(make_cube) -> None:
    a = make_cube(FACTS[:2], name="a")
    b = make_cube(FACTS[2:], name="b")
    with Searcher([a, b], record_usage=False) as searcher:
        hits = searcher.search("peanut allergy", k=3)
    assert hits[0].text == FACTS[3]["text"] and hits[0].cube == "b"
    assert {h.cube for h in hits} <= {"a", "b"}


def test_index_follows_a_purge(make_cube) -> None:
    cube = make_cube(FACTS)
    victim = query(cube, "peanuts", k=1)[0]
    forget(cube, [victim.id], purge=True, actor="tester")
    assert all(h.id != victim.id for h in query(cube, "peanuts", k=5, filters=Filters(status="all")))


@pytest.mark.parametrize("kill_after", [1, 2])
def test_a_writer_killed_between_the_index_files_leaves_it_only_behind(make_cube, monkeypatch, kill_after) -> None:
    from memos_cli.engine.integrity import verify
    from memos_cli.engine.plaintext import index as index_module
    from memos_cli.engine.plaintext.ingest import Source, ingest
    from memos_cli.errors import PostCommitError

    cube = make_cube(FACTS[:3])
    query(cube, "cat", k=1)  # the index exists
    real_write = index_module.atomic_write_text
    written: list[str] = []

    def killed_after(path, text):  # type: ignore[no-untyped-def]
        if len(written) == kill_after:
            raise KeyboardInterrupt("killed between two index files")
        written.append(path.name)
        real_write(path, text)

    monkeypatch.setattr(index_module, "atomic_write_text", killed_after)
    # killed after the commit: the error says the records are stored (exit 5), not "unchanged"
    with pytest.raises(PostCommitError, match="2 memories stored"):
        ingest(cube, [Source("more.jsonl", "".join(json.dumps(f) + "\n" for f in FACTS[3:]).encode())], actor="tester")
    monkeypatch.undo()
    assert len(written) == kill_after  # the kill fell between two of the index's files
    report = verify(cube.path)
    assert report.ok, report.problems
    texts = {r.text for r in cube.read_state().current.values()}
    assert (query(cube, "peanuts", k=1)[0].text == FACTS[3]["text"]) == (FACTS[3]["text"] in texts)
