"""Source sync: a file ingested again updates its memories as new versions (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import snapshot_files
from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.query import query
from tests.test_cli import run

NOTES = """# Launch

The launch is on 14 April in Lisbon.

The press kit is ready.

# Team

Ana leads the launch team.
"""


def _active(cube: Cube) -> dict[str, str]:
    return {r.id: r.text for r in cube.read_state().current.values() if r.status == "active"}


def test_an_edited_markdown_file_updates_its_memory(tmp_path: Path) -> None:
    notes = Path("notes.md")  # a real file, ingested from the working directory
    notes.write_text(NOTES)
    cube = Cube.init(tmp_path / "c")
    first = ingest(cube, [Source.from_path(str(notes))])
    launch = next(i for i, t in _active(cube).items() if "14 April" in t)
    notes.write_text(NOTES.replace("14 April", "5 May"))
    report = ingest(cube, [Source.from_path(str(notes))])
    assert report.updated == [launch] and report.added == 0
    active = _active(cube)
    assert len(active) == len(first.ids)
    assert active[launch] == "The launch is on 5 May in Lisbon."
    assert not any("14 April" in t for t in active.values())  # the stale passage is not active
    hits = query(cube, "when is the launch", k=5)
    assert [h.text for h in hits if "launch is on" in h.text] == ["The launch is on 5 May in Lisbon."]
    versions = cube.read_state().history(launch)
    assert [(v.version, v.op) for v in versions] == [(1, "ingest"), (2, "sync")]
    assert verify(cube.path).ok


def test_vanished_passages_are_reported_and_archived_with_sync(tmp_path: Path) -> None:
    notes = Path("notes.md")
    notes.write_text(NOTES)
    cube = Cube.init(tmp_path / "c")
    ingest(cube, [Source.from_path(str(notes))])
    kit = next(i for i, t in _active(cube).items() if "press kit" in t)
    notes.write_text(NOTES.replace("The press kit is ready.\n", ""))
    before = snapshot_files(cube.path)
    dry = ingest(cube, [Source.from_path(str(notes))], sync=True, dry_run=True)
    assert dry.dry_run and dry.vanished == [kit] and dry.archived == [kit]
    assert snapshot_files(cube.path) == before  # a dry run writes nothing
    plain = ingest(cube, [Source.from_path(str(notes))])
    assert plain.vanished == [kit] and plain.archived == [] and kit in _active(cube)
    synced = ingest(cube, [Source.from_path(str(notes))], sync=True)
    assert synced.archived == [kit] and kit not in _active(cube)
    assert cube.read_state().current[kit].status == "archived"  # archived, not deleted


def test_jsonl_records_follow_their_id(tmp_path: Path) -> None:
    facts = Path("facts.jsonl")
    facts.write_text(json.dumps({"id": "wifi", "text": "The wifi password is heron-5g"}) + "\n")
    cube = Cube.init(tmp_path / "c")
    (memory_id,) = ingest(cube, [Source.from_path(str(facts))]).ids
    facts.write_text(json.dumps({"id": "wifi", "text": "The wifi password is otter-6"}) + "\n")
    report = ingest(cube, [Source.from_path(str(facts))])
    assert report.updated == [memory_id] and _active(cube) == {memory_id: "The wifi password is otter-6"}


def test_cli_dry_run_and_sync(tmp_path: Path) -> None:
    notes = Path("notes.md")
    notes.write_text(NOTES)
    cube = tmp_path / "c"
    assert run("init", str(cube))[0] == 0
    assert run("ingest", str(cube), "notes.md")[0] == 0
    notes.write_text(NOTES.replace("14 April", "5 May").replace("The press kit is ready.\n", ""))
    code, out, err = run("ingest", str(cube), "notes.md", "--dry-run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dry_run"] and len(report["updated"]) == 1 and len(report["vanished"]) == 1
    code, _, err = run("ingest", str(cube), "notes.md", "--sync")
    assert code == 0 and "updated 1" in err and "archived 1" in err, err
