"""The memory scheduler: policy, plan, weeks of simulated use (time injected), dry runs, no-op reruns,
rejected adapters, working memory, stats, the CLI, and kills at every write point.

A tiny random llama (``tiny_models.build_tiny_model``) stands in for the real model, so snapshots and
adapters are made in a second or two: these tests check what the scheduler decides and writes, not
what a model learns.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import snapshot_files
from memos_cli.cli.app import app, main
from memos_cli.cube.bundle import Cube
from memos_cli.engine import ops, schedule
from memos_cli.engine.chat import ChatOptions, ChatSession
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext import usage
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.query import Filters, Searcher
from memos_cli.engine.plaintext.working import ANSWER_TAG, WORKING_TAG
from memos_cli.errors import InvalidCube
from tiny_models import build_tiny_model

DAY = 86400.0
POLICY = """\
schedule:
  # test policy
  activation:
    enabled: true
    name: hot
    max_memories: 2
    budget: null
    min_score: 0.9
  parametric:
    enabled: true
    name: stable
    min_uses: 3
    min_days: 7
    min_new: 2
    min_recall: 0.0
    max_forgetting_pct: 1000000
    steps: 2
    lr: 0.01
  archive:
    ttl_days: {event: 20}
  working:
    idle_days: 8
"""


@pytest.fixture(autouse=True)
def _one_thread(memos_threads: None) -> None:
    """Results, not speed: one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("schedule-model") / "llama", "llama"))


def _cube(tmp_path: Path, records: list[dict], policy: str | None = POLICY) -> tuple[Cube, dict[str, str]]:
    cube = Cube.init(tmp_path / "c", owner="tester")
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    ingest(cube, [Source("f.jsonl", body)], actor="tester")
    if policy is not None:
        with open(cube.manifest_path, "a", encoding="utf-8") as handle:
            handle.write(policy)
    cube = Cube.open(cube.path)
    ids = {r.text.split()[0]: r.id for r in cube.read_state().current.values()}
    return cube, ids


WEEK_RECORDS = [
    {"text": "Alpha: Ana's cat is called Miso.", "type": "fact"},
    {"text": "Bravo: Bob's favourite food is ramen.", "type": "fact"},
    {"text": "Charlie: the launch is on Friday.", "type": "fact"},
    {"text": "Delta: the office moved to Lyon.", "type": "fact"},
    {"text": "Echo: we met at the conference.", "type": "event"},
    {"text": "Xray: the door code is 4711 this month.", "type": "fact", "expires": None},
    {"text": "Whisky: what was the door code again?", "type": "dialogue", "tags": ["chat", WORKING_TAG]},
]


def _run(cube_path: Path, now: float, llama: str, **kwargs: object) -> schedule.ScheduleReport:
    return schedule.run(Cube.open(cube_path), now=now, model=llama, actor="tester", **kwargs)  # type: ignore[arg-type]


def _run_twice(cube_path: Path, now: float, llama: str) -> schedule.ScheduleReport:
    """Run, then check that a second run right after does nothing and writes nothing."""
    report = _run(cube_path, now, llama)
    assert not report.failed, [r.message for r in report.results]
    before = snapshot_files(cube_path)
    again = _run(cube_path, now, llama)
    assert again.plan.steps == [] and again.results == []
    assert snapshot_files(cube_path) == before
    assert verify(cube_path).ok
    return report


def _main(*args: str) -> tuple[int, str, str]:
    """main() with its real error handling and exit codes; (code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _kv_ids(cube_path: Path, name: str) -> set[str]:
    entry = Cube.open(cube_path).manifest.kv.get(name)
    return set(entry.ids()) if entry is not None else set()


def _lora_ids(cube_path: Path, name: str) -> set[str]:
    entry = Cube.open(cube_path).manifest.lora.get(name)
    return set(entry.ids()) if entry is not None else set()


def _status(cube_path: Path) -> dict[str, str]:
    return {i: r.status for i, r in Cube.open(cube_path).read_state().current.items()}


def test_weeks_of_use_drive_snapshot_adapter_and_archive(tmp_path: Path, llama: str) -> None:
    t0 = time.time() + 3600  # the memories were written just now; the simulation starts an hour later
    records = [dict(r) for r in WEEK_RECORDS]
    records[5]["expires"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 10 * DAY))
    cube, ids = _cube(tmp_path, records)
    a, b, c, d, e, x, w = (ids[k] for k in ("Alpha:", "Bravo:", "Charlie:", "Delta:", "Echo:", "Xray:", "Whisky:"))
    path = cube.path

    def use(now: float, *memory_ids: str) -> None:
        usage.record(Cube.open(path), [[i] for i in memory_ids], now=now)

    # week 0: Alpha and Bravo are used once: they are the hot set, and the snapshot is built
    use(t0, a, b)
    report = _run_twice(path, t0, llama)
    assert [(s.kind, s.action) for s in report.plan.steps] == [("activation", "build")]
    assert _kv_ids(path, "hot") == {a, b} and _lora_ids(path, "hot") == set()

    # week 1: the same memories again, and the working memory once: nothing changes
    t1 = t0 + 7 * DAY
    use(t1, a, b, w)
    before = snapshot_files(path)
    assert _run(path, t1, llama).plan.steps == []
    assert snapshot_files(path) == before

    # week 2: Alpha and Bravo used a third time over 14 days -> distilled; Charlie and Delta are now
    # the hottest -> the snapshot is rebuilt; Xray expired -> archived; Whisky idle 7 days (< 8) -> kept
    t2 = t0 + 14 * DAY
    use(t2, a, b, c, d, c, d)
    dry_before = snapshot_files(path)
    dry = _run(path, t2, llama, dry_run=True)
    assert snapshot_files(path) == dry_before and dry.results == []
    assert [(s.kind, s.action) for s in dry.plan.steps] == [
        ("archive", "archive"),
        ("activation", "rebuild"),
        ("parametric", "distill"),
    ]
    report = _run_twice(path, t2, llama)
    assert [r.outcome for r in report.results] == ["done", "done", "done"]
    assert _kv_ids(path, "hot") == {c, d}
    assert _lora_ids(path, "stable") == {a, b}
    status = _status(path)
    assert status[x] == "archived" and status[w] == "active" and status[e] == "active"

    # week 3: nothing used; Whisky idle 14 days and Echo past its 20-day time-to-live -> archived;
    # Charlie and Delta still hot enough, so the snapshot stays
    t3 = t0 + 21 * DAY
    snapshot_before = (path / "kv" / "hot.safetensors").read_bytes()
    report = _run_twice(path, t3, llama)
    assert [(s.kind, sorted(s.ids)) for s in report.plan.steps] == [("archive", sorted([e, w]))]
    status = _status(path)
    assert status[w] == "archived" and status[e] == "archived"
    assert (path / "kv" / "hot.safetensors").read_bytes() == snapshot_before

    audit = Cube.open(path).read_audit()
    ours = [entry for entry in audit if entry["op"] == "schedule"]
    assert len(ours) == 5  # build, then archive + rebuild + distill, then archive
    assert [e.get("step") for e in ours].count("archive") == 2
    assert sum("distilled" in e["summary"] for e in ours) == 1 and sum("promoted" in e["summary"] for e in ours) == 2
    assert not [entry for entry in audit if entry["op"] in ("promote", "distill", "forget")]


def test_a_rejected_adapter_keeps_the_old_one_and_is_not_retried(tmp_path: Path, llama: str) -> None:
    strict = POLICY.replace("min_recall: 0.0", "min_recall: 1.0").replace(
        "enabled: true\n    name: hot", "enabled: false\n    name: hot"
    )
    cube, ids = _cube(tmp_path, WEEK_RECORDS[:4], policy=strict)
    now = time.time() + 3600
    # an existing adapter made by hand, which the scheduler must not lose
    from memos_cli.engine.parametric.distill import distill
    from memos_cli.engine.select import Selection

    distill(cube, Selection(ids=[ids["Delta:"]]), name="stable", model=llama, steps=1, actor="tester")
    entry = Cube.open(cube.path).manifest.lora["stable"].to_dict()
    for when in (now - 8 * DAY, now - 4 * DAY, now):
        usage.record(Cube.open(cube.path), [[ids["Alpha:"]], [ids["Bravo:"]]], now=when)
    before = snapshot_files(cube.path)
    report = _run(cube.path, now, llama)
    assert [r.outcome for r in report.results] == ["kept"] and not report.failed
    assert "recall" in report.results[0].message and "old adapter stays" in report.results[0].message
    after = Cube.open(cube.path)
    assert after.manifest.lora["stable"].to_dict() == entry
    assert {p: v for p, v in snapshot_files(cube.path).items() if p != "audit.jsonl"} == {
        p: v for p, v in before.items() if p != "audit.jsonl"
    }
    last = after.read_audit()[-1]
    assert last["op"] == "schedule" and last["rejected"] and "recall" in last["why"]
    again = _run(cube.path, now, llama)
    assert again.plan.steps == [] and any("rejected" in note for note in again.plan.notes)


def test_policy_defaults_validation_and_init(tmp_path: Path) -> None:
    cube, _ = _cube(tmp_path, [{"text": "one"}], policy=None)
    policy = schedule.load_policy(cube)
    assert policy["activation"]["enabled"] is False and policy["working"]["idle_days"] == 14.0
    assert policy["archive"]["keep_tags"] == ["pinned"]
    runner = CliRunner()
    result = runner.invoke(app, ["schedule", str(cube.path), "--init"])
    assert result.exit_code == 0, result.output
    text = cube.manifest_path.read_text()
    assert "# Keep KV snapshot `name` made of the hottest memories" in text
    assert schedule.load_policy(Cube.open(cube.path))["activation"]["enabled"] is True
    assert _main("schedule", str(cube.path), "--init")[0] == 2  # exists: a usage error
    # a later transaction re-dumps the manifest: the section keeps its comments and values
    ops.forget(Cube.open(cube.path), [next(iter(Cube.open(cube.path).read_state().current))], actor="tester")
    with Cube.open(cube.path).transaction(actor="tester", op="test") as tx:
        tx.touch_manifest()
    assert "# Keep KV snapshot `name`" in cube.manifest_path.read_text()
    # an edited value survives a re-dump (the comments of a changed section may not)
    edited = cube.manifest_path.read_text().replace("max_memories: 20", "max_memories: 7")
    cube.manifest_path.write_text(edited)
    with Cube.open(cube.path).transaction(actor="tester", op="test") as tx:
        tx.manifest.extra["schedule"]["working"]["idle_days"] = 3
        tx.touch_manifest()
    policy = schedule.load_policy(Cube.open(cube.path))
    assert policy["activation"]["max_memories"] == 7 and policy["working"]["idle_days"] == 3
    for number, (bad, words) in enumerate(
        (
            ("  activation:\n    max_memories: -1\n", "schedule.activation.max_memories"),
            ("  activation:\n    rebuild_share: 2\n", "schedule.activation.rebuild_share"),
            ("  archive:\n    ttl_days: {event: 0}\n", "schedule.archive.ttl_days"),
            ("  archive:\n    unused_dayz: 3\n", "unknown key 'unused_dayz'"),
            ("  activation:\n    name: ../x\n", "schedule.activation.name"),
        )
    ):
        other, _ = _cube(tmp_path / f"bad{number}", [{"text": "x"}], "schedule:\n" + bad)
        with pytest.raises(InvalidCube, match=words.replace(".", r"\.")):
            schedule.load_policy(other)
        assert "policy error" in runner.invoke(app, ["stats", str(other.path)]).output
        assert _main("schedule", str(other.path))[0] == 3


def test_cli_plan_json_explain_and_a_failed_step(tmp_path: Path) -> None:
    cube, ids = _cube(
        tmp_path,
        [{"text": "Old: a note that expired", "expires": "2001-01-01"}, {"text": "Keep: this one stays"}],
        policy="schedule:\n  activation:\n    enabled: true\n    min_score: 0.5\n",
    )
    usage.record(cube, [[ids["Keep:"]]])
    runner = CliRunner()
    before = snapshot_files(cube.path)
    dry = runner.invoke(app, ["schedule", str(cube.path), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert [s["kind"] for s in plan["steps"]] == ["archive", "activation"] and plan["dry_run"] is True
    assert snapshot_files(cube.path) == before
    explained = runner.invoke(app, ["schedule", str(cube.path), "--explain", ids["Old:"][:8]])
    assert explained.exit_code == 0 and "due for the archive: expired on 2001-01-01" in explained.stdout
    stats = runner.invoke(app, ["stats", str(cube.path), "--json"])
    data = json.loads(stats.stdout)["schedule"]
    assert data["hot"] == [ids["Keep:"]] and any(d.startswith("archive") for d in data["due"])
    # the activation step cannot load its model: it fails, the archive step is still done, exit 1
    code, stdout, stderr = _main("schedule", str(cube.path), "--json", "--model", str(tmp_path / "no-model"))
    assert code == 1, stderr
    outcome = {r["kind"]: r["outcome"] for r in json.loads(stdout)["results"]}
    assert outcome == {"archive": "done", "activation": "failed"}
    assert _status(cube.path)[ids["Old:"]] == "archived"
    assert "archived by schedule" in runner.invoke(app, ["schedule", str(cube.path), "--explain", ids["Old:"]]).stdout


def test_schedule_waits_for_a_writer_lock_instead_of_breaking_it(tmp_path: Path) -> None:
    import threading

    from filelock import FileLock

    cube, ids = _cube(tmp_path, [{"text": "Old: gone", "expires": "2001-01-01"}], policy=None)
    held = threading.Event()

    def writer() -> None:  # another writer holds the lock for half a second
        with FileLock(str(cube.derived / "lock")):
            held.set()
            time.sleep(0.5)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait()
    notes: list[str] = []
    report = schedule.run(Cube.open(cube.path), actor="tester", notify=notes.append, wait=60)
    thread.join()
    assert not report.failed and any("waiting" in n for n in notes)
    assert _status(cube.path)[ids["Old:"]] == "archived"


def test_working_memory_is_kept_out_of_queries_and_below_facts(make_cube, llama: str) -> None:  # type: ignore[no-untyped-def]
    cube = make_cube([{"text": "Ana's cat is called Miso"}, {"text": "The launch moved to Friday"}])
    session = ChatSession([cube], ChatOptions(model=llama, greedy=True, max_new_tokens=4, k=3))
    session.ask("What is Ana's cat called?")
    session.close()
    turns = [r for r in Cube.open(cube.path).read_state().current.values() if r.type == "dialogue"]
    assert {r.speaker: WORKING_TAG in r.tags for r in turns} == {"user": True, "assistant": True}
    assert [ANSWER_TAG in r.tags for r in sorted(turns, key=lambda r: r.speaker)] == [True, False]
    with Searcher([Cube.open(cube.path)], mode="lexical", record_usage=False) as searcher:
        plain = searcher.search("What is Ana's cat called?", k=5)
        assert all(h.type != "dialogue" for h in plain)
        mixed = searcher.search("What is Ana's cat called?", k=5, filters=Filters(include_working=True))
        assert mixed[0].text == "Ana's cat is called Miso"
        assert [h.speaker for h in mixed if h.type == "dialogue"] == ["user"]  # never the model's answer
        answers = searcher.search("cat", k=5, filters=Filters(tags=[ANSWER_TAG]))
        assert all(h.speaker == "assistant" for h in answers)
    result = CliRunner().invoke(app, ["query", str(cube.path), "Ana cat called", "--json", "--include-working"])
    assert result.exit_code == 0 and "user" in {h["speaker"] for h in json.loads(result.stdout)["hits"]}


def test_usage_survives_a_torn_line_from_a_killed_reader(tmp_path: Path) -> None:
    cube, ids = _cube(tmp_path, [{"text": "Alpha: one"}], policy=None)
    path = cube.derived / "usage.jsonl"
    usage.record(cube, [[ids["Alpha:"]]], now=100.0)
    with open(path, "ab") as handle:
        handle.write(b'{"t":101,"ids":["m-')  # a reader killed mid-append
    usage.record(cube, [[ids["Alpha:"]]], now=102.0)
    uses = usage.profile(cube, now=200.0)[ids["Alpha:"]]
    assert uses.count == 2 and uses.first == 100.0 and uses.last == 102.0


# ---------------------------------------------------------------------------------------------------------
# Kill at every write point


def _run_killed_at(template: Path, work: Path, llama: str, now: float, n: int) -> bool:
    """Run the scheduler on a copy of ``template`` in a child process that dies (os._exit, as SIGKILL
    would: no cleanup, no finally) right after its ``n``-th write. Returns whether it got that far."""

    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            from memos_cli.cube import io as cube_io

            cube_io._crash_after = cube_io.write_count() + n  # the storage layer's own kill point (docs/FORMAT.md)
            schedule.run(Cube.open(work), now=now, model=llama, actor="tester")
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 137), f"the scheduler failed in the child before write {n}"
    return code == 137


def test_a_kill_at_any_write_point_leaves_a_sound_cube(tmp_path: Path, llama: str) -> None:
    from memos_cli.models.lm import load_lm

    load_lm(llama)  # loaded once, inherited by every forked child
    now = time.time() + 3600
    records = [dict(r) for r in WEEK_RECORDS[:6]]
    records[5]["expires"] = "2001-01-01"
    cube, ids = _cube(tmp_path, records, policy=POLICY.replace("steps: 2", "steps: 1"))
    for when in (now - 8 * DAY, now - 4 * DAY, now):
        usage.record(cube, [[ids["Alpha:"]], [ids["Bravo:"]]], now=when)
    template = tmp_path / "template"
    shutil.copytree(cube.path, template)
    work = tmp_path / "work-cube"
    killed = 0
    for n in range(1, 200):
        if not _run_killed_at(template, work, llama, now, n):
            break
        killed += 1
        report = verify(work)
        assert report.ok, (n, report.problems)
        # the next run rolls back what was cut off and finishes the job
        final = _run(work, now, llama)
        assert not final.failed, (n, [r.message for r in final.results])
        assert _status(work)[ids["Xray:"]] == "archived"
        assert _kv_ids(work, "hot") == {ids["Alpha:"], ids["Bravo:"]} == _lora_ids(work, "stable")
        assert verify(work).ok
    assert killed >= 10  # archive, snapshot and adapter transactions each have several write points


def test_the_planner_rows_follow_appends_and_rewrites(tmp_path: Path) -> None:
    cube, ids = _cube(tmp_path, [{"text": "Alpha: one"}, {"text": "Bravo: two", "expires": "2001-01-01"}], None)
    rows = schedule.scan(cube)
    assert {r.id: r.status for r in rows.values()} == {ids["Alpha:"]: "active", ids["Bravo:"]: "active"}
    assert rows[ids["Bravo:"]].expires == "2001-01-01" and (cube.derived / schedule.ROWS_CACHE).exists()
    ops.forget(cube, [ids["Alpha:"]], actor="tester")  # an append: read on top of the cached rows
    rows = schedule.scan(Cube.open(cube.path))
    assert rows[ids["Alpha:"]].status == "archived" and rows[ids["Alpha:"]].version == 2
    ops.forget(Cube.open(cube.path), [ids["Bravo:"]], purge=True, actor="tester")  # a rewrite
    assert set(schedule.scan(Cube.open(cube.path))) == {ids["Alpha:"]}
    (cube.path / "memories.jsonl").write_bytes(b'{"id": "broken"\n')
    with pytest.raises(InvalidCube, match="memories.jsonl:1"):
        schedule.scan(Cube.open(cube.path))
