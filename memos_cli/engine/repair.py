"""repair: fix what can be fixed without losing data, from verify's typed problems; what cannot be
fixed is reported, never guessed at."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos_cli.cube import io, layout, records
from memos_cli.cube.bundle import Cube, quarantine_journal
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.integrity import QUARANTINE_REL, unsafe_entries, verify


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
