"""Spans: the salient parts of a sentence an answer is made of (people, places and other names, dates,
times, numbers and codes, and the object of a first-person or copular statement), found by rules
(engine/parametric/distill_data.py says why rules); distill_data asks its questions about them."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

# Span kinds, most specific first (an earlier kind wins where spans overlap).
KINDS = ("date", "time", "number", "person", "place", "name", "object")


_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december|"
    "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)


_WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"


_DATE = re.compile(
    rf"\b(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}[/.]\d{{1,2}}[/.](?:\d{{4}}|\d{{2}})"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})\.?(?:,?\s+\d{{4}})?"
    rf"|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|(?:{_MONTHS})\s+\d{{4}}"
    rf"|(?:(?:next|last|this)\s+)?(?:{_WEEKDAYS})s?"
    rf"|(?:in|since|until|by)\s+\d{{4}})\b",
    re.IGNORECASE,
)


_TIME = re.compile(r"\b\d{1,2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.)|\b\d{1,2}:\d{2}\b|\b(?:noon|midnight)\b", re.I)


# Numbers, codes and identifiers: 4471, 48,000, tern-8812, LP-40623, 0161 496 0732, and a two-letter prefix
# apart from its digits as flight and route numbers are written ("NQ 604"; not a label: "ID 5521").
_CODE_LABELS = "ID|NO|PO|PW|TEL|REF|ACC|NR|ZIP"
_NUMBER = re.compile(
    rf"(?<![\w-])(?:(?!(?:{_CODE_LABELS})\b)[A-Z]{{2}} \d{{2,4}}\b(?![-./:]\d)"
    r"|[#$€£]?(?:\d{2,}(?: \d{3,})+|(?:[A-Za-z]+-?)?\d(?:[\w./:,-]*\w)?))"
)


_UNIT = re.compile(
    r" (?:euros?|dollars?|pounds?|quid|bucks|yen|francs?|krona|kronor|rupees?|pesos?|usd|eur|gbp|percent|per cent|"
    r"degrees?|kg|kilos?|grams?|g|km|kilometres?|kilometers?|miles?|metres?|meters?|m|cm|mm|litres?|liters?|ml|"
    r"minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|people|guests|pages|floors|steps|calories|mg)\b",
    re.I,
)


_WORD = re.compile(r"[A-Za-z\u00C0-\u024F][\w\u00C0-\u024F'’-]*")


# Words that start sentences or are capitalised without naming anything.
STARTERS = set(
    """a an the my our your his her their its this that these those i i'm i've i'd i'll we we're he she it they
    you there here on in at to for from by with of and but or so if when while after before since until as
    yesterday today tomorrow tonight last next every each some all no not please also then now mr mrs ms dr
    what who where which how why do does did is are was were will can could would should may might must
    """.split()
)


# Discourse markers a note or a chat turn opens with ("Note: ...", "btw, ...", "Remember that ..."): not
# names, and not part of what the memory says (distill_data drops them before asking questions).
MARKERS = set(
    """note notes reminder remember fyi ps nb btw um umm uh oh ok okay well anyway honestly hey hi hello also
    update todo heads apparently basically actually so lol""".split()
)
STARTERS |= MARKERS


@functools.cache
def english_words() -> frozenset[str]:
    """Lower-case English words (memos_cli/data/words.txt): at a sentence's start, where every word is
    capitalised, one of them is taken for a name only when the next word says so."""
    text = resources.files("memos_cli.data").joinpath("words.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.split() if line and not line.startswith("#"))


def is_date(text: str) -> bool:
    """Whether ``text`` is a date and nothing else ("3 June 2031", "next Friday")."""
    return bool(_DATE.fullmatch(text.strip()))


def is_time(text: str) -> bool:
    """Whether ``text`` is a time of day and nothing else ("4pm", "18:30")."""
    return bool(_TIME.fullmatch(text.strip()))


_MONTH_WORDS = set(_MONTHS.split("|")) | set(_WEEKDAYS.split("|"))


_NAME_JOINERS = {"of", "de", "da", "van", "von", "der", "del", "la", "le", "du", "bin", "al"}


_PLACE_PREPS = {"in", "at", "on", "to", "from", "near", "into", "through", "across", "around", "outside", "inside"}


_PLACE_WORDS = re.compile(
    r"\b(?:street|st|road|rd|avenue|lane|island|isle|city|town|village|lake|river|park|bay|mount|mountain|"
    r"valley|hill|harbour|harbor|station|airport|county|bridge|square|beach|forest|coast|canal|trail|path|"
    r"market|gardens|pier|quay|wharf|common|heath|woods|falls|cove|marina|reservoir|estate|pub|inn|hotel|cafe|"
    r"café|restaurant|bar|depot|clinic|hospital|school|college|university|library|museum|theatre|theater|"
    r"cinema|church|chapel|hall|centre|center|stadium|arena|gym|manor|farm|office|campus|zoo|mall|row|crescent|"
    r"terrace|drive|grove|mews|parade)\b",
    re.I,
)


@dataclass(frozen=True)
class Span:
    """A salient part of a sentence: ``text`` is ``sentence[start:end]``."""

    text: str
    start: int
    end: int
    kind: str


# A sentence ends at . ! ? before a capital or a digit, but not after a title, an initial or an
# abbreviation that a number or a name follows ("Dr. Sabine", "flat no. 14", "tel. 0161 ..."); in a note
# written in lower case ("landlord = Fenwick Tarrasco. he manages ...") also before a lower-case word
# after a full stop that ends a word of three letters or more.
_ABBREVIATIONS: tuple[str, ...] = ("Dr", "Mr", "Mrs", "Ms", "St", "Prof", "Jr", "Sr", "Mt", "No", "no", "Nr", "nr")
_ABBREVIATIONS += ("Tel", "tel", "Ext", "ext", "Apt", "apt", "Dept", "dept", "approx", "Approx", "vs", "etc")
_ABBREVIATIONS += ("e\\.g", "i\\.e", "[A-Za-z]")
_NOT_AFTER = "".join(rf"(?<!\b{a}\.)" for a in _ABBREVIATIONS)
_SENTENCE_END = re.compile(_NOT_AFTER + r"(?:(?<=[.!?])\s+(?=[A-Z0-9\"'])|(?<=[A-Za-z]{3}\.)\s+(?=[a-z]+\s+[a-z]))")


def sentences(text: str) -> list[str]:
    """``text`` as sentences (on . ! ? followed by a capital or a digit, or in a note a lower-case
    sentence after a full stop; abbreviations aside, and never inside brackets or quotes: "Ottilie
    (no. 14) used to ..." is one sentence)."""
    text = " ".join(text.split())
    pieces: list[list[str]] = []
    depth = quotes = 0  # of the sentence being built: open brackets, quotation marks
    for part in _SENTENCE_END.split(text):
        if pieces and (depth > 0 or quotes % 2):
            pieces[-1].append(part)
        else:
            pieces.append([part])
            depth = quotes = 0
        depth += part.count("(") - part.count(")")
        quotes += part.count('"')
    parts = (" ".join(p).strip() for p in pieces)
    return [p for p in parts if len(_WORD.findall(p)) >= 2]


_CLAUSE_BREAK = re.compile(
    r"(?:,\s*(?P<conj>so|but|and|because|although|though|while|whereas)|;|(?P<dash>\s+[—–-]{1,2})|(?P<comma>,|\s+and))\s+",
    re.I,
)
_ASIDE = re.compile(r"\s*\([^()]{0,80}\)")  # "(behind the board games)", "(she's 4)": not asked about
_SUBJECT_START = {"i", "we", "he", "she", "they", "it", "you", "the", "my", "our", "his", "her", "their", "this"}
# A comma splice ("... on Kilnsey Row, I'd eat there every week"): a comma before a subject pronoun, or
# before a name and a modal or auxiliary ("..., Ignatius would eat there"), starts a new clause.
_SPLICE_PRONOUNS = {"i", "i'm", "i'd", "i've", "i'll", "we", "we're", "we've", "he", "she", "they", "you", "it", "it's"}
_SPLICE_PRONOUNS |= {"they're", "they've", "he's", "she's"}
_SPLICE_VERBS = {"would", "will", "can", "could", "should", "might", "must", "is", "was", "has", "had", "does"}
# A clause that asks something of the listener ("so please keep them out of anything you cook") says
# nothing to remember; it is left out of the clauses questions are asked about.
_REQUEST = {"please", "pls", "plz", "kindly"}


def clauses(sentence: str) -> list[str]:
    """A compound sentence as its clauses, each a sentence: "Lukas is vegetarian, but Lukas eats eggs." ->
    "Lukas is vegetarian.", "Lukas eats eggs."; a part that does not start with a subject (a name, a
    pronoun, a determiner) stays with the clause before it ("apples, pears and plums"); a comma splice
    ("..., I'd eat there every week", "... and they're fostering", "... — it's next to") is two clauses; a
    request ("..., so please keep them out") and an aside in brackets are dropped."""
    body = _ASIDE.sub("", sentence).rstrip(" .!?")
    out: list[str] = []
    at = 0
    dropped = None  # where a trailing request starts
    for m in _CLAUSE_BREAK.finditer(body):
        tail = body[m.end() :].split()
        if len(tail) < 3 or len(body[at : m.start()].split()) < 2:
            continue
        first = tail[0]
        low = first.lower().replace("’", "'")
        if low in _REQUEST:
            dropped = m.start()
            break
        if m.group("dash"):  # "... 4819# — the keypad is ...", not "open Mon - Fri"
            if low.split("'")[0] not in _SUBJECT_START | _SPLICE_PRONOUNS:
                continue
        elif m.group("comma"):
            name_then_verb = first.isalpha() and first[0].isupper() and tail[1].lower() in _SPLICE_VERBS
            if low not in _SPLICE_PRONOUNS and not (name_then_verb and len(body[at : m.start()].split()) >= 3):
                continue
        elif low.split("'")[0] not in _SUBJECT_START and not (first[0].isupper() and first.isalpha()):
            continue
        out.append(body[at : m.start()])
        at = m.end()
    if not out and dropped is None:
        return [sentence] if body == sentence.rstrip(" .!?") else [capitalised(body.strip()) + "."]
    out.append(body[at:dropped])
    return [capitalised(c.strip()) + "." for c in out]


def capitalised(text: str) -> str:
    """``text`` with its first letter upper-case."""
    return text[:1].upper() + text[1:]


_TITLE = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Sir|Dame|Rev)\.?\s+$")


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
            elif (
                nxt.lower() == "and"
                and j + 1 < len(words)
                and words[j + 1].group()[0].isupper()
                and sentence[: words[i].start()].rstrip().lower().endswith(" the")
            ):
                j += 2  # "the Moth and Lantern pub": one name (but "Ilse and Bram" are two people)
            else:
                break
        if j < len(words) and not sentence[words[j - 1].end() : words[j].start()].strip():
            nxt = words[j].group()
            if nxt.islower() and _PLACE_WORDS.fullmatch(nxt) and not words[j - 1].group().endswith(("'s", "’s")):
                j += 1  # "the Tessel canal", "the Hudson river": the place word is part of the name
        first = i
        # A sentence's first word is capitalised anyway: drop it when it is a common starter word.
        while first < j and words[first].group().lower().strip("'’") in STARTERS:
            first += 1
        if first < j and _common_opening(sentence, words, first, j):
            first += 1
        if first < j and words[j - 1].group().lower() not in _NAME_JOINERS:
            end = words[j - 1].end()
            if sentence[:end].endswith(("'s", "’s")):
                end -= 2  # "Marta Feldrun's cat": the name is Marta Feldrun
            yield words[first].start(), end
        i = j


def _common_opening(sentence: str, words: list[re.Match[str]], first: int, end: int) -> bool:
    """Whether ``words[first]``, capitalised because it opens the sentence (or a clause after ":"), is an
    English word rather than a name: "Vet appointment moved to Friday", "Passport renewal deadline is ...",
    "Met Sabrine Thalcott today" (the name is the two words after it). A listed word is still a name
    before a verb, a copula, a modal, a possessive or "and" ("Mark plays the cello", "Rose is the
    treasurer", "Will's van"), or alone before a lower-case word that could be a verb ("Grace Hopper" is
    two capitalised words and stays whole)."""
    word = words[first].group()
    before = sentence[: words[first].start()].strip()
    if before and not before.endswith((":", ";", "-", ">", "(", '"', "“")):
        return False  # capitalised in the middle of a sentence: a name
    low = word.lower()
    if low not in english_words() or word.endswith(("'s", "’s")) or not word[1:].islower():
        return False
    if end - first >= 3:
        return True  # "Met Sabrine Thalcott", "Visited New York": the name follows the word
    if end - first == 2:
        return False  # "Grace Hopper", "Rose Tyler"
    if end >= len(words):
        return True
    nxt = words[end].group()
    gap = sentence[words[end - 1].end() : words[end].start()]
    if gap.strip():
        return True  # "Note: ...", "Update, ..."
    low_next = nxt.lower()
    if low_next in _AFTER_SUBJECT | {"and", "or", "has", "had", "have"} or low_next.endswith(("'s", "’s")):
        return False
    return not (base_verb(nxt) or nxt.lower().endswith("ed"))


def _name_kind(sentence: str, start: int, end: int) -> str:
    before = sentence[:start].split()
    prev = before[-1].lower() if before else ""
    text = sentence[start:end]
    if _PLACE_WORDS.search(text):
        return "place"
    if prev in {"the", "a", "an"}:
        return "name"
    k = len(before) - 1
    while k > 0 and before[k].lower() in ADVERBS:
        k -= 1
    head = before[k - 1] if k > 0 else ""
    subject_has_prep = any(w.lower() in PREPS for w in before[: k - 1])
    place_head = head.islower() and _PLACE_WORDS.fullmatch(head) and not subject_has_prep
    if before and before[k].lower() in COPULA and place_head:
        return "name"  # "My favourite restaurant is Casa Brindle": what it is called, not who
    if sentence[end : end + 2] in ("'s", "’s") and len(text.split()) <= 3:
        return "person"  # "in Ines's coffee": a possessor, not a place
    if prev in _PLACE_PREPS:
        return "place"
    words = text.split()
    if 2 <= len(words) <= 3 or (len(words) == 1 and (not before or prev in {"by", "with", "and", "is", "was"})):
        return "person"
    return "name"


def _object_span(sentence: str, taken: list[Span]) -> Span | None:
    """The object of a copular or first-person statement, where no other span covers it: "My favourite
    food is ramen" -> ramen; "Priya is allergic to peanuts" -> peanuts; "Ines drinks oat milk in her
    coffee" -> oat milk (the noun phrase stops at a preposition, a conjunction, a comma or another span);
    "Kwame can't stand coriander" -> coriander (past a modal)."""
    body = sentence.rstrip(" .!?")
    words = list(_WORD.finditer(body))
    if len(words) < 3:
        return None
    anchor = _anchor(words)
    if anchor is None:
        return None
    if any(s.kind in ("date", "time", "number") and s.start >= words[anchor].end() for s in taken):
        return None  # "takes place on 9 August", "closed for good on 30 November": the date is the answer
    low = words[anchor].group().lower()
    copular = low in COPULA or low in {"i'm", "i’m", "called", "named"}
    rest = words[anchor + 1 :]
    kind = "object"
    lead: re.Match[str] | None = None
    # "allergic to peanuts", "afraid of spiders": the object follows the preposition.
    if copular and len(rest) >= 3 and rest[1].group().lower() in PREPS:
        rest = rest[2:]
    # "the spare key is under the blue flowerpot": where it is (asked with "where"; the answer keeps "under
    # the", which says where as much as the flowerpot does)
    elif (
        copular
        and len(rest) >= 2
        and rest[0].group().lower() in _LOCATIVE
        and (rest[1].group().lower() in _DETERMINERS or rest[1].group().islower())
    ):
        lead, rest, kind = rest[0], rest[1:], "place"
    while rest and (rest[0].group().lower() in _DETERMINERS or rest[0].group().lower().endswith(("'s", "’s"))):
        if rest[0].group()[0].isupper() and copular:
            return None  # "Tindra is Wendell's sister": asked as "Who is Wendell's sister?", not "... Wendell's what?"
        rest = rest[1:]
    kept: list[re.Match[str]] = []
    for i, word in enumerate(rest):
        w = word.group().lower()
        gap = body[rest[i - 1].end() : word.start()] if i else ""
        if i and (gap.strip() or w in _OBJECT_STOPS):
            break  # a comma, a preposition, a conjunction: the noun phrase has ended
        if any(s.start < word.end() and word.start() < s.end for s in taken):
            if kept and body[kept[-1].end() : word.start()].strip() == "":
                return None  # "is number 217", "rack 29": a label of the span that follows
            break
        kept.append(word)
    while kept and kept[-1].group().lower() in _TRAILING_ADVERBS:
        kept.pop()
    if kept and any(s.start == kept[-1].end() + 1 for s in taken):
        return None  # "is number 217", "rack 29": a label of the span that follows
    if not kept or len(kept) > 5 or all(k.group().lower() in NOT_VERBS | COPULA | ADVERBS for k in kept):
        return None
    if any(k.group().lower() in _PRONOUNS for k in kept):
        return None
    start, end = (lead if lead is not None else kept[0]).start(), kept[-1].end()
    if any(s.start < end and start < s.end for s in taken):
        return None
    return Span(body[start:end], start, end, kind)


def _anchor(words: list[re.Match[str]]) -> int | None:
    """The index of the word an object follows: a copula, "called", or the (first-person or lower-case
    inflected) main verb, past adverbs and modals ("always drinks", "can't stand")."""
    for i, w in enumerate(words[:-1]):
        low = w.group().lower()
        if low in COPULA or low in {"called", "named", "i'm", "i’m"}:
            return i
        if not i and low not in {"i", "we"}:
            continue
        if i and low in MODALS:
            k = i + 1
            while k < len(words) - 1 and words[k].group().lower() in ADVERBS | MODALS:
                k += 1
            nxt = words[k].group()
            return k if nxt[0].islower() and nxt.lower() not in COPULA | NOT_VERBS - {"do"} else None
        k = i + 1 if low in {"i", "we"} else i
        while k < len(words) - 1 and words[k].group().lower() in ADVERBS:
            k += 1
        if low in {"i", "we"}:
            return k
        if base_verb(w.group()) and not w.group()[0].isupper() and words[i + 1].group().lower() not in _AFTER_SUBJECT:
            return i  # (not "flowers" in "my favourite flowers are ranunculus": a noun before its verb)
    return None


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
        unit = _UNIT.match(sentence, m.end())  # "48,000 euros", "24 degrees": the unit is part of the answer
        group = _CODE_GROUP.match(sentence, m.end()) if re.search(r"[A-Za-z]", m.group()) else None
        add(m.start(), unit.end() if unit else group.end() if group else m.end(), "number")
    for start, end in _caps_runs(sentence):
        kind = _name_kind(sentence, start, end)
        title = _TITLE.search(sentence, max(0, start - 10), start)  # a title is at most 6 characters
        add(title.start() if title else start, end, "person" if title else kind)
    for m in _LOWER_TITLE.finditer(sentence):
        name = _name_after_title(sentence, m.end())
        if name:
            add(m.start(), name, "person")
    found = _with_model_numbers(sentence, sorted(found, key=lambda s: s.start))
    found = [_with_head_nouns(sentence, s) for s in found]
    obj = _object_span(sentence, found)
    if obj is not None:
        found.append(obj)
    return sorted(found, key=lambda s: s.start)


# The second group of a code written in two ("KV71 ZRD", "SW1A 1AA"): after a code with a letter in it.
_CODE_GROUP = re.compile(r" (?=[A-Z\d]*[A-Z])(?=[A-Z\d]*\d|[A-Z]{2,4}\b)[A-Z\d]{2,4}\b(?![-./:]\w)")
# A title in a note written in lower case: "dentist is dr. pim achterberg now".
_LOWER_TITLE = re.compile(r"\b(?:dr\.?|mr\.|mrs\.|ms\.|prof\.)\s+(?=[a-z])")  # not "50 ms latency"


def _name_after_title(sentence: str, at: int) -> int:
    """The end of the name (at most two words) a title at ``at`` introduces in a lower-case note, or 0:
    it stops at punctuation and at a function word, an adverb or a known verb ("dr. pim achterberg now")."""
    end = 0
    for word in itertools.islice(_WORD.finditer(sentence, at), 2):
        low = word.group().lower()
        gap = sentence[end or at : word.start()]
        if gap.strip() or low in _NOT_NAMES or (low in english_words() and base_verb(low)):
            break
        end = word.end()
    return end


def _with_model_numbers(sentence: str, spans: list[Span]) -> list[Span]:
    """A name directly followed by a short number or code is one name: "a Harnwick 9 e-bike", "the
    Sollberg Ridge 3P" (the model is in the answer)."""
    out: list[Span] = []
    for span in spans:
        last = out[-1] if out else None
        if (
            last is not None
            and last.kind in ("name", "place", "person")
            and span.kind == "number"
            and sentence[last.end : span.start] == " "
            and len(span.text) <= 3
            and span.text[0].isdigit()
        ):
            out[-1] = Span(sentence[last.start : span.end], last.start, span.end, "name")
            continue
        out.append(span)
    return out


_HEAD_NOUNS = re.compile(
    r"(?: [a-z]+){1,2}(?=[,.;:!?)]|$| (?:" + "|".join(sorted(_PLACE_PREPS | {"for", "with", "by"})) + r")\b)"
)


def _with_head_nouns(sentence: str, span: Span) -> Span:
    """A name that modifies the common nouns after it, in an object, with those nouns: "adopted from the
    Crestwyn animal shelter" -> "Crestwyn animal shelter" (asked "What was Brambleton adopted from?", and
    the answer names what it is). Subjects ("The Pelhurst allotment society is ...") keep the name alone."""
    if span.kind not in ("name", "place"):
        return span
    before = sentence[: span.start].split()
    k = len(before) - 1
    while k >= 0 and len(before) - k <= 3 and (before[k].lower() in OWNERS or before[k].endswith(("'s", "’s"))):
        k -= 1  # "the", "my grandad's", "our"
    if k < 0 or k == len(before) - 1:
        return span
    if before[k].lower() not in PREPS and not base_verb(before[k]):
        return span
    match = _HEAD_NOUNS.match(sentence, span.end)
    if not match:
        return span
    nouns = match.group().split()
    if any(w not in english_words() or w in _NOT_NOUNS or base_verb(w) for w in nouns):
        return span
    end = match.end()
    text = sentence[span.start : end]
    return Span(text, span.start, end, "place" if _PLACE_WORDS.search(text) else "name")


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
    "along",
    "through",
    "across",
    "around",
    "past",
    "over",
    "under",
    "towards",
    "behind",
    "beside",
}

ADVERBS = {"really", "never", "always", "also", "usually", "often", "just", "still", "only", "absolutely"}

ADVERBS |= {"totally", "actually", "honestly", "definitely", "truly", "sometimes", "mostly", "so", "do"}
ADVERBS |= {"rather", "probably", "generally", "normally"}

MODALS = {"can't", "can’t", "cannot", "won't", "won’t", "don't", "don’t", "doesn't", "doesn’t", "didn't", "didn’t"}
MODALS |= {"can", "could", "would", "will", "should", "must", "might", "never", "not", "do", "does", "did"}

_LOCATIVE = {"under", "in", "inside", "behind", "beside", "on", "above", "below", "beneath", "at", "near", "by"}

ARTICLES = {"the", "a", "an"}
POSSESSIVES = {"my", "our", "your", "his", "her", "their"}
OWNERS = ARTICLES | POSSESSIVES  # what may stand before a noun phrase's name: "the", "my grandad's" aside

_DETERMINERS = OWNERS | {"its", "some", "to"}

# Words that follow a subject noun rather than another verb: "flowers are", "Mark can".
_AFTER_SUBJECT = COPULA | MODALS

# Words that end an object's noun phrase ("oat milk in my coffee", "flying, so ...", "green tea to black").
_OBJECT_STOPS = (PREPS - {"of"}) | {"and", "but", "or", "so", "because", "when", "while", "if", "that", "which"}
_OBJECT_STOPS |= {"who", "than", "before", "after", "every", "each", "whenever", "although", "though", "then"}

_TRAILING_ADVERBS = {"everywhere", "anywhere", "always", "often", "daily", "now", "too", "again", "anymore", "lately"}
_TRAILING_ADVERBS |= {"together", "first", "most", "best", "instead", "nowadays", "usually", "sometimes", "here"}
_TRAILING_ADVERBS |= {"lol", "haha", "tbh", "though", "anyway"}
# An object with a pronoun in it ("forgetting it", "love them") names nothing to remember.
_PRONOUNS = {"it", "them", "him", "her", "this", "that", "me", "you", "us", "something", "anything", "everything"}

NOT_VERBS = STARTERS | PREPS | {"always", "each", "every", "its", "his", "hers", "this", "thus", "yes", "news"}

_NOT_NOUNS = NOT_VERBS | COPULA | ADVERBS | _TRAILING_ADVERBS
_NOT_NAMES = _NOT_NOUNS | MODALS  # words a lower-case name after a title never holds


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
    if low.endswith("ed") and len(low) > 3 and not low.endswith("eed"):
        return past_stem(word)
    return None


def past_stem(word: str) -> str:
    """The base form of a regular past tense: stopped -> stop, closed -> close, carried -> carry,
    opened -> open, called -> call, moved -> move."""
    stem = word[:-2]
    low = stem.lower()
    if len(low) > 2 and low[-1] == low[-2] and low[-1] not in "slfz":
        return stem[:-1]
    if low.endswith("i"):
        return stem + "e" if len(low) <= 2 else stem[:-1] + "y"
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", low) or low[-1:] in ("v", "c", "z", "u", "g"):
        return stem + "e"
    return stem
