"""verify checks content hashes and bundle files; the actor is set on every write; one model per cube;
epoch seconds are UTC (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.engine.activation.promote import archive, promote_to_activation
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.sources import parse_time
from memos_cli.engine.select import Selection
from memos_cli.errors import IncompatibleModel, InvalidCube
from tests.test_cli import run


def _cube(tmp_path: Path, *texts: str) -> Cube:
    cube = Cube.init(tmp_path / "c", owner="tester")
    ingest(cube, [Source("f.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())])
    return cube


def test_verify_catches_a_hand_edited_memory(tmp_path: Path) -> None:
    cube = _cube(tmp_path, "The vault code is 4312", "Ana likes tea")
    data = cube.memories_path.read_text()
    cube.memories_path.write_text(data.replace("4312", "9999"))
    report = verify(cube.path)
    assert not report.ok and any("content hash" in p for p in report.problems), report.problems
    code, _, err = run("verify", str(cube.path))
    assert code == 3 and "content hash" in err


def test_a_missing_memories_file_is_not_an_empty_cube(tmp_path: Path) -> None:
    cube = _cube(tmp_path, "one fact")
    cube.memories_path.unlink()
    with pytest.raises(InvalidCube):
        Cube.open(cube.path).read_state()
    code, _, err = run("list", str(cube.path))
    assert code == 3 and "memories.jsonl is missing" in err
    assert not verify(cube.path).ok


def test_archive_by_promote_records_the_actor(tmp_path: Path) -> None:
    cube = _cube(tmp_path, "old fact")
    archive(cube, Selection(all=True))  # no actor given: the acting user (MEMOS_USER) is recorded
    (record,) = cube.read_state().current.values()
    assert record.status == "archived" and record.actor == "tester"


def test_promote_refuses_a_second_model(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    cube = _cube(tmp_path, "Ana's cat is called Miso")
    promote_to_activation(cube, Selection(all=True), name="one", model=str(tiny_dirs["llama"]))
    other = next(str(p) for family, p in tiny_dirs.items() if family != "llama")
    with pytest.raises(IncompatibleModel):
        promote_to_activation(cube, Selection(all=True), name="two", model=other)
    assert set(Cube.open(cube.path).manifest.kv) == {"one"}


def test_epoch_seconds_are_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_time(0, "t") == "1970-01-01T00:00:00Z"
        assert parse_time(1700000000, "t") == "2023-11-14T22:13:20Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_verify_names_a_missing_adapter_folder(tmp_path: Path) -> None:
    cube = _cube(tmp_path, "one fact")
    manifest = cube.manifest_path.read_text()
    cube.manifest_path.write_text(manifest.replace("lora: {}", "lora:\n  facts:\n    path: lora/facts"))
    report = verify(cube.path)
    assert any("lora facts" in p and "missing" in p for p in report.problems), report.problems


def test_init_audit_names_the_creator_even_without_an_owner(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")  # no owner given: the acting user (MEMOS_USER) created it
    assert cube.read_audit()[0]["actor"] == "tester"
