"""Ingest with the real embedder: provenance, dedup, supersession, and the cube unchanged on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import snapshot_files
from memos_cli.cube.bundle import Cube
from memos_cli.engine.plaintext.ingest import Defaults, Source, ingest
from memos_cli.errors import BadInput


def _jsonl(*records: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_ingest_keeps_provenance_and_defaults(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    md = Source("docs/plan.md", b"# Plan\n\nLaunch in Lisbon on March 3.\n\n## Budget\n\nForty thousand euros.\n")
    report = ingest(cube, [md], defaults=Defaults(tags=["work"], speaker="Ana", time="2024-02-01"), actor="ana")
    assert report.added == 2 and report.duplicates == 0
    records = sorted(cube.read_state().current.values(), key=lambda r: r.span)
    first = records[0]
    assert first.source == "docs/plan.md" and first.span == [3, 3]
    assert first.tags == ["work"] and first.speaker == "Ana" and first.time == "2024-02-01"
    assert first.type == "document" and first.actor == "ana" and first.created.endswith("Z")
    # the manifest on disk is what counts (the caller's Cube object is not refreshed by ingest):
    assert Cube.open(cube.path).manifest.embedder["dim"] == 384
    audit = cube.read_audit()[-1]
    assert audit["op"] == "ingest" and sorted(audit["ids"]) == sorted(r.id for r in records)


def test_reingest_adds_nothing(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    data = _jsonl({"text": "alpha", "id": "1"}, {"text": "beta", "id": "2"}, {"text": "alpha", "id": "1"})
    first = ingest(cube, [Source("a.jsonl", data)])
    assert (first.added, first.duplicates) == (2, 1)
    before = snapshot_files(cube.path)
    again = ingest(cube, [Source("a.jsonl", data)])
    assert (again.added, again.duplicates) == (0, 3)
    assert snapshot_files(cube.path) == before
    # the same text from another turn of the same source is another memory
    other = ingest(cube, [Source("a.jsonl", _jsonl({"text": "alpha", "id": "9"}))])
    assert other.added == 1


@pytest.mark.parametrize(
    "payload",
    [
        b'{"text": "good"}\n{"text": \n',
        b'{"text": "good"}\n{"no_text": 1}\n',
        b'{"text": "good"}\n{"text": "\xff"}\n',
        b"\x00\x01\x02binary",
        b"",
    ],
)
def test_bad_input_leaves_the_cube_unchanged(tmp_path: Path, payload: bytes) -> None:
    cube = Cube.init(tmp_path / "c")
    ingest(cube, [Source("seed.jsonl", _jsonl({"text": "seed memory"}))])
    before = snapshot_files(cube.path)
    with pytest.raises(BadInput):
        ingest(cube, [Source("good.jsonl", _jsonl({"text": "fine"})), Source("bad.jsonl", payload)])
    assert snapshot_files(cube.path) == before


def test_skip_bad_stores_the_good_and_reports_the_bad(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    report = ingest(
        cube,
        [Source("a.jsonl", b'{"text": "one"}\n{oops\n{"text": "two"}\n'), Source("e.txt", b"")],
        skip_bad=True,
    )
    assert report.added == 2
    assert sorted(r.where for r in report.rejected) == ["a.jsonl:2", "e.txt:1"]


def test_a_newer_fact_with_the_same_key_supersedes_the_older(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    ingest(cube, [Source("a.jsonl", _jsonl({"text": "Ana lives in Porto", "key": "ana.city", "time": "2020-01-01"}))])
    report = ingest(
        cube, [Source("b.jsonl", _jsonl({"text": "Ana lives in Lisbon", "key": "ana.city", "time": "2023-06-01"}))]
    )
    state = cube.read_state()
    by_text = {r.text: r for r in state.current.values()}
    old, new = by_text["Ana lives in Porto"], by_text["Ana lives in Lisbon"]
    assert old.status == "superseded" and old.version == 2 and report.superseded == [old.id]
    assert new.status == "active" and new.supersedes == old.id
    # a late-arriving older fact does not displace the newer one
    ingest(cube, [Source("c.jsonl", _jsonl({"text": "Ana lived in Braga", "key": "ana.city", "time": "2010-01-01"}))])
    by_text = {r.text: r for r in cube.read_state().current.values()}
    assert by_text["Ana lived in Braga"].status == "superseded"
    assert by_text["Ana lives in Lisbon"].status == "active"


def test_ingest_indexes_incrementally_and_a_fresh_clone_rebuilds(tmp_path: Path) -> None:
    from memos_cli.engine.plaintext.query import query

    cube = Cube.init(tmp_path / "c")
    ingest(cube, [Source("a.jsonl", _jsonl({"text": "The cat sleeps on the red sofa"}))])
    ingest(cube, [Source("b.jsonl", _jsonl({"text": "Quarterly revenue grew by twelve percent"}))])
    assert query(cube, "how much did revenue grow", k=1)[0].text.startswith("Quarterly")
    clone = tmp_path / "clone"
    shutil.copytree(cube.path, clone, ignore=shutil.ignore_patterns(".memos"))
    hits = query(Cube.open(clone), "where does the cat sleep", k=1)
    assert hits[0].text == "The cat sleeps on the red sofa"
