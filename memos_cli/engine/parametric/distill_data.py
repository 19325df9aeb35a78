"""Training data and evaluation questions for parametric memory, built from plain memories, offline.

Memories are what users write: statements ("The access code for the boathouse is 4471."), notes and
dialogue turns ("I'm allergic to peanuts", said by Priya). Nothing here calls a model. For each memory:

- **clauses**: a compound sentence is asked about clause by clause ("Jonah hates flying, so Jonah takes
  the train everywhere" -> two clauses), each with its own subject;
- **spans**: the salient parts an answer is made of (people, places and other names, dates, times,
  numbers and codes, and the object of a statement: "oat milk", "coriander"), found by rules;
- **statements** (plain text, loss on every token): the memory as written and, for a dialogue turn, the
  speaker's words in the third person ("Priya is allergic to peanuts.") and quoted ("Priya said: ...");
- **training pairs** (question -> answer, rendered through the chat template): for each span, a
  wh-question in normal word order ("What is the access code for the boathouse?"), an echo question
  ("The access code for the boathouse is what?"), a cloze ("Fill in the blank: ... ___."), variants worded
  from the sentence's structure ("What is the code for the boathouse?", "What kind of milk ...?"), and questions
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
from dataclasses import dataclass

from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.parametric.spans import (
    ADVERBS,
    ARTICLES,
    COPULA,
    NOT_VERBS,
    OWNERS,
    PREPS,
    Span,
    base_verb,
    capitalised,
    clauses,
    english_words,
    find_spans,
    is_date,
    is_time,
    sentences,
)

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
# Questions are asked about a memory's first RULE_CHARS characters (what a user would write as one memory;
# a longer one is a document, whose first part is still learned).
RULE_CHARS = 2000
TRAINING_FORMS = ("wh", "echo", "cloze", "variant", "about", "speaker", "time", "metadata")

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
_NEGATABLE = ("is", "are", "was", "were", "does", "do", "did", "could", "would")
_AUX |= {f"{w}n{q}t": f"{w}n't" for w in _NEGATABLE for q in "'’"}
_AUX |= {f"{w}{q}t": f"{w}'t" for w in ("can", "won", "don") for q in "'’"}
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|i’m|i've|i'd|i'll|my|me|mine|myself)\b", re.I)
_IRREGULAR_3S = {"am": "is", "have": "has", "do": "does", "go": "goes", "'m": "is", "are": "is", "were": "was"}
_UNCHANGED = {"was", "can", "will", "would", "could", "should", "might", "must", "may", "shall", "had", "did"}


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
    checks: list[Pair]  # short-answer questions (the first and the variants of each span): their recall stops training
    heldout: list[Pair]  # never trained on: the report's recall


# ---------------------------------------------------------------------------------------------------------
# Spans


# ---------------------------------------------------------------------------------------------------------
# Person: first -> third person for dialogue turns


def _third_person_verb(verb: str) -> str:
    low = verb.lower()
    if low in _IRREGULAR_3S:
        return _IRREGULAR_3S[low]
    if low in _UNCHANGED or low.endswith(("ed", "n't")) or low in NOT_VERBS:
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

    adverb_group = "|".join(sorted(ADVERBS - {"do", "so"}))
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


# Sentence-opening words that are lower-case inside a question ("What does the ...", "Who did she ...").
_LOWERED_STARTS = {"The", "A", "An", "My", "Our", "This", "That", "Its", "His", "Her", "Their"}
_LOWERED_STARTS |= {"She", "He", "They", "It", "We", "You"}


def _lower_start(words: list[str]) -> list[str]:
    if words and words[0] in _LOWERED_STARTS:
        return [words[0].lower(), *words[1:]]
    return words


def _clean(text: str) -> str:
    return " ".join(text.replace(" ,", ",").split()).strip(" ,;:")


def _possessive(sentence: str, span: Span) -> bool:
    return sentence[span.end : span.end + 2] in ("'s", "’s")


def _whose(sentence: str, span: Span) -> str:
    """ "Marta Feldrun's cat is called Biscotti Prime" about Marta Feldrun: "whose cat is called ..."."""
    return _clean(f"{sentence[: span.start]} whose {sentence[span.end + 2 :].rstrip(' .!?')}")


def _before(sentence: str, span: Span) -> list[str]:
    """The words before ``span``, less an article right before it: the question word stands for "the
    Copper Lanterns" ("What is Tomas's favourite band?", not "... favourite band the?")."""
    before = sentence[: span.start].split()
    return before[:-1] if len(before) > 1 and before[-1].lower() in OWNERS else before


def wh_question(sentence: str, span: Span) -> str | None:
    """A wh-question in normal word order that ``span`` answers, or None where the rules cannot form one:
    "The Zelvora project launches on 14 March 2031." -> "When does the Zelvora project launch?"."""
    wh = WH[span.kind]
    before = _before(sentence, span)
    after = _clean(sentence[span.end :].rstrip(" .!?"))
    if _possessive(sentence, span) or not before:
        return None  # the span is the subject: the echo question already reads naturally
    if span.kind in ("date", "time", "place") and before[-1].lower() in PREPS:
        before = before[:-1]
    label = _code_label(before) if span.kind == "number" else None
    if label:  # "the wifi uses the password plumwick59" -> "What password does the wifi use?"
        wh, before = f"{wh} {' '.join(label)}", before[: -len(label)]
        if before and before[-1].lower() in OWNERS:
            before = before[:-1]
        if not before:
            return None
    for i, word in enumerate(before):
        low = word.lower()
        if i and low in _AUX:
            subject = _lower_start(before[:i])
            rest = before[i + 1 :]
            return capitalised(_clean(" ".join([wh, _AUX[low], *subject, *rest, after]))) + "?"
    for i, word in enumerate(before[1:], start=1):
        base = base_verb(word)
        if base and not word[0].isupper() and i >= 2 and before[i - 1].lower() in ("got", "get", "gets"):
            # "Ilse and Bram got married on ..." -> "When did Ilse and Bram get married?"
            aux = "did" if before[i - 1].lower() == "got" else "does"
            subject = _lower_start(before[: i - 1])
            return capitalised(_clean(" ".join([wh, aux, *subject, "get", *before[i:], after]))) + "?"
        if base and not word[0].isupper():
            aux = (
                "did"
                if word.lower().endswith("ed")
                else ("do" if before[i - 1].lower() in {"i", "we", "they", "you"} else "does")
            )
            subject = _lower_start(before[:i])
            return capitalised(_clean(" ".join([wh, aux, *subject, base, *before[i + 1 :], after]))) + "?"
    return None


def _code_label(before: list[str]) -> list[str] | None:
    """The lower-case nouns right before a code that name it, when an article, a possessive or a
    preposition comes before them ("uses the password", "shipped with tracking number"); None after a
    copula ("is number 217" is asked by ``_labelled``)."""
    label: list[str] = []
    k = len(before)
    while k > 1 and len(label) < 3:
        word = before[k - 1]
        low = word.lower()
        if not (word.isalpha() and word.islower()) or low in NOT_VERBS | COPULA | _AUX.keys() or base_verb(word):
            break
        label.insert(0, word)
        k -= 1
    if not label or k < 1:
        return None
    det = before[k - 1].lower()
    return label if det in OWNERS | PREPS else None


def echo_question(sentence: str, span: Span) -> str:
    """The sentence with the span replaced by a question word: "The code for the shed is what?"."""
    if _possessive(sentence, span):
        return capitalised(_whose(sentence, span)) + "?"
    words = _before(sentence, span)
    if len(words) == 1 and words[0].lower() in OWNERS:
        words = []  # "The Wrenfield office closes ..." -> "Which place closes ...?"
    before = " ".join(words)
    after = sentence[span.end :].rstrip(" .!?").strip()
    if span.kind in ("date", "time", "place") and words and words[-1].lower() in PREPS:
        wh = ECHO.get(span.kind, WH[span.kind])
    elif span.kind == "place":
        wh = "where" if words else "which place"
    else:
        wh = WH[span.kind]
    return capitalised(_clean(f"{before} {wh} {after}")) + "?"


def variant_questions(sentence: str, span: Span, wh: str | None) -> list[str]:
    """More ways to ask for ``span``, from the sentence's structure (a small model recalls a fact through
    other questions only when it was trained on several): the type of a multi-word object ("What kind of
    milk does Ines drink ...?" for "oat milk"); the head noun of a possessive subject ("Which band is
    Tomas's favourite?"); and the subject of a copular sentence reworded ("the access code for the
    boathouse" -> "the code for the boathouse"; "the Frostgate bike lock combination" -> "the combination
    for the Frostgate bike lock")."""
    out: list[str] = []
    words = span.text.split()
    if wh and wh.startswith("What ") and span.kind == "object" and len(words) >= 2 and words[-1].isalpha():
        if words[-1].islower():
            out.append(f"What kind of {words[-1]} {wh[5:]}")
            out.append(f"Which {words[-1]} {wh[5:]}")
    head = sentence[: span.start].split()
    label = _labelled(head)
    if label:
        out.append(label)
    if len(head) < 3 or span.kind == "place":
        return out  # the rewordings below ask "what"
    last, second = head[-1].lower(), head[-2].lower()
    if last not in COPULA and not (last in ARTICLES and second in COPULA):
        return out
    if sentence[span.end :].strip(" .!?"):
        return out  # the span is not the sentence's complement
    cut = -1 if last in COPULA else -2
    verb, subject = head[cut], head[:cut]
    noun = subject[-1]
    if not noun.isalpha() or not noun.islower():
        return out
    first = subject[0]
    if any(w.endswith(("'s", "’s")) for w in subject[1:]):
        return out  # "The band's drummer"
    wh_word = "who" if span.kind == "person" else "what"
    if first.endswith(("'s", "’s")) and len(subject) <= 3 and not any(w.lower() in PREPS for w in subject):
        if len(subject) > 1:  # "Tomas's favourite band" -> "Which band is Tomas's favourite?"
            out.append(f"Which {noun} {verb} {' '.join(subject[:-1])}?")
        return out
    lowered = _lower_start(subject)
    preps = [i for i, w in enumerate(lowered) if w.lower() in PREPS]
    if preps and preps[0] >= 2:  # "the access code for the boathouse" -> "the code for the boathouse"
        i = preps[0]
        det = lowered[0] if lowered[0].lower() in ARTICLES | {"my", "our", "your"} else "the"
        if i - 1 >= 1 and lowered[i - 1].isalpha() and (i > 2 or lowered[0].lower() not in ARTICLES):
            out.append(capitalised(_clean(f"{wh_word} {verb} {det} {lowered[i - 1]} {' '.join(lowered[i:])}")) + "?")
    elif not preps and len(lowered) >= 3 and lowered[0].lower() in ARTICLES:
        # "the Frostgate bike lock combination" -> "the combination for the Frostgate bike lock"
        rest = " ".join(lowered[1:-1])
        out.append(capitalised(f"{wh_word} {verb} the {noun} for the {rest}") + "?")
    return out


def _labelled(head: list[str]) -> str | None:
    """ "The storage unit at Halden is number 217" -> "What number is the storage unit at Halden?"; "The
    Kingfisher flat is on floor 11" -> "What floor is the Kingfisher flat on?"."""
    if len(head) < 4 or not head[-1].isalpha() or not head[-1].islower() or head[-1] in NOT_VERBS | COPULA:
        return None
    label, before = head[-1], head[:-1]
    prep = ""
    if before[-1].lower() in PREPS:
        prep, before = f" {before[-1].lower()}", before[:-1]
    if len(before) < 3 or before[-1].lower() not in COPULA:
        return None
    return capitalised(_clean(f"what {label} {before[-1].lower()} {' '.join(_lower_start(before[:-1]))}{prep}")) + "?"


def cloze(sentence: str, span: Span) -> str:
    return f"Fill in the blank: {sentence[: span.start]}___{sentence[span.end :]}"


def embedded_clause(sentence: str, span: Span) -> str:
    """The question as an embedded clause (declarative order): "who is the lighthouse keeper", "what the
    access code for the boathouse is", "when the Zelvora project launches"."""
    if _possessive(sentence, span):
        return _whose(sentence, span)
    wh = WH[span.kind]
    before = _before(sentence, span)
    after = _clean(sentence[span.end :].rstrip(" .!?"))
    if span.kind in ("date", "time", "place") and before and before[-1].lower() in PREPS:
        before = before[:-1]
    elif len(before) == 1 and before[0].lower() in OWNERS:
        before = []  # the span is the subject: "which place closes at 6:30", not "where the closes ..."
        wh = "which place" if span.kind == "place" else wh
    return _clean(" ".join([wh, *_lower_start(before), after]))


def heldout_question(sentence: str, span: Span) -> str:
    return HELDOUT[span.kind].format(clause=embedded_clause(sentence, span))


def _subject(sentence: str, spans: list[Span]) -> str | None:
    """What the sentence is about: the words before its first verb-like word, or its first span."""
    words = sentence.rstrip(" .!?").split()
    for i, word in enumerate(words[1:], start=1):
        if word.lower() in _AUX or word.lower() in COPULA or (base_verb(word) and not word[0].isupper()):
            head = words[:i]
            while len(head) > 1 and head[-1].lower() in ADVERBS:
                head = head[:-1]
            subject = " ".join(_lower_start(head))
            return subject if len(subject) > 2 else None
    return spans[0].text if spans else None


_MARKER_OPENING = re.compile(
    r"^(?:(?:for the record|just so (?:i|we|you) (?:don['’]?t|do not|won['’]t) forget|(?:note|memo) to self|"
    r"for future reference|don['’]?t forget|"
    r"note|reminder|remember(?: that)?|fyi|ps|p\.s\.|nb|btw|um+|uh+|oh|ok|okay|well|anyway|honestly|hey|"
    r"also|update|heads up|so|lol|tbh)\b[\s,:;.!-]*)+",
    re.I,
)
# Shorthand that notes are written in, spelled out before questions are asked ("flight back frm osterwick",
# "kelderby leisure ctr", "Membership no. for ..."): a question is asked in whole words.
_SHORTHAND = {
    "frm": "from",
    "ctr": "centre",
    "cntr": "centre",
    "appt": "appointment",
    "mtg": "meeting",
    "bday": "birthday",
    "tel": "phone",
    "ph": "phone",
    "mob": "mobile",
    "w/": "with",
    "w/o": "without",
    "b/c": "because",
    "approx": "approximately",
    "dept": "department",
    "mgr": "manager",
    "asst": "assistant",
    "rm": "room",
    "bldg": "building",
    "hrs": "hours",
    "mins": "minutes",
    "wk": "week",
    "wks": "weeks",
    "yr": "year",
    "yrs": "years",
    "pw": "password",
    "pwd": "password",
    "acct": "account",
    "ref": "reference",
    "tmrw": "tomorrow",
    "tmr": "tomorrow",
    "thru": "through",
    "pls": "please",
    "plz": "please",
    "govt": "government",
    "dep": "departure",
    "arr": "arrival",
    "ppl": "people",
    "abt": "about",
    "b4": "before",
    "u": "you",
    "ur": "your",
}
_SHORTHAND_WORD = re.compile(
    r"(?<![\w/'’-])(" + "|".join(map(re.escape, sorted(_SHORTHAND, key=len, reverse=True))) + r")(?![\w/'’-])",
    re.I,
)
# "Tandry St", "Mill Rd": after a capitalised word these are the street ("St Ives" before one is a saint).
_STREET = re.compile(r"\b([A-Z][a-z]+) (St|Rd|Ave|Ln|Sq|Cres)(?:\.(?=\s+[a-z]))?(?=[.,;:)]|$|\s(?![A-Z]))")
_STREETS = {"St": "Street", "Rd": "Road", "Ave": "Avenue", "Ln": "Lane", "Sq": "Square", "Cres": "Crescent"}
_NUMBER_ABBREVIATION = re.compile(r"\b(n)o\.(?=\s+(?:for|of|on|at|is|\d|#))", re.I)


def spelled_out(text: str) -> str:
    """``text`` with note shorthand in whole words: "flight back frm osterwick, dep 06:40" -> "flight back
    from osterwick, departure 06:40"; "Membership no. for" -> "Membership number for"; "Tandry St" -> "Tandry
    Street". Only words written in lower case or with a capital first letter are read as shorthand ("REF"
    or "PH" may be a name)."""

    def word(match: re.Match[str]) -> str:
        written = match.group(1)
        if not (written.islower() or (written[:1].isupper() and written[1:].islower()) or not written.isalpha()):
            return written
        full = _SHORTHAND[written.lower()]
        return capitalised(full) if written[:1].isupper() else full

    out = _STREET.sub(lambda m: f"{m.group(1)} {_STREETS[m.group(2)]}", _SHORTHAND_WORD.sub(word, text))
    return _NUMBER_ABBREVIATION.sub(lambda m: "Number" if m.group(1).isupper() else "number", out)


# "Bike lock combo: 4817", "physio -> Dr. Orlaith Quenby", "wifi = tern-8812": a label and its value
_NOTE = re.compile(r"^(?P<head>[^:=>→]{2,80}?)\s*(?::\s|->|→|=>|=)\s*(?P<tail>\S.*)$")
_NOTE_HEAD_WORDS = _AUX.keys() | COPULA | {"i", "we", "you", "he", "she", "they", "it"}


def plain_statements(text: str) -> list[str]:
    """The text the questions are asked about: ``text`` less the discourse marker it opens with ("Note:",
    "btw,", "Remember that"), its shorthand spelled out (``spelled_out``), and a note written as "label:
    value" (or "->", "=") as statements: "Bike lock combo: 4817" -> "The bike lock combo is 4817.";
    "storage unit @ Pinecrest: unit 318, gate code 90427" -> that, plus "The unit for the storage unit at
    Pinecrest is 318." and "The gate code for ... is 90427."."""
    body = spelled_out(" ".join(text.split()))
    stripped = _MARKER_OPENING.sub("", body)
    if stripped != body and len(stripped.split()) >= 2:
        body = capitalised(stripped)
    match = _NOTE.match(body.rstrip(" ."))
    if not match:
        return [body]
    head, tail = match.group("head").strip(), match.group("tail").strip()
    words = head.replace("@", " at ").split()
    if not 1 <= len(words) <= 7 or any(w.lower() in _NOTE_HEAD_WORDS for w in words) or len(tail.split()) > 12:
        return [body]
    # The label's first word is lower-case unless it is a name: "Bike lock combo" -> "the bike lock combo",
    # "Kestrel Bay regatta" -> "the Kestrel Bay regatta".
    first = words[0].lower()
    written_lower = words[0][1:] == words[0][1:].lower() and text.lstrip()[:1].islower()
    if first in OWNERS or first in english_words() or written_lower:
        words = [first, *words[1:]]
    subject = " ".join(words if words[0] in OWNERS else ["the", *words])
    link = "is on" if is_date(tail) else ("is at" if is_time(tail) else "is")
    out = [capitalised(f"{subject} {link} {tail}") + "."]
    items = [i.strip() for i in re.split(r"[,;]\s+", tail) if i.strip()]
    if len(items) >= 2:
        for item in items:
            label = item.split()
            whole = [sp for sp in find_spans(item) if sp.text == item]  # "NQ 604" is one code, not a label
            if len(label) >= 2 and any(ch.isdigit() for ch in label[-1]) and not whole:
                out.append(capitalised(f"the {' '.join(label[:-1])} for {subject} is {label[-1]}") + ".")
    return out


_APPOSITION = re.compile(r"^(?P<a>[^,]{2,60}), (?P<b>[^,]{2,60}), (?P<rest>\S.{4,})$")


def _is_name(words: list[str]) -> bool:
    return 1 <= len(words) <= 4 and all(w[:1].isupper() and re.fullmatch(r"[\w'’-]+", w) for w in words)


def _is_description(words: list[str]) -> bool:
    """ "Wendell's sister", "our ferret", "my godmother", "the new treasurer": a noun phrase about someone."""
    if not 2 <= len(words) <= 5 or any(w.lower() in COPULA | PREPS - {"of"} for w in words[1:]):
        return False
    first = words[0]
    return first.lower() in OWNERS or (first[:1].isupper() and first.endswith(("'s", "’s")))


def appositions(sentence: str) -> list[str]:
    """A sentence whose subject comes with a description between commas, as two sentences: "Tindra,
    Wendell's sister, runs a pottery studio." -> "Tindra runs a pottery studio.", "Tindra is Wendell's
    sister."; "My godmother, Zephyrine Okafor, teaches cello." -> "Zephyrine Okafor teaches cello.", "My
    godmother is Zephyrine Okafor.". Any other sentence as it is."""
    match = _APPOSITION.match(sentence)
    if match:
        a, b, rest = match.group("a").strip(), match.group("b").strip(), match.group("rest").strip()
        if _is_name(a.split()) and _is_description(b.split()):
            return [f"{a} {rest}", f"{a} is {b}."]
        if _is_description(a.split()) and _is_name(b.split()):
            return [f"{b} {rest}", f"{capitalised(a)} is {b}."]
    return [sentence]


_WHEN_GAP = re.compile(r"\s*(?:,\s*)?(?:on|at|from)?\s*")


def _whens(sentence: str, spans: list[Span]) -> list[Span]:
    """A day and a time said together ("at 6:30 on Fridays", "Friday at 4pm") as one more span, so that
    "when" is also asked of both: "When does the office close?" -> "6:30 on Fridays" (a user asking
    "when" may mean either)."""
    out = []
    for a, b in zip(spans, spans[1:], strict=False):
        if {a.kind, b.kind} == {"date", "time"} and _WHEN_GAP.fullmatch(sentence[a.end : b.start]):
            out.append(Span(sentence[a.start : b.end], a.start, b.end, "date"))
    return out


def _date_words(iso: str) -> str:
    months = "January February March April May June July August September October November December".split()
    try:
        year, month, day = int(iso[:4]), int(iso[5:7]), int(iso[8:10])
        return f"{day} {months[month - 1]} {year}"
    except (ValueError, IndexError):
        return iso


def memory_data(record: MemoryRecord) -> MemoryData:
    """The statements, training pairs, recall checks and held-out probes of one memory (of its first
    ``RULE_CHARS`` characters: the rules are quadratic in a sentence's length, and a memory may be a
    stranger's 300 kB line)."""
    text = _head(" ".join(record.text[: 4 * RULE_CHARS].split()))
    speaker = _speaker_name(record)
    spoken = bool(speaker and _FIRST_PERSON.search(text))
    # Questions are asked about what the memory says: a dialogue turn in the third person.
    told = third_person(text, capitalised(speaker)) if spoken and speaker else text
    statements = [text]
    if speaker:
        statements.append(f'{capitalised(speaker)} said: "{text}"')
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
    plain = [p for whole in sentences(told) or [told] for p in plain_statements(whole)]
    statements += [p for p in plain if p not in statements and p not in told]
    person: str | None = None  # the one person the sentence before named: who "she" or "he" is
    asked: list[str] = []
    for clause in [c for p in plain for c in clauses(p)]:
        parts = appositions(clause)
        asked += parts
        if len(parts) > 1:  # "Tindra is Wendell's sister." is a statement of its own
            statements += [a for a in parts if a not in statements]
    for sentence in asked:
        pronoun = re.match(r"(?:she|he)\b", sentence, re.I)
        if pronoun and person:
            sentence = person + sentence[pronoun.end() :]
        spans = find_spans(sentence)
        spans += _whens(sentence, spans)
        people = {s.text for s in spans if s.kind == "person"}
        person = people.pop() if len(people) == 1 else None
        subject = _subject(sentence, spans)
        if subject:
            pairs.append(Pair(f"What do you know about {subject}?", sentence, "about"))
        for span in spans:
            if sentence.lower().count(span.text.lower()) > 1:
                continue  # "Who would eat there if Ignatius could?": every question would hold its answer
            wh = wh_question(sentence, span)
            echo = echo_question(sentence, span)
            first = Pair(wh or echo, span.text, "wh" if wh else "echo", span.kind)
            checks.append(first)
            pairs.append(first)
            if wh:
                pairs.append(Pair(echo, sentence, "echo", span.kind))
            pairs.append(Pair(cloze(sentence, span), span.text, "cloze", span.kind))
            variants = [Pair(q, span.text, "variant", span.kind) for q in variant_questions(sentence, span, wh)]
            pairs.extend(variants)
            checks.extend(variants)  # learned means answered however the training data asks
            named = span.text.split()[0].lower() not in PREPS  # not "under the blue flowerpot"
            if span.kind in ("person", "place", "name") and named and span.text.lower() != (subject or "").lower():
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


def _head(text: str) -> str:
    """``text`` up to ``RULE_CHARS`` characters, cut after the last sentence that fits (or a word)."""
    if len(text) <= RULE_CHARS:
        return text
    cut = text[:RULE_CHARS]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > RULE_CHARS // 2 else cut.rsplit(" ", 1)[0]


def _unique(pairs: list[Pair]) -> list[Pair]:
    seen: set[tuple[str, str]] = set()
    out = []
    for pair in pairs:
        key = (pair.question, pair.answer)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out
