"""CLI tests for the commands the round-trip tests do not reach: update, history, log, verify, repair,
policy, export, import and merge-driver. Each runs the real engine through ``main()`` (the real error handling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run


@pytest.fixture
def cube(tmp_path: Path) -> tuple[str, list[str]]:
    """A cube owned by 'tester' with two memories; returns its path and the memory ids in order."""
    path = str(tmp_path / "c")
    records = tmp_path / "r.jsonl"
    records.write_text(
        json.dumps({"text": "Ana adopted a grey cat named Miso", "speaker": "Ana", "time": "2023-03-01"})
        + "\n"
        + json.dumps({"text": "Bob is allergic to peanuts", "speaker": "Bob"})
        + "\n"
    )
    assert run("init", path)[0] == 0
    code, out, err = run("ingest", path, str(records), "--json")
    assert code == 0, err
    return path, json.loads(out)["ids"]


def test_update_then_history(cube: tuple[str, list[str]]) -> None:
    path, ids = cube
    code, out, err = run("update", path, ids[0], "--tag", "pets", "--text", "Ana adopted a black cat named Miso")
    assert code == 0, err
    code, out, err = run("history", path, ids[0], "--json")
    assert code == 0, err
    versions = json.loads(out)["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert "black cat" in versions[-1]["text"] and "grey cat" in versions[0]["text"]  # the old one is kept
    code, out, err = run("show", path, ids[0], "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["version"] == 2 and shown["tags"] == ["pets"]


def test_update_refuses_unknown_memory_and_no_change(cube: tuple[str, list[str]]) -> None:
    path, _ids = cube
    code, out, err = run("update", path, "m-doesnotexist", "--tag", "x")
    assert code == 1 and out == "" and "no memory" in err and "Traceback" not in err
    code, _out, err = run("update", path, _ids[0])
    assert code == 2, err


def test_log_lists_operations_and_filters(cube: tuple[str, list[str]]) -> None:
    path, ids = cube
    run("forget", path, ids[1], "--yes")
    code, out, err = run("log", path, "--json")
    assert code == 0, err
    ops = [entry["op"] for entry in json.loads(out)["entries"]]
    assert ops[:2] == ["init", "ingest"] and "forget" in ops
    code, out, err = run("log", path, "--op", "ingest", "--json")
    assert code == 0, err
    assert [entry["op"] for entry in json.loads(out)["entries"]] == ["ingest"]


def test_verify_and_repair(cube: tuple[str, list[str]], tmp_path: Path) -> None:
    path, _ids = cube
    code, out, err = run("verify", path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True and report["checked"]["memories"] == 2
    with open(Path(path) / "memories.jsonl", "ab") as handle:  # a torn last line: a write cut off
        handle.write(b'{"id": "m-torn", "text": "half')
    code, out, err = run("verify", path, "--json")
    assert code == 3 and json.loads(out)["ok"] is False
    code, out, err = run("repair", path, "--json")
    assert code == 0, err
    assert json.loads(out)["fixed"]
    assert run("verify", path)[0] == 0
    assert run("verify", str(tmp_path / "nowhere"))[0] == 3


def test_verify_json_names_each_problem_s_kind(cube: tuple[str, list[str]]) -> None:
    path, _ids = cube
    with open(Path(path) / "audit.jsonl", "ab") as handle:
        handle.write(b'{"op": "torn')
    (Path(path) / "kv").mkdir(exist_ok=True)
    (Path(path) / "kv" / "stray.safetensors").write_bytes(b"x")
    code, out, _err = run("verify", path, "--json")
    report = json.loads(out)
    assert code == 3 and sorted(report["problem_kinds"]) == ["stray", "torn"]
    assert len(report["problem_kinds"]) == len(report["problems"])


def test_an_empty_cube_that_was_queried_verifies(tmp_path: Path) -> None:
    path = str(tmp_path / "empty")
    assert run("init", path)[0] == 0
    code, out, err = run("query", path, "anything", "--json")
    assert code == 0 and json.loads(out)["hits"] == [], err
    code, out, err = run("verify", path)
    assert code == 0, out + err


def test_repair_moves_a_folder_in_place_of_memories_aside(cube: tuple[str, list[str]]) -> None:
    path, _ids = cube
    records = Path(path) / "memories.jsonl"
    records.unlink()
    records.mkdir()
    (records / "stray.txt").write_text("not a record file")
    assert run("list", path)[0] == 3
    code, out, err = run("repair", path)
    assert code == 0, out + err
    assert "was a folder" in out + err and records.is_file() and records.read_bytes() == b""
    assert list((Path(path) / ".memos" / "quarantine").glob("*-memories.jsonl/stray.txt"))
    assert run("verify", path)[0] == 0


def test_policy_changes_are_owner_only(cube: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    path, ids = cube
    code, out, err = run("policy", path, "--add-writer", "bob", "--json")
    assert code == 0, err
    assert json.loads(out)["writers"] == ["bob"]
    code, out, err = run("policy", path, "--freeze", "--as", "bob")
    assert code == 4 and "may not" in err
    code, out, err = run("policy", path, "--freeze")
    assert code == 0, err
    code, out, err = run("forget", path, ids[0], "--yes")
    assert code == 4 and "frozen" in err


def test_export_import_round_trip(cube: tuple[str, list[str]], tmp_path: Path) -> None:
    path, ids = cube
    archive = tmp_path / "c.tgz"
    code, out, err = run("export", path, "-o", str(archive), "--json")
    assert code == 0, err
    assert json.loads(out)["files"] >= 4 and archive.is_file()
    code, out, err = run("import", str(archive), "-o", str(tmp_path / "d"), "--json")
    assert code == 0, err
    code, out, err = run("list", str(tmp_path / "d"), "--json")
    assert sorted(m["id"] for m in json.loads(out)["memories"]) == sorted(ids)
    code, out, err = run("import", str(archive), "-o", str(tmp_path / "d"))
    assert code != 0 and "Traceback" not in err  # never over an existing cube
    (tmp_path / "junk.tgz").write_bytes(b"not an archive")
    code, out, err = run("import", str(tmp_path / "junk.tgz"), "-o", str(tmp_path / "e"))
    assert code in (1, 3) and not (tmp_path / "e").exists()


def test_merge_driver_keeps_both_sides(cube: tuple[str, list[str]], tmp_path: Path) -> None:
    """git calls `memos merge-driver %O %A %B %P`; here it is called as git would, on two copies of one
    cube that each changed: one updated a memory, the other ingested a new one."""
    import shutil

    path, ids = cube
    base = tmp_path / "base.jsonl"
    shutil.copyfile(Path(path) / "memories.jsonl", base)
    other = tmp_path / "other"
    shutil.copytree(path, other)
    assert run("update", path, ids[0], "--text", "Ana adopted a black cat named Miso")[0] == 0
    new = tmp_path / "new.txt"
    new.write_text("Chen moved to Lisbon in May\n")
    assert run("ingest", str(other), str(new))[0] == 0
    ours = tmp_path / "ours.jsonl"
    shutil.copyfile(Path(path) / "memories.jsonl", ours)
    code, _, err = run("merge-driver", str(base), str(ours), str(other / "memories.jsonl"), "memories.jsonl")
    assert code == 0, err
    merged = [json.loads(line) for line in ours.read_text().splitlines()]
    texts = {r["text"] for r in merged}
    assert {"Ana adopted a grey cat named Miso", "Ana adopted a black cat named Miso"} <= texts  # both versions
    assert "Chen moved to Lisbon in May" in texts and "Bob is allergic to peanuts" in texts
    assert max(r["version"] for r in merged if r["id"] == ids[0]) == 2
