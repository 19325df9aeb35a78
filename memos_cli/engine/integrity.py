"""verify and repair: check every part of a bundle, and fix what can be fixed without losing data."""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from memos_cli.cube import io, layout, records
from memos_cli.cube.bundle import Cube, quarantine_journal, read_journal
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


def _refresh(cube: Cube, name: str) -> str:
    return f"rebuild it: memos promote {cube.path} --refresh {name}"


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
    manifest = cube.manifest
    referenced: set[str] = set()
    active_refs = {r.ref for r in current.values() if r.status == "active"}
    for name, entry in manifest.kv.items():
        rel = f"{layout.KV_DIR}/{name}.safetensors"
        referenced.add(rel)
        try:
            committed = cube.committed_rel(rel)
        except InvalidCube as exc:
            report.add("payload", f"kv {name}: {exc.problem}")
            continue
        path = cube.path / committed
        if io.kind(cube.path, committed) != "file":
            report.add("payload", f"kv {name}: {rel} is missing ({_refresh(cube, name)})")
            continue
        if entry.sha256 and io.sha256(cube.path, committed) != entry.sha256:
            report.add(
                "payload",
                f"kv {name}: {rel} does not match its recorded sha256 (modified or corrupted; {_refresh(cube, name)})",
            )
            continue
        try:
            from memos_cli.engine.activation.snapshots import read_snapshot_header

            header = read_snapshot_header(path)
            fingerprint = header.get("model_fingerprint")
            if fingerprint and entry.model_fingerprint and fingerprint != entry.model_fingerprint:
                report.add(
                    "payload", f"kv {name}: header names model {fingerprint}, manifest {entry.model_fingerprint}"
                )
        except Exception as exc:  # noqa: BLE001 - any unreadable header is a problem to name, not a crash
            report.add("payload", f"kv {name}: unreadable snapshot header ({exc}; {_refresh(cube, name)})")
        stale = [m for m in entry.memories if m not in active_refs]
        if stale:
            report.notes.append(
                f"kv {name} is stale: {len(stale)} of its memories changed (memos promote --refresh {name})"
            )
    for name, adapter in manifest.lora.items():
        folder = f"{layout.LORA_DIR}/{name}"
        referenced.add(folder)
        try:
            base = cube.committed_rel(folder)
        except InvalidCube as exc:
            report.add("payload", f"lora {name}: {exc.problem}")
            continue
        if io.kind(cube.path, base) != "dir":
            report.add(
                "payload",
                f"lora {name}: {folder}/ is missing (restore it from version control, or drop it: "
                f"memos distill {cube.path} --drop {name})",
            )
            continue
        for rel, digest in adapter.files.items():
            if io.kind(cube.path, f"{base}/{rel}") != "file":
                report.add("payload", f"lora {name}: {folder}/{rel} is missing")
            elif io.sha256(cube.path, f"{base}/{rel}") != digest:
                report.add("payload", f"lora {name}: {folder}/{rel} does not match its recorded sha256")
        stale = [m for m in adapter.memories if m not in active_refs]
        if stale:
            report.notes.append(f"lora {name} is stale: {len(stale)} of its memories changed")
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
    report.checked["kv"] = len(manifest.kv)
    report.checked["lora"] = len(manifest.lora)


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


@dataclass
class RepairReport:
    fixed: list[str] = field(default_factory=list)
    not_fixed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "not_fixed": self.not_fixed}


def _drop_torn_tail(root: Path, rel: str) -> str | None:
    data = io.read_bytes(root, rel, missing_ok=True)
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    io.truncate(root, rel, cut)
    return f"removed a torn last line of {rel} ({len(data) - cut} bytes: {data[cut : cut + 40]!r}...)"


def _neutralise(root: Path, report: RepairReport) -> None:
    """Move links and special files aside into .memos/quarantine (the entries themselves: nothing is
    followed, nothing outside the cube is touched); break hard links of files memos writes in place;
    move an invalid journal aside unread. Derived state under .memos is simply removed."""
    aside = quarantine_journal(root)
    if aside:
        report.fixed.append(f"moved an invalid journal aside ({aside}); it was not acted on")
    if io.kind(root, layout.DERIVED_DIR) not in (None, "dir"):
        io.remove(root, layout.DERIVED_DIR)
        report.fixed.append(f"removed {layout.DERIVED_DIR}, which was a link or a file (derived state is rebuilt)")
    for rel, kind, why in unsafe_entries(root):
        if io.kind(root, rel) is None:
            continue  # inside something already moved
        if rel.startswith(layout.DERIVED_DIR + "/"):
            io.remove(root, rel)
            report.fixed.append(f"removed {rel}, which {why} (derived state is rebuilt)")
        elif kind == "hardlink":
            data = io.read_bytes(root, rel) or b""
            io.atomic_write(root, rel, data)  # a file of its own with the same bytes
            report.fixed.append(f"gave {rel} a copy of its own (it was hard-linked)")
        else:
            target = f"{QUARANTINE_REL}/{secrets.token_hex(4)}-{rel.replace('/', '__')}"
            io.rename(root, rel, target, any_kind=True)
            report.fixed.append(f"moved {rel}, which {why}, aside to {target}")
            if rel in (layout.MEMORIES, layout.AUDIT):
                io.atomic_write(root, rel, b"")
                report.fixed.append(f"started an empty {rel} in its place (its content was never in the cube)")
    for rel in (layout.MEMORIES, layout.AUDIT):  # a folder where a record file belongs: not a cube file
        if io.kind(root, rel) == "dir":
            target = f"{QUARANTINE_REL}/{secrets.token_hex(4)}-{rel}"
            io.rename(root, rel, target, any_kind=True)
            io.atomic_write(root, rel, b"")
            report.fixed.append(f"moved {rel}, which was a folder, aside to {target}; started an empty {rel}")


def _quarantine(root: Path, name: str, data: bytes) -> str:
    """Keep bytes repair takes out of the bundle under .memos/quarantine/ (nothing is lost); returns
    where, as a bundle name."""
    from memos_cli.cube.bundle import utc_now

    target = f"{QUARANTINE_REL}/{utc_now().replace(':', '')}-{secrets.token_hex(2)}-{name.replace('/', '__')}"
    io.atomic_write(root, target, data)
    return target


def _bad_lines(rel: str, data: bytes) -> tuple[bytes, bytes]:
    """``data`` split into its good lines and its unreadable ones, by the rules every reader applies
    (the record bounds for memories.jsonl). Complete lines only: an unterminated tail is kept as it is
    (``_drop_torn_tail`` deals with it)."""
    good: list[bytes] = []
    bad: list[bytes] = []
    lines = data.split(b"\n")
    tail = lines.pop()
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = records.loads(line) if rel == layout.MEMORIES else records.loads_unbounded(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if rel == layout.MEMORIES:
                MemoryRecord.from_dict(obj)
        except (ValueError, UnicodeDecodeError, TypeError):
            bad.append(line + b"\n")
            continue
        good.append(line + b"\n")
    return b"".join(good) + tail, b"".join(bad)


def _repair_files(cube: Cube) -> list[str]:
    """Bundle files repair can fix without losing data: unreadable lines in the middle of a JSONL file
    and files not named in cube.yaml go to .memos/quarantine/; a missing audit.jsonl is recreated.
    Call with the lock held. Everything goes through the confined primitives (cube/io.py)."""
    root = cube.path
    fixed = []
    for rel in (layout.MEMORIES, layout.AUDIT):
        data = io.read_bytes(root, rel, missing_ok=True)
        if data is None:
            if rel == layout.AUDIT:
                io.atomic_write(root, rel, b"")
                fixed.append(f"recreated an empty {rel} (its history is gone: restore it from git if you have it)")
            continue
        good, bad = _bad_lines(rel, data)
        if bad:
            where = _quarantine(root, rel, bad)
            io.atomic_write(root, rel, good)
            count = bad.count(b"\n")
            fixed.append(f"moved {count} unreadable line(s) of {rel} to {where}")
    named = {layout.kv_rel(name) for name in cube.manifest.kv}
    named |= {layout.lora_rel(name) for name in cube.manifest.lora}
    for directory in (layout.KV_DIR, layout.LORA_DIR):
        if io.kind(root, directory) != "dir":
            continue
        for child in io.listdir(root, directory):
            rel = f"{directory}/{child}"
            if rel in named:
                continue
            target = f"{QUARANTINE_REL}/{rel.replace('/', '__')}"
            if io.kind(root, target) is not None:
                io.remove(root, target)  # an older copy of the same name (a link there goes, unfollowed)
            io.rename(root, rel, target)
            fixed.append(f"moved {rel} (not named in cube.yaml) to {target}")
    return fixed


def repair(cube_path: Path, *, actor: str | None = None) -> RepairReport:
    """Fix what can be fixed without losing data: neutralise links, special files and an invalid journal
    (moved aside, never followed), roll back an interrupted transaction, drop a torn last line (it was
    never acknowledged), clear leftovers, rebuild the index. Says what it could not."""
    report = RepairReport()
    cube_path = Path(cube_path)
    cube = Cube.open(cube_path, ignore_journal=True)
    cube.check(actor, "write")
    _neutralise(cube_path, report)
    cube = Cube.open(cube_path)
    if cube.has_journal():
        report.fixed.append("rolled back an interrupted transaction")
    with cube.locked():  # locked() rolls back an interrupted transaction first
        cube.check(actor, "write")
        for rel in (layout.MEMORIES, layout.AUDIT):
            message = _drop_torn_tail(cube.path, rel)
            if message:
                report.fixed.append(message)
        report.fixed.extend(_repair_files(cube))
        for leftover in ("staging", "backups"):
            rel = f"{layout.DERIVED_DIR}/{leftover}"
            if io.listdir(cube.path, rel):
                io.remove(cube.path, rel)
                report.fixed.append(f"removed leftovers in {rel}")
        after = verify(cube.path)
        if any(p.kind == "index" for p in after.issues):
            io.remove(cube.path, f"{layout.DERIVED_DIR}/{layout.INDEX_DIR}")
            report.fixed.append("rebuilt the index")
        elif any(n.startswith("index is behind") for n in after.notes):
            report.fixed.append("brought the index up to date")
    if all(p.kind == "index" for p in verify(cube.path).issues):
        from memos_cli.engine.plaintext.query import Searcher

        Searcher([cube], record_usage=False, actor=actor)  # builds or syncs the index
    final = verify(cube.path)
    report.not_fixed = final.problems
    return report
