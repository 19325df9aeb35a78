"""``cube.yaml``: the manifest, read with the safe loader and validated; schema upgrades are ordered
functions from one ``format_version`` to the next."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memos_cli.cube import layout
from memos_cli.cube.entries import KvEntry, LoraEntry, ModelRef
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


_NAME = re.compile(layout.NAME_PATTERN)


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, bounded: an alias may only name a scalar (no "billion laughs" of nested lists
    and mappings), at most ``MAX_YAML_ALIASES`` of them, and nesting at most ``MAX_YAML_DEPTH`` deep."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            self._aliases += 1
            target = self.anchors.get(event.anchor)
            if self._aliases > layout.MAX_YAML_ALIASES or (
                target is not None and not isinstance(target, yaml.ScalarNode)
            ):
                raise yaml.YAMLError("aliases to lists or mappings (or too many aliases) are not accepted")
        self._depth += 1
        try:
            if self._depth > layout.MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {layout.MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PlainDumper(yaml.SafeDumper):
    """Never writes anchors or aliases (a shared list is written out twice)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def load_yaml(text: str) -> Any:
    """Parse YAML with the bounded safe loader (yaml.YAMLError on aliases to collections, deep nesting)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def dump_yaml(data: Any) -> str:
    """YAML as memos writes cube.yaml: sorted keys, block style, never an anchor or alias."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=True, allow_unicode=True, default_flow_style=False)


def check_entry_paths(section: str, name: Any, entry: dict[str, Any], cube: Path) -> None:
    """kv and lora entries name only their own place: ``kv/<name>.safetensors`` and ``lora/<name>/<file>``
    (the other keys' types are checked by the typed entries, cube/entries.py)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidCube(cube, f"cube.yaml {section} name {str(name)[:80]!r} is not a plain name")
    expected = f"{layout.KV_DIR}/{name}.safetensors" if section == "kv" else f"{layout.LORA_DIR}/{name}"
    path_key = "file" if section == "kv" else "path"
    if path_key in entry and entry[path_key] != expected:
        raise InvalidCube(
            cube, f"cube.yaml {section}.{name}.{path_key} must be {expected!r}, not {str(entry[path_key])[:80]!r}"
        )
    files = entry.get("files")
    if files is not None:
        if section != "lora" or not isinstance(files, dict):
            raise InvalidCube(cube, f"cube.yaml {section}.{name}.files must be a mapping of file names")
        for rel, digest in files.items():
            if not isinstance(rel, str) or "/" in rel or not _plain(rel) or not isinstance(digest, str):
                raise InvalidCube(cube, f"cube.yaml {section}.{name} file {str(rel)[:80]!r} is not a plain file name")


def _plain(rel: str) -> bool:
    from memos_cli.cube.io import check_rel

    try:
        check_rel(rel)
    except ValueError:
        return False
    return True


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
    model: ModelRef | None = None  # the model kv/ and lora/ were made for
    policy: dict[str, Any] = field(default_factory=dict)  # {owner, readers, writers, frozen}
    lineage: list[dict[str, Any]] = field(default_factory=list)
    kv: dict[str, KvEntry] = field(default_factory=dict)
    lora: dict[str, LoraEntry] = field(default_factory=dict)
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
            "model": self.model.to_dict() if self.model is not None else None,
            "policy": self.policy,
            "lineage": self.lineage,
            "kv": {name: entry.to_dict() for name, entry in self.kv.items()},
            "lora": {name: entry.to_dict() for name, entry in self.lora.items()},
        }
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    def dump(self) -> str:
        data = self.to_dict()
        kept = {}
        for key, block in self.verbatim.items():
            try:
                same = (load_yaml(block) or {}).get(key) == data.get(key)
            except (yaml.YAMLError, AttributeError):
                same = False
            if key in data and same:
                kept[key] = block
        rest = {k: v for k, v in data.items() if k not in kept}
        body = dump_yaml(rest)
        return body + "".join(kept[key] for key in sorted(kept))


def parse_manifest(text: str, cube: Path) -> Manifest:
    """Parse and validate manifest text. Raises InvalidCube / UnsupportedFormat, never anything else."""
    if len(text) > layout.MAX_MANIFEST_BYTES:
        raise InvalidCube(cube, f"cube.yaml is larger than the limit of {layout.MAX_MANIFEST_BYTES:,} bytes")
    try:
        data = load_yaml(text)
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
    for section in ("kv", "lora"):
        for name, entry in data[section].items():
            if not isinstance(entry, dict):
                raise InvalidCube(cube, f"cube.yaml {section}.{str(name)[:80]} must be a mapping")
            check_entry_paths(section, name, entry, cube)
    known = set(Manifest.__dataclass_fields__) - {"extra", "verbatim"}
    kwargs = {k: v for k, v in data.items() if k in known}
    kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
    kwargs["verbatim"] = {k: b for k in VERBATIM_SECTIONS if k in data and (b := top_level_block(text, k)) is not None}
    if kwargs.get("embedder") is not None and not isinstance(kwargs["embedder"], dict):
        raise InvalidCube(cube, "cube.yaml 'embedder' must be a mapping")
    try:
        kwargs["model"] = ModelRef.from_dict(kwargs.get("model"))
        kwargs["kv"] = {name: KvEntry.from_dict(name, entry) for name, entry in data["kv"].items()}
        kwargs["lora"] = {name: LoraEntry.from_dict(name, entry) for name, entry in data["lora"].items()}
    except ValueError as exc:
        raise InvalidCube(cube, f"cube.yaml {exc}") from None
    return Manifest(**kwargs)
