"""Durable file primitives: atomic replace, checked append, and reading JSONL with torn-line detection."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_bytes(path: Path, data: bytes) -> int:
    """Append ``data`` and fsync; returns the file size before the append (the rollback point)."""
    with open(path, "ab") as handle:
        before = handle.tell()
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return before


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class TornLine(ValueError):
    """The last line of a JSONL file has no newline: a write was cut off."""


def iter_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, line)`` for each complete line; raise TornLine for an unterminated tail."""
    if not data:
        return
    lines = data.split(b"\n")
    tail = lines.pop()
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line
    if tail.strip():
        raise TornLine(f"line {len(lines) + 1} is incomplete (no newline at end of file)")


# errno names of a storage that refuses writes: read-only media, or files the user may not write.
READ_ONLY_ERRNOS = frozenset(getattr(errno, name) for name in ("EROFS", "EACCES", "EPERM") if hasattr(errno, name))


def probe_writable(path: Path) -> bool:
    """Whether memos can write the file ``path`` (opened for append, created with its folder if
    missing; nothing is written): False on read-only media or without permission. Any other failure
    (disk full, I/O error) is raised: it is not "read-only"."""
    try:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            return False
        raise
    os.close(fd)
    return True
