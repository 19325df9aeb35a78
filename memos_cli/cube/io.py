"""Durable, confined file primitives: the one place memos reads, writes, replaces and deletes bundle files.

The confinement rule (docs/FORMAT.md, "Confinement"): every bundle path is a plain relative name under
the cube folder (no absolute path, no '..', no backslash, NUL or control character), every folder on the
way is opened with ``O_NOFOLLOW`` relative to the one before it (so no symlink is followed, not even one
swapped in by a race), the file itself is opened with ``O_NOFOLLOW`` and ``O_NONBLOCK`` (a FIFO cannot
hang a reader) and must be a regular file, and a file memos writes into in place must not be hard-linked.
Anything else raises :class:`~memos_cli.errors.UnsafePath`.

Every byte memos writes goes through :func:`_write_all`, and every other change (rename, unlink,
truncate, mkdir) through :func:`_tick`: the choke point that the crash harness counts. Two test hooks
live here, documented in docs/FORMAT.md: ``MEMOS_TEST_CRASH_AFTER=N`` ends the process (``os._exit(137)``)
right after the N-th write call, and :data:`space_left` makes writes fail with ``ENOSPC`` once that many
more bytes have been written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from memos_cli.errors import TooLarge, UnsafePath

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
_CHUNK = 1 << 20

# ---------------------------------------------------------------------------------- test hooks
_writes = 0
_crash_after = int(os.environ.get("MEMOS_TEST_CRASH_AFTER", "0") or 0)
space_left: int | None = None  # test hook: bytes that may still be written before ENOSPC (None: no limit)


def write_count() -> int:
    """How many write calls this process made (the crash harness's write points)."""
    return _writes


def note_write() -> None:
    """Count a write memos makes outside these primitives (import streams members into its own staging
    folder): one more write point for the crash harness."""
    _tick()


def _tick() -> None:
    global _writes
    _writes += 1
    if _crash_after and _writes >= _crash_after:
        os._exit(137)


def _write_all(fd: int, data: bytes | memoryview, label: str) -> None:
    """The choke point for bytes: write all of ``data`` to ``fd``; OSError carries ``label`` as filename."""
    global space_left
    view = memoryview(data)
    while len(view):
        chunk = view[:_CHUNK]
        if space_left is not None:
            if space_left < len(chunk):
                if space_left > 0:
                    os.write(fd, chunk[:space_left])
                space_left = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), label)
            space_left -= len(chunk)
        try:
            written = os.write(fd, chunk)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, label) from None
        view = view[written:]
        _tick()


# ---------------------------------------------------------------------------------- names and folders
def check_rel(rel: str) -> list[str]:
    """The parts of a plain relative bundle name, or ValueError: no absolute path, no '.', '..' or empty
    part, no backslash, NUL, newline or other control character."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024:
        raise ValueError(f"{rel!r} is not a relative name")
    if rel.startswith("/") or "\\" in rel or any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise ValueError(f"{rel!r} is not a plain relative name")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{rel!r} is not a plain relative name")
    return parts


def _rel(root: Path, rel: str) -> list[str]:
    try:
        return check_rel(rel)
    except ValueError as exc:
        raise UnsafePath(root, str(rel), str(exc)) from None


@contextmanager
def _parent(root: Path, rel: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
    """Yield ``(fd of rel's folder, rel's last part)``; every folder on the way is opened with O_NOFOLLOW
    relative to the one before. FileNotFoundError if a folder is missing (and ``create`` is off)."""
    parts = _rel(root, rel)
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for depth, part in enumerate(parts[:-1]):
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, dir_fd=fd)
                    _tick()
                except FileExistsError:
                    pass
                nfd = _open_dir_part(root, parts, depth, fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise UnsafePath(root, "/".join(parts[: depth + 1]), "is a link or not a folder") from None
                raise
            os.close(fd)
            fd = nfd
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _open_dir_part(root: Path, parts: list[str], depth: int, fd: int) -> int:
    try:
        return os.open(parts[depth], _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise UnsafePath(root, "/".join(parts[: depth + 1]), "is a link or not a folder") from None
        raise


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def kind(root: Path, rel: str) -> str | None:
    """'file', 'dir', 'link' or 'special' for ``rel`` (never followed), None if it does not exist."""
    try:
        with _parent(root, rel) as (dfd, name):
            st = _lstat(dfd, name)
    except FileNotFoundError:
        return None
    return None if st is None else _kind(st)


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "special"


def lstat(root: Path, rel: str) -> os.stat_result | None:
    """``rel``'s own status (a link is not followed), None if missing."""
    try:
        with _parent(root, rel) as (dfd, name):
            return _lstat(dfd, name)
    except FileNotFoundError:
        return None


def listdir(root: Path, rel: str) -> list[str]:
    """Names in folder ``rel`` (sorted; [] if it is missing); UnsafePath if it is a link or not a folder."""
    try:
        with _parent(root, rel + "/x") as (dfd, _name):
            return sorted(os.listdir(dfd))
    except FileNotFoundError:
        return []


def mkdirs(root: Path, rel: str) -> None:
    """Create folder ``rel`` and the folders above it, inside the cube, following no link."""
    with _parent(root, rel + "/x", create=True):
        pass


# ---------------------------------------------------------------------------------- reading
def _open_file(root: Path, rel: str, dfd: int, name: str, flags: int, mode: int = 0o644) -> int:
    try:
        fd = os.open(name, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, mode, dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(root, rel, "is a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENOTDIR, errno.EOPNOTSUPP):
            raise UnsafePath(root, rel, "is not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePath(root, rel, "is not a regular file")
    if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink > 1:
        os.close(fd)
        raise UnsafePath(root, rel, "is hard-linked to another file (memos writes only files of its own)")
    return fd


def read_bytes(root: Path, rel: str, *, limit: int | None = None, missing_ok: bool = False) -> bytes | None:
    """All bytes of regular file ``rel`` (None if missing and ``missing_ok``); TooLarge beyond ``limit``."""
    try:
        with _parent(root, rel) as (dfd, name):
            fd = _open_file(root, rel, dfd, name, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    with os.fdopen(fd, "rb") as handle:
        if limit is not None:
            data = handle.read(limit + 1)
            if len(data) > limit:
                raise TooLarge(root, rel, limit)
            return data
        return handle.read()


def open_read(root: Path, rel: str) -> BinaryIO:
    """A binary reader of regular file ``rel`` (FileNotFoundError if missing)."""
    with _parent(root, rel) as (dfd, name):
        fd = _open_file(root, rel, dfd, name, os.O_RDONLY)
    return os.fdopen(fd, "rb")


def sha256(root: Path, rel: str) -> str:
    digest = hashlib.sha256()
    with open_read(root, rel) as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_tree(root: Path, rel: str) -> list[str]:
    """Every file under folder ``rel`` as a relative name; UnsafePath at the first link or special file."""
    found: list[str] = []
    for name in listdir(root, rel):
        child = f"{rel}/{name}"
        what = kind(root, child)
        if what == "dir":
            found.extend(check_tree(root, child))
        elif what == "file":
            found.append(child)
        elif what is not None:
            raise UnsafePath(root, child, "is a symbolic link" if what == "link" else "is not a regular file")
    return found


# ---------------------------------------------------------------------------------- writing
def _refuse_unsafe_target(root: Path, rel: str, dfd: int, name: str, *, dir_ok: bool = False) -> None:
    st = _lstat(dfd, name)
    if st is None:
        return
    what = _kind(st)
    if what == "file" or (what == "dir" and dir_ok):
        return
    raise UnsafePath(root, rel, {"link": "is a symbolic link", "dir": "is a folder"}.get(what, "is not a regular file"))


def write_new(root: Path, rel: str, data: bytes) -> None:
    """Create ``rel`` (it must not exist) with ``data``, fsynced."""
    with _parent(root, rel, create=True) as (dfd, name):
        fd = _open_file(root, rel, dfd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            _write_all(fd, data, rel)
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(root: Path, rel: str, data: bytes) -> None:
    """Replace ``rel`` with ``data`` so that a crash leaves either the old file or the new one."""
    with _parent(root, rel, create=True) as (dfd, name):
        _refuse_unsafe_target(root, rel, dfd, name)
        tmp = f".{name[:80]}.{secrets.token_hex(4)}.tmp"
        fd = _open_file(root, rel, dfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            try:
                _write_all(fd, data, rel)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass
            raise
        _tick()
        _fsync_fd(dfd)


def append(root: Path, rel: str, data: bytes) -> int:
    """Append ``data`` to ``rel`` (created if missing) and fsync; returns the size before (the rollback
    point). On a failed write the file is cut back to that size."""
    with _parent(root, rel, create=True) as (dfd, name):
        fd = _open_file(root, rel, dfd, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        before = os.fstat(fd).st_size
        try:
            _write_all(fd, data, rel)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, before)
            raise
        return before
    finally:
        os.close(fd)


def truncate(root: Path, rel: str, size: int) -> bool:
    """Cut ``rel`` back to ``size`` bytes if it is longer; True if it was."""
    try:
        with _parent(root, rel) as (dfd, name):
            fd = _open_file(root, rel, dfd, name, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_size <= size:
            return False
        os.ftruncate(fd, size)
        _tick()
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def remove(root: Path, rel: str) -> bool:
    """Delete file or folder ``rel`` (a link is removed, never followed); False if it was missing."""
    try:
        with _parent(root, rel) as (dfd, name):
            st = _lstat(dfd, name)
            if st is None:
                return False
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
            _tick()
            _fsync_fd(dfd)
            return True
    except FileNotFoundError:
        return False


def rename(root: Path, src: str, dst: str, *, any_kind: bool = False) -> None:
    """Move ``src`` to ``dst`` (both inside the cube; ``dst`` must not be a link or a non-empty folder).
    ``src`` must be a file or folder, unless ``any_kind`` (repair moving a link or FIFO itself aside)."""
    with _parent(root, src) as (sfd, sname), _parent(root, dst, create=True) as (dfd, dname):
        st = _lstat(sfd, sname)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
        if _kind(st) not in ("file", "dir") and not any_kind:
            raise UnsafePath(root, src, "is a symbolic link or special file")
        _refuse_unsafe_target(root, dst, dfd, dname, dir_ok=True)
        os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        _tick()
        _fsync_fd(dfd)
        if sfd != dfd:
            _fsync_fd(sfd)


def copy(root: Path, src: str, dst: str) -> None:
    """Copy file or folder ``src`` to ``dst`` (which must not exist); links and special files refused."""
    what = kind(root, src)
    if what == "dir":
        mkdirs(root, dst)
        for name in listdir(root, src):
            copy(root, f"{src}/{name}", f"{dst}/{name}")
        return
    if what != "file":
        raise UnsafePath(root, src, "is a symbolic link or special file" if what else "is missing")
    with open_read(root, src) as reader, _parent(root, dst, create=True) as (dfd, name):
        fd = _open_file(root, dst, dfd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            while block := reader.read(_CHUNK):
                _write_all(fd, block, dst)
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- outside a cube
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` (its folder is trusted; the file itself is never followed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.parent, path.name, data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_bytes(path: Path, data: bytes) -> int:
    """Append to ``path`` (its folder trusted); see :func:`append`."""
    path = Path(path)
    return append(path.parent, path.name, data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    path = Path(path)
    return sha256(path.parent, path.name)


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


def probe_writable(root: Path, rel: str) -> bool:
    """Whether memos can write the file ``rel`` of ``root`` (opened for append, created with its folder if
    missing, following no link; nothing is written): False on read-only media or without permission.
    UnsafePath if it is a link or special file; any other failure (disk full, I/O error) is raised: it is
    not "read-only"."""
    try:
        with _parent(root, rel, create=True) as (dfd, name):
            os.close(_open_file(root, rel, dfd, name, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    except OSError as exc:
        if exc.errno in READ_ONLY_ERRNOS:
            return False
        raise
    return True
