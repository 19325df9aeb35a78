"""--engine ray on a real two-node Ray cluster started on this machine: the same results as local.

The cluster (a head and a worker node, one CPU each, own ports and temp dir, dashboard and usage stats
off, token auth with a fresh token) is started once per test session and stopped by PID at the end:
never with ``ray stop``, which would kill every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memos_cli.cli.app import app
from memos_cli.cube.bundle import Cube

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A port free now and never handed out before in this session: the OS may return a port it just gave
    (the probe socket is closed at once), and two Ray components on one port fail the start (a fresh-clone
    run did: dashboard and dashboard_agent_http both on 40415)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _node_ports() -> list[str]:
    names = ("node-manager", "object-manager", "metrics-export", "dashboard-agent-listen", "dashboard-agent-grpc")
    args = []
    for name in (*names, "runtime-env-agent"):
        args += [f"--{name}-port", str(_free_port())]
    return args


def _our_pids(token: str) -> list[int]:
    """Processes that carry this cluster's token in their environment: ours, and only ours."""
    mine = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"RAY_AUTH_TOKEN={token}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                mine.append(int(entry.name))
        except OSError:
            continue
    return mine


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a running head + worker cluster, this process connected to it as the driver."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (make install installs it)")
    temp = Path("/tmp") / f"memos-ray-{secrets.token_hex(4)}"  # short: Ray's socket paths have a length limit
    temp.mkdir()
    token = secrets.token_hex(16)
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
    )
    ray_bin = str(Path(sys.executable).parent / "ray")
    ip, port = "127.0.0.1", _free_port()
    address = f"{ip}:{port}"
    common = ["--block", "--num-cpus", "1", "--node-ip-address", ip, "--disable-usage-stats"]
    procs = []
    head_cmd = [ray_bin, "start", "--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp)]
    head_cmd += ["--dashboard-port", str(_free_port())]
    procs.append(
        subprocess.Popen(
            [*head_cmd, *common, *_node_ports()],
            env=env,
            start_new_session=True,
            stdout=open(temp / "head.log", "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
    )
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "PYTHONPATH")}
    # Before Ray is imported here: it reads the auth mode once.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PYTHONPATH=env["PYTHONPATH"])
    import ray

    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and b"Ray runtime started" not in (temp / "head.log").read_bytes():
            assert procs[0].poll() is None, (temp / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        procs.append(
            subprocess.Popen(
                [ray_bin, "start", "--address", address, *common, *_node_ports()],
                env=env,
                start_new_session=True,
                stdout=open(temp / "worker.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
        )
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        while time.monotonic() < deadline and len([n for n in ray.nodes() if n.get("Alive")]) < 2:
            assert procs[1].poll() is None, (temp / "worker.log").read_text()[-2000:]
            time.sleep(0.5)
        assert len([n for n in ray.nodes() if n.get("Alive")]) == 2, "the worker node did not join in 180 s"
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        leftovers = _our_pids(token)
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM makes a head drain for 30 s
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for pid in leftovers:  # actor processes run in their own process groups
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def _engine(address: str, actors: int = 2):  # type: ignore[no-untyped-def]
    from memos_cli.engine.distributed import EngineOptions, make_engine

    return make_engine(EngineOptions("ray", address, actors))


def _texts(n: int) -> list[str]:
    topics = ("the launch", "a budget review", "Caroline's adoption plans", "the hiking trip", "a bug in the parser")
    return [f"Note {i}: we talked about {topics[i % 5]}" + " in detail" * (i % 4) for i in range(n)]


@pytest.fixture(scope="session")
def reference() -> tuple[list[str], np.ndarray]:
    """560 texts (two chunks of the plan: 512 + 48) and their vectors from the local engine, computed once."""
    from memos_cli.models.embedder import load_embedder

    texts = _texts(560)
    return texts, load_embedder().encode(texts)


def _main(*args: str) -> tuple[int, str]:
    """main() with its real error handling: (exit code, stderr)."""
    import contextlib
    import io

    from memos_cli.cli.app import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def test_missing_ray_is_a_usage_error_with_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Cube.init(tmp_path / "c", owner="tester")
    (tmp_path / "q.txt").write_text("hello\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code, err = _main("ingest", str(tmp_path / "c"), str(tmp_path / "q.txt"), "--engine", "ray")
    assert code == 2 and "memos-cli[ray]" in err, err
    assert not (tmp_path / "c" / "memories.jsonl").exists() or not (tmp_path / "c" / "memories.jsonl").read_text()
    monkeypatch.setenv("MEMOS_ENGINE", "ray")
    code, err = _main("query", str(tmp_path / "c"), "--batch", str(tmp_path / "q.txt"))
    assert code == 2 and "memos-cli[ray]" in err, err


def test_vectors_are_byte_identical_and_both_nodes_work(ray_cluster: str, reference) -> None:  # type: ignore[no-untyped-def]
    texts, local = reference
    engine = _engine(ray_cluster)
    try:
        distributed = engine.encode(texts)
    finally:
        engine.close()
    assert distributed.tobytes() == local.tobytes()
    assert engine.stats.nodes == 2 and engine.stats.nodes_used == 2, engine.stats.to_dict()
    assert engine.stats.chunks == 2 and engine.stats.items == len(texts)


def test_ingest_and_batch_query_match_the_local_engine(ray_cluster: str, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text(
        "".join(json.dumps({"text": t, "speaker": "Ann" if i % 3 else "Bo"}) + "\n" for i, t in enumerate(_texts(530)))
    )
    questions = tmp_path / "questions.txt"
    questions.write_text("what about the launch?\nBo on the budget\nhiking\n\nparser bug detail\n")
    outputs = {}
    for engine in ("local", "ray"):
        cube = tmp_path / engine
        assert runner.invoke(app, ["init", str(cube)]).exit_code == 0
        extra = ["--engine", engine, "--address", ray_cluster]
        result = runner.invoke(app, ["ingest", str(cube), str(records), "--json", *extra])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["added"] == 530
        if engine == "ray":
            assert report["engine"]["nodes"] == 2 and report["engine"]["actors"] >= 1
            assert not any((cube / ".memos" / "stage").glob("*.f32"))  # committed: the stage is emptied
        result = runner.invoke(app, ["query", str(cube), "--batch", str(questions), "-k", "5", "--no-usage", *extra])
        assert result.exit_code == 0, result.output
        outputs[engine] = [json.loads(line) for line in result.stdout.splitlines()]
    vectors = {e: (tmp_path / e / ".memos" / "index" / "vectors.f32").read_bytes() for e in ("local", "ray")}
    assert vectors["local"] == vectors["ray"]
    assert len(outputs["ray"]) == 4
    for hits in outputs.values():
        for line in hits:
            for hit in line["hits"]:
                hit.pop("cube"), hit.pop("cube_path")  # the cubes' names and places differ, nothing else may
    assert outputs["local"] == outputs["ray"]


def test_staged_chunks_are_reused_and_a_damaged_one_is_recomputed(ray_cluster: str, tmp_path: Path, reference) -> None:  # type: ignore[no-untyped-def]
    texts, local = reference
    engine = _engine(ray_cluster, actors=1)
    engine.stage_dir = tmp_path / "stage"
    try:
        first = engine.encode(texts)
        staged = sorted(engine.stage_dir.glob("*.f32"))
        assert len(staged) == 2
        staged[0].write_bytes(staged[0].read_bytes()[:-4])  # a torn write
        second = engine.encode(texts)
    finally:
        engine.close()
    assert engine.stats.staged_reused == 1 and engine.stats.chunks == 3
    assert first.tobytes() == second.tobytes() == local.tobytes()


def test_a_killed_worker_s_chunk_is_retried(ray_cluster: str, reference) -> None:  # type: ignore[no-untyped-def]
    import ray

    texts, local = reference
    engine = _engine(ray_cluster, actors=2)
    try:
        engine.start()
        ray.kill(engine._actors[0], no_restart=True)
        vectors = engine.encode(texts)
    finally:
        engine.close()
    assert engine.stats.retried >= 1
    assert vectors.tobytes() == local.tobytes()


def test_a_killed_driver_loses_nothing(ray_cluster: str, tmp_path: Path) -> None:
    """Kill the ingesting process once a chunk is staged; the rerun skips it and the cube verifies."""
    cube = tmp_path / "cube"
    assert runner.invoke(app, ["init", str(cube)]).exit_code == 0
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(1030)))
    before = (cube / "memories.jsonl").read_bytes() if (cube / "memories.jsonl").exists() else b""
    cmd = [sys.executable, "-m", "memos_cli", "ingest", str(cube), str(records), "--engine", "ray"]
    proc = subprocess.Popen(
        [*cmd, "--address", ray_cluster, "--actors", "1"], env=dict(os.environ), start_new_session=True
    )
    stage = cube / ".memos" / "stage"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(stage.glob("*.f32")) and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    staged = len(list(stage.glob("*.f32")))
    assert staged >= 1
    after_kill = (cube / "memories.jsonl").read_bytes() if (cube / "memories.jsonl").exists() else b""
    assert after_kill in (before,)  # nothing committed yet: the cube is as before
    result = runner.invoke(
        app, ["ingest", str(cube), str(records), "--json", "--engine", "ray", "--address", ray_cluster]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == 1030 and report["engine"]["staged_reused"] >= staged
    assert runner.invoke(app, ["verify", str(cube)]).exit_code == 0
    vectors = np.fromfile(cube / ".memos" / "index" / "vectors.f32", dtype=np.float32)
    assert vectors.size == 1030 * 384


def test_sharded_batch_query_on_the_cluster_matches_local_unsharded(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """query --batch --engine ray over a sharded index (shards of 50 rows): the local unsharded answers,
    with every shard's work done by its shard actor. The actors read their shards where they are (this
    machine), so the driver reads no vectors; an actor that cannot (told other files than it sees) is
    sent its shard, read on the driver one shard at a time, never the whole file. A shard actor killed
    mid-batch is replaced and its queries ranked again: the same answers."""
    from memos_cli.engine import shard_actors
    from memos_cli.engine.plaintext import shard_store
    from memos_cli.engine.plaintext.sharded import ShardedIndex

    reads: list[tuple[int, int]] = []
    read_rows, locate_shard = shard_store.read_rows, shard_store.locate_shard

    def counted(root: Path, rel: str, start: int, count: int, dim: int) -> bytes:
        reads.append((start, count))
        return read_rows(root, rel, start, count, dim)

    def elsewhere(*args: object) -> shard_store.ShardSource:
        source = locate_shard(*args)  # type: ignore[arg-type]
        source.identity = [(name, ino + 1, size, mtime) for name, ino, size, mtime in source.identity]
        return source

    def no_local_work(*args: object) -> None:
        raise AssertionError("the driver ran a shard's work itself")

    records = tmp_path / "records.jsonl"
    records.write_text(
        "".join(
            json.dumps({"text": t, "speaker": "Ann" if i % 3 else "Bo", "time": f"2024-0{1 + i % 3}-1{i % 9}"}) + "\n"
            for i, t in enumerate(_texts(170))
        )
    )
    questions = tmp_path / "questions.txt"
    questions.write_text("what about the launch?\nBo on the budget\nhiking in February 2024\nparser bug detail\n")
    cube = tmp_path / "cube"
    assert runner.invoke(app, ["init", str(cube)]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(cube), str(records)]).exit_code == 0
    on_cluster = ["--engine", "ray", "--address", ray_cluster]
    outputs, shipped = {}, {}
    killed: list[int] = []

    def kill_one(actors: list) -> None:  # type: ignore[type-arg]
        import ray

        if not killed:  # the first shard actor dies before the batch's first round: the chunk is retried
            ray.kill(actors[0], no_restart=True)
            killed.append(1)

    runs = (("local", "0", []), ("ray", "50", on_cluster), ("ray-shipped", "50", on_cluster))
    for name, shard_rows, extra in (*runs, ("ray-killed", "50", on_cluster)):
        monkeypatch.setenv("MEMOS_INDEX_SHARD_ROWS", shard_rows)
        if name == "ray-killed":
            monkeypatch.setattr(shard_store, "locate_shard", locate_shard)
            monkeypatch.setattr(shard_actors, "actors_started", kill_one)
        if name.startswith("ray"):
            monkeypatch.setattr(shard_store, "read_rows", counted)
            monkeypatch.setattr(ShardedIndex, "_run_local", no_local_work)
        if name == "ray-shipped":
            monkeypatch.setattr(shard_store, "locate_shard", elsewhere)
        reads.clear()
        result = runner.invoke(app, ["query", str(cube), "--batch", str(questions), "-k", "6", "--no-usage", *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = [json.loads(line) for line in result.stdout.splitlines()]
        shipped[name] = list(reads)
    assert len(list((cube / ".memos" / "index" / "shards").iterdir())) == 4
    assert shipped["ray"] == []  # every actor read its own shard
    assert shipped["ray-shipped"] == [(0, 50), (50, 50), (100, 50), (150, 20)]  # each shard's rows, once
    for lines in outputs.values():
        for line in lines:
            for hit in line["hits"]:
                hit["score"] = round(hit["score"], 4)  # the statistics' float rounding differs
    assert killed == [1]
    assert outputs["local"] == outputs["ray"] == outputs["ray-shipped"] == outputs["ray-killed"]
