"""Input formats for ingest: plain text, markdown, JSONL records and chat transcripts.

Each parser turns one source's bytes into ``Draft`` memories (text plus provenance) or raises
``BadInput`` naming the file and line. Parsers never touch a cube and never call a model.

Why one module of ~460 lines: one small parser per input format, sharing the draft type, the record
fields and the time reading; each is a few dozen lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dateutil import parser as date_parser

from memos_cli.cube import records
from memos_cli.errors import BadInput, UsageError

FORMATS = ("text", "markdown", "jsonl", "chat")
MAX_PASSAGE_CHARS = 1200  # size cap of a text/markdown passage; longer paragraphs are split at sentences
MAX_LINE_BYTES = records.MAX_RECORD_BYTES  # a single JSONL line over 1 MiB is refused as hostile or broken input

_HEADING = re.compile(r"^(#{1,6})\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Draft:
    """A memory as parsed from a source, before ids, versions and dedup."""

    text: str
    source: str
    line: int  # first line, 1-based: the place named in error messages and kept as the span
    end_line: int
    source_id: str | None = None
    speaker: str | None = None
    time: str | None = None
    type: str | None = None
    tags: list[str] = field(default_factory=list)
    key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejected:
    where: str  # file:line
    problem: str


# A numeric date with the year last ("4/12/2023", "12.04.23", "04-12-2023"): day/month or month/day?
_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})(?!\d)")
DATE_ORDERS = ("dmy", "mdy")


def parse_time(
    value: Any, where: str, base: str | None = None, date_order: str | None = None, *, ingesting: bool = True
) -> str:
    """ISO-8601 from ISO or common date strings ("1:56 pm on 8 May, 2023", "2023/05/08", epoch seconds).

    A date alone stays a date ("2023-05-08"); a time of day keeps its time and any timezone.
    A relative value ("next tuesday", "yesterday", "8 May" without a year) is read against ``base``
    (an ISO date: ``--time-base`` or the record's ``time_base``) and refused without one: it is never
    silently read against the clock of the machine that ingests it. Likewise a numeric date whose
    numbers leave the order of day and month open ("4/12/2023") needs ``date_order`` ("dmy" or "mdy",
    ingest's ``--date-order``) and is refused without it: it is never silently read month first.
    ``ingesting``: whether the refusals may point at ingest's options (a query's ``--since`` may not).
    """
    if isinstance(value, bool):
        raise BadInput(where, f"time {value!r} is not a date")
    if isinstance(value, (int, float)):
        try:
            # epoch seconds are UTC by definition; filters read naive times as UTC too
            stamp = datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
            return stamp.replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            raise BadInput(where, f"time {value!r} is not a valid epoch timestamp") from None
    if not isinstance(value, str) or not value.strip():
        raise BadInput(where, f"time {value!r} is not a date string")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        has_time = "T" in text or " " in text
    except ValueError:
        from memos_cli.engine.plaintext import temporal

        numeric = _NUMERIC_DATE.match(text)
        if numeric:
            open_order = temporal.day_month_open(int(numeric.group(1)), int(numeric.group(2)))
            if open_order and date_order not in DATE_ORDERS:
                advice = ", or say which order it is (ingest: {date_order} dmy or mdy)" if ingesting else ""
                error = BadInput(
                    where,
                    f"time {value!r} could be day/month or month/day; write it as an ISO date (YYYY-MM-DD)" + advice,
                )
                error.options = ("date_order",) if ingesting else ()
                raise error from None
        elif temporal.is_relative_time(text):
            if base is None:
                error = BadInput(
                    where,
                    f"time {value!r} is relative (it depends on when it is read); give an absolute date, "
                    "or a base date to read it against (ingest: {time_base} DATE or a 'time_base' field)",
                )
                error.options = ("time_base",)
                raise error from None
            resolved = temporal.resolve_time_value(text, base)
            if resolved is None:
                raise BadInput(where, f"cannot read {value!r} as a date or time (base {base})") from None
            return resolved
        try:
            if numeric:  # day first only when told; a date like 13/04/2023 reads either way
                parsed = date_parser.parse(text, dayfirst=date_order == "dmy")
            else:
                parsed = date_parser.parse(text.replace(" on ", " "), fuzzy=True)
        except (ValueError, OverflowError):
            raise BadInput(where, f"cannot read {value!r} as a date or time") from None
        has_time = bool(re.search(r"\d:\d\d|\d\s*(am|pm)\b", text, re.IGNORECASE))
    if not has_time and parsed.hour == parsed.minute == parsed.second == 0:
        return parsed.date().isoformat()
    return parsed.isoformat(timespec="seconds")


def decode(data: bytes, source: str) -> str:
    """UTF-8 text of a source, or BadInput naming the line of the first invalid byte."""
    if b"\x00" in data[:8192] or b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise BadInput(f"{source}:{line}", "binary data (NUL byte); only UTF-8 text can be ingested")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BadInput(f"{source}:{line}", f"invalid UTF-8 (byte 0x{data[exc.start]:02x})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise BadInput(f"{source}:1", "empty input: nothing to ingest")
    return text


def detect_format(name: str, text: str) -> str:
    """The format of a source from its extension, else from its content."""
    lower = name.lower()
    if lower.endswith((".md", ".markdown")):
        return "markdown"
    if lower.endswith(".txt"):
        return "text"
    head = text.lstrip()[:1]
    if lower.endswith((".jsonl", ".ndjson", ".json")) or head in ("{", "["):
        return _sniff_json(text)
    if any(_HEADING.match(line) for line in text.splitlines()[:200]):
        return "markdown"
    return "text"


def _sniff_json(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith("["):
        return "chat"
    try:
        first = json.loads(stripped.splitlines()[0]) if stripped else None
    except (ValueError, RecursionError):
        try:
            whole = json.loads(stripped)
        except (ValueError, RecursionError):
            return "jsonl"  # malformed: the JSONL parser names the bad line
        return "chat" if isinstance(whole, (dict, list)) and _is_chat_container(whole) else "jsonl"
    if isinstance(first, dict) and ("role" in first or "content" in first) and "text" not in first:
        return "chat"
    return "jsonl"


def _is_chat_container(obj: Any) -> bool:
    return isinstance(obj, list) or (isinstance(obj, dict) and isinstance(obj.get("messages"), list))


# ---------------------------------------------------------------------------- text and markdown


def _passages(lines: list[str], first_line: int) -> Iterator[tuple[str, int, int]]:
    """Paragraphs (blank-line separated) of a block, each split to at most MAX_PASSAGE_CHARS."""
    para: list[str] = []
    start = first_line
    for offset, line in enumerate(lines + [""]):
        number = first_line + offset
        if line.strip():
            if not para:
                start = number
            para.append(line.strip())
            continue
        if para:
            yield from _cap(" ".join(para), start, number - 1)
            para = []


def _cap(text: str, start: int, end: int) -> Iterator[tuple[str, int, int]]:
    if len(text) <= MAX_PASSAGE_CHARS:
        yield text, start, end
        return
    chunk = ""
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > MAX_PASSAGE_CHARS:  # one enormous "sentence": cut at a space
            cut = sentence.rfind(" ", 0, MAX_PASSAGE_CHARS)
            cut = cut if cut > 0 else MAX_PASSAGE_CHARS
            if chunk:
                yield chunk, start, end
                chunk = ""
            yield sentence[:cut].strip(), start, end
            sentence = sentence[cut:].strip()
        if chunk and len(chunk) + 1 + len(sentence) > MAX_PASSAGE_CHARS:
            yield chunk, start, end
            chunk = ""
        chunk = f"{chunk} {sentence}".strip()
    if chunk:
        yield chunk, start, end


def parse_text(text: str, source: str) -> list[Draft]:
    lines = text.splitlines()
    # no type of their own: --type applies, else ingest's default for the format ("document")
    return [Draft(text=t, source=source, line=a, end_line=b) for t, a, b in _passages(lines, 1)]


def parse_markdown(text: str, source: str) -> list[Draft]:
    """Passages split at headings and paragraphs; each keeps its heading path in metadata."""
    drafts: list[Draft] = []
    headings: list[str] = []
    block: list[str] = []
    block_start = 1
    in_fence = False

    def flush() -> None:
        for passage, a, b in _passages(block, block_start):
            meta = {"heading": " > ".join(headings)} if headings else {}
            drafts.append(Draft(text=passage, source=source, line=a, end_line=b, metadata=meta))

    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            headings[:] = headings[: level - 1] + [line[level:].strip().strip("#").strip()]
            block, block_start = [], number + 1
        else:
            if not block:
                block_start = number
            block.append(line)
    flush()
    return drafts


# ---------------------------------------------------------------------------- JSONL records and chats

_RECORD_KEYS = {"text", "id", "source_id", "speaker", "time", "time_base", "tags", "type", "key", "metadata"}


def _time_of(obj: dict[str, Any], where: str, base: str | None, order: str | None = None) -> str | None:
    """A record's or message's ``time``; a relative one is read against its own ``time_base`` or ``base``,
    a numeric one in ``order`` (see ``parse_time``)."""
    if obj.get("time_base") is not None:
        base = parse_time(obj["time_base"], f"{where} (time_base)", date_order=order)
    return parse_time(obj["time"], where, base, order) if obj.get("time") is not None else None


def _record_draft(obj: Any, source: str, line: int, base: str | None = None, order: str | None = None) -> Draft:
    where = f"{source}:{line}"
    if not isinstance(obj, dict):
        raise BadInput(where, "a record must be a JSON object")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadInput(where, "record has no 'text' (a non-empty string is required)")
    source_id = obj.get("source_id", obj.get("id"))
    if source_id is not None and not isinstance(source_id, (str, int)):
        raise BadInput(where, "'id'/'source_id' must be a string or number")
    speaker = obj.get("speaker")
    if speaker is not None and not isinstance(speaker, str):
        raise BadInput(where, "'speaker' must be a string")
    tags = obj.get("tags", [])
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadInput(where, "'tags' must be a list of strings")
    kind = obj.get("type")
    if kind is not None and not isinstance(kind, str):
        raise BadInput(where, "'type' must be a string")
    key = obj.get("key")
    if key is not None and not isinstance(key, str):
        raise BadInput(where, "'key' must be a string")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BadInput(where, "'metadata' must be an object")
    extra = {k: v for k, v in obj.items() if k not in _RECORD_KEYS}
    if extra:
        metadata = {**extra, **metadata}
    return Draft(
        text=text.strip(),
        source=source,
        line=line,
        end_line=line,
        source_id=None if source_id is None else str(source_id),
        speaker=speaker,
        time=_time_of(obj, where, base, order),
        type=kind,
        tags=list(tags),
        key=key,
        metadata=metadata,
    )


def _json_problem(exc: ValueError) -> str:
    """json's message without its own trailing "at" ("Unterminated string starting at"): the caller
    names the place, and "at at column 9" read badly."""
    message = str(getattr(exc, "msg", exc))
    return message[: -len(" at")] if message.endswith(" at") else message


def _load_line(line: str, where: str) -> Any:
    """One JSONL line under the record bounds (cube/records.py: size, depth, finite numbers)."""
    if len(line) > MAX_LINE_BYTES:
        raise BadInput(where, f"line is longer than {MAX_LINE_BYTES} bytes")
    try:
        return records.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInput(where, f"malformed JSON ({_json_problem(exc)} at column {exc.colno})") from None
    except ValueError as exc:
        raise BadInput(where, str(exc)) from None


def parse_jsonl(
    text: str, source: str, *, skip_bad: bool = False, time_base: str | None = None, date_order: str | None = None
) -> tuple[list[Draft], list[Rejected]]:
    drafts: list[Draft] = []
    rejected: list[Rejected] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = _load_line(line, f"{source}:{number}")
            drafts.append(_record_draft(obj, source, number, time_base, date_order))
        except BadInput as exc:
            if not skip_bad:
                raise
            rejected.append(Rejected(exc.where, exc.problem))
    return drafts, rejected


def _message_draft(
    obj: Any, source: str, line: int, index: int, base: str | None = None, order: str | None = None
) -> Draft:
    where = f"{source}:{line}"
    if not isinstance(obj, dict):
        raise BadInput(where, "a chat message must be a JSON object")
    text = obj.get("content", obj.get("text"))
    if not isinstance(text, str) or not text.strip():
        raise BadInput(where, "message has no 'content' or 'text'")
    speaker = obj.get("speaker", obj.get("role", obj.get("name")))
    if speaker is not None and not isinstance(speaker, str):
        raise BadInput(where, "'speaker'/'role' must be a string")
    msg_id = obj.get("id", obj.get("source_id"))
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadInput(where, "'tags' must be a list of strings")
    return Draft(
        text=text.strip(),
        source=source,
        line=line,
        end_line=line,
        source_id=str(msg_id) if msg_id is not None else f"msg-{index + 1}",
        speaker=speaker,
        time=_time_of(obj, where, base, order),
        type="dialogue",
        tags=list(tags),
    )


def _line_of_each_item(text: str, count: int) -> list[int]:
    """Best-effort line numbers of the items of a JSON array (the line each object opens on)."""
    lines: list[int] = []
    depth = 0
    in_string = escape = False
    line = 1
    for char in text:
        if char == "\n":
            line += 1
        if in_string:
            if escape:
                escape = False
            elif char == "\\":
                escape = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if char == "{" and depth == 2:
                lines.append(line)
        elif char in "]}":
            depth -= 1
    return (lines + [1] * count)[:count]


def parse_chat(
    text: str, source: str, *, skip_bad: bool = False, time_base: str | None = None, date_order: str | None = None
) -> tuple[list[Draft], list[Rejected]]:
    """A chat transcript: a JSON list of messages, ``{"messages": [...]}``, or JSONL of messages."""
    stripped = text.lstrip()
    items: list[tuple[int, Any]]
    if stripped.startswith(("[", "{")) and not _looks_like_jsonl(stripped):
        try:
            whole = json.loads(text, parse_constant=records.reject_constant)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{source}:{exc.lineno}", f"malformed JSON ({exc.msg})") from None
        except ValueError as exc:
            raise BadInput(f"{source}:1", str(exc)) from None
        except RecursionError:
            raise BadInput(f"{source}:1", "JSON nested too deeply") from None
        messages = whole.get("messages") if isinstance(whole, dict) else whole
        if not isinstance(messages, list):
            raise BadInput(f"{source}:1", "a chat transcript must be a JSON list of messages")
        lines = _line_of_each_item(text, len(messages)) if isinstance(whole, list) else [1] * len(messages)
        items = list(zip(lines, messages, strict=True))
    else:
        items = []
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                items.append((number, _load_line(raw, f"{source}:{number}")))
            except BadInput as exc:
                if not skip_bad:
                    raise
                items.append((number, exc))
    drafts: list[Draft] = []
    rejected: list[Rejected] = []
    for index, (line, obj) in enumerate(items):
        try:
            if isinstance(obj, BadInput):
                raise obj
            drafts.append(_message_draft(obj, source, line, index, time_base, date_order))
        except BadInput as exc:
            if not skip_bad:
                raise
            rejected.append(Rejected(exc.where, exc.problem))
    return drafts, rejected


def _looks_like_jsonl(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith("{"):
        return False
    try:
        json.loads(lines[0])
        return True
    except (ValueError, RecursionError):
        return False


def parse_source(
    data: bytes,
    source: str,
    *,
    fmt: str | None = None,
    skip_bad: bool = False,
    time_base: str | None = None,
    date_order: str | None = None,
) -> tuple[list[Draft], list[Rejected], str]:
    """Parse one source; returns drafts, rejected records (only with ``skip_bad``) and the format used."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(
            f"unknown format {fmt!r} for {{format}} (choose from {', '.join(FORMATS)})", options=("format",)
        )
    text = decode(data, source)
    fmt = fmt or detect_format(source, text)
    if fmt == "text":
        return parse_text(text, source), [], fmt
    if fmt == "markdown":
        return parse_markdown(text, source), [], fmt
    if fmt == "jsonl":
        drafts, rejected = parse_jsonl(text, source, skip_bad=skip_bad, time_base=time_base, date_order=date_order)
    elif fmt == "chat":
        drafts, rejected = parse_chat(text, source, skip_bad=skip_bad, time_base=time_base, date_order=date_order)
    else:
        raise BadInput(source, f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not drafts and not rejected:
        raise BadInput(f"{source}:1", "no records found")
    return drafts, rejected, fmt
