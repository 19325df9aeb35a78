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
