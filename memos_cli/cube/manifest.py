"""``cube.yaml``: the manifest, read with the safe loader and validated; schema upgrades are ordered
functions from one ``format_version`` to the next."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memos_cli.cube.layout import FORMAT_VERSION
from memos_cli.errors import InvalidCube, UnsupportedFormat

# Upgrades: MIGRATIONS[n] turns a version-n manifest dict into a version-(n+1) one.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

# Top-level sections people write by hand, with comments (the ``schedule:`` policy): a re-dump writes
# their text back verbatim, comments included, for as long as their value is unchanged.
VERBATIM_SECTIONS = ("schedule",)


def top_level_block(text: str, key: str) -> str | None:
    """The text of the top-level ``key:`` block of a YAML mapping (through the line before the next
    top-level key), or None. Comment lines inside and after it belong to it."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    block = "".join(lines[start:end])
    return block if block.endswith("\n") else block + "\n"


def safe_relpath(value: str, *, cube: Path, what: str) -> str:
    """A path inside the bundle: relative, no '..', no drive or backslash tricks."""
    if not isinstance(value, str) or not value:
        raise InvalidCube(cube, f"{what} must be a non-empty relative path")
    norm = posixpath.normpath(value)
    if (
        value.startswith(("/", "\\"))
        or "\\" in value
        or ":" in value
        or norm.startswith("..")
        or norm != value.rstrip("/")
        or norm == "."
    ):
        raise InvalidCube(cube, f"{what} {value!r} is not a safe relative path inside the cube")
    return norm


@dataclass
class Manifest:
    id: str
    name: str
    created: str
    format_version: int = FORMAT_VERSION
    description: str = ""
    owner: str | None = None
    updated: str | None = None
    embedder: dict[str, Any] | None = None  # {name, dim, fingerprint}: set by the first ingest
    model: dict[str, Any] | None = None  # {name, fingerprint}: the model kv/ and lora/ were made for
    policy: dict[str, Any] = field(default_factory=dict)  # {owner, readers, writers, frozen}
    lineage: list[dict[str, Any]] = field(default_factory=list)
    kv: dict[str, dict[str, Any]] = field(default_factory=dict)
    lora: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, written back unchanged
    # VERBATIM_SECTIONS as written in the file: {key: text of its block}; not part of to_dict
    verbatim: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": self.format_version,
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "created": self.created,
            "updated": self.updated,
            "embedder": self.embedder,
            "model": self.model,
            "policy": self.policy,
            "lineage": self.lineage,
            "kv": self.kv,
            "lora": self.lora,
        }
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    def dump(self) -> str:
        data = self.to_dict()
        kept = {}
        for key, block in self.verbatim.items():
            try:
                same = (yaml.safe_load(block) or {}).get(key) == data.get(key)
            except yaml.YAMLError:
                same = False
            if key in data and same:
                kept[key] = block
        rest = {k: v for k, v in data.items() if k not in kept}
        body = yaml.safe_dump(rest, sort_keys=True, allow_unicode=True, default_flow_style=False)
        return body + "".join(kept[key] for key in sorted(kept))


def parse_manifest(text: str, cube: Path) -> Manifest:
    """Parse and validate manifest text. Raises InvalidCube / UnsupportedFormat, never anything else."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise InvalidCube(cube, f"cube.yaml is not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise InvalidCube(cube, "cube.yaml must be a mapping")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidCube(cube, f"cube.yaml has no valid format_version (found {version!r})")
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(cube, version, FORMAT_VERSION)
    while version < FORMAT_VERSION:
        data = MIGRATIONS[version](data)
        version = data["format_version"]
    for key in ("id", "name", "created"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise InvalidCube(cube, f"cube.yaml lacks a string '{key}'")
    for key, kind in (("policy", dict), ("lineage", list), ("kv", dict), ("lora", dict)):
        if data.get(key) is None:
            data[key] = kind()
        if not isinstance(data[key], kind):
            raise InvalidCube(cube, f"cube.yaml '{key}' must be a {kind.__name__}")
    for section, path_key in (("kv", "file"), ("lora", "path")):
        for name, entry in data[section].items():
            if not isinstance(entry, dict):
                raise InvalidCube(cube, f"cube.yaml {section}.{name} must be a mapping")
            safe_relpath(str(name), cube=cube, what=f"{section} name")
            if path_key in entry:
                safe_relpath(entry[path_key], cube=cube, what=f"{section}.{name}.{path_key}")
            for rel in entry.get("files") or {}:
                safe_relpath(rel, cube=cube, what=f"{section}.{name} file")
    known = set(Manifest.__dataclass_fields__) - {"extra", "verbatim"}
    kwargs = {k: v for k, v in data.items() if k in known}
    kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
    kwargs["verbatim"] = {k: b for k in VERBATIM_SECTIONS if k in data and (b := top_level_block(text, k)) is not None}
    for key in ("embedder", "model"):
        if kwargs.get(key) is not None and not isinstance(kwargs[key], dict):
            raise InvalidCube(cube, f"cube.yaml '{key}' must be a mapping")
    return Manifest(**kwargs)
