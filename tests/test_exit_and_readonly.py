"""Exit status tells the truth, and read-only cubes answer (issue #19)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import snapshot_files
from memos_cli.cli.app import main
from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest

RECORDS = [{"text": "Ana's cat is called Miso"}, {"text": "Bob likes ramen"}, {"text": "Carla plays chess"}]


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _records(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def _cube(tmp_path: Path) -> Cube:
    cube = Cube.init(tmp_path / "c", owner="tester")
    ingest(cube, [Source("r.jsonl", _records(tmp_path / "r.jsonl").read_bytes())], actor="tester")
    return cube


# ------------------------------------------------------------------------------------------ exit status


def test_ctrl_c_exits_130_and_says_the_cube_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cube = Cube.init(tmp_path / "c", owner="tester")
    before = snapshot_files(cube.path)

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("memos_cli.engine.plaintext.ingest._embed", interrupted)
    code, _, err = run("ingest", str(cube.path), str(_records(tmp_path / "r.jsonl")))
    assert code == 130
    assert "interrupted; the cube is unchanged" in err
    assert snapshot_files(cube.path) == before


def test_a_failure_after_the_commit_says_what_was_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cube = Cube.init(tmp_path / "c", owner="tester")

    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cube.path / ".memos" / "index" / "vectors.f32"))

    monkeypatch.setattr("memos_cli.engine.plaintext.ingest._update_index", disk_full)
    code, _, err = run("ingest", str(cube.path), str(_records(tmp_path / "r.jsonl")))
    assert code == 5, err
    assert "3 memories stored; the index will be rebuilt by the next query" in err
    assert "no space left on the device" in err and "internal error" not in err
    monkeypatch.undo()
    assert len(Cube.open(cube.path).read_state().current) == 3
    code, out, err = run("query", str(cube.path), "cat", "--json", "-k", "1")
    assert code == 0, err and json.loads(out)["hits"][0]["text"] == RECORDS[0]["text"]


@pytest.mark.parametrize(
    ("number", "words"),
    [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")],
)
def test_storage_errors_are_named_never_internal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, number: int, words: str
) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise OSError(number, os.strerror(number), str(tmp_path / "c" / "cube.yaml"))

    monkeypatch.setattr("memos_cli.cube.bundle.Cube.init", refuse)
    code, _, err = run("init", str(tmp_path / "c"))
    assert code == 1
    assert words in err and "cube.yaml" in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 2  # the line and its hint


# ------------------------------------------------------------------------------------------ read-only


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[list[str]]:
    """Every write under ``root`` fails with EROFS, as on read-only media (chmod does not stop root).
    Yields the list of refused attempts."""
    root = root.resolve()
    refused: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    patched = {name: getattr(os, name) for name in ("mkdir", "replace", "rename", "unlink", "rmdir", "remove")}

    def inside(path: object, dir_fd: object = None) -> bool:
        try:
            name = Path(os.fsdecode(path))  # type: ignore[arg-type]
            if isinstance(dir_fd, int) and not name.is_absolute():  # cube.io opens relative to a folder
                name = Path(os.readlink(f"/proc/self/fd/{dir_fd}")) / name
            return name.resolve().is_relative_to(root)
        except (TypeError, ValueError, OSError):
            return False

    def deny(path: object) -> None:
        refused.append(str(path))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def fake_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if any(c in mode for c in "wax+") and inside(file):
            deny(file)
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    def fake_os_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC) and inside(
            path, kwargs.get("dir_fd")
        ):
            deny(path)
        return real_os_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    def guard(name: str) -> object:
        real = patched[name]

        def fake(path: object, *args: object, **kwargs: object) -> object:
            if inside(path, kwargs.get("dir_fd", kwargs.get("src_dir_fd"))):
                deny(path)
            return real(path, *args, **kwargs)

        return fake

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)
        mp.setattr(os, "open", fake_os_open)
        for name in patched:
            mp.setattr(os, name, guard(name))
        yield refused


def test_reads_answer_on_a_read_only_cube(tmp_path: Path) -> None:
    cube = _cube(tmp_path)
    shutil.rmtree(cube.path / ".memos")  # no derived data: a fresh clone on read-only media
    before = snapshot_files(cube.path)
    memory_id = next(iter(cube.read_state().current))
    with read_only(cube.path):
        code, out, err = run("query", str(cube.path), "cat", "--json", "-k", "1")
        assert code == 0, err
        assert json.loads(out)["hits"][0]["text"] == RECORDS[0]["text"]
        assert run("query", str(cube.path), "chess", "--json")[0] == 0  # the cached index is reused
        for args in (["list", "--json"], ["stats", "--json"], ["show", memory_id], ["verify"]):
            code, _, err = run(args[0], str(cube.path), *args[1:])
            assert code == 0, (args, err)
        code, _, err = run("export", str(cube.path), "-o", str(tmp_path / "out.tar.gz"))
        assert code == 0, err
        code, _, err = run("ingest", str(cube.path), str(tmp_path / "r.jsonl"))
        assert code == 1 and "read-only file system" in err and "internal error" not in err
    assert snapshot_files(cube.path) == before
    assert not (cube.path / ".memos").exists()
    assert verify(cube.path).ok


def test_chat_on_a_read_only_cube_answers_without_remembering(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from memos_cli.engine.chat import ChatOptions, ChatSession

    cube = _cube(tmp_path)
    before = snapshot_files(cube.path)
    with read_only(cube.path):
        session = ChatSession([Cube.open(cube.path)], ChatOptions(model=str(tiny_dirs["llama"]), max_new_tokens=4))
        result = session.ask("What is the cat called?")
        session.close()
    assert result.remembered == [] and any("read-only" in s for s in result.stale)
    assert RECORDS[0]["text"] in {r.text for r in result.retrieved}
    assert snapshot_files(cube.path) == before


def test_ctrl_c_in_a_chat_that_remembered_turns_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from memos_cli.cli.commands.chat import _interactive
    from memos_cli.errors import PostCommitError

    def ctrl_c(_prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", ctrl_c)
    fresh = SimpleNamespace(options=SimpleNamespace(remember=True), turns=0)
    with pytest.raises(KeyboardInterrupt):
        _interactive(fresh, False)
    talked = SimpleNamespace(options=SimpleNamespace(remember=True), turns=2)
    with pytest.raises(PostCommitError, match="2 chat turns remembered") as caught:
        _interactive(talked, False)
    assert caught.value.exit_code == 5
