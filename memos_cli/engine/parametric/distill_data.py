"""Training data and evaluation questions for parametric memory, built from plain memories, offline.

Memories are what users write: statements ("The access code for the boathouse is 4471."), notes and
dialogue turns ("I'm allergic to peanuts", said by Priya). Nothing here calls a model. For each memory:

- **spans**: the salient parts an answer is made of (people, places and other names, dates, times,
  numbers and codes, and the object of a first-person or copular statement), found by rules;
- **statements** (plain text, loss on every token): the memory as written and, for a dialogue turn, the
  speaker's words in the third person ("Priya is allergic to peanuts.") and quoted ("Priya said: ...");
- **training pairs** (question -> answer, rendered through the chat template): for each span, a
  wh-question in normal word order ("What is the access code for the boathouse?"), an echo question
  ("The access code for the boathouse is what?"), a cloze ("Fill in the blank: ... ___."), and questions
  about the subject and each name answered with the whole statement; who/when questions from the speaker
  and the time; the memory's own ``metadata.question`` when it has one;
- **held-out probes**, one template family per span kind that training never uses (an embedded question:
  "I can't recall who is the lighthouse keeper on Quillmoor Island. Can you tell me?"), plus the
  memory's own question: the report's recall is measured on these, so it says whether the memory was
  learned, not whether a training sentence was.

Why rules and not an NLP library: the one that fits (spaCy) ships its English models outside PyPI (as
release downloads; on PyPI there are only unofficial re-uploads), and memos never downloads at run time.
Memories are short sentences, where capitalised runs, digits, month names and a few function words find
the spans a question can ask about; the rules are small and tested (tests/test_distill_data.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from memos_cli.cube.records import MemoryRecord

# Span kinds, most specific first (an earlier kind wins where spans overlap).
KINDS = ("date", "time", "number", "person", "place", "name", "object")
WH = {
    "date": "when",
    "time": "what time",
    "number": "what",
    "person": "who",
    "place": "where",
    "name": "what",
    "object": "what",
}
ECHO = {"date": "what date", "time": "what time", "place": "which place", "person": "who"}
# The held-out family: an embedded question per kind. Training never renders a question this way.
HELDOUT = {
    "person": "I can't recall {clause}. Can you tell me?",
    "place": "Remind me {clause}, please.",
    "date": "Any idea {clause}?",
    "time": "Any idea {clause}?",
    "number": "I need to know {clause}. What is it?",
    "name": "I forget {clause}. What was it?",
    "object": "I forget {clause}. What was it?",
}
TRAINING_FORMS = ("wh", "echo", "cloze", "about", "speaker", "time", "metadata")

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
_STARTERS = set(
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
_AUX = {
    "is": "is",
    "are": "are",
    "was": "was",
    "were": "were",
    "will": "will",
    "can": "can",
    "could": "could",
    "would": "would",
    "should": "should",
    "must": "must",
    "has": "has",
    "have": "have",
    "had": "had",
    "does": "does",
    "did": "did",
    "do": "do",
}
_COPULA = {"is", "are", "was", "were", "am", "'s", "’s"}
_PREPS = {
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
_ADVERBS = {"really", "never", "always", "also", "usually", "often", "just", "still", "only", "absolutely"}
_ADVERBS |= {"totally", "actually", "honestly", "definitely", "truly", "sometimes", "mostly", "so", "do"}
_NOT_VERBS = _STARTERS | _PREPS | {"always", "each", "every", "its", "his", "hers", "this", "thus", "yes", "news"}
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|i’m|i've|i'd|i'll|my|me|mine|myself)\b", re.I)
_IRREGULAR_3S = {"am": "is", "have": "has", "do": "does", "go": "goes", "'m": "is", "are": "is", "were": "was"}
_UNCHANGED = {"was", "can", "will", "would", "could", "should", "might", "must", "may", "shall", "had", "did"}


@dataclass(frozen=True)
class Span:
    """A salient part of a sentence: ``text`` is ``sentence[start:end]``."""

    text: str
    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class Pair:
    """A question and the answer that counts as recalling it; ``form`` names the template family."""

    question: str
    answer: str
    form: str
    kind: str = "statement"


@dataclass
class MemoryData:
    """Everything built from one memory."""

    ref: str
    statements: list[str]
    pairs: list[Pair]  # training pairs
    checks: list[Pair]  # short-answer training pairs: the model's own recall of them stops training
    heldout: list[Pair]  # never trained on: the report's recall


# ---------------------------------------------------------------------------------------------------------
# Spans


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
        while first < j and words[first].group().lower().strip("'’") in _STARTERS:
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
        if low in _COPULA or low in {"called", "named", "i'm", "i’m"} or low.endswith(("'s", "’s")) and i == 0:
            if low.endswith(("'s", "’s")) and low not in {"'s", "’s"}:
                continue
            anchor = i
            break
        k = i + 1 if low in {"i", "we"} else i
        while k < len(words) - 1 and words[k].group().lower() in _ADVERBS:
            k += 1
        if i and (low in {"i", "we"} or (_base_verb(w.group()) and not w.group()[0].isupper())):
            anchor = k if low in {"i", "we"} else i
            break
    if anchor is None:
        return None
    copular = words[anchor].group().lower() in _COPULA or words[anchor].group().lower() in {"i'm", "i’m"}
    rest = words[anchor + 1 :]
    # "allergic to peanuts", "afraid of spiders": the object follows the preposition.
    if copular and len(rest) >= 3 and rest[1].group().lower() in _PREPS:
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


# ---------------------------------------------------------------------------------------------------------
# Person: first -> third person for dialogue turns


def _third_person_verb(verb: str) -> str:
    low = verb.lower()
    if low in _IRREGULAR_3S:
        return _IRREGULAR_3S[low]
    if low in _UNCHANGED or low.endswith(("ed", "n't")) or low in _NOT_VERBS:
        return verb
    if low.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(low) > 1 and low.endswith("y") and low[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def third_person(text: str, name: str) -> str:
    """``text`` said by ``name``, with its first person turned into ``name``: "I'm allergic to my cat's
    fur" -> "Priya is allergic to Priya's cat's fur". Sentences without a first person are kept."""
    contractions = {
        r"\bI(?:'|’)m\b": f"{name} is",
        r"\bI(?:'|’)ve\b": f"{name} has",
        r"\bI(?:'|’)ll\b": f"{name} will",
        r"\bI(?:'|’)d\b": f"{name} would",
        r"\bI am\b": f"{name} is",
        r"\bI don(?:'|’)t\b": f"{name} doesn't",
        r"\bI do not\b": f"{name} does not",
        r"\bI was\b": f"{name} was",
        r"\bmy\b": f"{name}'s",
        r"\bMy\b": f"{name}'s",
        r"\bmine\b": f"{name}'s",
        r"\bmyself\b": name,
        r"\bme\b": name,
    }
    out = text
    for pattern, repl in contractions.items():
        out = re.sub(pattern, repl, out)

    def verb(match: re.Match[str]) -> str:
        adverbs, word = match.group(1) or "", match.group(2)
        return f"{name} {adverbs}{_third_person_verb(word)}"

    adverb_group = "|".join(sorted(_ADVERBS - {"do", "so"}))
    out = re.sub(rf"\bI ((?:(?:{adverb_group}) )*)([A-Za-z]+)\b", verb, out)
    return out


def _speaker_name(record: MemoryRecord) -> str | None:
    speaker = (record.speaker or "").strip()
    if not speaker:
        return None
    if speaker.lower() in {"user", "me"}:
        return "the user"
    if speaker.lower() == "assistant":
        return "the assistant"
    return speaker


# ---------------------------------------------------------------------------------------------------------
# Questions


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _lower_start(words: list[str]) -> list[str]:
    if words and words[0] in {"The", "A", "An", "My", "Our", "This", "That", "Its", "His", "Her", "Their"}:
        return [words[0].lower(), *words[1:]]
    return words


def _base_verb(word: str) -> str | None:
    low = word.lower()
    if low in _NOT_VERBS or not low.isalpha() or len(low) < 3:
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


def _clean(text: str) -> str:
    return " ".join(text.replace(" ,", ",").split()).strip(" ,;:")


def _possessive(sentence: str, span: Span) -> bool:
    return sentence[span.end : span.end + 2] in ("'s", "’s")


def _whose(sentence: str, span: Span) -> str:
    """ "Marta Feldrun's cat is called Biscotti Prime" about Marta Feldrun: "whose cat is called ..."."""
    return _clean(f"{sentence[: span.start]} whose {sentence[span.end + 2 :].rstrip(' .!?')}")


def wh_question(sentence: str, span: Span) -> str | None:
    """A wh-question in normal word order that ``span`` answers, or None where the rules cannot form one:
    "The Zelvora project launches on 14 March 2031." -> "When does the Zelvora project launch?"."""
    wh = WH[span.kind]
    before = sentence[: span.start].split()
    after = _clean(sentence[span.end :].rstrip(" .!?"))
    if _possessive(sentence, span) or not before:
        return None  # the span is the subject: the echo question already reads naturally
    if span.kind in ("date", "time", "place") and before[-1].lower() in _PREPS:
        before = before[:-1]
    for i, word in enumerate(before):
        low = word.lower()
        if i and low in _AUX:
            subject = _lower_start(before[:i])
            rest = before[i + 1 :]
            return _cap(_clean(" ".join([wh, low, *subject, *rest, after]))) + "?"
    for i, word in enumerate(before[1:], start=1):
        base = _base_verb(word)
        if base and not word[0].isupper():
            aux = (
                "did"
                if word.lower().endswith("ed")
                else ("do" if before[i - 1].lower() in {"i", "we", "they", "you"} else "does")
            )
            subject = _lower_start(before[:i])
            return _cap(_clean(" ".join([wh, aux, *subject, base, *before[i + 1 :], after]))) + "?"
    return None


def echo_question(sentence: str, span: Span) -> str:
    """The sentence with the span replaced by a question word: "The code for the shed is what?"."""
    if _possessive(sentence, span):
        return _cap(_whose(sentence, span)) + "?"
    before = sentence[: span.start].strip()
    after = sentence[span.end :].rstrip(" .!?").strip()
    if span.kind in ("date", "time", "place") and before.split() and before.split()[-1].lower() in _PREPS:
        wh = ECHO.get(span.kind, WH[span.kind])
    else:
        wh = WH[span.kind] if span.kind not in ("place",) else "where"
    return _cap(_clean(f"{before} {wh} {after}")) + "?"


def cloze(sentence: str, span: Span) -> str:
    return f"Fill in the blank: {sentence[: span.start]}___{sentence[span.end :]}"


def embedded_clause(sentence: str, span: Span) -> str:
    """The question as an embedded clause (declarative order): "who is the lighthouse keeper", "what the
    access code for the boathouse is", "when the Zelvora project launches"."""
    if _possessive(sentence, span):
        return _whose(sentence, span)
    wh = WH[span.kind]
    before = sentence[: span.start].split()
    after = _clean(sentence[span.end :].rstrip(" .!?"))
    if span.kind in ("date", "time", "place") and before and before[-1].lower() in _PREPS:
        before = before[:-1]
    return _clean(" ".join([wh, *_lower_start(before), after]))


def heldout_question(sentence: str, span: Span) -> str:
    return HELDOUT[span.kind].format(clause=embedded_clause(sentence, span))


def _subject(sentence: str, spans: list[Span]) -> str | None:
    """What the sentence is about: the words before its first verb-like word, or its first span."""
    words = sentence.rstrip(" .!?").split()
    for i, word in enumerate(words[1:], start=1):
        if word.lower() in _AUX or word.lower() in _COPULA or (_base_verb(word) and not word[0].isupper()):
            head = words[:i]
            while len(head) > 1 and head[-1].lower() in _ADVERBS:
                head = head[:-1]
            subject = " ".join(_lower_start(head))
            return subject if len(subject) > 2 else None
    return spans[0].text if spans else None


def _date_words(iso: str) -> str:
    months = "January February March April May June July August September October November December".split()
    try:
        year, month, day = int(iso[:4]), int(iso[5:7]), int(iso[8:10])
        return f"{day} {months[month - 1]} {year}"
    except (ValueError, IndexError):
        return iso


def memory_data(record: MemoryRecord) -> MemoryData:
    """The statements, training pairs, recall checks and held-out probes of one memory."""
    text = " ".join(record.text.split())
    speaker = _speaker_name(record)
    spoken = bool(speaker and _FIRST_PERSON.search(text))
    # Questions are asked about what the memory says: a dialogue turn in the third person.
    told = third_person(text, _cap(speaker)) if spoken and speaker else text
    statements = [text]
    if speaker:
        statements.append(f'{_cap(speaker)} said: "{text}"')
    if told != text:
        statements.append(told)
    pairs: list[Pair] = []
    checks: list[Pair] = []
    heldout: list[Pair] = []
    meta = record.metadata or {}
    answer = meta.get("answer")
    questions = meta.get("question")
    if isinstance(questions, str):
        questions = [questions]
    if isinstance(answer, (str, int, float)) and not isinstance(answer, bool) and str(answer).strip():
        for question in questions if isinstance(questions, list) else []:
            if isinstance(question, str) and question.strip():
                pair = Pair(question.strip(), str(answer).strip(), "metadata", "metadata")
                pairs.append(pair)
                heldout.append(pair)
    for sentence in sentences(told) or [told]:
        spans = find_spans(sentence)
        subject = _subject(sentence, spans)
        if subject:
            pairs.append(Pair(f"What do you know about {subject}?", sentence, "about"))
        for span in spans:
            wh = wh_question(sentence, span)
            echo = echo_question(sentence, span)
            first = Pair(wh or echo, span.text, "wh" if wh else "echo", span.kind)
            checks.append(first)
            pairs.append(first)
            if wh:
                pairs.append(Pair(echo, sentence, "echo", span.kind))
            pairs.append(Pair(cloze(sentence, span), span.text, "cloze", span.kind))
            if span.kind in ("person", "place", "name") and span.text.lower() != (subject or "").lower():
                pairs.append(Pair(f"What do you know about {span.text}?", sentence, "about", span.kind))
            heldout.append(Pair(heldout_question(sentence, span), span.text, "heldout", span.kind))
    if speaker:
        date = (record.time or "")[:10]
        when = f" on {_date_words(date)}" if date else ""
        pairs.append(Pair(f"What did {speaker} tell you{when}?", told, "speaker"))
        if date:
            pairs.append(Pair(f"When did {speaker} say this: {text}", _date_words(date), "time", "date"))
    elif record.time:
        date = (record.time or "")[:10]
        pairs.append(Pair(f"What happened on {_date_words(date)}?", text, "time"))
    if not checks:  # nothing salient found: the memory is recalled whole from its first words
        words = text.split()
        cue = " ".join(words[: max(2, min(8, len(words) // 3))])
        pair = Pair(f'Complete this memory: "{cue} ..."', text, "cloze")
        pairs.append(pair)
        checks.append(pair)
        if not heldout:
            heldout.append(Pair(f"What do you remember that starts with {cue!r}?", text, "heldout"))
    return MemoryData(record.ref, statements, _unique(pairs), _unique(checks), _unique(heldout))


def _unique(pairs: list[Pair]) -> list[Pair]:
    seen: set[tuple[str, str]] = set()
    out = []
    for pair in pairs:
        key = (pair.question, pair.answer)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out
