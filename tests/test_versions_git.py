"""Versions, the git merge driver with the real git binary, and export/import."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify
from memos_cli.engine.ops import forget
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.query import Filters, query
from memos_cli.engine.plaintext.versions import Update, history, merge_memories, update
from memos_cli.engine.transfer import export_cube, import_cube
from memos_cli.errors import BadInput, UsageError


def _src(name: str, *texts: str) -> Source:
    return Source(name, "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())


def test_update_writes_a_new_version_and_history_shows_all(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    (memory_id,) = ingest(cube, [_src("a.jsonl", "The beta opens on 14 March")], actor="ana").ids
    new = update(cube, memory_id, Update(text="The beta opens on 21 March", add_tags=["moved"]), actor="bob")
    assert new.version == 2 and new.tags == ["moved"] and new.actor == "bob"
    with pytest.raises(UsageError):
        update(cube, memory_id, Update(add_tags=["moved"]))
    forget(cube, [memory_id], actor="ana")
    full, versions, audit = history(cube, memory_id[:8])
    assert full == memory_id
    assert [(v.version, v.op, v.actor, v.status) for v in versions] == [
        (1, "ingest", "ana", "active"),
        (2, "update", "bob", "active"),
        (3, "forget", "ana", "archived"),
    ]
    assert [e["op"] for e in audit] == ["ingest", "update", "forget"]
    hits = query(cube, "when does the beta open", k=1, filters=Filters(status="all"))
    assert hits[0].text == "The beta opens on 21 March" and hits[0].version == 3


def test_merge_keeps_both_conflicting_versions() -> None:
    base = b'{"created":"t1","id":"m-1","status":"active","text":"v1","version":1}\n'
    ours = base + b'{"created":"t3","id":"m-1","status":"active","text":"ours","version":2}\n'
    theirs = base + b'{"created":"t2","id":"m-1","status":"active","text":"theirs","version":2}\n'
    merged = [json.loads(line) for line in merge_memories(base, ours, theirs).splitlines()]
    assert [(r["version"], r["text"]) for r in merged] == [(1, "v1"), (2, "theirs"), (3, "ours"), (4, "ours")]
    # the text changed two ways: the merge version takes the later and names the conflict
    assert merged[-1]["metadata"]["conflict"] == {"fields": ["text"], "versions": [2, 3]}
    assert merge_memories(base, ours, theirs) == merge_memories(base, theirs, ours)  # deterministic


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "HOME": str(cwd),
    }
    # the driver runs `memos`: make sure the one of this interpreter is found first
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")
def test_two_branches_merge_cleanly_in_git(tmp_path: Path) -> None:
    from memos_cli.engine.gitrepo import git_setup

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    cube = Cube.init(repo / "cube", name="team")
    (shared,) = ingest(cube, [_src("seed.jsonl", "The office is on the second floor")]).ids
    git_setup(repo)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "seed")
    git(repo, "checkout", "-qb", "alice")
    ingest(cube, [_src("alice.jsonl", "Alice booked the Sintra offsite")], actor="alice")
    update(cube, shared, Update(text="The office is on the third floor"), actor="alice")
    git(repo, "commit", "-qam", "alice")
    git(repo, "checkout", "-q", "main")
    cube = Cube.open(repo / "cube")
    ingest(cube, [_src("bob.jsonl", "Bob is allergic to shellfish")], actor="bob")
    update(cube, shared, Update(add_tags=["facilities"]), actor="bob")
    git(repo, "commit", "-qam", "bob")
    git(repo, "merge", "-q", "--no-edit", "alice")  # raises on a conflict
    assert "<<<<<<<" not in (repo / "cube" / "memories.jsonl").read_text()
    cube = Cube.open(repo / "cube")
    report = verify(cube.path)
    assert report.ok, report.problems
    texts = {h.text for h in query(cube, "who did what", k=10)}
    assert {"Alice booked the Sintra offsite", "Bob is allergic to shellfish"} <= texts
    versions = history(cube, shared)[1]
    # the original, both branches' updates (none lost) and their field-level merge
    assert [v.op for v in versions] == ["ingest", "update", "update", "merge"]
    assert versions[-1].text == "The office is on the third floor"
    assert {"bob", "alice"} <= {v.actor for v in versions}
    audit_ops = [e["op"] for e in cube.read_audit()]
    assert audit_ops.count("ingest") == 3 and audit_ops.count("update") == 2


def test_export_import_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c", name="notes")
    ingest(cube, [_src("a.jsonl", "one fact", "another fact")])
    archive = tmp_path / "notes.tar.gz"
    info = export_cube(cube, archive)
    assert info["files"] >= 4
    restored = import_cube(archive, tmp_path / "restored")
    assert restored["name"] == "notes"
    assert (tmp_path / "restored" / "memories.jsonl").read_bytes() == cube.memories_path.read_bytes()
    assert verify(tmp_path / "restored").ok
    # tamper: rewrite one member's bytes inside the archive
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "r:gz") as src, tarfile.open(evil, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "cube/memories.jsonl":
                data = data.replace(b"one fact", b"one lie!")
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(BadInput, match="checksum"):
        import_cube(evil, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    # path traversal
    slip = tmp_path / "slip.tar.gz"
    with tarfile.open(slip, "w:gz") as dst:
        raw = json.dumps({"files": {}}).encode()
        info_ = tarfile.TarInfo("memos-export.json")
        info_.size = len(raw)
        dst.addfile(info_, io.BytesIO(raw))
        bad = tarfile.TarInfo("../../outside.txt")
        bad.size = 1
        dst.addfile(bad, io.BytesIO(b"x"))
    with pytest.raises(BadInput, match="unsafe"):
        import_cube(slip, tmp_path / "never2")
    assert not (tmp_path.parent / "outside.txt").exists()


def test_merge_collapses_the_same_version_written_on_both_sides() -> None:
    ours = b'{"created":"t2","id":"m-1","status":"active","text":"same","version":1,"actor":"a"}\n'
    theirs = b'{"created":"t1","id":"m-1","status":"active","text":"same","version":1,"actor":"b"}\n'
    merged = [json.loads(line) for line in merge_memories(b"", ours, theirs).splitlines()]
    assert len(merged) == 1 and merged[0]["created"] == "t1"
