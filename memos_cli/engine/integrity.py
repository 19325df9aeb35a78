"""verify and repair: check every part of a bundle, and fix what can be fixed without losing data."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube
from memos_cli.cube.io import TornLine, iter_lines, sha256_file
from memos_cli.cube.records import MemoryRecord, content_hash
from memos_cli.engine.merge import conflicts_of
from memos_cli.errors import InvalidCube

QUARANTINE_FIX = f"memos repair moves it to {layout.DERIVED_DIR}/quarantine/"


def _refresh(cube: Cube, name: str) -> str:
    return f"rebuild it: memos promote {cube.path} --refresh {name}"


@dataclass
class VerifyReport:
    cube: str
    problems: list[str] = field(default_factory=list)  # the bundle is not sound
    notes: list[str] = field(default_factory=list)  # fine, but worth knowing
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "cube": self.cube,
            "ok": self.ok,
            "problems": self.problems,
            "notes": self.notes,
            "checked": self.checked,
        }


def _check_jsonl(cube: Cube, rel: str, report: VerifyReport) -> list[tuple[int, dict[str, Any]]]:
    path = cube.path / rel
    if not path.exists():
        fix = "memos repair recreates it empty" if rel == layout.AUDIT else f"restore it: git checkout -- {rel}"
        report.problems.append(f"{rel} is missing ({fix})")
        return []
    data = cube._read_committed(rel)  # what readers see: an unfinished transaction's bytes excluded
    objects: list[tuple[int, dict[str, Any]]] = []
    try:
        for number, line in iter_lines(data):
            try:
                obj = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                report.problems.append(f"{rel}:{number}: not valid JSON ({QUARANTINE_FIX})")
                continue
            if not isinstance(obj, dict):
                report.problems.append(f"{rel}:{number}: not a JSON object ({QUARANTINE_FIX})")
                continue
            objects.append((number, obj))
    except TornLine as exc:
        report.problems.append(f"{rel}: {exc} (memos repair removes it)")
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
            report.problems.append(f"{layout.MEMORIES}:{number}: {exc} ({QUARANTINE_FIX})")
            continue
        seen[(record.id, record.version)] += 1
        if record.hash and record.hash != content_hash(record.text, _source_name(record), record.source_id):
            report.problems.append(
                f"{layout.MEMORIES}:{number}: {record.id} version {record.version} does not match its content "
                "hash (its text was edited outside memos; restore it, or record the change with memos update)"
            )
        if record.id not in current or record.version > current[record.id].version:
            current[record.id] = record
    for (memory_id, version), count in seen.items():
        if count > 1:
            report.problems.append(f"{layout.MEMORIES}: {memory_id} version {version} appears {count} times")
    for record in conflicts_of(current.values()):
        fields = ", ".join(record.metadata["conflict"].get("fields", []))
        report.problems.append(
            f"{record.id}: a merge left {fields} changed two ways (see: memos conflicts {cube.path})"
        )
    report.checked["memory_versions"] = sum(seen.values())
    report.checked["memories"] = len(current)
    return current


def _check_payloads(cube: Cube, current: dict[str, MemoryRecord], report: VerifyReport) -> None:
    manifest = cube.manifest
    referenced: set[str] = set()
    active_refs = {r.ref for r in current.values() if r.status == "active"}
    for name, entry in manifest.kv.items():
        rel = entry.get("file", f"{layout.KV_DIR}/{name}.safetensors")
        referenced.add(rel)
        path = cube.committed_path(rel)
        if not path.is_file():
            report.problems.append(f"kv {name}: {rel} is missing ({_refresh(cube, name)})")
            continue
        if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            report.problems.append(
                f"kv {name}: {rel} does not match its recorded sha256 (modified or corrupted; {_refresh(cube, name)})"
            )
            continue
        try:
            from memos_cli.engine.activation import read_snapshot_header

            header = read_snapshot_header(path)
            fingerprint = header.get("model_fingerprint")
            if fingerprint and entry.get("model_fingerprint") and fingerprint != entry["model_fingerprint"]:
                report.problems.append(
                    f"kv {name}: header names model {fingerprint}, manifest {entry['model_fingerprint']}"
                )
        except Exception as exc:  # noqa: BLE001 - any unreadable header is a problem to name, not a crash
            report.problems.append(f"kv {name}: unreadable snapshot header ({exc}; {_refresh(cube, name)})")
        stale = [m for m in entry.get("memories", []) if m not in active_refs]
        if stale:
            report.notes.append(
                f"kv {name} is stale: {len(stale)} of its memories changed (memos promote --refresh {name})"
            )
    for name, entry in manifest.lora.items():
        folder = entry.get("path", f"{layout.LORA_DIR}/{name}")
        referenced.add(folder)
        base = cube.committed_path(folder)
        if not base.is_dir():
            report.problems.append(
                f"lora {name}: {folder}/ is missing (restore it from version control, or drop it: "
                f"memos distill {cube.path} --drop {name})"
            )
            continue
        for rel, digest in (entry.get("files") or {}).items():
            path = base / rel
            if not path.is_file():
                report.problems.append(f"lora {name}: {folder}/{rel} is missing")
            elif sha256_file(path) != digest:
                report.problems.append(f"lora {name}: {folder}/{rel} does not match its recorded sha256")
        stale = [m for m in entry.get("memories", []) if m not in active_refs]
        if stale:
            report.notes.append(f"lora {name} is stale: {len(stale)} of its memories changed")
    pending = set(cube.pending_created())
    for directory in (layout.KV_DIR, layout.LORA_DIR):
        base = cube.path / directory
        if base.is_dir():
            for child in sorted(base.iterdir()):
                rel = f"{directory}/{child.name}"
                if rel not in referenced and rel not in pending:
                    report.problems.append(
                        f"{rel} is not named in cube.yaml (left by an interrupted command? {QUARANTINE_FIX})"
                    )
    report.checked["kv"] = len(manifest.kv)
    report.checked["lora"] = len(manifest.lora)


def _check_index(cube: Cube, current: dict[str, MemoryRecord], report: VerifyReport) -> None:
    directory = cube.path / layout.DERIVED_DIR / layout.INDEX_DIR
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        report.notes.append("no index yet (the next query builds it)")
        return
    try:
        meta = json.loads(meta_path.read_text())
        rows = int(meta["rows"])
        dim = int(meta["dim"])
        vectors = (directory / "vectors.f32").stat().st_size
        mapping = json.loads((directory / "current.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.problems.append(f"index is unreadable ({type(exc).__name__}); memos repair rebuilds it")
        return
    if vectors < rows * dim * 4 or any(not isinstance(r, int) or r >= rows for r in mapping.values()):
        report.problems.append("index is inconsistent with itself; memos repair rebuilds it")
        return
    indexed = set(mapping)
    expected = {i for i, r in current.items() if r.status != "deleted"}
    if indexed - expected:
        report.problems.append(
            f"index holds {len(indexed - expected)} memories the cube does not; memos repair rebuilds it"
        )
    elif expected - indexed or meta.get("records_size") != (cube.memories_path.stat().st_size):
        report.notes.append("index is behind the records (brought up to date by the next query)")
    report.checked["index_rows"] = rows


def verify(cube_path: Path) -> VerifyReport:
    """Check the format, every line, the checksums, snapshot headers and the index. Never writes."""
    report = VerifyReport(cube=str(cube_path))
    try:
        cube = Cube.open(cube_path)
    except InvalidCube as exc:
        report.problems.append(exc.problem)
        return report
    if cube.journal_path.exists():
        report.notes.append(
            "a command is writing, or was interrupted: readers see the cube as before it, and the next "
            "write (or memos repair) rolls it back"
        )
    current = _check_records(cube, report)
    report.checked["audit_entries"] = len(_check_jsonl(cube, layout.AUDIT, report))
    _check_payloads(cube, current, report)
    _check_index(cube, current, report)
    return report


@dataclass
class RepairReport:
    fixed: list[str] = field(default_factory=list)
    not_fixed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "not_fixed": self.not_fixed}


def _drop_torn_tail(path: Path) -> str | None:
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(cut)
    return f"removed a torn last line of {path.name} ({len(data) - cut} bytes: {data[cut : cut + 40]!r}...)"


def _quarantine(cube: Cube, name: str, data: bytes) -> str:
    """Keep bytes repair takes out of the bundle under .memos/quarantine/ (nothing is lost)."""
    from memos_cli.cube.bundle import utc_now
    from memos_cli.cube.io import atomic_write_bytes

    folder = cube.path / layout.DERIVED_DIR / "quarantine"
    target = folder / f"{utc_now().replace(':', '')}-{name.replace('/', '__')}"
    atomic_write_bytes(target, data)
    return f"{layout.DERIVED_DIR}/quarantine/{target.name}"


def _bad_lines(rel: str, data: bytes) -> tuple[bytes, bytes]:
    """``data`` split into its good lines and its unreadable ones (complete lines only)."""
    good: list[bytes] = []
    bad: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if rel == layout.MEMORIES:
                MemoryRecord.from_dict(obj)
        except (ValueError, UnicodeDecodeError, TypeError):
            bad.append(line)
            continue
        good.append(line)
    return b"".join(good), b"".join(bad)


def _repair_files(cube: Cube) -> list[str]:
    """Bundle files repair can fix without losing data: unreadable lines in the middle of a JSONL file
    and files not named in cube.yaml go to .memos/quarantine/; a missing audit.jsonl is recreated."""
    from memos_cli.cube.io import atomic_write_bytes

    fixed = []
    for rel in (layout.MEMORIES, layout.AUDIT):
        path = cube.path / rel
        if not path.exists():
            if rel == layout.AUDIT:
                atomic_write_bytes(path, b"")
                fixed.append(f"recreated an empty {rel} (its history is gone: restore it from git if you have it)")
            continue
        data = path.read_bytes()
        good, bad = _bad_lines(rel, data)
        if bad:
            where = _quarantine(cube, rel, bad)
            atomic_write_bytes(path, good)
            fixed.append(f"moved {len(bad.splitlines())} unreadable line(s) of {rel} to {where}")
    named = {e.get("file", f"{layout.KV_DIR}/{n}.safetensors") for n, e in cube.manifest.kv.items()}
    named |= {e.get("path", f"{layout.LORA_DIR}/{n}") for n, e in cube.manifest.lora.items()}
    for directory in (layout.KV_DIR, layout.LORA_DIR):
        base = cube.path / directory
        if not base.is_dir() or base.is_symlink():
            continue
        for child in sorted(base.iterdir()):
            rel = f"{directory}/{child.name}"
            if rel in named:
                continue
            folder = cube.path / layout.DERIVED_DIR / "quarantine"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{rel.replace('/', '__')}"
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            shutil.move(str(child), str(target))
            fixed.append(f"moved {rel} (not named in cube.yaml) to {layout.DERIVED_DIR}/quarantine/{target.name}")
    return fixed


def repair(cube_path: Path, *, actor: str | None = None) -> RepairReport:
    """Fix what can be fixed without losing data: roll back an interrupted transaction, drop a torn
    last line (it was never acknowledged), clear leftovers, rebuild the index. Says what it could not."""
    report = RepairReport()
    cube = Cube.open(cube_path)
    if cube.journal_path.exists():
        report.fixed.append("rolled back an interrupted transaction")
    with cube.locked():  # locked() rolls back an interrupted transaction first
        cube.check(actor, "write")
        for rel in (layout.MEMORIES, layout.AUDIT):
            path = cube.path / rel
            if path.exists():
                message = _drop_torn_tail(path)
                if message:
                    report.fixed.append(message)
        report.fixed.extend(_repair_files(cube))
        for leftover in ("staging", "backups"):
            folder = cube.path / layout.DERIVED_DIR / leftover
            if folder.exists() and any(folder.iterdir()):
                shutil.rmtree(folder)
                report.fixed.append(f"removed leftovers in .memos/{leftover}")
        after = verify(cube.path)
        if any(p.startswith("index") for p in after.problems):
            shutil.rmtree(cube.path / layout.DERIVED_DIR / layout.INDEX_DIR, ignore_errors=True)
            report.fixed.append("rebuilt the index")
        elif any(n.startswith("index is behind") for n in after.notes):
            report.fixed.append("brought the index up to date")
    if not any(p for p in verify(cube.path).problems if not p.startswith("index")):
        from memos_cli.engine.query import Searcher

        Searcher([cube], record_usage=False, actor=actor)  # builds or syncs the index
    final = verify(cube.path)
    report.not_fixed = final.problems
    return report
