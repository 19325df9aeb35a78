"""export and import: a cube as one .tar.gz, with a checksum of every file verified on import."""

from __future__ import annotations

import io
import json
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.io import sha256_bytes, sha256_file
from memos_cli.errors import BadInput, CubeExists, UsageError

INDEX_NAME = "memos-export.json"
MAX_MEMBERS = 100_000


def _bundle_files(cube: Cube) -> list[Path]:
    files = []
    for path in sorted(cube.path.rglob("*")):
        rel = path.relative_to(cube.path)
        if layout.DERIVED_DIR in rel.parts or not path.is_file() or path.is_symlink():
            continue
        files.append(rel)
    return files


def export_cube(cube: Cube, output: Path, *, actor: str | None = None) -> dict[str, Any]:
    """Write every bundle file (not the derived .memos/) and an index of their sha256 to ``output``."""
    cube.check(actor, "read")
    with cube.locked():  # a consistent state: no transaction runs while we read
        files = _bundle_files(cube)
        index = {
            "format": "memos-export",
            "version": 1,
            "cube": cube.manifest.id,
            "name": cube.manifest.name,
            "exported": utc_now(),
            "files": {rel.as_posix(): sha256_file(cube.path / rel) for rel in files},
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            raw = json.dumps(index, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(INDEX_NAME)
            info.size, info.mtime = len(raw), 0
            tar.addfile(info, io.BytesIO(raw))
            for rel in files:
                tar.add(cube.path / rel, arcname=f"cube/{rel.as_posix()}", recursive=False)
        tmp.replace(output)
    return {"output": str(output), "files": len(files), "bytes": output.stat().st_size}


def _safe_member(name: str) -> str:
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm.startswith("..") or "\\" in name or ":" in name.split("/")[0]:
        raise BadInput(name, "unsafe path in the archive (absolute or outside the cube)")
    return norm


def import_cube(archive: Path, output: Path) -> dict[str, Any]:
    """Unpack ``archive`` into the new directory ``output``, verifying every file's sha256 first.
    Nothing is written at ``output`` unless the whole archive checks out."""
    if output.exists() and any(output.iterdir()) if output.is_dir() else output.exists():
        raise CubeExists(output)
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise BadInput(
            str(archive), f"not a memos export ({exc})", hint="make one with: memos export CUBE -o FILE"
        ) from None
    with tar, tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as tmp:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise BadInput(str(archive), "too many files")
        try:
            index = json.loads(tar.extractfile(INDEX_NAME).read())  # type: ignore[union-attr]
            expected: dict[str, str] = index["files"]
        except (KeyError, AttributeError, ValueError, TypeError):
            raise BadInput(str(archive), f"no valid {INDEX_NAME} (not a memos export?)") from None
        staged = Path(tmp) / "cube"
        seen: set[str] = set()
        for member in members:
            if member.name == INDEX_NAME:
                continue
            name = _safe_member(member.name)
            if not name.startswith("cube/"):
                raise BadInput(f"{archive}:{member.name}", "unexpected entry")
            if member.isdir():
                continue
            if not member.isfile():
                raise BadInput(f"{archive}:{member.name}", "links and special files are not allowed")
            rel = name[len("cube/") :]
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if rel not in expected:
                raise BadInput(f"{archive}:{rel}", "file not listed in the export index")
            if sha256_bytes(data) != expected[rel]:
                raise BadInput(f"{archive}:{rel}", "checksum mismatch: the archive is corrupted or was modified")
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            seen.add(rel)
        missing = set(expected) - seen
        if missing:
            raise BadInput(str(archive), f"files missing from the archive: {', '.join(sorted(missing)[:5])}")
        Cube.open(staged)  # the manifest must be valid before the cube appears
        if output.exists():
            output.rmdir()
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(output))
    return {"output": str(output), "files": len(seen), "cube": index.get("cube"), "name": index.get("name")}


def check_export_target(path: Path, *, force: bool = False) -> None:
    """An export goes to a new .tar.gz in an existing folder; an existing file only with ``force``."""
    if path.suffix not in (".gz", ".tgz"):
        raise UsageError("the export file should end in .tar.gz")
    if not path.parent.is_dir():
        raise UsageError(f"folder {path.parent} does not exist", hint=f"create it first: mkdir -p {path.parent}")
    if path.exists() and (path.is_dir() or not force):
        raise UsageError(f"{path} already exists", hint="choose another name, or pass --force to overwrite it")
