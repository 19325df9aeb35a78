"""A cube bundle on disk: open, read, and change it in journaled transactions.

Writes follow one protocol (docs/FORMAT.md, "Writing"): under the cube lock, a transaction first writes
an undo journal (the sizes of the JSONL files it will append to, a copy of the manifest, backups of files
it replaces, the files it creates), then applies its changes, then deletes the journal: that deletion is
the commit. A crash before it leaves the journal behind; the next writer (or ``memos repair``) rolls the
cube back to exactly its state before the transaction, and readers meanwhile see that state too.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from memos_cli.config import lock_timeout
from memos_cli.cube import io, layout, policy, records
from memos_cli.cube.io import TornLine, iter_lines, probe_writable
from memos_cli.cube.manifest import Manifest, parse_manifest
from memos_cli.cube.records import MemoryRecord, canonical_json
from memos_cli.errors import (
    BadInput,
    CubeExists,
    CubeNotFound,
    InvalidCube,
    LockTimeout,
    TooLarge,
    UnsafeJournal,
    UnsafePath,
    UsageError,
    WriteFailed,
)

JOURNAL_REL = f"{layout.DERIVED_DIR}/{layout.JOURNAL_FILE}"
BACKUPS_REL = f"{layout.DERIVED_DIR}/backups"
STAGING_REL = f"{layout.DERIVED_DIR}/staging"
_PAYLOAD = re.compile(
    rf"({re.escape(layout.KV_DIR)}/{layout.NAME_PATTERN}\.safetensors|{re.escape(layout.LORA_DIR)}/{layout.NAME_PATTERN})"
)
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # io.atomic_write's temporary names
_JOURNAL_KEYS = {"op", "appends", "backups", "created", "manifest"}
# ids per audit line, in bytes: well under layout.MAX_RECORD_BYTES (a record id may be long, a summary too)
_AUDIT_IDS_BYTES = 1024 * 1024


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_cube_id() -> str:
    return "cube-" + secrets.token_hex(6)


def backup_name(rel: str) -> str:
    """Where a transaction keeps the committed copy of ``rel`` until it commits."""
    return f"{BACKUPS_REL}/{secrets.token_hex(4)}-{rel.replace('/', '__')}"


def _is_payload(rel: Any) -> bool:
    return isinstance(rel, str) and bool(_PAYLOAD.fullmatch(rel)) and ".." not in rel


def validate_journal(data: Any, cube: Path) -> dict[str, Any]:
    """A journal names only what memos itself writes for a transaction: appends to the two JSONL files,
    backups of payloads (or of memories.jsonl) under .memos/backups/ with the name memos gives them,
    created payloads, and a copy of the manifest. Anything else raises UnsafeJournal."""

    def bad(problem: str) -> UnsafeJournal:
        return UnsafeJournal(cube, problem)

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    unknown = set(data) - _JOURNAL_KEYS
    if unknown:
        raise bad(f"unknown key {sorted(unknown)[0][:40]!r}")
    if not isinstance(data.get("op", ""), str) or len(data.get("op", "")) > 64:
        raise bad("'op' is not a short string")
    appends = data.get("appends", {})
    if not isinstance(appends, dict):
        raise bad("'appends' is not a mapping")
    for rel, size in appends.items():
        if rel not in (layout.MEMORIES, layout.AUDIT):
            raise bad(f"an append to {str(rel)[:80]!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"the size of {rel} is not a byte count")
    backups = data.get("backups", {})
    if not isinstance(backups, dict):
        raise bad("'backups' is not a mapping")
    for rel, backup in backups.items():
        if rel != layout.MEMORIES and not _is_payload(rel):
            raise bad(f"a backup of {str(rel)[:80]!r}")
        pattern = re.escape(BACKUPS_REL) + r"/[0-9a-f]{8}-" + re.escape(rel.replace("/", "__"))
        if not isinstance(backup, str) or not re.fullmatch(pattern, backup):
            raise bad(f"the backup of {rel} is not under {BACKUPS_REL}/")
    created = data.get("created", [])
    if not isinstance(created, list) or not all(_is_payload(rel) for rel in created):
        raise bad("'created' names something other than kv/<name>.safetensors or lora/<name>")
    if len(set(created)) != len(created) or set(created) & set(backups):
        raise bad("a path is named twice")
    manifest = data.get("manifest")
    if manifest is not None and (not isinstance(manifest, str) or len(manifest) > layout.MAX_MANIFEST_BYTES):
        raise bad("'manifest' is not the text of a cube.yaml")
    return data


def read_journal(cube: Path) -> dict[str, Any] | None:
    """The validated journal of an unfinished transaction, None if there is none; UnsafeJournal if it is
    not one memos wrote (an unreadable one included: memos writes its journal atomically)."""
    try:
        raw = io.read_bytes(cube, JOURNAL_REL, limit=layout.MAX_JOURNAL_BYTES, missing_ok=True)
    except (UnsafePath, TooLarge) as exc:
        raise UnsafeJournal(cube, exc.problem) from None
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UnsafeJournal(cube, "not valid JSON") from None
    return validate_journal(data, cube)


def quarantine_journal(cube: Path) -> str | None:
    """Move an invalid journal aside (inside .memos), without acting on it; returns where it went."""
    try:
        read_journal(cube)
        return None
    except UnsafeJournal:
        pass
    aside = f"{layout.DERIVED_DIR}/journal.rejected-{secrets.token_hex(4)}"
    if io.kind(cube, layout.DERIVED_DIR) != "dir":
        io.remove(cube, layout.DERIVED_DIR)  # a link or file named .memos: removed, never followed
        return None
    if io.kind(cube, JOURNAL_REL) in ("link", "special"):
        io.remove(cube, JOURNAL_REL)
        return "removed"
    io.rename(cube, JOURNAL_REL, aside)
    return aside


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
        self.ignore_journal = False  # verify only: read past a journal that does not validate
        self._writable: bool | None = None

    def writable(self) -> bool:
        """Whether memos may write this cube's files (False on read-only media or without permission).

        Reads never need to write: on a read-only cube they take no lock, keep derived data (the
        index) under MEMOS_HOME's cache, and skip usage logging. Probed once per opened cube."""
        if self._writable is None:
            self._writable = probe_writable(self.path, f"{layout.DERIVED_DIR}/{layout.LOCK_FILE}")
        return self._writable

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
        """The git-ignored folder of derived state, created on first use (never a link)."""
        io.mkdirs(self.path, layout.DERIVED_DIR)
        return self.path / layout.DERIVED_DIR

    def derived_dir(self, rel: str) -> Path:
        """A folder under .memos/ (created, confined: no link on the way)."""
        io.mkdirs(self.path, f"{layout.DERIVED_DIR}/{rel}")
        return self.path / layout.DERIVED_DIR / rel

    @property
    def journal_path(self) -> Path:
        return self.path / layout.DERIVED_DIR / layout.JOURNAL_FILE

    def has_journal(self) -> bool:
        return io.kind(self.path, JOURNAL_REL) is not None

    # ----------------------------------------------------------------- open / init
    @classmethod
    def open(cls, path: str | Path, *, ignore_journal: bool = False) -> Cube:
        """Open the cube at ``path``. ``ignore_journal`` (verify only) reads the files as they are when
        the journal does not validate, instead of refusing with UnsafeJournal."""
        path = Path(path)
        try:
            raw = io.read_bytes(path, layout.MANIFEST, limit=layout.MAX_MANIFEST_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            raise CubeNotFound(path) from None
        try:
            text = (raw or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidCube(path, "cube.yaml is not UTF-8 text") from None
        # A transaction in flight (or cut off) may have replaced the manifest already: readers see the
        # manifest from before it, like every other file of the bundle.
        try:
            journal = read_journal(path)
        except UnsafeJournal:
            if not ignore_journal:
                raise
            journal = None
        if journal is not None and isinstance(journal.get("manifest"), str):
            text = journal["manifest"]
        cube = cls(path, parse_manifest(text, path))
        cube.ignore_journal = ignore_journal
        return cube

    @classmethod
    def init(
        cls, path: str | Path, *, name: str | None = None, owner: str | None = None, description: str = ""
    ) -> Cube:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} exists and is not a directory", hint="choose another path for the cube")
        if path.is_dir() and io.kind(path, layout.MANIFEST) is not None:
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
            if io.kind(path, rel) is None:
                io.atomic_write(path, rel, b"")
        if io.kind(path, layout.GITIGNORE) is None:
            io.atomic_write(path, layout.GITIGNORE, layout.GITIGNORE_TEXT.encode("utf-8"))
        cube = cls(path, manifest)
        # The manifest goes last: until it exists the folder is not a cube.
        io.atomic_write(path, layout.MANIFEST, manifest.dump().encode("utf-8"))
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
        data = b""
        for _ in range(20):
            data = io.read_bytes(self.path, rel, missing_ok=True) or b""
            journal = self._load_journal()
            if journal is not None:
                backup = journal.get("backups", {}).get(rel)
                if backup is not None:
                    saved = io.read_bytes(self.path, backup, missing_ok=True)
                    if saved is not None:
                        return saved
                cut = journal.get("appends", {}).get(rel)
                if cut is not None:
                    return data[:cut]
                return data
            # No journal: the data is committed unless a writer finished between our read and check.
            st = io.lstat(self.path, rel)
            if st is None or st.st_size == len(data):
                return data
        return data

    def _lines(self, rel: str, data: bytes) -> Iterator[tuple[int, bytes]]:
        for number, line in iter_lines(data):
            if len(line) > layout.MAX_RECORD_BYTES:
                raise InvalidCube(
                    self.path, f"{rel}:{number}: the line is longer than the limit of {layout.MAX_RECORD_BYTES:,} bytes"
                )
            yield number, line

    def committed_bytes(self, rel: str) -> bytes:
        """A bundle file's bytes as of the last committed transaction (for readers that parse it their
        own way, such as the scheduler's planner)."""
        return self._read_committed(rel)

    def read_state(self) -> CubeState:
        """Parse every memory version. Raises InvalidCube naming the first bad line, or a missing file
        (``init`` writes it before the manifest: a cube without it lost its memories, it is not empty)."""
        if io.kind(self.path, layout.MEMORIES) is None:
            journal = self._load_journal() or {}
            in_flight = layout.MEMORIES in journal.get("created", []) or layout.MEMORIES in journal.get("backups", {})
            # a rewrite in flight moves it aside (its backup is read); one that just committed put it back
            if not in_flight and io.kind(self.path, layout.MEMORIES) is None:
                raise InvalidCube(
                    self.path,
                    f"{layout.MEMORIES} is missing",
                    remedy="restore",
                    file=layout.MEMORIES,
                )
        data = self._read_committed(layout.MEMORIES)
        versions: list[MemoryRecord] = []
        try:
            for number, line in self._lines(layout.MEMORIES, data):
                try:
                    versions.append(MemoryRecord.from_json(line))
                except (ValueError, UnicodeDecodeError, TypeError) as exc:
                    raise InvalidCube(self.path, f"{layout.MEMORIES}:{number}: {exc}") from None
        except TornLine as exc:
            raise InvalidCube(self.path, f"{layout.MEMORIES}: {exc}", remedy="repair") from None
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
            for number, line in self._lines(layout.AUDIT, data):
                try:
                    entry = records.loads_unbounded(line)
                except (ValueError, UnicodeDecodeError):
                    raise InvalidCube(self.path, f"{layout.AUDIT}:{number}: not a JSON object") from None
                if not isinstance(entry, dict):
                    raise InvalidCube(self.path, f"{layout.AUDIT}:{number}: not a JSON object")
                entries.append(entry)
        except TornLine as exc:
            raise InvalidCube(self.path, f"{layout.AUDIT}: {exc}", remedy="repair") from None
        return entries

    def reload_manifest(self) -> Manifest:
        self.manifest = Cube.open(self.path).manifest
        return self.manifest

    # ----------------------------------------------------------------- locking and transactions
    def file_lock(self, name: str = layout.LOCK_FILE) -> FileLock:
        """A lock file under .memos/, checked first: filelock opens it following links."""
        rel = f"{layout.DERIVED_DIR}/{name}"
        io.mkdirs(self.path, layout.DERIVED_DIR)
        what = io.kind(self.path, rel)
        if what not in (None, "file"):
            raise UnsafePath(self.path, rel, "is a symbolic link" if what == "link" else "is not a regular file")
        return FileLock(str(self.path / rel))

    @contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the cube's write lock; roll back a cut-off transaction first."""
        wait = lock_timeout() if timeout is None else timeout
        lock = self.file_lock()
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            raise LockTimeout(self.path, wait) from None
        try:
            self.recover()
            self.sweep_temporaries()
            # Another process may have committed since we opened: work on the newest manifest.
            self.reload_manifest()
            yield
        finally:
            lock.release()

    def _load_journal(self) -> dict[str, Any] | None:
        try:
            return read_journal(self.path)
        except UnsafeJournal:
            if self.ignore_journal:
                return None
            raise

    def committed_rel(self, rel: str) -> str:
        """The bundle name holding the committed bytes of payload ``rel``: its backup while a
        transaction replaces it. UnsafePath if that is a link or special file."""
        journal = self._load_journal()
        backup = (journal or {}).get("backups", {}).get(rel)
        if backup and io.kind(self.path, backup) is not None:
            rel = backup
        what = io.kind(self.path, rel)
        if what in ("link", "special"):
            raise UnsafePath(self.path, rel, "is a symbolic link" if what == "link" else "is not a regular file")
        return rel

    def committed_path(self, rel: str) -> Path:
        """``committed_rel`` as a path (checked: not a link, not a special file)."""
        return self.path / self.committed_rel(rel)

    def pending_created(self) -> list[str]:
        """Bundle paths an unfinished transaction created (not yet part of the cube)."""
        journal = self._load_journal()
        return list(journal.get("created", [])) if journal else []

    def recover(self) -> list[str]:
        """Undo a transaction that was cut off (call with the lock held). Returns what was done.

        Only a journal that validates is acted on (UnsafeJournal otherwise), and every change goes
        through the confined primitives: nothing outside the cube can be touched from here."""
        journal = self._load_journal()
        if journal is None:
            return []
        root = self.path
        done = []
        for rel, size in journal.get("appends", {}).items():
            if io.truncate(root, rel, size):
                done.append(f"rolled back an unfinished append to {rel}")
        for rel, backup in journal.get("backups", {}).items():
            if io.kind(root, backup) is not None:
                io.remove(root, rel)
                io.rename(root, backup, rel)
                done.append(f"restored {rel}")
        for rel in journal.get("created", []):
            if io.remove(root, rel):
                done.append(f"removed unfinished {rel}")
        if "manifest" in journal:
            wanted = journal["manifest"].encode("utf-8")
            if io.read_bytes(root, layout.MANIFEST, missing_ok=True) != wanted:
                io.atomic_write(root, layout.MANIFEST, wanted)
        io.remove(root, JOURNAL_REL)
        return done or ["removed an empty journal"]

    def sweep_temporaries(self) -> list[str]:
        """Remove temporaries of atomic writes that a killed writer left in the bundle's folders
        (call with the lock held: no writer of ours is between its write and its rename)."""
        removed = []
        for folder in ("", layout.KV_DIR):
            if folder and io.kind(self.path, folder) != "dir":
                continue
            for name in io.listdir(self.path, folder) if folder else sorted(os.listdir(self.path)):
                if _TEMPORARY.fullmatch(name):
                    rel = f"{folder}/{name}" if folder else name
                    io.remove(self.path, rel)
                    removed.append(rel)
        return removed

    def check(self, actor: str | None, action: str) -> str:
        """Apply the cube's policy to ``actor`` for ``action`` (read, write, admin); returns the actor."""
        from memos_cli.config import actor as default_actor

        who = default_actor(actor)
        policy.check(self.manifest.policy, self.manifest.owner, who, action, self.path)
        return who

    @contextmanager
    def transaction(self, *, actor: str | None, op: str, action: str = "write") -> Iterator[Transaction]:
        """Lock the cube, check the policy, and collect changes; they are applied together when the
        block exits cleanly, and not at all if it raises (staged payloads are removed; a write that
        fails, such as on a full disk, becomes WriteFailed)."""
        with self.locked():
            who = self.check(actor, action)
            tx = Transaction(self, actor=who, op=op)
            try:
                yield tx
            except BaseException as exc:
                tx.discard_staged()
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
                    raise WriteFailed(self.path, _shown(self.path, exc), exc.strerror or str(exc)) from None
                raise
            tx.commit()

    def append_audit_direct(self, entry: dict[str, Any]) -> None:
        """One audit line outside a transaction (used only by init, before anyone can race)."""
        entry = {"time": utc_now(), **entry}
        io.append(self.path, layout.AUDIT, (canonical_json(entry) + "\n").encode("utf-8"))


def _shown(cube: Path, exc: OSError) -> str:
    """The bundle file a failed write was writing, as the user knows it."""
    name = str(exc.filename or "a file")
    try:
        name = str(Path(name).relative_to(cube))
    except ValueError:
        pass
    staged = re.fullmatch(r"(?:.*/)?[0-9a-f]{8}-([^/]+)", name)
    return staged.group(1).replace("__", "/") if staged else name


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
    replaced: dict[str, str | None] = field(default_factory=dict)  # bundle path -> staged name (None: delete)

    @property
    def manifest(self) -> Manifest:
        return self.cube.manifest

    def add(self, record: MemoryRecord) -> None:
        """Stage one new version: its actor is the transaction's (resolved once, here, for every write),
        and it is refused (BadInput) if a reader could not read it back."""
        if record.actor != self.actor:
            record = replace(record, actor=self.actor)
        try:
            records.validate(record)
        except ValueError as exc:
            raise BadInput(f"memory {record.id}", str(exc), hint="nothing was written; shorten or fix it") from None
        self.records.append(record)

    def log(self, ids: list[str], summary: str, **extra: Any) -> None:
        """Stage an audit entry. An operation on very many memories is written as several entries
        (``part``/``parts``) so that no audit line nears the reader's line limit."""
        chunks: list[list[str]] = [[]]
        size = 0
        for memory_id in ids:
            size += len(memory_id.encode("utf-8")) + 4
            if size > _AUDIT_IDS_BYTES and chunks[-1]:
                chunks.append([])
                size = len(memory_id.encode("utf-8")) + 4
            chunks[-1].append(memory_id)
        for part, chunk in enumerate(chunks, start=1):
            entry = {"op": self.op, "actor": self.actor, "ids": chunk, "summary": summary, **extra}
            if len(chunks) > 1:
                entry.update(part=part, parts=len(chunks))
            self.audit.append(entry)

    def touch_manifest(self) -> None:
        self.manifest_changed = True

    def _payload(self, rel: str) -> str:
        if not _is_payload(rel):
            raise UnsafePath(self.cube.path, rel, "is not a kv/<name>.safetensors or lora/<name> path")
        return rel

    def stage_file(self, rel: str) -> Path:
        """A path under .memos/ to write a new payload to; it is moved to ``rel`` at commit."""
        self._payload(rel)
        self.cube.derived_dir("staging")
        staged = f"{STAGING_REL}/{secrets.token_hex(4)}-{rel.replace('/', '__')}"
        self.replaced[rel] = staged
        return self.cube.path / staged

    def delete_file(self, rel: str) -> None:
        """Remove a payload file or folder at commit (a backup is kept until the commit is done)."""
        self.replaced[self._payload(rel)] = None

    def discard_staged(self) -> None:
        for staged in self.replaced.values():
            if staged:
                io.remove(self.cube.path, staged)

    def commit(self) -> None:
        """Journal, apply, delete the journal (the commit point). A failed write rolls everything back
        from the journal and raises WriteFailed; the cube is then byte-identical to before."""
        cube = self.cube
        root = cube.path
        if not (
            self.records or self.audit or self.manifest_changed or self.rewrite_memories is not None or self.replaced
        ):
            return
        journal: dict[str, Any] = {"op": self.op, "appends": {}, "backups": {}, "created": []}
        if self.manifest_changed:
            journal["manifest"] = (io.read_bytes(root, layout.MANIFEST, limit=layout.MAX_MANIFEST_BYTES) or b"").decode(
                "utf-8"
            )
        for rel in (layout.MEMORIES, layout.AUDIT):
            st = io.lstat(root, rel)
            journal["appends"][rel] = st.st_size if st is not None else 0
        to_back_up = list(self.replaced)
        if self.rewrite_memories is not None and io.kind(root, layout.MEMORIES) is not None:
            to_back_up.append(layout.MEMORIES)
            journal["appends"].pop(layout.MEMORIES)
        backup_moves: list[tuple[str, str]] = []
        for rel in to_back_up:
            what = io.kind(root, rel)
            if what is not None:
                if what not in ("file", "dir"):
                    raise UnsafePath(root, rel, "is a symbolic link or special file")
                backup = backup_name(rel)
                journal["backups"][rel] = backup
                backup_moves.append((rel, backup))
            else:
                journal["created"].append(rel)
        writing = JOURNAL_REL
        try:
            io.atomic_write(root, JOURNAL_REL, json.dumps(journal, sort_keys=True).encode("utf-8"))
        except OSError as exc:
            self.discard_staged()
            raise WriteFailed(root, writing, exc.strerror or str(exc)) from None

        # --- apply; a crash anywhere below is undone by Cube.recover(), a failed write right here
        try:
            if backup_moves:
                io.mkdirs(root, BACKUPS_REL)
            for rel, backup in backup_moves:
                # A rename: atomic, and it needs no free space (so a full disk can always roll back).
                writing = rel
                io.rename(root, rel, backup)
            if self.rewrite_memories is not None:
                writing = layout.MEMORIES
                body = "".join(r.to_json() + "\n" for r in self.rewrite_memories + self.records)
                io.atomic_write(root, layout.MEMORIES, body.encode("utf-8"))
            elif self.records:
                writing = layout.MEMORIES
                io.append(root, layout.MEMORIES, "".join(r.to_json() + "\n" for r in self.records).encode("utf-8"))
            for rel, staged in self.replaced.items():
                writing = rel
                io.remove(root, rel)  # only a payload that had no backup (created twice) is left here
                if staged:
                    io.rename(root, staged, rel)
            if self.audit:
                writing = layout.AUDIT
                now = utc_now()
                lines = "".join(canonical_json({"time": now, **entry}) + "\n" for entry in self.audit)
                io.append(root, layout.AUDIT, lines.encode("utf-8"))
            if self.manifest_changed:
                writing = layout.MANIFEST
                self.manifest.updated = utc_now()
                io.atomic_write(root, layout.MANIFEST, self.manifest.dump().encode("utf-8"))
        except BaseException as exc:
            cube.recover()
            self.discard_staged()
            cube.reload_manifest()
            if isinstance(exc, OSError):
                raise WriteFailed(root, writing, exc.strerror or str(exc)) from None
            raise

        # --- commit point
        io.remove(root, JOURNAL_REL)
        for _rel, backup in backup_moves:
            io.remove(root, backup)
