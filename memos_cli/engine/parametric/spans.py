"""Spans: the salient parts of a sentence an answer is made of (people, places and other names, dates,
times, numbers and codes, and the object of a first-person or copular statement), found by rules
(engine/parametric/distill_data.py says why rules); distill_data asks its questions about them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Span kinds, most specific first (an earlier kind wins where spans overlap).
KINDS = ("date", "time", "number", "person", "place", "name", "object")


_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december|"
    "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)


_WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"


_DATE = re.compile(
    rf"\b(?:\d{{4}}-\d{{2}}-\d{{2}}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})\.?(?:,?\s+\d{{4}})?"
    rf"|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|(?:{_MONTHS})\s+\d{{4}}"
    rf"|(?:(?:next|last|this)\s+)?(?:{_WEEKDAYS})"
    rf"|(?:in|since|until|by)\s+\d{{4}})\b",
    re.IGNORECASE,
)


_TIME = re.compile(r"\b\d{1,2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.)|\b\d{1,2}:\d{2}\b|\b(?:noon|midnight)\b", re.I)


# Numbers, codes and identifiers: 4471, 48,000, tern-8812, LP-40623, 0161 496 0732.
_NUMBER = re.compile(r"(?<![\w-])[#$€£]?(?:\d{2,}(?: \d{3,})+|(?:[A-Za-z]+-?)?\d(?:[\w./:,-]*\w)?)")


_WORD = re.compile(r"[A-Za-z\u00C0-\u024F][\w\u00C0-\u024F'’-]*")


# Words that start sentences or are capitalised without naming anything.
STARTERS = set(
    """a an the my our your his her their its this that these those i i'm i've i'd i'll we we're he she it they
    you there here on in at to for from by with of and but or so if when while after before since until as
    yesterday today tomorrow tonight last next every each some all no not please also then now mr mrs ms dr
    what who where which how why do does did is are was were will can could would should may might must
    """.split()
)


_MONTH_WORDS = set(_MONTHS.split("|")) | set(_WEEKDAYS.split("|"))


_NAME_JOINERS = {"of", "de", "da", "van", "von", "der", "del", "la", "le", "du", "bin", "al"}


_PLACE_PREPS = {"in", "at", "to", "from", "near", "into", "through", "across", "around", "outside", "inside"}


_PLACE_WORDS = re.compile(
    r"\b(?:street|st|road|rd|avenue|lane|island|isle|city|town|village|lake|river|park|bay|mount|mountain|"
    r"valley|hill|harbour|harbor|station|airport|county|bridge|square|beach|forest|coast)\b",
    re.I,
)


@dataclass(frozen=True)
class Span:
    """A salient part of a sentence: ``text`` is ``sentence[start:end]``."""

    text: str
    start: int
    end: int
    kind: str


def sentences(text: str) -> list[str]:
    """``text`` as sentences (on . ! ? followed by a capital or a digit; abbreviations aside)."""
    text = " ".join(text.split())
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])", text)
    return [p.strip() for p in parts if len(_WORD.findall(p)) >= 2]


def _caps_runs(sentence: str) -> Iterable[tuple[int, int]]:
    words = list(_WORD.finditer(sentence))
    i = 0
    while i < len(words):
        word = words[i].group()
        if not word[0].isupper() or word.lower() in _MONTH_WORDS:
            i += 1
            continue
        j = i + 1
        while j < len(words):
            nxt = words[j].group()
            gap = sentence[words[j - 1].end() : words[j].start()]
            if gap.strip():
                break
            if nxt[0].isupper() and nxt.lower() not in _MONTH_WORDS:
                j += 1
            elif nxt.lower() in _NAME_JOINERS and j + 1 < len(words) and words[j + 1].group()[0].isupper():
                j += 2
            else:
                break
        first = i
        # A sentence's first word is capitalised anyway: drop it when it is a common starter word.
        while first < j and words[first].group().lower().strip("'’") in STARTERS:
            first += 1
        if first < j and words[j - 1].group().lower() not in _NAME_JOINERS:
            end = words[j - 1].end()
            if sentence[:end].endswith(("'s", "’s")):
                end -= 2  # "Marta Feldrun's cat": the name is Marta Feldrun
            yield words[first].start(), end
        i = j


def _name_kind(sentence: str, start: int, end: int) -> str:
    before = sentence[:start].split()
    prev = before[-1].lower() if before else ""
    text = sentence[start:end]
    if prev in _PLACE_PREPS or _PLACE_WORDS.search(text):
        return "place"
    if prev in {"the", "a", "an"}:
        return "name"
    words = text.split()
    if 2 <= len(words) <= 3 or (len(words) == 1 and (not before or prev in {"by", "with", "and", "is", "was"})):
        return "person"
    return "name"


def _object_span(sentence: str, taken: list[Span]) -> Span | None:
    """The object of a copular or first-person statement, when no other span covers the sentence's end:
    "My favourite food is ramen" -> ramen; "I'm allergic to peanuts" -> peanuts."""
    body = sentence.rstrip(" .!?")
    words = list(_WORD.finditer(body))
    if len(words) < 3:
        return None
    anchor = None
    for i, w in enumerate(words[:-1]):
        low = w.group().lower()
        if low in COPULA or low in {"called", "named", "i'm", "i’m"} or low.endswith(("'s", "’s")) and i == 0:
            if low.endswith(("'s", "’s")) and low not in {"'s", "’s"}:
                continue
            anchor = i
            break
        k = i + 1 if low in {"i", "we"} else i
        while k < len(words) - 1 and words[k].group().lower() in ADVERBS:
            k += 1
        if i and (low in {"i", "we"} or (base_verb(w.group()) and not w.group()[0].isupper())):
            anchor = k if low in {"i", "we"} else i
            break
    if anchor is None:
        return None
    copular = words[anchor].group().lower() in COPULA or words[anchor].group().lower() in {"i'm", "i’m"}
    rest = words[anchor + 1 :]
    # "allergic to peanuts", "afraid of spiders": the object follows the preposition.
    if copular and len(rest) >= 3 and rest[1].group().lower() in PREPS:
        rest = rest[2:]
    while rest and rest[0].group().lower() in {"the", "a", "an", "my", "our", "to"}:
        rest = rest[1:]
    if not rest or len(rest) > 6:
        return None
    start, end = rest[0].start(), rest[-1].end()
    if any(s.start < end and start < s.end for s in taken):
        return None
    return Span(body[start:end], start, end, "object")


def find_spans(sentence: str) -> list[Span]:
    """The salient spans of one sentence, without overlaps, in order."""
    found: list[Span] = []

    def add(start: int, end: int, kind: str) -> None:
        text = sentence[start:end].strip(" ,.;:")
        if not text:
            return
        start = sentence.index(text, start)
        end = start + len(text)
        if any(s.start < end and start < s.end for s in found):
            return
        found.append(Span(text, start, end, kind))

    for m in _DATE.finditer(sentence):
        lead = re.match(r"(?:in|since|until|by)\s+", m.group(), re.I)
        add(m.start() + (lead.end() if lead else 0), m.end(), "date")
    for m in _TIME.finditer(sentence):
        add(m.start(), m.end(), "time")
    for m in _NUMBER.finditer(sentence):
        add(m.start(), m.end(), "number")
    for start, end in _caps_runs(sentence):
        add(start, end, _name_kind(sentence, start, end))
    obj = _object_span(sentence, found)
    if obj is not None:
        found.append(obj)
    return sorted(found, key=lambda s: s.start)


COPULA = {"is", "are", "was", "were", "am", "'s", "’s"}

PREPS = {
    "on",
    "in",
    "at",
    "to",
    "for",
    "by",
    "from",
    "since",
    "until",
    "of",
    "with",
    "about",
    "into",
    "near",
    "as",
}

ADVERBS = {"really", "never", "always", "also", "usually", "often", "just", "still", "only", "absolutely"}

ADVERBS |= {"totally", "actually", "honestly", "definitely", "truly", "sometimes", "mostly", "so", "do"}

NOT_VERBS = STARTERS | PREPS | {"always", "each", "every", "its", "his", "hers", "this", "thus", "yes", "news"}


def base_verb(word: str) -> str | None:
    low = word.lower()
    if low in NOT_VERBS or not low.isalpha() or len(low) < 3:
        return None
    if low.endswith("ies"):
        return word[:-3] + "y"
    if low.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        return word[:-2]
    if low.endswith("s") and not low.endswith(("ss", "us", "is")):
        return word[:-1]
    if low.endswith("ed"):
        stem = word[:-2]
        if len(stem) > 2 and stem[-1] == stem[-2]:
            return stem[:-1]
        return stem + "e" if stem[-1:] in ("v", "c", "z", "u", "g") else stem
    return None
