"""No operation loses a memory version: fuse, update, merge (git driver) and purge, then account for
every version ever written through the fused cube's history, provenance and the audit log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from memos_cli.cube.bundle import Cube
from memos_cli.engine.fuse import fuse
from memos_cli.engine.integrity import verify
from memos_cli.engine.ops import forget
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.versions import Update, history, merge_audit, merge_memories, update


def _src(name: str, *texts: str) -> Source:
    return Source(name, "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())


def _all_versions(*cubes: Path) -> set[tuple[str, int, str]]:
    seen = set()
    for path in cubes:
        for record in Cube.open(path).read_state().versions:
            seen.add((record.id, record.version, record.text))
    return seen


def test_every_version_is_accounted_for(tmp_path: Path) -> None:
    a = Cube.init(tmp_path / "a", name="a")
    b = Cube.init(tmp_path / "b", name="b")
    ids_a = ingest(a, [_src("a.jsonl", "The launch is in March", "Ana likes tea", "The wifi is heron-5g")]).ids
    ingest(b, [_src("b.jsonl", "Bob plays the cello", "Ana likes tea")])  # same text, another source
    update(a, ids_a[0], Update(text="The launch is in April"), actor="ana")
    forget(a, [ids_a[2]], actor="ana")
    written = _all_versions(a.path, b.path)

    fuse([a.path, b.path], tmp_path / "ab")
    ab = Cube.open(tmp_path / "ab")
    # two "branches" of the fused cube change it concurrently, then merge with the git driver
    branch = tmp_path / "branch"
    shutil.copytree(ab.path, branch, ignore=shutil.ignore_patterns(".memos"))
    base_memories, base_audit = ab.memories_path.read_bytes(), ab.audit_path.read_bytes()
    update(ab, ids_a[0], Update(text="The launch is in May"), actor="ana")
    update(Cube.open(branch), ids_a[0], Update(add_tags=["q2"]), actor="bob")
    written |= _all_versions(ab.path, branch)
    merged = merge_memories(base_memories, ab.memories_path.read_bytes(), (branch / "memories.jsonl").read_bytes())
    audit = merge_audit(base_audit, ab.audit_path.read_bytes(), (branch / "audit.jsonl").read_bytes())
    ab.memories_path.write_bytes(merged)
    ab.audit_path.write_bytes(audit)
    assert verify(ab.path).ok
    # purge one memory: its versions leave memories.jsonl, a tombstone stays
    cello = next(r for r in ab.read_state().current.values() if r.text == "Bob plays the cello")
    forget(ab, [cello.id], purge=True, actor="ana")

    final = Cube.open(ab.path)
    state = final.read_state()
    entries = final.read_audit()
    tombstones = {t["id"]: t for e in entries if e["op"] == "purge" for t in e["tombstones"]}
    also_from = {p["id"] for r in state.current.values() for p in r.metadata.get("also_from", [])}
    present_texts = {(r.id, r.text) for r in state.versions}
    for memory_id, version, text in sorted(written):
        if (memory_id, text) in present_texts:
            continue  # kept (perhaps renumbered after a concurrent edit)
        if memory_id in tombstones:
            continue  # purged on purpose, and the audit log says how many versions went
        assert memory_id in also_from, f"{memory_id} v{version} {text!r} vanished"
    assert tombstones[cello.id]["versions"] == len([w for w in written if w[0] == cello.id])
    launch = [v.text for v in history(final, ids_a[0])[1]]
    assert launch[:2] == ["The launch is in March", "The launch is in April"]
    # both branches' edits kept, then their field-level merge: May's text with bob's tag
    assert launch[-1] == "The launch is in May" and len(launch) == 5
    assert "q2" in final.read_state().current[ids_a[0]].tags
    ops = [e["op"] for e in entries]
    assert {"init", "fuse", "update", "purge"} <= set(ops)
