"""A cube committed to git and cloned fresh answers queries with no manual step (real git binary)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.query import query

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")


def git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "HOME": str(cwd),
        "PATH": "/usr/bin:/bin:/usr/local/bin",
    }
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def test_fresh_clone_answers_queries(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cube = Cube.init(repo / "notes", name="notes")
    body = "".join(
        json.dumps({"text": t}) + "\n" for t in ("The wifi password is on the fridge", "Rent is due on the 3rd")
    )
    ingest(cube, [Source("facts.jsonl", body.encode())])
    query(cube, "wifi", k=1)  # builds .memos/ in the working copy
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "cube")
    tracked = git(repo, "ls-files").split()
    assert "notes/memories.jsonl" in tracked and not any(".memos/" in p for p in tracked)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "notes" / ".memos").exists()
    hits = query(Cube.open(clone / "notes"), "when do I pay rent?", k=1)
    assert hits[0].text == "Rent is due on the 3rd"
    assert git(clone, "status", "--porcelain") == ""  # the rebuilt index stays out of git
