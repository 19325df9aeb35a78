"""Input parsing: formats, spans, dates, and bad input named by file and line."""

from __future__ import annotations

import json

import pytest

from memos_cli.engine.plaintext.sources import MAX_PASSAGE_CHARS, detect_format, parse_source, parse_time
from memos_cli.errors import BadInput


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2023-05-08", "2023-05-08"),
        ("2023-05-08T10:30:00Z", "2023-05-08T10:30:00+00:00"),
        ("1:56 pm on 8 May, 2023", "2023-05-08T13:56:00"),
        ("8 May, 2023", "2023-05-08"),
        ("May 8 2023", "2023-05-08"),
        ("2023/05/08", "2023-05-08"),
    ],
)
def test_dates_are_normalised_to_iso(raw: str, expected: str) -> None:
    assert parse_time(raw, "x") == expected


def test_unreadable_date_is_bad_input() -> None:
    with pytest.raises(BadInput, match="cannot read"):
        parse_time("not a date at all", "f.jsonl:3")


def test_markdown_splits_at_headings_and_paragraphs_with_spans() -> None:
    text = "# Title\n\nFirst para\ncontinues.\n\nSecond para.\n\n## Sub\n\nUnder sub.\n\n```\n# not a heading\n```\n"
    drafts, _, fmt = parse_source(text.encode(), "notes.md")
    assert fmt == "markdown"
    assert [d.text for d in drafts][:3] == ["First para continues.", "Second para.", "Under sub."]
    assert (drafts[0].line, drafts[0].end_line) == (3, 4)
    assert drafts[2].metadata["heading"] == "Title > Sub"
    assert drafts[3].metadata["heading"] == "Title > Sub"  # a '#' inside a code fence is no heading
    assert all(d.source == "notes.md" for d in drafts)


def test_long_paragraphs_are_capped_at_sentence_boundaries() -> None:
    para = " ".join(f"Sentence number {i} is here." for i in range(300))
    drafts, _, _ = parse_source(para.encode(), "big.txt")
    assert len(drafts) > 1
    assert all(len(d.text) <= MAX_PASSAGE_CHARS for d in drafts)
    assert " ".join(d.text for d in drafts) == para


def test_jsonl_records_keep_their_fields() -> None:
    line = {
        "text": "Ana likes tea",
        "id": "D1:3",
        "speaker": "Ana",
        "time": "8 May 2023",
        "tags": ["x"],
        "type": "preference",
        "key": "ana.drink",
        "metadata": {"k": 1},
        "mood": "calm",
    }
    drafts, _, fmt = parse_source((json.dumps(line) + "\n").encode(), "r.jsonl")
    assert fmt == "jsonl"
    (d,) = drafts
    assert (d.source_id, d.speaker, d.time, d.tags, d.type, d.key) == (
        "D1:3",
        "Ana",
        "2023-05-08",
        ["x"],
        "preference",
        "ana.drink",
    )
    assert d.metadata == {"k": 1, "mood": "calm"}


def test_chat_transcripts_in_both_shapes() -> None:
    as_list = json.dumps([{"role": "user", "content": "hi"}, {"speaker": "Bob", "text": "hey", "time": "2024-01-01"}])
    drafts, _, fmt = parse_source(as_list.encode(), "chat.json")
    assert fmt == "chat" and [d.speaker for d in drafts] == ["user", "Bob"]
    assert drafts[1].time == "2024-01-01" and drafts[0].type == "dialogue"
    as_lines = '{"role": "user", "content": "a"}\n{"role": "assistant", "content": "b"}\n'
    drafts, _, fmt = parse_source(as_lines.encode(), "chat.jsonl")
    assert fmt == "chat" and [d.text for d in drafts] == ["a", "b"]
    assert [d.line for d in drafts] == [1, 2]


@pytest.mark.parametrize(
    ("data", "name", "match"),
    [
        (b'{"text": "ok"}\n{"text": \n', "a.jsonl", r"a.jsonl:2: malformed JSON"),
        (b'{"text": "ok"}\n{"speaker": "x"}\n', "a.jsonl", r"a.jsonl:2: record has no 'text'"),
        (b'{"text": "ok"}\n{"text": "bad \xff byte"}\n', "a.jsonl", r"a.jsonl:2: invalid UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "pic.txt", r"pic.txt:\d+: binary data"),
        (b"", "empty.txt", r"empty.txt:1: empty input"),
        (b"  \n\n", "blank.md", r"blank.md:1: empty input"),
        (b'{"text": "x", "time": "whenever"}\n', "a.jsonl", r"a.jsonl:1: cannot read"),
        (b'[{"role": "user"}]', "c.json", r"c.json:1: message has no"),
        (b'{"text": "x", "tags": "a"}\n{"text": "y", "tags": [1]}\n', "a.jsonl", r"a.jsonl:2: 'tags'"),
    ],
)
def test_bad_input_names_file_and_line(data: bytes, name: str, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        parse_source(data, name)


def test_skip_bad_keeps_the_good_records() -> None:
    data = b'{"text": "one"}\nnot json\n{"nope": 1}\n{"text": "two"}\n'
    drafts, rejected, _ = parse_source(data, "a.jsonl", skip_bad=True)
    assert [d.text for d in drafts] == ["one", "two"]
    assert [r.where for r in rejected] == ["a.jsonl:2", "a.jsonl:3"]


def test_format_detection_from_content() -> None:
    assert detect_format("-", '{"text": "a"}\n') == "jsonl"
    assert detect_format("-", '[{"role": "user", "content": "a"}]') == "chat"
    assert detect_format("-", "# Heading\n\ntext") == "markdown"
    assert detect_format("-", "just some words") == "text"
    assert detect_format("x.md", "plain") == "markdown"
