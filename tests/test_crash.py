"""Crash safety: real memos processes are SIGKILLed at random points, 50+ times in all.

After every kill, ``verify`` must pass and the cube must hold exactly what was acknowledged (commands
that exited 0) plus, for the killed command, all of its changes or none of them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify
from tiny_models import build_tiny_model

KILLS_PER_COMMAND = {"ingest": 20, "forget": 14, "promote": 10, "distill": 6, "fuse": 10}


def _run(args: list[str], env: dict[str, str], kill_after: float | None) -> tuple[bool, bool]:
    """Run ``memos ARGS``; SIGKILL it after ``kill_after`` seconds. Returns (acknowledged, was_killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "memos_cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return False, True
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return True, False


def _active_texts(cube: Path) -> list[str]:
    return [r.text for r in Cube.open(cube).read_state().current.values() if r.status == "active"]


def _assert_sound(cube: Path) -> None:
    report = verify(cube)
    assert report.ok, report.problems


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("crash-model") / "llama", "llama")


def test_killed_commands_leave_the_cube_before_or_after(tmp_path: Path, tiny_llama: Path) -> None:
    rng = random.Random(1234)
    env = {**os.environ, "MEMOS_LOCK_TIMEOUT": "60", "MEMOS_THREADS": "1"}
    cube = tmp_path / "cube"
    acked: set[str] = set()

    def ingest_args(tag: str, n: int) -> tuple[list[str], set[str]]:
        texts = {f"memory {tag} number {i} about topic {rng.randrange(1000)}" for i in range(n)}
        path = tmp_path / f"{tag}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sorted(texts)))
        return ["ingest", str(cube), str(path)], texts

    assert _run(["init", str(cube)], env, None)[0]
    args, texts = ingest_args("seed", 12)
    _run(args, env, None)
    acked |= texts
    # Time each command once, so that kills land anywhere in its run.
    durations: dict[str, float] = {}
    started = time.monotonic()
    args, texts = ingest_args("timing", 8)
    _run(args, env, None)
    acked |= texts
    durations["ingest"] = time.monotonic() - started
    kills = 0

    def trials(command: str) -> range:
        """Until the command was killed mid-run its quota of times (at most 5x the quota tries: on a busy
        machine a run can be faster or slower than the timed one, so a kill may land after its end)."""
        return range(KILLS_PER_COMMAND[command] * 5)

    def done(command: str, before: int) -> bool:
        return kills - before >= KILLS_PER_COMMAND[command]

    start_kills = kills
    for trial in trials("ingest"):
        if done("ingest", start_kills):
            break
        args, texts = ingest_args(f"t{trial}", rng.randrange(1, 20))
        ok, killed = _run(args, env, rng.uniform(0.0, durations["ingest"] * 1.1))
        kills += killed
        present = set(_active_texts(cube))
        _assert_sound(cube)
        assert acked <= present
        new = present - acked
        assert new in (set(), texts), "an interrupted ingest must be all or nothing"
        acked |= new
        all_texts = _active_texts(cube)
        assert len(all_texts) == len(set(all_texts)), "no memory stored twice"
    # forget: archive three memories at a time
    archived: set[str] = set()
    started = time.monotonic()
    start_kills = kills
    for trial in trials("forget"):
        if trial > 0 and done("forget", start_kills):
            break
        state = Cube.open(cube).read_state()
        targets = sorted(i for i, r in state.current.items() if r.status == "active")[:3]
        t0 = time.monotonic()
        ok, killed = _run(
            ["forget", str(cube), *targets],
            env,
            None if trial == 0 else rng.uniform(0.0, durations.get("forget", 1.0) * 1.1),
        )
        durations.setdefault("forget", time.monotonic() - t0)
        kills += killed
        _assert_sound(cube)
        now = {i for i, r in Cube.open(cube).read_state().current.items() if r.status == "archived"}
        changed = (now - archived) & set(targets)
        assert changed in (set(), set(targets))
        assert now - archived == changed
        archived = now
    # promote: a snapshot appears whole (file + manifest entry) or not at all
    t0 = time.monotonic()
    _run(["promote", str(cube), "--name", "base", "--all", "--budget", "200", "--model", str(tiny_llama)], env, None)
    durations["promote"] = time.monotonic() - t0
    start_kills = kills
    for trial in trials("promote"):
        if done("promote", start_kills):
            break
        name = f"kv{trial}"
        ok, killed = _run(
            ["promote", str(cube), "--name", name, "--all", "--budget", "200", "--model", str(tiny_llama)],
            env,
            rng.uniform(0.0, durations["promote"] * 1.1),
        )
        kills += killed
        _assert_sound(cube)
        manifest = Cube.open(cube).manifest
        assert (name in manifest.kv) == ok or (not ok and name in manifest.kv)
        if name in manifest.kv:
            assert (cube / manifest.kv[name].rel).is_file()
    # distill: an adapter appears whole (folder + manifest entry with checksums) or not at all
    t0 = time.monotonic()
    distill_args = ["--all", "--steps", "2", "--model", str(tiny_llama)]
    _run(["distill", str(cube), "--name", "base-lora", *distill_args], env, None)
    durations["distill"] = time.monotonic() - t0
    start_kills = kills
    for trial in trials("distill"):
        if done("distill", start_kills):
            break
        name = f"lora{trial}"
        ok, killed = _run(
            ["distill", str(cube), "--name", name, *distill_args],
            env,
            rng.uniform(durations["distill"] * 0.3, durations["distill"] * 1.05),
        )
        kills += killed
        _assert_sound(cube)
        manifest = Cube.open(cube).manifest
        if ok:
            assert name in manifest.lora
        if name in manifest.lora:
            assert (cube / manifest.lora[name].rel / "adapter_model.safetensors").is_file()
        else:
            assert not (cube / "lora" / name).exists()
    # fuse: the output is a whole cube or absent
    other = tmp_path / "other"
    _run(["init", str(other)], env, None)
    args, _ = ingest_args("other", 10)
    _run([args[0], str(other), args[2]], env, None)
    t0 = time.monotonic()
    _run(["fuse", str(cube), str(other), "-o", str(tmp_path / "timing-fused"), "--model", str(tiny_llama)], env, None)
    durations["fuse"] = time.monotonic() - t0
    expected = len(Cube.open(tmp_path / "timing-fused").read_state().current)
    start_kills = kills
    for trial in trials("fuse"):
        if done("fuse", start_kills):
            break
        out = tmp_path / f"fused{trial}"
        ok, killed = _run(
            ["fuse", str(cube), str(other), "-o", str(out), "--model", str(tiny_llama)],
            env,
            rng.uniform(0.0, durations["fuse"] * 1.1),
        )
        kills += killed
        if out.exists():
            _assert_sound(out)
            assert len(Cube.open(out).read_state().current) == expected
        else:
            assert not ok
        _assert_sound(cube)
    # every interrupted transaction is rolled back by the next writer, leaving nothing behind
    _run(["repair", str(cube)], env, None)
    assert not (cube / ".memos" / "journal.json").exists()
    _assert_sound(cube)
    # the quotas sum to 60; a kill that lands after a command ended is not counted, so 50 is the floor
    assert kills >= 50, f"only {kills} commands were killed mid-run"
    print(f"\ncrash harness: {kills} kills, durations {durations}")
