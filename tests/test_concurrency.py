"""Concurrency: four processes ingest into one cube while readers query; lock waits time out cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest

WRITERS = 4
PER_WRITER = 3  # batches per writer
BATCH = 10


def test_four_writers_and_readers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    ingest(cube, [Source("seed.jsonl", b'{"text": "seed memory"}\n')])
    env = {**os.environ, "MEMOS_LOCK_TIMEOUT": "120", "MEMOS_THREADS": "1"}
    files = []
    for w in range(WRITERS):
        for b in range(PER_WRITER):
            path = tmp_path / f"w{w}-b{b}.jsonl"
            # writer pairs overlap on purpose: the same record from the same file must be stored once
            path.write_text(
                "".join(
                    json.dumps({"text": f"writer {w} batch {b} item {i}", "id": f"{b}-{i}"}) + "\n"
                    for i in range(BATCH)
                )
            )
            files.append(path)
    script = (
        "import sys, subprocess\n"
        "for f in sys.argv[2:]:\n"
        "    r = subprocess.run([sys.executable, '-m', 'memos_cli', 'ingest', sys.argv[1], f], capture_output=True)\n"
        "    if r.returncode: sys.exit(r.stderr.decode())\n"
    )
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(cube.path),
                *[str(f) for f in files[w * PER_WRITER : (w + 1) * PER_WRITER]],
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        for w in range(WRITERS)
    ]
    # a second copy of writer 0's first file, ingested concurrently: duplicates must collapse
    dup = subprocess.Popen(
        [sys.executable, "-m", "memos_cli", "ingest", str(cube.path), str(files[0])], env=env, stderr=subprocess.PIPE
    )
    reads, errors = 0, []
    while any(w.poll() is None for w in writers) or dup.poll() is None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "memos_cli",
                "query",
                str(cube.path),
                "writer batch item",
                "-k",
                "3",
                "--json",
                "--retrieval",
                "lexical",
                "--no-usage",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        reads += 1
        if result.returncode != 0:
            errors.append(result.stderr)
        else:
            json.loads(result.stdout)
        listed = subprocess.run(
            [sys.executable, "-m", "memos_cli", "list", str(cube.path), "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        if listed.returncode != 0:
            errors.append(listed.stderr)
    for proc in [*writers, dup]:
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode()
    assert not errors, errors[:3]
    assert reads >= 2
    texts = [r.text for r in Cube.open(cube.path).read_state().versions]
    expected = {
        f"writer {w} batch {b} item {i}" for w in range(WRITERS) for b in range(PER_WRITER) for i in range(BATCH)
    }
    assert set(texts) == expected | {"seed memory"}
    assert len(texts) == len(set(texts)), "a record was stored twice"
    report = verify(cube.path)
    assert report.ok, report.problems


def test_a_held_lock_times_out_with_a_clear_message(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    source = tmp_path / "r.jsonl"
    source.write_text('{"text": "waiting"}\n')
    env = {**os.environ, "MEMOS_LOCK_TIMEOUT": "1"}
    with FileLock(str(cube.derived / "lock")):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "memos_cli", "ingest", str(cube.path), str(source)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "locked by another memos process" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert Cube.open(cube.path).read_state().current == {}
