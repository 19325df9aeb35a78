"""Full disk and other write failures: the cube is byte-identical to before, with one clear line.

Two ways: the write choke point in cube/io.py made to fail after N more bytes (runs anywhere, every fill
level), and a real small tmpfs where mounting is permitted (root), skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import snapshot_files
from memos_cli.cli.app import main
from memos_cli.cube import io as cube_io
from memos_cli.engine.integrity import verify

MESSAGE = "no space left on device while writing"


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def bundle(path: Path) -> dict[str, bytes]:
    """Bundle bytes plus any stray file memos could leave (temporaries, staging, backups)."""
    files = snapshot_files(path)
    for folder in ("staging", "backups"):
        for leftover in (path / ".memos" / folder).glob("*"):
            files[f"leftover {leftover.name}"] = b""
    for tmp in path.rglob("*.tmp"):
        files[f"temporary {tmp}"] = b""
    return files


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    cube = tmp_path / "cube"
    src = tmp_path / "seed.jsonl"
    src.write_text("".join(json.dumps({"text": f"seed memory {i} about harbour {i % 7}"}) + "\n" for i in range(20)))
    assert run("init", str(cube))[0] == 0
    assert run("ingest", str(cube), str(src))[0] == 0
    return cube


def _with_space(left: int | None, *args: str) -> tuple[int, str, str]:
    cube_io.space_left = left
    try:
        return run(*args)
    finally:
        cube_io.space_left = None


def _assert_failed_cleanly_or_done(cube: Path, before: dict[str, bytes], result: tuple[int, str, str]) -> bool:
    code, _out, err = result
    if code == 0:
        return True
    if code == 5:  # committed; a derived step after the commit (the index) failed, and says so
        assert "memos: error" in err and "stored" in err, err
        assert verify(cube).ok, verify(cube).problems
        return True
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("memos: error")]
    assert len(lines) == 1 and MESSAGE in lines[0] and lines[0].endswith("; the cube is unchanged"), err
    assert bundle(cube) == before, "a failed write must leave the cube byte-identical"
    assert verify(cube).ok, verify(cube).problems
    return False


@pytest.mark.parametrize("left", [0, 200, 20_000, 200_000])
def test_ingest_on_a_full_disk_leaves_the_cube_unchanged(tmp_path: Path, seeded: Path, left: int) -> None:
    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"text": f"new memory number {i} on a full disk"}) + "\n" for i in range(200)))
    before = bundle(seeded)
    done = _assert_failed_cleanly_or_done(seeded, before, _with_space(left, "ingest", str(seeded), str(src)))
    if done:  # enough room for the commit (the index is derived: it may lag)
        assert len(snapshot_files(seeded)["memories.jsonl"].splitlines()) == 220


@pytest.mark.parametrize("left", [0, 100, 1_000, 5_000])
@pytest.mark.parametrize(
    "command",
    [
        ["forget", "{cube}", "{id}"],
        ["forget", "{cube}", "{id}", "--purge", "--yes"],
        ["update", "{cube}", "{id}", "--text", "a changed text"],
        ["policy", "{cube}", "--add-reader", "eve"],
        ["promote", "{cube}", "--to", "archive", "--all"],
    ],
    ids=["forget", "purge", "update", "policy", "archive"],
)
def test_every_write_on_a_full_disk_leaves_the_cube_unchanged(seeded: Path, command: list[str], left: int) -> None:
    code, out, _ = run("list", str(seeded), "--json")
    memory_id = json.loads(out)["memories"][0]["id"]
    args = [a.format(cube=seeded, id=memory_id) for a in command]
    before = bundle(seeded)
    _assert_failed_cleanly_or_done(seeded, before, _with_space(left, *args))


def test_a_failed_write_of_the_manifest_rolls_back_the_appends(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last write of a commit fails: everything before it (appends, renames) is undone."""
    before = bundle(seeded)
    real = cube_io.atomic_write

    def failing(root: Path, rel: str, data: bytes) -> None:
        if rel == "cube.yaml":
            raise OSError(28, os.strerror(28), rel)
        real(root, rel, data)

    monkeypatch.setattr(cube_io, "atomic_write", failing)
    code, _out, err = run("policy", str(seeded), "--add-reader", "eve")
    assert code == 1 and "no space left on device while writing cube.yaml; the cube is unchanged" in err
    assert bundle(seeded) == before


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path("/tmp") / f"memos-tmpfs-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True).returncode
    if ok == 0:
        subprocess.run(["umount", str(probe)], check=False)
    probe.rmdir()
    return ok == 0


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount(), reason="mounting a tmpfs needs root")
def test_a_real_full_tmpfs_at_several_fill_levels(tmp_path: Path, seeded: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        src = tmp_path / "many.jsonl"
        src.write_text("".join(json.dumps({"text": f"memory {i} " + "words " * 20}) + "\n" for i in range(300)))
        for free_kb in (4, 32, 96):
            cube = mount / "cube"
            shutil.rmtree(cube, ignore_errors=True)
            (mount / "filler").unlink(missing_ok=True)
            shutil.copytree(seeded, cube)
            stat = os.statvfs(mount)
            fill = stat.f_bavail * stat.f_frsize - free_kb * 1024
            with open(mount / "filler", "wb") as handle:
                handle.write(b"\0" * max(fill, 0))
            before = bundle(cube)
            result = run("ingest", str(cube), str(src))
            done = _assert_failed_cleanly_or_done(cube, before, result)
            assert not done, f"300 records cannot fit in {free_kb} KB"
    finally:
        subprocess.run(["umount", str(mount)], check=False)
