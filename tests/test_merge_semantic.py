"""Semantic git merges of a cube with the real git binary: cube.yaml never conflicts, key rules hold after
a merge, concurrent edits merge field by field, and a real conflict is kept and reported (issue #13)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.engine.governance import PolicyChange, set_policy
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.merge import conflicts_of, merge_manifest
from memos_cli.engine.plaintext.versions import Update, update
from tests.test_cli import run

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")


def _src(name: str, *records: dict | str) -> Source:
    rows = [r if isinstance(r, dict) else {"text": r} for r in records]
    return Source(name, "".join(json.dumps(r) + "\n" for r in rows).encode())


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "HOME": str(cwd),
    }
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def _repo(tmp_path: Path, seed: list[dict | str] | None = None) -> tuple[Path, Cube]:
    from memos_cli.engine.gitrepo import git_setup

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    cube = Cube.init(repo / "cube", name="team", owner="tester")
    if seed:
        ingest(cube, [_src("seed.jsonl", *seed)])
    git_setup(repo)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "seed")
    return repo, cube


def _branches(repo: Path, on_branch, on_main) -> Cube:
    """Run ``on_branch`` on a new branch and ``on_main`` on main, commit both, merge; returns the cube."""
    git(repo, "checkout", "-qb", "other")
    on_branch(Cube.open(repo / "cube"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "other")
    git(repo, "checkout", "-q", "main")
    on_main(Cube.open(repo / "cube"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "main")
    git(repo, "merge", "-q", "--no-edit", "other")  # raises on a conflict
    for name in ("cube.yaml", "memories.jsonl", "audit.jsonl"):
        assert "<<<<<<<" not in (repo / "cube" / name).read_text()
    return Cube.open(repo / "cube")


def test_first_writes_on_two_branches_merge_without_conflict(tmp_path: Path) -> None:
    import time

    repo, _ = _repo(tmp_path)  # an empty cube: both branches set the embedder and 'updated'
    cube = _branches(
        repo,
        # each a second after the last write, as in life: the three 'updated' lines all differ
        lambda c: (time.sleep(1.1), ingest(c, [_src("a.jsonl", "Alice likes green tea")], actor="alice")),
        lambda c: (time.sleep(1.1), ingest(c, [_src("b.jsonl", "Bob drinks black coffee")], actor="bob")),
    )
    assert verify(cube.path).ok, verify(cube.path).problems
    assert {r.text for r in cube.read_state().current.values()} == {"Alice likes green tea", "Bob drinks black coffee"}
    assert cube.manifest.embedder is not None


def test_policy_changes_on_two_branches_merge_both(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path, ["The office is on the second floor"])
    cube = _branches(
        repo,
        lambda c: set_policy(c, PolicyChange(add_readers=["alice"]), actor="tester"),
        lambda c: set_policy(c, PolicyChange(add_writers=["bob"]), actor="tester"),
    )
    assert cube.manifest.policy["readers"] == ["alice"] and cube.manifest.policy["writers"] == ["bob"]
    assert verify(cube.path).ok


def test_same_key_on_two_branches_leaves_one_active_memory(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path, ["seed fact"])
    cube = _branches(
        repo,
        lambda c: ingest(c, [_src("a.jsonl", {"text": "Launch is on 5 May", "key": "launch", "time": "2025-03-02"})]),
        lambda c: ingest(
            c, [_src("b.jsonl", {"text": "Launch is on 14 April", "key": "launch", "time": "2025-03-01"})]
        ),
    )
    active = [r for r in cube.read_state().current.values() if r.key == "launch" and r.status == "active"]
    assert [r.text for r in active] == ["Launch is on 5 May"]
    assert verify(cube.path).ok


def test_edits_of_different_fields_merge_field_by_field(tmp_path: Path) -> None:
    repo, cube = _repo(tmp_path, ["The beta opens on 14 March"])
    (memory_id,) = cube.read_state().current
    cube = _branches(
        repo,
        lambda c: update(c, memory_id, Update(add_tags=["beta"]), actor="alice"),
        lambda c: update(c, memory_id, Update(text="The beta opens on 21 March"), actor="bob"),
    )
    current = cube.read_state().current[memory_id]
    assert current.text == "The beta opens on 21 March" and current.tags == ["beta"]
    assert "conflict" not in current.metadata
    report = verify(cube.path)
    assert report.ok, report.problems


def test_one_field_changed_two_ways_is_kept_and_reported(tmp_path: Path) -> None:
    repo, cube = _repo(tmp_path, ["The beta opens on 14 March"])
    (memory_id,) = cube.read_state().current
    cube = _branches(
        repo,
        lambda c: update(c, memory_id, Update(text="The beta opens on 2 April"), actor="alice"),
        lambda c: update(c, memory_id, Update(text="The beta opens on 21 March"), actor="bob"),
    )
    state = cube.read_state()
    texts = [r.text for r in state.history(memory_id)]
    assert "The beta opens on 2 April" in texts and "The beta opens on 21 March" in texts  # nothing lost
    (conflicted,) = conflicts_of(state.current.values())
    assert conflicted.metadata["conflict"]["fields"] == ["text"]
    report = verify(cube.path)
    assert any("conflict" in p for p in report.problems)
    code, stdout, _ = run("conflicts", str(cube.path), "--json")
    assert code == 1  # unresolved conflicts stop a script
    listed = json.loads(stdout)
    assert listed[0]["id"] == memory_id and sorted(v["value"] for v in listed[0]["values"]["text"]) == [
        "The beta opens on 2 April",
        "The beta opens on 21 March",
    ]
    update(cube, memory_id, Update(text="The beta opens on 2 April"), actor="tester")  # the resolution
    assert not conflicts_of(cube.read_state().current.values())
    assert verify(cube.path).ok


def test_merge_manifest_keeps_both_sides_and_the_later_update() -> None:
    base = {"id": "c", "updated": "2025-01-01T00:00:00Z", "kv": {}, "policy": {"readers": []}}
    ours = {**base, "updated": "2025-01-03T00:00:00Z", "kv": {"a": {"file": "kv/a.safetensors"}}}
    theirs = {**base, "updated": "2025-01-02T00:00:00Z", "kv": {"b": {"file": "kv/b.safetensors"}}}
    merged = merge_manifest(base, ours, theirs)
    assert merged["updated"] == "2025-01-03T00:00:00Z" and set(merged["kv"]) == {"a", "b"}
    assert merged == merge_manifest(base, theirs, ours)


def test_a_cube_created_on_two_branches_merges_into_one(tmp_path: Path) -> None:
    from memos_cli.engine.gitrepo import git_setup

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("team memory\n")
    git_setup(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "empty repository")

    def create(who: str, text: str) -> None:
        cube = Cube.init(repo / "cube", name="team", owner="tester")
        ingest(cube, [_src(f"{who}.jsonl", text)], actor=who)

    git(repo, "checkout", "-qb", "left")
    create("ana", "Ana runs the Lisbon office")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "left")
    git(repo, "checkout", "-q", "main")
    create("bo", "Bo runs the Porto office")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "right")
    git(repo, "merge", "-q", "--no-edit", "left")  # add/add of every bundle file: merged by the driver
    merged = Cube.open(repo / "cube")
    texts = {r.text for r in merged.read_state().current.values()}
    assert texts == {"Ana runs the Lisbon office", "Bo runs the Porto office"}
    assert verify(merged.path).ok, verify(merged.path).problems


def test_snapshots_promoted_on_two_branches_merge(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from memos_cli.engine.activation.promote import promote_to_activation
    from memos_cli.engine.select import Selection

    llama = str(tiny_dirs["llama"])
    repo, _ = _repo(tmp_path, ["Ana's cat is called Miso", "Bob cooks ramen"])
    cube = _branches(
        repo,
        lambda c: promote_to_activation(c, Selection(query="cat", k=1), name="pets", model=llama),
        lambda c: promote_to_activation(c, Selection(query="ramen", k=1), name="food", model=llama),
    )
    assert set(cube.manifest.kv) == {"pets", "food"}
    report = verify(cube.path)
    assert report.ok, report.problems
