"""Memory records: one JSON object per line of ``memories.jsonl``, one line per memory *version*.

A memory's current state is its highest version. Records are written as canonical JSON (sorted keys,
no insignificant whitespace, UTF-8) so that the file diffs and merges well in git.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("active", "archived", "superseded", "deleted")
MEMORY_TYPES = ("fact", "event", "preference", "dialogue", "document", "note")

# Keys every record must carry; everything else is optional and defaulted on read.
REQUIRED_KEYS = ("id", "version", "text", "status", "created")


def canonical_json(obj: Any) -> str:
    """The one JSON spelling used in every bundle file: sorted keys, compact, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def normalise_text(text: str) -> str:
    """The text as compared for duplicates: NFC, whitespace collapsed, case kept."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def content_hash(text: str, source: str | None, source_id: str | None) -> str:
    """Identity of a memory's content *from a given source*: the dedup key of ingest."""
    payload = "\x1f".join((normalise_text(text), source or "", source_id or ""))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def memory_id_for(chash: str) -> str:
    """Memory ids derive from the content hash, so the same content ingested on two git branches
    gets the same id and merges into one memory instead of two."""
    return "m-" + chash[:16]


@dataclass
class MemoryRecord:
    id: str
    version: int
    text: str
    status: str = "active"
    type: str = "note"
    time: str | None = None  # ISO-8601: when it happened or holds
    created: str = ""  # ISO-8601 UTC: when this version was written
    source: str | None = None  # file path relative to where ingest ran, "-" for stdin, or a URI
    source_id: str | None = None  # e.g. a dialogue turn id
    span: list[int] | None = None  # [first_line, last_line], 1-based inclusive
    speaker: str | None = None
    tags: list[str] = field(default_factory=list)
    key: str | None = None  # the subject this memory states; a newer memory with the same key supersedes
    supersedes: str | None = None  # id of the memory this one replaced
    hash: str = ""  # content_hash(text, source, source_id) of this version
    op: str = "ingest"  # the operation that wrote this version
    actor: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # When what it says happened: [{start, end, precision, expr}], resolved from its text against `time`
    # at ingest (engine/temporal.py); None when no time expression was found.
    event_time: list[dict[str, str]] | None = None
    # Keys written by a newer memos that this one does not know: kept and written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        # A shallow build: dataclasses.asdict deep-copies every value and took 3 s per 20k records.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["tags"] = list(self.tags)
        data["metadata"] = dict(self.metadata)
        if self.span is not None:
            data["span"] = list(self.span)
        extra = self.extra
        # Leave out empty optional fields: shorter lines, smaller diffs. Readers default them.
        for name in ("time", "source", "source_id", "span", "speaker", "key", "supersedes", "actor", "event_time"):
            if data[name] is None:
                del data[name]
        for name in ("tags", "metadata"):
            if not data[name]:
                del data[name]
        for name, value in extra.items():
            data.setdefault(name, value)
        return data

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryRecord:
        """Build a record from a parsed line; raises ValueError naming what is wrong.

        Unknown keys are kept in ``extra`` and written back unchanged, so a newer writer's fields survive
        a rewrite by this reader (docs/FORMAT.md: readers keep what they do not understand).
        """
        if not isinstance(data, dict):
            raise ValueError("a record must be a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ValueError(f"record lacks {', '.join(missing)}")
        if not isinstance(data["id"], str) or not data["id"]:
            raise ValueError("id must be a non-empty string")
        if not isinstance(data["version"], int) or isinstance(data["version"], bool) or data["version"] < 1:
            raise ValueError("version must be a positive integer")
        if not isinstance(data["text"], str):
            raise ValueError("text must be a string")
        if data["status"] not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        known = set(cls.__dataclass_fields__) - {"extra"}
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        for name in ("tags",):
            if name in kwargs and not isinstance(kwargs[name], list):
                raise ValueError(f"{name} must be a list")
        if "metadata" in kwargs and not isinstance(kwargs["metadata"], dict):
            raise ValueError("metadata must be an object")
        if kwargs.get("event_time") is not None and not isinstance(kwargs["event_time"], list):
            raise ValueError("event_time must be a list")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, line: str) -> MemoryRecord:
        return cls.from_dict(json.loads(line))

    def content_key(self) -> str:
        """This version's content, without when and by whom it was written: two writes of the same
        version of the same memory (say the same file ingested on two branches) compare equal."""
        data = self.to_dict()
        for name in ("created", "actor", "op"):
            data.pop(name, None)
        return canonical_json(data)

    @property
    def ref(self) -> str:
        """``id@version``: names one version exactly (used by KV snapshots and adapters)."""
        return f"{self.id}@{self.version}"


_FIELDS = tuple(f for f in MemoryRecord.__dataclass_fields__ if f != "extra")
