"""export and import: a cube as one .tar.gz, with a checksum of every file verified on import."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout, records
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.errors import BadInput, CubeExists, MemosError, NotAnExport, UsageError, shorten

INDEX_NAME = "memos-export.json"
MAX_MEMBERS = 10_000  # entries of an archive (files and folders); a cube has a handful plus 1-3 per kv/lora
MAX_IMPORT_BYTES = 2 << 30  # what an import may unpack in all, by default (MEMOS_IMPORT_MAX_BYTES)
MAX_HEADER_BYTES = 1 << 20  # the export index, and any one extended tar header (long names, pax)


def _bundle_files(cube: Cube) -> list[Path]:
    """The files of the bundle format (layout.bundle_entry): never .memos/, .git/, links or strays.
    Walked through cube.io, so a folder that is a link (``kv`` -> elsewhere) is never entered."""
    files: list[str] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        for name in cube_io.listdir(cube.path, folder) if folder else sorted(os.listdir(cube.path)):
            rel = f"{folder}/{name}" if folder else name
            entry, what = layout.bundle_entry(rel), cube_io.kind(cube.path, rel)
            if entry == "dir" and what == "dir":
                pending.append(rel)
            elif entry == "file" and what == "file":
                files.append(rel)
    return [Path(rel) for rel in sorted(files)]


def export_cube(cube: Cube, output: Path, *, actor: str | None = None) -> dict[str, Any]:
    """Write every bundle file (not the derived .memos/) and an index of their sha256 to ``output``."""
    cube.check(actor, "read")
    # A consistent state: no transaction runs while we read. A read-only cube cannot be written by
    # anyone, so it needs (and can take) no lock.
    with cube.locked() if cube.writable() else contextlib.nullcontext():
        files = _bundle_files(cube)
        index = {
            "format": "memos-export",
            "version": 1,
            "cube": cube.manifest.id,
            "name": cube.manifest.name,
            "exported": utc_now(),
            "files": {rel.as_posix(): cube_io.sha256(cube.path, rel.as_posix()) for rel in files},
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            raw = json.dumps(index, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(INDEX_NAME)
            info.size, info.mtime = len(raw), 0
            tar.addfile(info, io.BytesIO(raw))
            for rel in files:
                with cube_io.open_read(cube.path, rel.as_posix()) as handle:  # never a link: refused
                    info = tarfile.TarInfo(f"cube/{rel.as_posix()}")
                    info.size, info.mode, info.mtime = os.fstat(handle.fileno()).st_size, 0o644, 0
                    tar.addfile(info, handle)
        tmp.replace(output)
    return {"output": str(output), "files": len(files), "bytes": output.stat().st_size}


def _refuse(archive: Path, member: str | None, problem: str) -> BadInput:
    """The error for a refused archive: the member's name shortened (it may be 5,000 characters)."""
    where = f"{archive}:{shorten(member)}" if member is not None else str(archive)
    return BadInput(where, problem, hint="the archive is not a sound memos export; nothing was written")


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses extended headers (long names, pax records) larger than MAX_HEADER_BYTES *before*
    tarfile reads them into memory: a small archive must not claim gigabytes of header."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(f"an extended header of {self.size:,} bytes (limit {MAX_HEADER_BYTES:,})")
        member: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
        return member


_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


def import_limit() -> int:
    """The most bytes an import may unpack (MEMOS_IMPORT_MAX_BYTES, default 2 GiB)."""
    try:
        return int(os.environ.get("MEMOS_IMPORT_MAX_BYTES", MAX_IMPORT_BYTES))
    except ValueError:
        raise UsageError("MEMOS_IMPORT_MAX_BYTES must be a number of bytes") from None


def _member_rel(archive: Path, member: tarfile.TarInfo) -> str:
    """The bundle path of an archive member, if it is one the bundle format names."""
    name = member.name
    if name.startswith("/") or "\\" in name or ".." in name.split("/") or ":" in name.split("/")[0]:
        raise _refuse(archive, name, "unsafe path in the archive (absolute or outside the cube)")
    if not name.startswith("cube/") and name != "cube":
        raise _refuse(archive, name, "unexpected entry (a memos export holds only cube/...)")
    rel = name[len("cube/") :].rstrip("/") if name != "cube" else ""
    kind = layout.bundle_entry(rel)
    if kind is None or "\\" in name or any(p in ("", ".", "..") for p in rel.split("/") if rel):
        raise _refuse(archive, name, "not a file of the cube format (no .git, .memos or other files)")
    if member.isdir():
        if kind != "dir":
            raise _refuse(archive, name, "a folder where the cube format has a file")
    elif not member.isreg() or member.issparse():
        raise _refuse(archive, name, "links, devices and sparse files are not allowed")
    elif kind != "file":
        raise _refuse(archive, name, "a file where the cube format has a folder")
    return rel


def _read_index(archive: Path, tar: tarfile.TarFile) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != INDEX_NAME or not first.isreg() or first.size > MAX_HEADER_BYTES:
        raise _refuse(archive, None, f"no valid {INDEX_NAME} first in the archive (not a memos export?)")
    try:
        index = records.loads_unbounded(tar.extractfile(first).read())  # type: ignore[union-attr]
        if not isinstance(index, dict):
            raise TypeError("not an object")
        expected = index["files"]
    except (KeyError, AttributeError, ValueError, TypeError):
        raise _refuse(archive, None, f"no valid {INDEX_NAME} (not a memos export?)") from None
    if not isinstance(expected, dict) or len(expected) > MAX_MEMBERS:
        raise _refuse(archive, None, f"{INDEX_NAME} lists no files, or more than {MAX_MEMBERS:,}")
    for rel, digest in expected.items():
        if layout.bundle_entry(rel) != "file" or not isinstance(digest, str) or len(digest) != 64:
            raise _refuse(archive, rel, f"{INDEX_NAME} names a file the cube format does not have")
    return index


def _staging_prefix(output: Path) -> str:
    return f".{output.name}.importing-"


def import_cube(archive: Path, output: Path) -> dict[str, Any]:
    """Unpack ``archive`` into the new directory ``output``, streaming: every member is checked against
    the bundle format and the export index before it is read, its size against the total cap before a
    byte is read, and hashed while it is copied to disk. Nothing appears at ``output`` unless the whole
    archive checks out (and the unpacked cube passes verify); a killed import leaves one hidden staging
    folder beside ``output``, removed by the next import to the same place."""
    if output.exists() and any(output.iterdir()) if output.is_dir() else output.exists():
        raise CubeExists(output)
    limit = import_limit()
    parent = output.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(glob_escape(_staging_prefix(output)) + "*"):  # left by a killed import
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(output), dir=parent))
    try:
        try:
            tar = tarfile.open(archive, "r|gz", tarinfo=_BoundedTarInfo)
        except (OSError, tarfile.TarError) as exc:
            raise NotAnExport(str(archive), str(exc)) from None
        staged = staging / "cube"
        staged.mkdir()
        cube_io.note_write()
        try:
            with tar:
                index = _read_index(archive, tar)
                seen = _unpack(archive, tar, index["files"], staged, limit)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise _refuse(archive, None, f"a damaged or hostile archive ({exc})") from None
        missing = set(index["files"]) - seen
        if missing:
            raise _refuse(
                archive, None, f"files missing from the archive: {', '.join(shorten(m) for m in sorted(missing)[:5])}"
            )
        _check_unpacked(archive, staged)
        if output.exists():
            output.rmdir()
        os.replace(staged, output)
        cube_io.note_write()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"output": str(output), "files": len(seen), "cube": index.get("cube"), "name": index.get("name")}


def _unpack(archive: Path, tar: tarfile.TarFile, expected: dict[str, str], staged: Path, limit: int) -> set[str]:
    seen: set[str] = set()
    total = 0
    count = 0
    while (member := tar.next()) is not None:  # streaming: never TarFile.__iter__ (it restarts at 0)
        count += 1
        if count > MAX_MEMBERS:
            raise _refuse(archive, None, f"more than {MAX_MEMBERS:,} entries")
        if member.size > limit - total:  # before reading a byte of it
            raise _refuse(
                archive,
                member.name,
                f"the archive unpacks to more than {limit:,} bytes (raise MEMOS_IMPORT_MAX_BYTES to allow it)",
            )
        rel = _member_rel(archive, member)
        if member.isdir():
            continue
        if rel in seen:
            raise _refuse(archive, rel, "appears twice in the archive")
        if rel not in expected:
            raise _refuse(archive, rel, "file not listed in the export index")
        total += member.size
        free = shutil.disk_usage(staged).free
        if member.size > free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staged.parent))
        target = staged / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        source = tar.extractfile(member)
        with open(target, "xb") as handle:
            while block := source.read(1 << 20):  # type: ignore[union-attr]
                digest.update(block)
                handle.write(block)
        cube_io.note_write()
        if digest.hexdigest() != expected[rel]:
            raise _refuse(archive, rel, "checksum mismatch: the archive is corrupted or was modified")
        seen.add(rel)
    return seen


def _check_unpacked(archive: Path, staged: Path) -> None:
    """The unpacked cube must be one every command can read: the same checks as ``memos verify``."""
    from memos_cli.engine.integrity import verify

    try:
        Cube.open(staged)
    except MemosError as exc:
        raise _refuse(archive, None, f"its cube.yaml is not valid ({exc.message})") from None
    report = verify(staged)
    if report.problems:
        raise _refuse(archive, None, f"the cube in it does not verify: {report.problems[0]}")


def check_export_target(path: Path, *, force: bool = False) -> None:
    """An export goes to a new .tar.gz in an existing folder; an existing file only with ``force``."""
    if path.suffix not in (".gz", ".tgz"):
        raise UsageError("the export file should end in .tar.gz")
    if not path.parent.is_dir():
        raise UsageError(f"folder {path.parent} does not exist", hint=f"create it first: mkdir -p {path.parent}")
    if path.exists() and (path.is_dir() or not force):
        raise UsageError(
            f"{path} already exists", hint="choose another name, or pass {force} to overwrite it", options=("force",)
        )
