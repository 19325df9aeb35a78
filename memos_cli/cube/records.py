"""Memory records: one JSON object per line of ``memories.jsonl``, one line per memory *version*.

A memory's current state is its highest version. Records are written as canonical JSON (sorted keys,
no insignificant whitespace, UTF-8) so that the file diffs and merges well in git.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("active", "archived", "superseded", "deleted")
MEMORY_TYPES = ("fact", "event", "preference", "dialogue", "document", "note")

# Keys every record must carry; everything else is optional and defaulted on read.
REQUIRED_KEYS = ("id", "version", "text", "status", "created")

# Bounds of one record (docs/FORMAT.md, "memories.jsonl"): every reader and writer applies them, so a
# record that passes verify is one that list, query and stats can read, in bounded time and memory.
MAX_RECORD_BYTES = 1 << 20  # one line of memories.jsonl (and one JSONL input line): 1 MiB
MAX_DEPTH = 32  # nesting of arrays and objects, the record itself counting as 1
# Optional fields of the known schema and the types they may hold (None means the field is absent).
_STR_OR_NONE = ("time", "source", "source_id", "speaker", "key", "supersedes", "actor")
_STR = ("type", "created", "hash", "op")
_KINDS = {
    **dict.fromkeys(_STR, "str"),
    **dict.fromkeys(_STR_OR_NONE, "str?"),
    "tags": "tags",
    "span": "span",
    "metadata": "metadata",
    "event_time": "event_time",
    **dict.fromkeys(("id", "version", "text", "status"), "checked"),  # checked first, above
}


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (only finite numbers are)")


_DECODER = json.JSONDecoder(parse_constant=reject_constant)  # one decoder: json.loads builds one a call


def loads(line: str | bytes) -> Any:
    """Parse one JSON line under the record bounds: size, depth, finite numbers only.

    Raises ValueError naming the problem (never RecursionError, never a value with NaN or Infinity)."""
    value = _parse(line)
    check_value(value)
    return value


def loads_unbounded(line: str | bytes) -> Any:
    """``loads`` without the size bound (audit lines list every id an operation touched)."""
    value = _parse(line, bounded=False)
    check_value(value)
    return value


def _parse(line: str | bytes, *, bounded: bool = True) -> Any:
    if bounded and len(line) > MAX_RECORD_BYTES:
        raise ValueError(f"line is longer than {MAX_RECORD_BYTES} bytes")
    try:
        return _DECODER.decode(line.decode("utf-8") if isinstance(line, bytes) else line)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None


def check_value(value: Any, depth: int = 1) -> None:
    """Raise ValueError if ``value`` (found at ``depth``) nests deeper than MAX_DEPTH or holds a
    non-finite number. Level by level, without recursion: a 100,000-deep value is a clean error."""
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError("holds a number that is not finite (NaN or Infinity)")
        return
    level = [value] if type(value) in (dict, list) else []
    while level:
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        below = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                kind = type(child)
                if kind is float:
                    if not math.isfinite(child):
                        raise ValueError("holds a number that is not finite (NaN or Infinity)")
                elif kind is dict or kind is list:
                    below.append(child)
        level = below
        depth += 1


def check_fields(data: dict[str, Any]) -> None:
    """Raise ValueError unless ``data`` is a record every reader can use: required keys, the type of
    every known field, finite numbers and bounded nesting (sizes are checked on the serialised line)."""
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
    # One pass over the keys: known fields by their type, free values (metadata, unknown keys) walked.
    for name, value in data.items():
        kind = _KINDS.get(name)
        if kind is None:  # an unknown key, kept as it is: bounded like metadata
            if type(value) in (dict, list, float):
                check_value(value, 2)
        elif kind == "str":
            if type(value) is not str:
                raise ValueError(f"{name} must be a string")
        elif kind == "str?":
            if value is not None and type(value) is not str:
                raise ValueError(f"{name} must be a string or absent")
        elif kind == "tags":
            if type(value) is not list or not all(type(t) is str for t in value):
                raise ValueError("tags must be a list of strings")
        elif kind == "span":
            if value is not None and (type(value) is not list or not all(type(n) is int for n in value)):
                raise ValueError("span must be a list of integers")
        elif (
            kind == "event_time"
        ):  # periods the text dates (engine/plaintext/temporal.py); a bad item is skipped by queries
            if value is not None and type(value) is not list:
                raise ValueError("event_time must be a list")
            if value:
                check_value(value, 2)
        elif kind == "metadata":
            if type(value) is not dict:
                raise ValueError("metadata must be an object")
            if value:
                check_value(value, 2)


def validate(record: MemoryRecord) -> str:
    """Check a record about to be written; returns its canonical line (without newline).

    The same rules as reading it back (``MemoryRecord.from_json``): ingest, update, merge and import
    refuse what a reader would refuse, so nothing written can break a later command."""
    data = record.to_dict()
    check_fields(data)
    line = canonical_json(data)
    if len(line.encode("utf-8")) > MAX_RECORD_BYTES:
        raise ValueError(f"the record is larger than {MAX_RECORD_BYTES} bytes")
    return line


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
    # at ingest (engine/plaintext/temporal.py); None when no time expression was found.
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
        check_fields(data)
        known = set(cls.__dataclass_fields__) - {"extra"}
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, line: str | bytes) -> MemoryRecord:
        """Parse one line of memories.jsonl under the record bounds (``loads``); raises ValueError."""
        return cls.from_dict(_parse(line))  # from_dict checks depth and numbers where they can occur

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
