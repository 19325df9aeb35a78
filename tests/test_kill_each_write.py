"""Kill after each write: every mutating command is stopped right after its 1st, 2nd, ... write call
(not at random times) until it runs to the end; after every stop, ``verify`` passes on the cube as it was
left and the cube equals its state before the command or after it.

The stop is the test hook in cube/io.py (``MEMOS_TEST_CRASH_AFTER``: ``os._exit(137)`` right after the
N-th write call, no cleanup, like SIGKILL). Each run is a forked copy of this process, so models and the
embedder are loaded once. The number of write points covered is printed (``-s``) and asserted nonzero.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml

from memos_cli.cli.app import main
from memos_cli.cube import io as cube_io
from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

CHILD_TIMEOUT_S = 120
_VOLATILE = {"time", "created", "updated", "train_seconds", "eval_seconds", "seconds", "report.json"}


def _strip(value: object) -> object:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _manifest(data: dict) -> object:
    """A manifest without clock fields and without its id (a fused cube gets a new random id each run)."""
    return _strip({k: v for k, v in data.items() if k != "id"})


def readers_view(cube: Path) -> dict[str, object]:
    """What a reader sees (an unfinished transaction's bytes excluded), clock fields removed."""
    if not (cube / "cube.yaml").exists():
        return {}
    opened = Cube.open(cube)
    view: dict[str, object] = {"cube.yaml": _manifest(opened.manifest.to_dict())}
    for rel in ("memories.jsonl", "audit.jsonl"):
        data = opened._read_committed(rel)
        view[rel] = [_strip(json.loads(line)) for line in data.splitlines() if line.strip()]
    for name in opened.manifest.kv:
        view[f"kv/{name}"] = opened.committed_path(f"kv/{name}.safetensors").read_bytes()
    for name in opened.manifest.lora:
        view[f"lora/{name}"] = sorted(p.name for p in opened.committed_path(f"lora/{name}").iterdir())
    return view


def recovered(cube: Path) -> dict[str, object]:
    """The bundle's bytes after the next writer's recovery (what a kill leaves, once rolled back)."""
    if (cube / "cube.yaml").exists():
        opened = Cube.open(cube)
        with opened.locked():
            pass
    return state(cube)


def state(cube: Path) -> dict[str, object]:
    """The bundle (derived .memos excluded) with clock fields removed: two runs of one command agree."""
    if not cube.exists():
        return {}
    found: dict[str, object] = {}
    for path in sorted(cube.rglob("*")):
        rel = path.relative_to(cube)
        if not path.is_file() or ".memos" in rel.parts:
            continue
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            found[str(rel)] = [_strip(json.loads(line)) for line in data.splitlines() if line.strip()]
        elif path.name == "cube.yaml":
            found[str(rel)] = _manifest(yaml.safe_load(data))
        elif path.name in ("adapter_model.safetensors", "adapter_config.json", "report.json"):
            found[str(rel)] = "present"  # trained bytes differ run to run only in timing fields
        else:
            found[str(rel)] = data
    return found


def _run_child(args: list[str], crash_after: int) -> int:
    """Run ``memos ARGS`` in a forked child, stopped after write ``crash_after`` (0: never)."""
    pid = os.fork()
    if pid == 0:  # the child: no cleanup, no return into pytest, whatever happens
        code = 70
        try:
            os.environ["MEMOS_THREADS"] = "1"
            if "torch" in sys.modules:  # OpenMP's pool does not survive fork: one thread needs no pool
                sys.modules["torch"].set_num_threads(1)
            cube_io._crash_after = crash_after
            cube_io._writes = 0
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                code = main(args)
        finally:
            os._exit(code if isinstance(code, int) else 70)

    def too_long(signum: int, frame: object) -> None:
        os.kill(pid, signal.SIGKILL)

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(CHILD_TIMEOUT_S)
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert os.WIFEXITED(status), f"memos {' '.join(args)} hung or died (status {status})"
    return os.WEXITSTATUS(status)


COVERED: dict[str, int] = {}


def _diff(a: object, b: object, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{where}/{k}")]
    return [] if a == b else [f"{where}: {str(a)[:120]} != {str(b)[:120]}"]


def harness(name: str, base: Path, work: Path, args_for, *, output: str | None = None) -> int:
    """Copy ``base`` to ``work``, run the command to the end once (the after state), then once per write
    point N = 1, 2, ... stopped after write N; returns the number of write points."""
    target = work / "cube"

    def fresh() -> None:
        for path in (target, work / "out"):
            shutil.rmtree(path, ignore_errors=True)
        for stale in [*work.glob(".out.fusing-*"), *work.glob(".out.importing-*")]:
            shutil.rmtree(stale)
        shutil.copytree(base, target, symlinks=True)

    watched = (work / output) if output else target
    fresh()
    before, seen_before = state(watched), readers_view(watched)
    code = _run_child(args_for(target), 0)
    assert code == 0, f"{name} fails when not stopped (exit {code})"
    after, seen_after = state(watched), readers_view(watched)
    assert after != before, f"{name} changed nothing"
    points = 0
    for n in range(1, 400):
        fresh()
        code = _run_child(args_for(target), n)
        if output is None or watched.exists():
            problems = verify(watched).problems
            assert not problems, f"{name} stopped after write {n}: {problems}"
        seen = readers_view(watched)
        assert seen in (seen_before, seen_after), (
            f"{name} stopped after write {n}: readers see a state between",
            _diff(seen, seen_after),
        )
        left = recovered(watched)
        assert left in (before, after), (
            f"{name} stopped after write {n}: recovery leaves a state between",
            _diff(left, after),
        )
        if output is not None:
            strays = [p.name for p in work.iterdir() if p.name not in ("cube", "out", "other")]
            # one hidden staging folder at most, removed by the next fuse or import to the same place
            assert all(s.startswith((".out.fusing-", ".out.importing-")) for s in strays), strays
        if code != 137:
            assert code == 0, f"{name}: exit {code} at N={n}"
            break
        points += 1
    else:
        pytest.fail(f"{name} was still writing after 400 write calls")
    COVERED[name] = points
    return points


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked children must not need torch's OpenMP pool (it hangs after fork once the parent used it)."""
    monkeypatch.setenv("MEMOS_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    cube = tmp_path / "base" / "cube"
    src = tmp_path / "seed.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": f"fact {i}: the harbour has {i} cranes", "tags": ["port"]}) + "\n" for i in range(6)
        )
    )
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        assert main(["init", str(cube)]) == 0
        assert main(["ingest", str(cube), str(src)]) == 0
        assert main(["query", str(cube), "cranes"]) == 0
    return cube


def _first_id(cube: Path) -> str:
    line = (cube / "memories.jsonl").read_text().splitlines()[0]
    return json.loads(line)["id"]


def test_kill_after_each_write_of_every_plaintext_command(tmp_path: Path, base: Path) -> None:
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"text": f"new fact {i} about ferries"}) + "\n" for i in range(3)))
    memory_id = _first_id(base)
    archive = tmp_path / "base.tar.gz"
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        assert main(["export", str(base), "-o", str(archive)]) == 0
    commands = {
        "ingest": lambda c: ["ingest", str(c), str(new)],
        "forget": lambda c: ["forget", str(c), memory_id],
        "forget --purge": lambda c: ["forget", str(c), memory_id, "--purge", "--yes"],
        "update": lambda c: ["update", str(c), memory_id, "--text", "fact 0: the harbour has no cranes"],
        "promote --to archive": lambda c: ["promote", str(c), "--to", "archive", "--tag", "port"],
        "policy": lambda c: ["policy", str(c), "--add-writer", "eve"],
        "import": lambda c: ["import", str(archive), "-o", str(c.parent / "out")],
    }
    for name, args in commands.items():
        work = tmp_path / name.replace(" ", "_")
        work.mkdir()
        harness(name, base, work, args, output="out" if name == "import" else None)
    # repair has something to do: a torn last line in audit.jsonl
    torn = tmp_path / "torn" / "cube"
    shutil.copytree(base, torn)
    with open(torn / "audit.jsonl", "ab") as handle:
        handle.write(b'{"op": "torn')
    work = tmp_path / "repair"
    work.mkdir()
    _harness_repair(torn, work)
    print(f"\nwrite points covered: {COVERED} = {sum(COVERED.values())}", file=sys.stderr)
    assert all(COVERED.values())


def _harness_repair(torn: Path, work: Path) -> None:
    """repair's before state fails verify (that is why it runs): after each stop it must still be the
    torn cube (verify names only the torn line) or the repaired one."""
    target = work / "cube"
    points = 0
    for n in range(0, 400):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(torn, target)
        code = _run_child(["repair", str(target)], n)
        problems = verify(target).problems
        assert all("torn" in p or "incomplete" in p for p in problems), (n, problems)
        if n and code != 137:
            break
        points += 1 if n else 0
    COVERED["repair"] = points


def test_kill_after_each_write_of_promote_fuse_and_distill(
    tmp_path: Path, base: Path, tiny_dirs: dict[str, Path]
) -> None:
    model = str(tiny_dirs["llama"])
    snap = tmp_path / "snap" / "cube"
    shutil.copytree(base, snap)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        assert main(["promote", str(snap), "--name", "s", "--all", "--budget", "200", "--model", model]) == 0
    other = tmp_path / "other"  # a cube of its own (fuse refuses the same cube twice)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        src = tmp_path / "other.jsonl"
        src.write_text(json.dumps({"text": "the other cube knows about lighthouses"}) + "\n")
        assert main(["init", str(other)]) == 0
        assert main(["ingest", str(other), str(src)]) == 0
    runs = {
        "promote --to activation": (
            base,
            lambda c: ["promote", str(c), "--name", "hot", "--all", "--budget", "200", "--model", model],
            None,
        ),
        "promote --drop": (snap, lambda c: ["promote", str(c), "--drop", "s"], None),
        "distill": (
            base,
            lambda c: ["distill", str(c), "--name", "ad", "--all", "--steps", "2", "--model", model],
            None,
        ),
        "fuse": (base, lambda c: ["fuse", str(c), str(other), "-o", str(c.parent / "out")], "out"),
    }
    for name, (source, args, output) in runs.items():
        work = tmp_path / name.replace(" ", "_")
        work.mkdir()
        harness(name, source, work, args, output=output)
    print(f"\nwrite points covered: {COVERED} = {sum(COVERED.values())}", file=sys.stderr)
