"""File names of a cube bundle: the one place they are spelled (docs/FORMAT.md is the contract)."""

from __future__ import annotations

import re

FORMAT_VERSION = 1

MANIFEST = "cube.yaml"
MEMORIES = "memories.jsonl"
AUDIT = "audit.jsonl"
GITIGNORE = ".gitignore"
KV_DIR = "kv"
LORA_DIR = "lora"

# Derived, local, git-ignored state: rebuilt on demand, never required from git.
DERIVED_DIR = ".memos"
LOCK_FILE = "lock"
JOURNAL_FILE = "journal.json"
INDEX_DIR = "index"
USAGE_FILE = "usage.jsonl"

GITIGNORE_TEXT = "# derived data (vector index, caches, usage counts, lock): rebuilt by memos on demand\n.memos/\n"

# Names of snapshots and adapters become file names: plain names only (no '/', no '..', no control chars).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"

# Size limits on what a cube from a stranger can make memos parse (docs/FORMAT.md, "Limits").
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # cube.yaml
MAX_JOURNAL_BYTES = MAX_MANIFEST_BYTES + 1024 * 1024  # .memos/journal.json (holds a copy of cube.yaml)
MAX_RECORD_BYTES = 4 * 1024 * 1024  # one line of memories.jsonl or audit.jsonl
MAX_SNAPSHOT_HEADER_BYTES = 64 * 1024 * 1024  # the JSON header of a kv/*.safetensors file
MAX_SNAPSHOT_FIELD_CHARS = 8 * 1024 * 1024  # one metadata value of that header (preamble, token ids)
MAX_ADAPTER_CONFIG_BYTES = 1024 * 1024  # lora/<name>/adapter_config.json
MAX_YAML_ALIASES = 100  # alias (*ref) uses in cube.yaml; memos itself writes none
MAX_YAML_DEPTH = 64

# Files of an adapter folder lora/<name>/: what peft loads, and distill's report.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_REPORT = "report.json"

# Matched in full (``$`` would also match before a trailing newline).
_NAME = re.compile(NAME_PATTERN)


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def kv_rel(name: str) -> str:
    """Where KV snapshot ``name`` lives in a bundle (cube.yaml may name no other place)."""
    return f"{KV_DIR}/{name}.safetensors"


def lora_rel(name: str) -> str:
    """Where adapter ``name``'s folder lives in a bundle (cube.yaml may name no other place)."""
    return f"{LORA_DIR}/{name}"


# Top-level files a bundle may hold (.gitattributes: written by `memos git-setup` in the cube folder).
GITATTRIBUTES = ".gitattributes"
TOP_FILES = (MANIFEST, MEMORIES, AUDIT, GITIGNORE, GITATTRIBUTES)


def bundle_entry(rel: str) -> str | None:
    """What the relative path ``rel`` is in a bundle: "file" for a file the format names, "dir" for a
    folder that holds them, None for anything else (``.git``, ``.memos``, stray files). export packs only
    these, and import refuses an archive with anything else."""
    parts = rel.split("/")
    if rel in ("", KV_DIR, LORA_DIR) or (len(parts) == 2 and parts[0] == LORA_DIR and valid_name(parts[1])):
        return "dir"
    if rel in TOP_FILES:
        return "file"
    if len(parts) == 2 and parts[0] == KV_DIR and parts[1].endswith(".safetensors"):
        return "file" if valid_name(parts[1][: -len(".safetensors")]) else None
    if len(parts) == 3 and parts[0] == LORA_DIR and valid_name(parts[1]):
        return "file" if parts[2] in (*ADAPTER_FILES, ADAPTER_REPORT) else None
    return None
