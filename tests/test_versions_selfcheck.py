"""The scenarios of issue #13 written a second way (other data, other commands, through the CLI):
nothing conflicts, nothing stale stays active, nothing is silently lost, no "internal error"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from tests.test_cli import run
from tests.test_merge_semantic import git

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")


def ok(*args: str) -> str:
    code, out, err = run(*args)
    assert code == 0, err
    assert "internal error" not in err
    return out


def _current(cube: Path) -> dict[str, object]:
    return Cube.open(cube).read_state().current


@needs_git
def test_three_branches_of_cli_work_merge_in_git_without_conflicts(tmp_path: Path) -> None:
    repo = tmp_path / "team"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    ok("init", str(repo / "mem"), "--name", "mem")
    ok("git-setup", str(repo))
    Path("seed.jsonl").write_text(json.dumps({"id": "rent", "text": "Rent is due on the 1st", "key": "rent"}) + "\n")
    ok("ingest", str(repo / "mem"), "seed.jsonl")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "seed")
    (seed,) = _current(repo / "mem")

    git(repo, "checkout", "-qb", "ops")
    ok("update", str(repo / "mem"), seed, "--status", "archived")
    ok("policy", str(repo / "mem"), "--add-reader", "ops-bot")
    git(repo, "commit", "-qam", "ops")
    git(repo, "checkout", "-q", "main")
    git(repo, "checkout", "-qb", "finance")
    ok("update", str(repo / "mem"), seed, "--tag", "money")
    Path("fin.jsonl").write_text(
        json.dumps({"text": "Rent is due on the 5th from March", "key": "rent", "time": "2030-03-01"}) + "\n"
    )
    ok("ingest", str(repo / "mem"), "fin.jsonl")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "finance")
    git(repo, "checkout", "-q", "main")
    ok("policy", str(repo / "mem"), "--add-writer", "carol")
    git(repo, "commit", "-qam", "main policy")
    git(repo, "merge", "-q", "--no-edit", "ops")
    git(repo, "merge", "-q", "--no-edit", "finance")  # both raise on a textual conflict

    cube = Cube.open(repo / "mem")
    assert cube.manifest.policy["readers"] == ["ops-bot"] and cube.manifest.policy["writers"] == ["carol"]
    state = cube.read_state()
    # archived on one branch, superseded by the newer fact on the other: retired either way, no conflict;
    # the tag of the other branch is kept
    assert state.current[seed].status == "superseded" and "money" in state.current[seed].tags
    active_rent = [r.text for r in state.current.values() if r.key == "rent" and r.status == "active"]
    assert active_rent == ["Rent is due on the 5th from March"]
    ok("verify", str(repo / "mem"))
    assert json.loads(ok("conflicts", str(repo / "mem"), "--json")) == []


@needs_git
def test_a_type_changed_two_ways_is_a_reported_conflict_until_resolved(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    ok("init", str(repo / "m"))
    ok("git-setup", str(repo))
    Path("a.txt").write_text("Standup moved to 9:30.\n")
    ok("ingest", str(repo / "m"), "a.txt")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "seed")
    (memory_id,) = _current(repo / "m")
    git(repo, "checkout", "-qb", "x")
    ok("update", str(repo / "m"), memory_id, "--type", "event", "--as", "xavier")
    git(repo, "commit", "-qam", "x")
    git(repo, "checkout", "-q", "main")
    ok("update", str(repo / "m"), memory_id, "--type", "fact", "--as", "yara")
    git(repo, "commit", "-qam", "y")
    git(repo, "merge", "-q", "--no-edit", "x")
    code, _, err = run("verify", str(repo / "m"))
    assert code == 3 and "conflict" in err and "memos conflicts" in err
    code, out, err = run("conflicts", str(repo / "m"))
    assert code == 1 and "type" in out and "xavier" in out and "yara" in out
    types = [v["text"] for v in json.loads(ok("history", str(repo / "m"), memory_id, "--json"))["versions"]]
    assert len(types) >= 4  # original, both edits, and the merge: nothing lost
    ok("update", str(repo / "m"), memory_id, "--type", "event")
    ok("verify", str(repo / "m"))


def test_a_text_file_edited_in_three_ways_syncs(tmp_path: Path) -> None:
    Path("plan.txt").write_text("Kickoff is Monday.\n\nBudget is 10k euros.\n\nVenue is the old library.\n")
    ok("init", str(tmp_path / "c"))
    ok("ingest", str(tmp_path / "c"), "plan.txt")
    # edit one paragraph, remove one, add one
    Path("plan.txt").write_text("Kickoff is Monday.\n\nBudget is 12k euros.\n\nCatering by Rosa's kitchen.\n")
    report = json.loads(ok("ingest", str(tmp_path / "c"), "plan.txt", "--dry-run", "--json"))
    assert (len(report["updated"]), report["added"], len(report["vanished"])) == (1, 1, 1)
    report = json.loads(ok("ingest", str(tmp_path / "c"), "plan.txt", "--sync", "--json"))
    assert len(report["archived"]) == 1
    active = sorted(r.text for r in _current(tmp_path / "c").values() if r.status == "active")
    assert active == ["Budget is 12k euros.", "Catering by Rosa's kitchen.", "Kickoff is Monday."]
    hits = json.loads(ok("query", str(tmp_path / "c"), "how big is the budget", "--json", "-k", "3"))["hits"]
    assert not any("10k" in h["text"] for h in hits)  # the stale figure is not active any more
    # ingesting the same file again changes nothing
    again = json.loads(ok("ingest", str(tmp_path / "c"), "plan.txt", "--json"))
    assert again["added"] == 0 and again["updated"] == [] and again["vanished"] == []


def test_an_exported_copy_edited_apart_fuses_back(tmp_path: Path) -> None:
    Path("f.jsonl").write_text(
        json.dumps({"text": "Deploys happen on Tuesdays", "key": "deploy-day", "time": "2030-01-01"}) + "\n"
    )
    ok("init", str(tmp_path / "home"))
    ok("ingest", str(tmp_path / "home"), "f.jsonl")
    ok("export", str(tmp_path / "home"), "-o", str(tmp_path / "home.tar.gz"))
    ok("import", str(tmp_path / "home.tar.gz"), "-o", str(tmp_path / "laptop"))
    assert Cube.open(tmp_path / "laptop").manifest.id == Cube.open(tmp_path / "home").manifest.id
    (memory_id,) = _current(tmp_path / "home")
    ok("update", str(tmp_path / "home"), memory_id, "--tag", "infra")
    Path("g.jsonl").write_text(
        json.dumps({"text": "Deploys move to Thursdays", "key": "deploy-day", "time": "2030-02-01"}) + "\n"
    )
    ok("ingest", str(tmp_path / "laptop"), "g.jsonl", "--as", "lee")
    ok("fuse", str(tmp_path / "home"), str(tmp_path / "laptop"), "-o", str(tmp_path / "both"), "--as", "lee")
    fused = Cube.open(tmp_path / "both")
    assert fused.manifest.owner == "lee"
    current = fused.read_state().current
    active = [r.text for r in current.values() if r.key == "deploy-day" and r.status == "active"]
    assert active == ["Deploys move to Thursdays"]
    assert "infra" in current[memory_id].tags  # the home edit survived as history of the superseded fact
    ok("verify", str(tmp_path / "both"))


def test_verify_flags_an_edited_old_version_and_a_missing_adapter_file(tmp_path: Path) -> None:
    Path("f.jsonl").write_text(json.dumps({"text": "Door code 1234"}) + "\n")
    ok("init", str(tmp_path / "c"))
    ok("ingest", str(tmp_path / "c"), "f.jsonl")
    (memory_id,) = _current(tmp_path / "c")
    ok("update", str(tmp_path / "c"), memory_id, "--text", "Door code 5678")
    path = tmp_path / "c" / "memories.jsonl"
    path.write_text(path.read_text().replace("1234", "0000"))  # history rewritten by hand
    code, _, err = run("verify", str(tmp_path / "c"))
    assert code == 3 and "content hash" in err and "internal error" not in err
