"""verify: check every part of a bundle and report typed problems (``Problem.kind``), which ``repair``
(engine/repair.py) acts on."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from memos_cli.cube import io, layout, records
from memos_cli.cube.bundle import Cube, read_journal
from memos_cli.cube.io import TornLine, iter_lines
from memos_cli.cube.records import MemoryRecord, content_hash
from memos_cli.engine.plaintext.merge import conflicts_of
from memos_cli.errors import InvalidCube, UnsafeJournal, UnsafePath

QUARANTINE_REL = f"{layout.DERIVED_DIR}/quarantine"
_KIND: dict[str, Any] = {layout.MEMORIES: "records", layout.AUDIT: "audit"}
QUARANTINE_FIX = f"memos repair moves it to {QUARANTINE_REL}/"
# Files memos writes into in place (appends, truncations): a hard link there would write elsewhere too.
_IN_PLACE = (layout.MEMORIES, layout.AUDIT)


def unsafe_entries(root: Path) -> list[tuple[str, str, str]]:
    """``(relative name, kind, what is wrong)`` for every link ("link") and special file ("special") in
    the bundle (``.git`` skipped; nothing followed), and every hard-linked file memos would write into in
    place ("hardlink")."""
    found: list[tuple[str, str, str]] = []
    for top, dirs, files in os.walk(root, followlinks=False):
        rel_top = os.path.relpath(top, root)
        if rel_top == ".":
            dirs[:] = [d for d in dirs if d != ".git"]
        if rel_top == QUARANTINE_REL:
            dirs[:] = []
            continue  # what repair moved aside: inert, never read
        for name in sorted(dirs + files):
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                found.append((rel, "link", "is a symbolic link"))
            elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                found.append((rel, "special", "is a special file (FIFO, socket or device)"))
            elif (
                stat.S_ISREG(st.st_mode)
                and st.st_nlink > 1
                and (rel in _IN_PLACE or rel.startswith(layout.DERIVED_DIR + "/"))
            ):
                found.append((rel, "hardlink", "is hard-linked to another file"))
    return found


# What a problem is about; repair acts on these, never on the wording of a message.
ProblemKind = Literal["unsafe", "journal", "manifest", "records", "audit", "torn", "payload", "stray", "index"]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    message: str  # one line for people, with the next command to run
    repairable: bool = False  # memos repair fixes it without losing data


@dataclass
class VerifyReport:
    cube: str
    issues: list[Problem] = field(default_factory=list)  # the bundle is not sound
    notes: list[str] = field(default_factory=list)  # fine, but worth knowing
    checked: dict[str, int] = field(default_factory=dict)

    def add(self, kind: ProblemKind, message: str, *, repairable: bool = False) -> None:
        self.issues.append(Problem(kind, message, repairable))

    @property
    def problems(self) -> list[str]:
        return [p.message for p in self.issues]

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, Any]:
        return {
            "cube": self.cube,
            "ok": self.ok,
            "problems": self.problems,
            "problem_kinds": [p.kind for p in self.issues],
            "notes": self.notes,
            "checked": self.checked,
        }


def _check_jsonl(cube: Cube, rel: str, report: VerifyReport) -> list[tuple[int, dict[str, Any]]]:
    try:
        if io.kind(cube.path, cube.committed_rel(rel)) is None:
            fix = "memos repair recreates it empty" if rel == layout.AUDIT else f"restore it: git checkout -- {rel}"
            report.add(
                "records" if rel == layout.MEMORIES else "audit",
                f"{rel} is missing ({fix})",
                repairable=rel == layout.AUDIT,
            )
            return []
        data = cube._read_committed(rel)  # what readers see: an unfinished transaction's bytes excluded
    except InvalidCube as exc:
        report.add("unsafe" if isinstance(exc, UnsafePath) else "records", exc.problem)
        return []
    objects: list[tuple[int, dict[str, Any]]] = []
    try:
        for number, line in iter_lines(data):
            try:
                # memories.jsonl under the record bounds every reader applies; audit.jsonl (long id lists)
                # under the same depth and number rules, without the size bound.
                obj = records.loads(line) if rel == layout.MEMORIES else records.loads_unbounded(line)
            except json.JSONDecodeError:
                report.add(_KIND[rel], f"{rel}:{number}: not valid JSON ({QUARANTINE_FIX})", repairable=True)
                continue
            except (ValueError, UnicodeDecodeError) as exc:
                report.add(_KIND[rel], f"{rel}:{number}: {exc} ({QUARANTINE_FIX})", repairable=True)
                continue
            if not isinstance(obj, dict):
                report.add(_KIND[rel], f"{rel}:{number}: not a JSON object ({QUARANTINE_FIX})", repairable=True)
                continue
            objects.append((number, obj))
    except TornLine as exc:
        report.add("torn", f"{rel}: {exc} (memos repair removes it)", repairable=True)
    return objects


def _source_name(record: MemoryRecord) -> str | None:
    """The source as the content hash names it: the file name alone (see ingest)."""
    return record.source.rsplit("/", 1)[-1] if record.source else None


def _check_records(cube: Cube, report: VerifyReport) -> dict[str, MemoryRecord]:
    seen: Counter[tuple[str, int]] = Counter()
    current: dict[str, MemoryRecord] = {}
    for number, obj in _check_jsonl(cube, layout.MEMORIES, report):
        try:
            record = MemoryRecord.from_dict(obj)
        except (ValueError, TypeError) as exc:
            report.add("records", f"{layout.MEMORIES}:{number}: {exc} ({QUARANTINE_FIX})", repairable=True)
            continue
        seen[(record.id, record.version)] += 1
        if record.hash and record.hash != content_hash(record.text, _source_name(record), record.source_id):
            report.add(
                "records",
                f"{layout.MEMORIES}:{number}: {record.id} version {record.version} does not match its content "
                "hash (its text was edited outside memos; restore it, or record the change with memos update)",
            )
        if record.id not in current or record.version > current[record.id].version:
            current[record.id] = record
    for (memory_id, version), count in seen.items():
        if count > 1:
            report.add("records", f"{layout.MEMORIES}: {memory_id} version {version} appears {count} times")
    for record in conflicts_of(current.values()):
        fields = ", ".join(record.metadata["conflict"].get("fields", []))
        report.add("records", f"{record.id}: a merge left {fields} changed two ways (see: memos conflicts {cube.path})")
    report.checked["memory_versions"] = sum(seen.values())
    report.checked["memories"] = len(current)
    return current


def _check_payloads(cube: Cube, current: dict[str, MemoryRecord], report: VerifyReport) -> None:
    """Each kind checks its own payloads (activation: snapshot files, parametric: adapter folders); what
    is in kv/ or lora/ without a manifest entry is stray."""
    from memos_cli.engine.activation.snapshots import check_snapshots
    from memos_cli.engine.parametric.adapters import check_adapters

    active_refs = {r.ref for r in current.values() if r.status == "active"}

    def problem(message: str) -> None:
        report.add("payload", message)

    referenced = check_snapshots(cube, active_refs, problem, report.notes.append)
    referenced |= check_adapters(cube, active_refs, problem, report.notes.append)
    pending = set(cube.pending_created())
    for directory in (layout.KV_DIR, layout.LORA_DIR):
        if io.kind(cube.path, directory) == "dir":
            for child in io.listdir(cube.path, directory):
                rel = f"{directory}/{child}"
                if rel not in referenced and rel not in pending:
                    report.add(
                        "stray",
                        repairable=True,
                        message=f"{rel} is not named in cube.yaml (left by an interrupted command? {QUARANTINE_FIX})",
                    )
    report.checked["kv"] = len(cube.manifest.kv)
    report.checked["lora"] = len(cube.manifest.lora)


def _check_index(cube: Cube, current: dict[str, MemoryRecord], report: VerifyReport) -> None:
    directory = f"{layout.DERIVED_DIR}/{layout.INDEX_DIR}"
    if io.kind(cube.path, f"{directory}/meta.json") is None:
        report.notes.append("no index yet (the next query builds it)")
        return
    try:
        meta = json.loads(io.read_bytes(cube.path, f"{directory}/meta.json", limit=1 << 20) or b"")
        rows = int(meta["rows"])
        dim = int(meta["dim"])
        what = io.kind(cube.path, f"{directory}/vectors.f32")
        if what not in (None, "file") or (what is None and rows):
            raise ValueError("no vectors")  # an empty index (an empty cube was queried) has no file yet
        vectors_stat = io.lstat(cube.path, f"{directory}/vectors.f32")
        vectors = vectors_stat.st_size if vectors_stat is not None else 0
        mapping = json.loads(io.read_bytes(cube.path, f"{directory}/current.json") or b"")
    except (OSError, ValueError, KeyError, TypeError, InvalidCube) as exc:
        report.add(
            "index", repairable=True, message=f"index is unreadable ({type(exc).__name__}); memos repair rebuilds it"
        )
        return
    if vectors < rows * dim * 4 or any(not isinstance(r, int) or r >= rows for r in mapping.values()):
        report.add("index", repairable=True, message="index is inconsistent with itself; memos repair rebuilds it")
        return
    indexed = set(mapping)
    expected = {i for i, r in current.items() if r.status != "deleted"}
    if indexed - expected:
        report.add(
            "index",
            repairable=True,
            message=f"index holds {len(indexed - expected)} memories the cube does not; memos repair rebuilds it",
        )
    elif expected - indexed or meta.get("records_size") != getattr(io.lstat(cube.path, layout.MEMORIES), "st_size", 0):
        report.notes.append("index is behind the records (brought up to date by the next query)")
    report.checked["index_rows"] = rows


def verify(cube_path: Path) -> VerifyReport:
    """Check the format, every line, the checksums, snapshot headers and the index. Never writes."""
    report = VerifyReport(cube=str(cube_path))
    cube_path = Path(cube_path)
    try:
        for rel, _kind, why in unsafe_entries(cube_path):
            report.add(
                "unsafe",
                repairable=True,
                message=f"{rel} {why}: memos will not follow or write it (memos repair moves it aside)",
            )
        journal_ok = True
        try:
            read_journal(cube_path)
        except UnsafeJournal as exc:
            journal_ok = False
            report.add("journal", exc.problem + " (memos repair moves it aside)", repairable=True)
        cube = Cube.open(cube_path, ignore_journal=True)
    except InvalidCube as exc:
        report.add("unsafe" if isinstance(exc, UnsafePath) else "manifest", exc.problem)
        return report
    except (FileNotFoundError, NotADirectoryError):
        report.add("manifest", "not a memos cube (no cube.yaml)")
        return report
    if journal_ok and cube.has_journal():
        report.notes.append(
            "a command is writing, or was interrupted: readers see the cube as before it, and the next "
            "write (or memos repair) rolls it back"
        )
    current = _check_records(cube, report)
    report.checked["audit_entries"] = len(_check_jsonl(cube, layout.AUDIT, report))
    for check in (_check_payloads, _check_index):
        try:
            check(cube, current, report)
        except InvalidCube as exc:
            report.add("unsafe" if isinstance(exc, UnsafePath) else "payload", exc.problem)
    return report
