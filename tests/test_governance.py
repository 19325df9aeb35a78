"""Policy (exit 4, cube unchanged), audit log, verify and repair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import snapshot_files
from memos_cli.cube.bundle import Cube
from memos_cli.engine.governance import PolicyChange, audit_log, set_policy
from memos_cli.engine.integrity import verify
from memos_cli.engine.ops import forget, list_memories
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.repair import repair
from memos_cli.errors import PermissionRefused

ONE = Source("a.jsonl", b'{"text": "a memory"}\n')
TWO = Source("b.jsonl", b'{"text": "another memory"}\n')


def test_writers_and_frozen_are_enforced_and_leave_the_cube_unchanged(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c", owner="ana")
    ingest(cube, [ONE], actor="ana")
    set_policy(cube, PolicyChange(add_writers=["bot"]), actor="ana")
    before = snapshot_files(cube.path)
    with pytest.raises(PermissionRefused) as refused:
        ingest(cube, [TWO], actor="eve")
    assert refused.value.exit_code == 4
    memory_id = list_memories(cube)[0].id
    with pytest.raises(PermissionRefused):
        forget(cube, [memory_id], actor="eve")
    assert snapshot_files(cube.path) == before
    assert ingest(cube, [TWO], actor="bot").added == 1
    set_policy(cube, PolicyChange(frozen=True), actor="ana")
    with pytest.raises(PermissionRefused, match="frozen"):
        ingest(cube, [Source("c.jsonl", b'{"text": "x"}\n')], actor="ana")
    with pytest.raises(PermissionRefused, match="owner"):
        set_policy(cube, PolicyChange(frozen=False), actor="bot")
    set_policy(cube, PolicyChange(frozen=False), actor="ana")


def test_readers_are_enforced(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c", owner="ana")
    ingest(cube, [ONE], actor="ana")
    set_policy(cube, PolicyChange(add_readers=["bob"]), actor="ana")
    assert list_memories(cube, actor="bob")
    with pytest.raises(PermissionRefused):
        list_memories(cube, actor="eve")


def test_every_change_is_in_the_audit_log(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c", owner="ana")
    report = ingest(cube, [ONE, TWO], actor="ana")
    forget(cube, [report.ids[0]], actor="ana")
    forget(cube, [report.ids[1]], purge=True, actor="ana")
    ops = [(e["op"], e["actor"]) for e in audit_log(cube)]
    assert ops == [("init", "ana"), ("ingest", "ana"), ("forget", "ana"), ("purge", "ana")]
    for entry in audit_log(cube):
        assert {"time", "actor", "op", "ids", "summary"} <= set(entry)


def test_verify_names_problems_and_repair_fixes_what_it_can(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    ingest(cube, [ONE])
    assert verify(cube.path).ok
    with open(cube.memories_path, "ab") as handle:
        handle.write(b'{"id": "m-x", "vers')
    (cube.path / "kv").mkdir()
    (cube.path / "kv" / "orphan.safetensors").write_bytes(b"junk")
    report = verify(cube.path)
    assert not report.ok
    assert any("incomplete" in p for p in report.problems)
    assert any("orphan" in p for p in report.problems)
    fixed = repair(cube.path)
    assert any("torn" in line for line in fixed.fixed)
    # an unknown payload is moved out of the bundle, never deleted: its bytes wait in .memos/quarantine/
    assert any("orphan" in line and "quarantine" in line for line in fixed.fixed) and not fixed.not_fixed
    assert (cube.path / ".memos" / "quarantine" / "kv__orphan.safetensors").read_bytes() == b"junk"


def test_verify_catches_a_corrupt_index_and_repair_rebuilds_it(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    ingest(cube, [ONE, TWO])
    current = cube.path / ".memos" / "index" / "current.json"
    mapping = json.loads(current.read_text())
    current.write_text(json.dumps({**mapping, "m-ghost": 0}))
    assert any("index" in p for p in verify(cube.path).problems)
    report = repair(cube.path)
    assert "rebuilt the index" in report.fixed and not report.not_fixed
    assert verify(cube.path).ok


def test_verify_reports_a_future_format(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    cube.manifest_path.write_text(cube.manifest_path.read_text().replace("format_version: 1", "format_version: 7"))
    assert any("newer" in p for p in verify(cube.path).problems)
