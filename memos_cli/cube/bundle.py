"""A cube bundle on disk: open, read, and change it in journaled transactions.

Writes follow one protocol (docs/FORMAT.md, "Writing"): under the cube lock, a transaction first writes
an undo journal (the sizes of the JSONL files it will append to, a copy of the manifest, backups of files
it replaces, the files it creates), then applies its changes, then deletes the journal: that deletion is
the commit. A crash before it leaves the journal behind; the next writer (or ``memos repair``) rolls the
cube back to exactly its state before the transaction, and readers meanwhile see that state too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from memos_cli.config import lock_timeout
from memos_cli.cube import layout, policy
from memos_cli.cube.io import (
    TornLine,
    append_bytes,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    iter_lines,
)
from memos_cli.cube.manifest import Manifest, parse_manifest
from memos_cli.cube.records import MemoryRecord, canonical_json
from memos_cli.errors import CubeExists, CubeNotFound, InvalidCube, LockTimeout, UsageError


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_cube_id() -> str:
    return "cube-" + secrets.token_hex(6)


def _read_journal(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, OSError):
        # A journal torn while being written: its transaction had not started changing files.
        return {"torn": True}
    return data if isinstance(data, dict) else {"torn": True}


@dataclass
class CubeState:
    """All versions of all memories, as read at one instant."""

    versions: list[MemoryRecord]
    current: dict[str, MemoryRecord]  # id -> highest version
    size: int  # bytes of memories.jsonl this state was read from

    def history(self, memory_id: str) -> list[MemoryRecord]:
        return sorted((r for r in self.versions if r.id == memory_id), key=lambda r: r.version)


class Cube:
    """An open cube bundle. Cheap to construct; reads happen on demand."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    # ----------------------------------------------------------------- locations
    @property
    def memories_path(self) -> Path:
        return self.path / layout.MEMORIES

    @property
    def audit_path(self) -> Path:
        return self.path / layout.AUDIT

    @property
    def manifest_path(self) -> Path:
        return self.path / layout.MANIFEST

    @property
    def derived(self) -> Path:
        """The git-ignored folder of derived state, created on first use."""
        path = self.path / layout.DERIVED_DIR
        path.mkdir(exist_ok=True)
        return path

    @property
    def journal_path(self) -> Path:
        return self.path / layout.DERIVED_DIR / layout.JOURNAL_FILE

    # ----------------------------------------------------------------- open / init
    @classmethod
    def open(cls, path: str | Path) -> Cube:
        path = Path(path)
        manifest_file = path / layout.MANIFEST
        if not manifest_file.is_file():
            raise CubeNotFound(path)
        try:
            text = manifest_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InvalidCube(path, "cube.yaml is not UTF-8 text") from None
        # A transaction in flight (or cut off) may have replaced the manifest already: readers see the
        # manifest from before it, like every other file of the bundle.
        journal = _read_journal(path / layout.DERIVED_DIR / layout.JOURNAL_FILE)
        if journal is not None and isinstance(journal.get("manifest"), str):
            text = journal["manifest"]
        return cls(path, parse_manifest(text, path))

    @classmethod
    def init(
        cls, path: str | Path, *, name: str | None = None, owner: str | None = None, description: str = ""
    ) -> Cube:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} exists and is not a directory", hint="choose another path for the cube")
        if (path / layout.MANIFEST).exists():
            raise CubeExists(path)
        path.mkdir(parents=True, exist_ok=True)
        now = utc_now()
        manifest = Manifest(
            id=new_cube_id(),
            name=name or path.resolve().name,
            created=now,
            updated=now,
            description=description,
            owner=owner,
            policy={"owner": owner, "readers": [], "writers": [], "frozen": False},
        )
        for rel in (layout.MEMORIES, layout.AUDIT):
            if not (path / rel).exists():
                atomic_write_bytes(path / rel, b"")
        if not (path / layout.GITIGNORE).exists():
            atomic_write_text(path / layout.GITIGNORE, layout.GITIGNORE_TEXT)
        cube = cls(path, manifest)
        # The manifest goes last: until it exists the folder is not a cube.
        atomic_write_text(path / layout.MANIFEST, manifest.dump())
        from memos_cli.config import actor as acting

        creator = owner or acting()  # the audit names who created it even when it has no owner
        cube.append_audit_direct({"op": "init", "actor": creator, "ids": [], "summary": f"created {manifest.name}"})
        return cube

    # ----------------------------------------------------------------- reading
    def _read_committed(self, rel: str) -> bytes:
        """Bytes of a bundle file as of the last committed transaction.

        A journal on disk means a transaction is in flight or was cut off: its appends are ignored and
        its replaced files read from their backups, so a reader never sees half a transaction.
        """
        path = self.path / rel
        for _ in range(20):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b""
            journal = self._load_journal()
            if journal is not None:
                backup = journal.get("backups", {}).get(rel)
                if backup is not None:
                    backup_path = self.path / backup
                    if backup_path.exists():
                        return backup_path.read_bytes()
                cut = journal.get("appends", {}).get(rel)
                if cut is not None:
                    return data[:cut]
                return data
            # No journal: the data is committed unless a writer finished between our read and check.
            try:
                if path.stat().st_size == len(data):
                    return data
            except FileNotFoundError:
                return data
        return data

    def read_state(self) -> CubeState:
        """Parse every memory version. Raises InvalidCube naming the first bad line, or a missing file
        (``init`` writes it before the manifest: a cube without it lost its memories, it is not empty)."""
        if not self.memories_path.exists() and layout.MEMORIES not in self.pending_created():
            raise InvalidCube(
                self.path,
                f"{layout.MEMORIES} is missing",
                hint=f"restore it from version control (git checkout -- {layout.MEMORIES}), then: memos verify",
            )
        data = self._read_committed(layout.MEMORIES)
        versions: list[MemoryRecord] = []
        try:
            for number, line in iter_lines(data):
                try:
                    versions.append(MemoryRecord.from_json(line.decode("utf-8")))
                except (ValueError, UnicodeDecodeError, TypeError) as exc:
                    raise InvalidCube(self.path, f"{layout.MEMORIES}:{number}: {exc}") from None
        except TornLine as exc:
            raise InvalidCube(self.path, f"{layout.MEMORIES}: {exc}", hint=f"run: memos repair {self.path}") from None
        current: dict[str, MemoryRecord] = {}
        for record in versions:
            held = current.get(record.id)
            if held is None or record.version > held.version:
                current[record.id] = record
        return CubeState(versions=versions, current=current, size=len(data))

    def read_audit(self) -> list[dict[str, Any]]:
        data = self._read_committed(layout.AUDIT)
        entries = []
        try:
            for number, line in iter_lines(data):
                try:
                    entry = json.loads(line.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    raise InvalidCube(self.path, f"{layout.AUDIT}:{number}: not a JSON object") from None
                if not isinstance(entry, dict):
                    raise InvalidCube(self.path, f"{layout.AUDIT}:{number}: not a JSON object")
                entries.append(entry)
        except TornLine as exc:
            raise InvalidCube(self.path, f"{layout.AUDIT}: {exc}", hint=f"run: memos repair {self.path}") from None
        return entries

    def reload_manifest(self) -> Manifest:
        self.manifest = Cube.open(self.path).manifest
        return self.manifest

    # ----------------------------------------------------------------- locking and transactions
    @contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the cube's write lock; roll back a cut-off transaction first."""
        wait = lock_timeout() if timeout is None else timeout
        lock = FileLock(str(self.derived / layout.LOCK_FILE), timeout=wait)
        try:
            lock.acquire()
        except Timeout:
            raise LockTimeout(self.path, wait) from None
        try:
            self.recover()
            # Another process may have committed since we opened: work on the newest manifest.
            self.reload_manifest()
            yield
        finally:
            lock.release()

    def _load_journal(self) -> dict[str, Any] | None:
        return _read_journal(self.journal_path)

    def committed_path(self, rel: str) -> Path:
        """Where the committed bytes of a payload are: its backup while a transaction replaces it."""
        journal = self._load_journal()
        backup = (journal or {}).get("backups", {}).get(rel)
        if backup and (self.path / backup).exists():
            return self.path / backup
        return self.path / rel

    def pending_created(self) -> list[str]:
        """Bundle paths an unfinished transaction created (not yet part of the cube)."""
        journal = self._load_journal()
        return list(journal.get("created", [])) if journal else []

    def recover(self) -> list[str]:
        """Undo a transaction that was cut off (call with the lock held). Returns what was done."""
        journal = self._load_journal()
        if journal is None:
            return []
        done = []
        for rel, size in journal.get("appends", {}).items():
            path = self.path / rel
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as handle:
                    handle.truncate(size)
                    os.fsync(handle.fileno())
                done.append(f"rolled back an unfinished append to {rel}")
        for rel, backup in journal.get("backups", {}).items():
            source = self.path / backup
            if source.exists():
                os.replace(source, self.path / rel)
                done.append(f"restored {rel}")
        for rel in journal.get("created", []):
            target = self.path / rel
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                done.append(f"removed unfinished {rel}")
            elif target.exists():
                target.unlink()
                done.append(f"removed unfinished {rel}")
        if "manifest" in journal:
            atomic_write_text(self.manifest_path, journal["manifest"])
        self.journal_path.unlink(missing_ok=True)
        fsync_dir(self.journal_path.parent)
        return done or ["removed an empty journal"]

    def check(self, actor: str | None, action: str) -> str:
        """Apply the cube's policy to ``actor`` for ``action`` (read, write, admin); returns the actor."""
        from memos_cli.config import actor as default_actor

        who = default_actor(actor)
        policy.check(self.manifest.policy, self.manifest.owner, who, action, self.path)
        return who

    @contextmanager
    def transaction(self, *, actor: str | None, op: str, action: str = "write") -> Iterator[Transaction]:
        """Lock the cube, check the policy, and collect changes; they are applied together when the
        block exits cleanly, and not at all if it raises."""
        with self.locked():
            who = self.check(actor, action)
            tx = Transaction(self, actor=who, op=op)
            yield tx
            tx.commit()

    def append_audit_direct(self, entry: dict[str, Any]) -> None:
        """One audit line outside a transaction (used only by init, before anyone can race)."""
        entry = {"time": utc_now(), **entry}
        append_bytes(self.audit_path, (canonical_json(entry) + "\n").encode("utf-8"))


@dataclass
class Transaction:
    """Changes to one cube, applied atomically by ``commit`` (see the module docstring)."""

    cube: Cube
    actor: str | None
    op: str
    records: list[MemoryRecord] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    manifest_changed: bool = False
    rewrite_memories: list[MemoryRecord] | None = None  # replace memories.jsonl wholesale (purge, merge)
    created: list[str] = field(default_factory=list)  # bundle paths written by this transaction
    replaced: dict[str, Path] = field(default_factory=dict)  # bundle path -> new content staged in .memos

    @property
    def manifest(self) -> Manifest:
        return self.cube.manifest

    def add(self, record: MemoryRecord) -> None:
        """Stage a new version; its actor is the transaction's (resolved once, here, for every write)."""
        if record.actor != self.actor:
            record = replace(record, actor=self.actor)
        self.records.append(record)

    def log(self, ids: list[str], summary: str, **extra: Any) -> None:
        self.audit.append({"op": self.op, "actor": self.actor, "ids": ids, "summary": summary, **extra})

    def touch_manifest(self) -> None:
        self.manifest_changed = True

    def stage_file(self, rel: str) -> Path:
        """A path under .memos/ to write a new payload to; it is moved to ``rel`` at commit."""
        staging = self.cube.derived / "staging"
        staging.mkdir(exist_ok=True)
        target = staging / (secrets.token_hex(4) + "-" + rel.replace("/", "__"))
        self.replaced[rel] = target
        return target

    def delete_file(self, rel: str) -> None:
        """Remove a payload file or folder at commit (a backup is kept until the commit is done)."""
        self.replaced[rel] = Path("")

    def commit(self) -> None:
        cube = self.cube
        if not (
            self.records or self.audit or self.manifest_changed or self.rewrite_memories is not None or self.replaced
        ):
            return
        backups_dir = cube.derived / "backups"
        journal: dict[str, Any] = {"op": self.op, "appends": {}, "backups": {}, "created": []}
        if self.manifest_changed:
            journal["manifest"] = cube.manifest_path.read_text(encoding="utf-8")
        for rel in (layout.MEMORIES, layout.AUDIT):
            path = cube.path / rel
            journal["appends"][rel] = path.stat().st_size if path.exists() else 0
        to_back_up = list(self.replaced)
        if self.rewrite_memories is not None:
            to_back_up.append(layout.MEMORIES)
        backup_moves: list[tuple[Path, Path]] = []
        for rel in to_back_up:
            if (cube.path / rel).exists():
                backup_rel = f"{layout.DERIVED_DIR}/backups/{secrets.token_hex(4)}-{rel.replace('/', '__')}"
                journal["backups"][rel] = backup_rel
                backup_moves.append((cube.path / rel, cube.path / backup_rel))
            else:
                journal["created"].append(rel)
        atomic_write_text(cube.journal_path, json.dumps(journal, sort_keys=True))

        # --- apply; a crash anywhere below is undone by Cube.recover()
        if backup_moves:
            backups_dir.mkdir(exist_ok=True)
        for source, backup in backup_moves:
            # Copy under a temporary name, then rename: recovery never restores a half-copied backup.
            partial = backup.with_name(backup.name + ".part")
            if source.is_dir():
                shutil.copytree(source, partial)
            else:
                shutil.copy2(source, partial)
            os.replace(partial, backup)
        if self.rewrite_memories is not None:
            body = "".join(r.to_json() + "\n" for r in self.rewrite_memories + self.records)
            atomic_write_bytes(cube.memories_path, body.encode("utf-8"))
            journal["appends"].pop(layout.MEMORIES, None)
        elif self.records:
            append_bytes(cube.memories_path, "".join(r.to_json() + "\n" for r in self.records).encode("utf-8"))
        for rel, staged in self.replaced.items():
            target = cube.path / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if str(staged) not in ("", "."):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
            fsync_dir(target.parent)
        if self.manifest_changed:
            self.manifest.updated = utc_now()
            atomic_write_text(cube.manifest_path, self.manifest.dump())
        if self.audit:
            now = utc_now()
            lines = "".join(canonical_json({"time": now, **entry}) + "\n" for entry in self.audit)
            append_bytes(cube.audit_path, lines.encode("utf-8"))

        # --- commit point
        cube.journal_path.unlink()
        fsync_dir(cube.journal_path.parent)
        for _source, backup in backup_moves:
            if backup.is_dir():
                shutil.rmtree(backup, ignore_errors=True)
            else:
                backup.unlink(missing_ok=True)
