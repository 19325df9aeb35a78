"""Cubes in git repositories: a merge driver for the JSONL files, and the setup that registers it."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from memos_cli.cube import layout
from memos_cli.cube.io import atomic_write_bytes
from memos_cli.cube.manifest import dump_yaml, load_yaml, parse_manifest
from memos_cli.engine.plaintext.merge import merge_manifest
from memos_cli.engine.plaintext.versions import merge_audit, merge_memories
from memos_cli.errors import InvalidCube, MemosError, UsageError

ATTRIBUTES = (
    "# memos: merge cube records by union of versions (memos merge-driver), never by text hunks\n"
    f"{layout.MANIFEST} merge=memos\n"
    f"{layout.MEMORIES} merge=memos\n"
    f"{layout.AUDIT} merge=memos\n"
    "*.safetensors binary\n"
)


def _git(cwd: Path, *args: str) -> str:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise MemosError("git is not installed") from None
    except subprocess.CalledProcessError as exc:
        raise MemosError(f"git {' '.join(args)} failed: {exc.stderr.strip()}") from None
    return result.stdout.strip()


def driver_command() -> str:
    """How git should call the driver: the memos console script, else this Python with -m."""
    script = shutil.which("memos")
    base = shlex.quote(script) if script else f"{shlex.quote(sys.executable)} -m memos_cli"
    return f"{base} merge-driver %O %A %B %P"


def git_setup(directory: Path) -> dict[str, str]:
    """Write ``.gitattributes`` (driver for the JSONL files, safetensors binary) in ``directory`` and
    register the driver in the enclosing repository's config."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    top = Path(_git(directory, "rev-parse", "--show-toplevel"))
    attributes = directory / ".gitattributes"
    existing = attributes.read_text(encoding="utf-8") if attributes.exists() else ""
    missing = [line for line in ATTRIBUTES.splitlines() if line and line not in existing.splitlines()]
    if missing:
        text = existing + ("" if not existing or existing.endswith("\n") else "\n") + "\n".join(missing) + "\n"
        atomic_write_bytes(attributes, text.encode("utf-8"))
    command = driver_command()
    _git(top, "config", "merge.memos.name", "memos cube merge (union of memory versions)")
    _git(top, "config", "merge.memos.driver", command)
    return {"repository": str(top), "attributes": str(attributes), "driver": command}


def merge_manifest_text(base: bytes, ours: bytes, theirs: bytes) -> bytes:
    """Three-way merge of ``cube.yaml`` (engine/plaintext/merge.py: key by key, ``updated`` the later one)."""

    def load(data: bytes) -> dict[str, Any]:
        if len(data) > layout.MAX_MANIFEST_BYTES:
            raise ValueError(f"cube.yaml is larger than {layout.MAX_MANIFEST_BYTES:,} bytes")
        value = load_yaml(data.decode("utf-8")) if data.strip() else {}  # bounded: no alias bombs
        if not isinstance(value, dict):
            raise ValueError("cube.yaml is not a mapping")
        return value

    merged = merge_manifest(load(base), load(ours), load(theirs))
    text = dump_yaml(merged)
    parse_manifest(text, Path(layout.MANIFEST))  # refuse to write what a reader would reject
    return text.encode("utf-8")


def merge_driver(ancestor: Path, ours: Path, theirs: Path, name: str) -> None:
    """Called by git: merge ``theirs`` into ``ours`` (written in place); raises on unreadable input so
    that git reports a conflict instead of a silently wrong file."""
    base = ancestor.read_bytes() if ancestor.exists() else b""
    mine, other = ours.read_bytes(), theirs.read_bytes()
    filename = Path(name).name
    try:
        if filename == layout.AUDIT:
            merged = merge_audit(base, mine, other)
        elif filename == layout.MANIFEST:
            merged = merge_manifest_text(base, mine, other)
        else:
            from memos_cli.config import actor

            merged = merge_memories(base, mine, other, actor=actor())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, yaml.YAMLError, InvalidCube) as exc:
        raise MemosError(
            f"cannot merge {name}: {exc}", hint="resolve the conflict by hand, then verify the cube"
        ) from None
    atomic_write_bytes(ours, merged)
