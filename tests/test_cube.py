"""The bundle format: init, manifest validation, torn lines, journaled transactions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube
from memos_cli.cube.records import MemoryRecord
from memos_cli.errors import CubeExists, CubeNotFound, InvalidCube, UnsupportedFormat


def _record(i: int, text: str = "hello") -> MemoryRecord:
    return MemoryRecord(id=f"m-{i:04d}", version=1, text=f"{text} {i}", created="2026-01-01T00:00:00Z", hash=f"h{i}")


def test_init_creates_the_bundle(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c", name="demo", owner="ana")
    for name in (layout.MANIFEST, layout.MEMORIES, layout.AUDIT, layout.GITIGNORE):
        assert (cube.path / name).is_file()
    manifest = yaml.safe_load((cube.path / layout.MANIFEST).read_text())
    assert manifest["format_version"] == layout.FORMAT_VERSION
    assert manifest["name"] == "demo" and manifest["owner"] == "ana"
    assert manifest["policy"] == {"owner": "ana", "readers": [], "writers": [], "frozen": False}
    assert ".memos/" in (cube.path / layout.GITIGNORE).read_text()
    audit = cube.read_audit()
    assert [e["op"] for e in audit] == ["init"]
    with pytest.raises(CubeExists):
        Cube.init(tmp_path / "c")


def test_open_refuses_non_cubes_and_bad_manifests(tmp_path: Path) -> None:
    with pytest.raises(CubeNotFound):
        Cube.open(tmp_path)
    cube = Cube.init(tmp_path / "c")
    manifest = cube.manifest_path
    manifest.write_text("format_version: 99\nid: x\nname: x\ncreated: x\n")
    with pytest.raises(UnsupportedFormat):
        Cube.open(cube.path)
    manifest.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(InvalidCube):
        Cube.open(cube.path)
    manifest.write_text("format_version: 1\nid: x\nname: x\ncreated: x\nkv:\n  evil:\n    file: ../../etc/passwd\n")
    with pytest.raises(InvalidCube, match="must be .kv/evil.safetensors"):
        Cube.open(cube.path)
    manifest.write_text("format_version: 1\nid: x\nname: x\ncreated: x\nlora:\n  a:\n    path: /abs/path\n")
    with pytest.raises(InvalidCube):
        Cube.open(cube.path)


def test_unknown_manifest_and_record_keys_survive_a_rewrite(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    data = yaml.safe_load(cube.manifest_path.read_text())
    data["future_key"] = {"x": 1}
    cube.manifest_path.write_text(yaml.safe_dump(data))
    cube = Cube.open(cube.path)
    with cube.transaction(actor="t", op="test") as tx:
        tx.touch_manifest()
    assert yaml.safe_load(cube.manifest_path.read_text())["future_key"] == {"x": 1}
    line = json.loads(_record(1).to_json())
    line["future_field"] = [1, 2]
    record = MemoryRecord.from_dict(line)
    assert json.loads(record.to_json())["future_field"] == [1, 2]


def test_torn_last_line_is_detected(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    with cube.transaction(actor="t", op="test") as tx:
        tx.add(_record(1))
    with open(cube.memories_path, "ab") as handle:
        handle.write(b'{"id":"m-2","vers')
    with pytest.raises(InvalidCube, match="incomplete"):
        cube.read_state()


def test_malformed_record_names_its_line(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    cube.memories_path.write_text(_record(1).to_json() + "\n" + '{"id": "x"}\n')
    with pytest.raises(InvalidCube, match=r"memories.jsonl:2: record lacks"):
        cube.read_state()


def test_transaction_commits_records_audit_and_manifest_together(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    with cube.transaction(actor="ana", op="ingest") as tx:
        tx.add(_record(1))
        tx.add(_record(2))
        tx.log(["m-0001", "m-0002"], "two")
        tx.manifest.description = "changed"
        tx.touch_manifest()
    state = cube.read_state()
    assert sorted(state.current) == ["m-0001", "m-0002"]
    assert cube.read_audit()[-1]["actor"] == "ana"
    assert Cube.open(cube.path).manifest.description == "changed"
    assert not cube.journal_path.exists()


def test_an_interrupted_transaction_is_invisible_and_rolled_back(tmp_path: Path) -> None:
    """Simulate a crash after the journal was written and half the appends were made."""
    cube = Cube.init(tmp_path / "c")
    with cube.transaction(actor="t", op="test") as tx:
        tx.add(_record(1))
    before_memories = cube.memories_path.read_bytes()
    before_audit = cube.audit_path.read_bytes()
    before_manifest = cube.manifest_path.read_text()
    journal = {
        "op": "ingest",
        "appends": {layout.MEMORIES: len(before_memories), layout.AUDIT: len(before_audit)},
        "backups": {},
        "created": ["kv/new.safetensors"],
        "manifest": before_manifest,
    }
    cube.journal_path.write_text(json.dumps(journal))
    with open(cube.memories_path, "ab") as handle:  # the crashed writer's partial append
        handle.write((_record(2).to_json() + "\n" + '{"id":"m-3","ver').encode())
    (cube.path / "kv").mkdir()
    (cube.path / "kv" / "new.safetensors").write_bytes(b"partial")
    cube.manifest_path.write_text(before_manifest.replace("description: ''", "description: half"))
    # Readers see the state before the transaction, without error.
    assert list(cube.read_state().current) == ["m-0001"]
    # The next writer rolls it back.
    with cube.transaction(actor="t", op="test"):
        pass
    assert cube.memories_path.read_bytes() == before_memories
    assert cube.manifest_path.read_text() == before_manifest
    assert not (cube.path / "kv" / "new.safetensors").exists()
    assert not cube.journal_path.exists()


def test_purge_rewrite_rolls_back_from_backup(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    with cube.transaction(actor="t", op="test") as tx:
        tx.add(_record(1))
        tx.add(_record(2))
    original = cube.memories_path.read_bytes()
    backup = cube.derived / "backups" / "0123abcd-memories.jsonl"
    backup.parent.mkdir(parents=True, exist_ok=True)
    backup.write_bytes(original)
    journal = {"appends": {}, "backups": {layout.MEMORIES: ".memos/backups/0123abcd-memories.jsonl"}, "created": []}
    cube.journal_path.write_text(json.dumps(journal))
    cube.memories_path.write_text(_record(2).to_json() + "\n")  # the crashed purge's rewrite
    assert sorted(cube.read_state().current) == ["m-0001", "m-0002"]
    assert cube.recover()
    assert cube.memories_path.read_bytes() == original


def test_an_exception_inside_a_transaction_writes_nothing(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    before = cube.memories_path.read_bytes()
    with pytest.raises(RuntimeError):
        with cube.transaction(actor="t", op="test") as tx:
            tx.add(_record(1))
            raise RuntimeError("boom")
    assert cube.memories_path.read_bytes() == before
