"""File names of a cube bundle: the one place they are spelled (docs/FORMAT.md is the contract)."""

from __future__ import annotations

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
