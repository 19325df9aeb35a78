"""Event time: when what a memory says happened, resolved from its text against when it was said.

A memory said on 17 March 2022 that reads "yesterday I went bowling" is about 16 March 2022. Ingest
finds such expressions and stores them on the record as ``event_time``: a list of intervals
``{start, end, precision, expr}`` (ISO dates, inclusive; precision day, week, month, season or year).
Queries parse the same expressions ("on 16 March 2022", "in January 2023", "the last week of August
2023", "last summer") into intervals used as a ranking prior and as ``--since/--until`` filters.

Why dateparser (1.5, ``DateDataParser.get_date_data`` with ``RELATIVE_BASE`` and
``RETURN_TIME_AS_PERIOD``), measured on the 612 LoCoMo dev turns that contain a time cue:

* ``dateparser.search.search_dates`` finds and resolves in one call, but costs 2.3 ms per text and
  reads common words as dates ("we" -> Wednesday, "one's", "18th"): 14 of the first 60 cued turns had
  a false date. So spans are found here, with one compiled pattern behind a word-set pre-filter (about
  10 us for a memory with no time word; 0.13 ms a memory on average over LoCoMo, dateparser included,
  measured on a loaded machine where the embedder took 21 ms a text), and only the span is handed to
  dateparser, which resolves it (0.3-0.6 ms, cached per span and base day) and says its period.
* ctparse 0.3.6 parses a whole string as one expression: it failed on most turns and resolved
  "last year" to the base date and "last week" to 03:00 (8.8 ms per text).
* recognizers-text-date-time 1.0.2a2 (last release 2019) does not import with a current ``emoji``.
* timefhuman 0.1.5 ignored the base date (every turn resolved to today's clock).

Hand-written, each tested in ``tests/test_temporal.py``, for what dateparser leaves unresolved:
weekends ("last weekend", "two weekends ago", "over the weekend"), "the other day", "a few / a couple
of / several <units> ago/back", "two Saturdays ago", "the week/year/summer before last", durations ("for
three years" = began three years before), seasons ("last summer", "summer 2022", "two summers ago"),
thirds of a year ("mid-2021"), numeric dates whose numbers do not settle the order of day and month
(4/12/2023: left undated, where dateparser reads it month first), holidays (with a year, "last/next",
a preposition or an occasion: "at Thanksgiving", "the labor day bbq"), periods placed against a day
("the week before 9 June 2023", "the Friday after ...", "the weekend of ...", "around ..."), and in
queries "early/mid/late <month> <year>", "the first/last week or weekend of <month> <year>" and "between
<date> and <date>" ("between 1 and 10 May 2023"). The span pattern (ours) also finds what dateparser
then resolves by itself: ISO dates, "a fortnight ago", "a decade ago", "this morning".

Why one module of ~680 lines: memories and queries are read with one grammar of time expressions, so
that what ingest stores as an event time is what a query's period matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

PRECISIONS = ("day", "week", "month", "season", "year")

_MONTH_NAMES = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_MONTH_FULL = r"(?:january|february|march|april|may|june|july|august|september|october|november|december)"
_WEEKDAY_FULL = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tues?|wed|thu(?:rs?)?|fri|sat|sun)"
_NUMBER = (
    r"(?:\d{1,3}|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve"
    r"|a\s+few|a\s+couple(?:\s+of)?|couple(?:\s+of)?|few|several)"
)
_UNIT = r"(?:days?|weeks?|weekends?|fortnights?|months?|years?|decades?)"
_SEASON = r"(?:summer|winter|spring|fall|autumn)"
_YEAR = r"(?:19|20)\d\d"
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_WEEKDAYS = r"(?:mon|tues|wednes|thurs|fri|satur|sun)days"  # "two Saturdays ago"
_ISO = r"(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
_NUMERIC = r"\d{1,2}[/.]\d{1,2}[/.](?:19|20)\d\d"  # 4/12/2023, 12.04.2023: read only when unambiguous
# A day of a month, with or without its year: what "the week before ...", "around ..." anchor on.
_DATE = rf"(?:{_MONTH_FULL}\s+{_DAY}(?:,?\s+{_YEAR})?|{_DAY}\s+(?:of\s+)?{_MONTH_FULL}(?:,?\s*{_YEAR})?|{_ISO})"
# Holidays, with the day each falls on (:func:`_holiday`). "New Year" alone ("the new year") is too vague.
_HOLIDAY = (
    r"(?:christmas(?:\s+(?:eve|day))?|new\s+year['’]?s(?:\s+(?:eve|day))?|halloween|thanksgiving|boxing\s+day"
    r"|(?:easter|good\s+friday)(?:\s+(?:sunday|monday))?|valentine['’]?s(?:\s+day)?|independence\s+day"
    r"|(?:the\s+)?(?:fourth|4th)\s+of\s+july|(?:st\.?|saint)\s+patrick['’]?s(?:\s+day)?|labou?r\s+day|memorial\s+day"
    r"|mother['’]?s\s+day|father['’]?s\s+day)"
)

# "the labor day bbq" is an event; "favorite Thanksgiving traditions" and "the Christmas magic" are not.
_OCCASION = (
    r"(?:bbq|barbecue|cookout|party|parties|dinner|lunch|brunch|picnic|parade|concert|fireworks|market|fair"
    r"|sale|trip|break|holiday|service|mass|show|game|match|reunion|get-together|gathering|celebration|feast|eve)"
)

# The span finder (and the cheap pre-filter: a text it does not match is never parsed further).
# Longest alternatives first: the regex engine takes the first that matches at a position.
_SPAN = re.compile(
    r"\b(?:"
    rf"(?:the\s+|{_NUMBER}\s+)?(?:day|week|weekend|month|{_WEEKDAY_FULL})s?\s+(?:before|after|of)\s+{_DATE}"
    rf"|around\s+(?:{_DATE}|{_HOLIDAY}(?:,?\s+{_YEAR})?)\b"
    rf"|(?:(?:early|mid|late|the\s+(?:first|second|third|last)\s+(?:week|weekend)\s+of|the\s+end\s+of|the\s+beginning\s+of|the\s+start\s+of)\s+)?"
    rf"(?:{_MONTH_FULL}\s+{_DAY},?\s+{_YEAR}|{_DAY}\s+(?:of\s+)?{_MONTH_FULL},?\s*{_YEAR}|{_MONTH_FULL},?\s+(?:of\s+)?{_YEAR})"
    rf"|{_ISO}|{_NUMERIC}"
    rf"|{_SEASON},?\s+(?:of\s+)?{_YEAR}"
    rf"|(?:early|mid|late|the\s+end\s+of|the\s+beginning\s+of|the\s+start\s+of)[\s-]+(?:{_YEAR}|(?:last|this|next)\s+(?:month|year))\b"
    rf"|the\s+(?:week|weekend|month|year|{_SEASON})\s+before\s+last"
    rf"|(?:last|this|next|past|coming)\s+(?:{_SEASON}|weekend|week|month|year|{_WEEKDAY})\b"
    rf"|(?:last|this|next|coming)\s+{_HOLIDAY}\b|{_HOLIDAY},?\s+{_YEAR}\b"
    rf"|(?:(?:on|at|over|for|since|before|after)\s+(?:the\s+)?){_HOLIDAY}(?:\s+weekend)?\b(?!['’]s)"
    rf"|{_HOLIDAY}\s+weekend\b"
    rf"|the\s+{_HOLIDAY}(?=\s+{_OCCASION}\b)"
    rf"|{_NUMBER}\s+(?:{_UNIT}|{_WEEKDAYS}|{_SEASON}s)\s+(?:ago|back)"
    rf"|(?:in|within)\s+{_NUMBER}\s+(?:days?|weeks?|fortnights?|months?|years?)"
    rf"|for\s+(?:about\s+|almost\s+|nearly\s+|over\s+|the\s+(?:past|last)\s+)?{_NUMBER}\s+(?:weeks?|fortnights?|months?|years?|decades?)"
    rf"|(?:early|mid|late|the\s+(?:first|second|third|last)\s+(?:week|weekend)\s+of)\s+{_MONTH_FULL}\b"
    r"|yesterday|tomorrow|today|tonight|last\s+night|the\s+other\s+day|the\s+day\s+before\s+yesterday"
    r"|this\s+(?:morning|afternoon|evening)|(?:over|on|at)\s+the\s+weekend\b(?!\s+of\b)"
    rf"|(?:on|this|last|since|from)\s+{_WEEKDAY}\b"
    rf"|(?:{_MONTH_FULL}\s+{_DAY}|{_DAY}\s+(?:of\s+)?{_MONTH_FULL})\b"
    rf"|(?:in|since|during|of|from)\s+(?:{_MONTH_FULL},?\s+(?:of\s+)?{_YEAR}|{_MONTH_FULL}|{_YEAR})\b"
    r")",
    re.IGNORECASE,
)
# Every span holds one of these words or a year. Looking the words of a text up in a set costs ~10 us
# a memory, the span pattern (many alternatives tried at every word) ~120 us (LoCoMo turns, loaded
# machine), and only about one memory in eight passes the set, so ingest pays ~25 us a memory.
_KEYWORDS = frozenset(
    """yesterday tomorrow today tonight ago day days week weeks weekend weekends month months year years night
    summer winter spring fall autumn january february march april may june july august september october
    november december monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thurs
    fri sat sun mondays tuesdays wednesdays thursdays fridays saturdays sundays summers winters springs falls
    autumns morning afternoon evening fortnight fortnights decade decades christmas halloween thanksgiving
    easter valentine valentines patrick patricks""".split()
)  # holidays named "... Day" (Labor, Memorial, Mother's, Father's, Boxing, Independence) pass on "day"
_LETTERS = re.compile(r"[a-z]+")
_ANY_YEAR = re.compile(r"\b(?:19|20)\d\d\b")


def _maybe_time(text: str) -> bool:
    """The cheap pre-filter: False means the text surely holds no span."""
    return not _KEYWORDS.isdisjoint(_LETTERS.findall(text.lower())) or _ANY_YEAR.search(text) is not None


_WORD_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "few": 3, "a few": 3, "couple": 2,
    "a couple": 2, "couple of": 2, "a couple of": 2, "several": 3,
}  # fmt: skip
_SEASONS = {"spring": (3, 5), "summer": (6, 8), "fall": (9, 11), "autumn": (9, 11), "winter": (12, 2)}


@dataclass(frozen=True)
class Interval:
    """An inclusive range of days, how precisely it is known, and the words it came from."""

    start: date
    end: date
    precision: str
    expr: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "precision": self.precision,
            "expr": self.expr,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Interval | None:
        """An interval from a stored record, or None if it is malformed (a hand-edited record)."""
        try:
            return cls(
                date.fromisoformat(str(data["start"])[:10]),
                date.fromisoformat(str(data["end"])[:10]),
                str(data.get("precision", "day")),
                str(data.get("expr", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def overlaps(self, other: Interval) -> bool:
        return self.start <= other.end and other.start <= self.end


# ---------------------------------------------------------------------------------- calendar helpers


def _month_span(year: int, month: int) -> tuple[date, date]:
    first = date(year, month, 1)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def _week_span(day: date) -> tuple[date, date]:
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=6)


def _season_span(name: str, year: int) -> tuple[date, date]:
    first, last = _SEASONS[name]
    if first > last:  # winter: December of `year` to February of the next
        return date(year, 12, 1), _month_span(year + 1, 2)[1]
    return date(year, first, 1), _month_span(year, last)[1]


def _span_of(day: date, precision: str) -> tuple[date, date]:
    if precision == "week":
        return _week_span(day)
    if precision == "month":
        return _month_span(day.year, day.month)
    if precision == "year":
        return date(day.year, 1, 1), date(day.year, 12, 31)
    return day, day


def _count(word: str) -> int:
    word = " ".join(word.lower().split())
    return int(word) if word.isdigit() else _WORD_NUMBERS.get(word, 1)


# ---------------------------------------------------------------------------------- dateparser


@lru_cache(maxsize=1)
def _parser_class() -> Any:
    from dateparser.date import DateDataParser  # type: ignore[import-untyped]  # imported on first use: ~50 ms, and only cued texts pay it

    return DateDataParser


@lru_cache(maxsize=4096)
def _parser(base_day: date, prefer: str) -> Any:
    return _parser_class()(
        languages=["en"],
        settings={
            "RELATIVE_BASE": datetime(base_day.year, base_day.month, base_day.day, 12),
            "PREFER_DATES_FROM": prefer,
            "RETURN_TIME_AS_PERIOD": True,
            "STRICT_PARSING": False,
        },
    )


@lru_cache(maxsize=65536)
def _dateparser(expr: str, base_day: date, prefer: str = "past") -> tuple[date, str] | None:
    """dateparser's reading of one expression: (day, period), cached per expression and base day."""
    data = _parser(base_day, prefer).get_date_data(expr)
    if data is None or data.date_obj is None:
        return None
    period = data.period if data.period in ("day", "week", "month", "year") else "day"
    return data.date_obj.date(), period


# ---------------------------------------------------------------------------------- resolution


def _easter(year: int) -> date:
    """Western Easter Sunday (the anonymous Gregorian computus)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    leap = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * leap) // 451
    month, day = divmod(h + leap - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _holiday(name: str, year: int) -> date:
    """The day a holiday (as :data:`_HOLIDAY` matches it, lower case) falls on in ``year``."""
    name = re.sub(r"['’]", "", name)
    if name.startswith("christmas"):
        return date(year, 12, 24 if name.endswith("eve") else 25)
    if name.startswith("new year"):
        return date(year, 12, 31) if name.endswith("eve") else date(year, 1, 1)
    if name == "halloween":
        return date(year, 10, 31)
    if name.startswith("valentine"):
        return date(year, 2, 14)
    if name == "boxing day":
        return date(year, 12, 26)
    if "patrick" in name:
        return date(year, 3, 17)
    if name == "thanksgiving":  # the fourth Thursday of November (United States)
        return _nth_weekday(year, 11, 3, 4)
    if name.startswith(("labor", "labour")):  # the first Monday of September (United States, Canada)
        return _nth_weekday(year, 9, 0, 1)
    if name.startswith("memorial"):  # the last Monday of May
        return _nth_weekday(year, 5, 0, -1)
    if name.startswith("mother"):  # the second Sunday of May (United States and most countries)
        return _nth_weekday(year, 5, 6, 2)
    if name.startswith("father"):  # the third Sunday of June
        return _nth_weekday(year, 6, 6, 3)
    if name.startswith("good friday"):
        return _easter(year) - timedelta(days=2)
    if name.startswith("easter"):
        return _easter(year) + timedelta(days=1 if name.endswith("monday") else 0)
    return date(year, 7, 4)  # independence day, the fourth of july


def _nth_weekday(year: int, month: int, weekday: int, nth: int) -> date:
    """The ``nth`` ``weekday`` (0 = Monday) of a month; ``nth`` -1 is the last."""
    if nth < 0:
        last = _month_span(year, month)[1]
        return last - timedelta(days=(last.weekday() - weekday) % 7)
    first = date(year, month, 1)
    return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (nth - 1))


def _resolve_holiday(which: str | None, name: str, year: str | None, base: date) -> date:
    """The day of a holiday: with a year, that year's; "last" the latest before the base day, "next"/"coming"
    the first after it, "this" the one in the base day's year; bare, the one within a month ahead of
    the base day if any ("home for Christmas" said on 10 December), else the latest on or before it."""
    if year:
        day = _holiday(name, int(year))
    else:
        days = [_holiday(name, y) for y in range(base.year - 1, base.year + 2)]
        if which == "last":
            day = [d for d in days if d < base][-1]
        elif which in ("next", "coming"):
            day = next(d for d in days if d > base)
        elif which == "this":
            day = _holiday(name, base.year)
        else:
            ahead = [d for d in days if base < d <= base + timedelta(days=31)]
            day = ahead[0] if ahead else [d for d in days if d <= base][-1]
    return day


def _weekday_index(word: str) -> int:
    return ("mon", "tue", "wed", "thu", "fri", "sat", "sun").index(word[:3])


def _anchored(count: int, unit: str, direction: str, anchor: Interval, expr: str) -> Interval | None:
    """ "the week before 9 June 2023", "two weekends before ...", "the Friday after ...", "the week of
    ...": a period placed against a named day."""
    day = anchor.start if direction != "after" else anchor.end
    if direction == "of":
        if unit == "week":
            return Interval(*_week_span(day), "week", expr)
        if unit == "weekend":
            saturday = _week_span(day)[0] + timedelta(days=5)
            return Interval(saturday, saturday + timedelta(days=1), "day", expr)
        return Interval(anchor.start, anchor.end, anchor.precision, expr) if unit == "day" else None
    sign = -1 if direction == "before" else 1
    if unit == "day":
        moved = day + timedelta(days=sign * count)
        return Interval(moved, moved, "day", expr)
    if unit == "week":
        near, far = day + timedelta(days=sign * (7 * count - 6)), day + timedelta(days=sign * 7 * count)
        return Interval(min(near, far), max(near, far), "week", expr)
    if unit == "month":
        near, far = day + timedelta(days=sign), day + timedelta(days=sign * 30 * count)
        return Interval(min(near, far), max(near, far), "month", expr)
    weekday = 5 if unit == "weekend" else _weekday_index(unit)
    if sign < 0:  # the latest such day (a weekend: its Sunday) strictly before the anchor
        last = day - timedelta(days=1 if unit == "weekend" else 0)
        moved = last - timedelta(days=(last.weekday() - weekday) % 7 or 7) - timedelta(days=7 * (count - 1))
    else:
        moved = day + timedelta(days=(weekday - day.weekday()) % 7 or 7) + timedelta(days=7 * (count - 1))
    return Interval(moved, moved + timedelta(days=1 if unit == "weekend" else 0), "day", expr)


def day_month_open(first: int, second: int) -> bool:
    """Whether a numeric date's first two numbers leave the order of day and month open (4/12/2023: 4
    December or 12 April?). dateparser and dateutil would read it month first without a word; event time
    leaves it undated, and a record's ``time`` needs ``--date-order`` (``sources.parse_time``)."""
    return first != second and first <= 12 and second <= 12


def _ambiguous_numeric(expr: str) -> bool:
    first, second, _year = (int(part) for part in re.split(r"[/.]", expr.strip()))
    return day_month_open(first, second)


_BEFORE_LAST = re.compile(rf"the\s+(week|weekend|month|year|{_SEASON})\s+before\s+last")
_ANCHORED = re.compile(
    rf"(?:the\s+|({_NUMBER})\s+)?(day|week|weekend|month|{_WEEKDAY_FULL})s?\s+(before|after|of)\s+(.+)"
)
_HOLIDAY_RULE = re.compile(
    rf"(?:(last|this|next|coming)\s+|(?:on|at|over|for|since|before|after)\s+(?:the\s+)?|the\s+)?({_HOLIDAY})"
    rf"(?:,?\s+({_YEAR})|\s+weekend)?"
)
_WEEKDAYS_AGO = re.compile(rf"({_NUMBER})\s+({_WEEKDAYS})\s+(?:ago|back)")
_SEASONS_AGO = re.compile(rf"({_NUMBER})\s+({_SEASON})s\s+(?:ago|back)")


def _hand_written(expr: str, base: date) -> Interval | None:
    """The expressions dateparser leaves unresolved (see the module docstring)."""
    low = " ".join(expr.lower().split())
    m = _BEFORE_LAST.fullmatch(low)
    if m:  # two of them ago
        two = _resolve(f"2 {m.group(1)}s ago", base)
        return None if two is None else Interval(two.start, two.end, two.precision, expr)
    m = _ANCHORED.fullmatch(low)
    if m:
        anchor = resolve(m.group(4), base, past=True)
        if anchor is None or anchor.precision != "day":
            return None
        return _anchored(_count(m.group(1) or "1"), m.group(2), m.group(3), anchor, expr)
    m = re.fullmatch(r"around\s+(.+)", low)
    if m:
        inner = resolve(m.group(1), base, past=True)
        if inner is None or inner.precision != "day":
            return inner
        return Interval(inner.start - timedelta(days=3), inner.end + timedelta(days=3), "week", expr)
    m = _HOLIDAY_RULE.fullmatch(low)
    if m:
        day = _resolve_holiday(m.group(1), m.group(2), m.group(3), base)
        if not low.endswith("weekend"):
            return Interval(day, day, "day", expr)
        # "Memorial Day weekend": the Saturday and Sunday next to the holiday (the coming one from a
        # Thursday or Friday, the one before from Monday to Wednesday), and the holiday itself
        weekday = day.weekday()
        saturday = day + timedelta(days=5 - weekday if weekday >= 3 else -(weekday + 2))
        start, end = min(day, saturday), max(day, saturday + timedelta(days=1))
        return Interval(start, end, "day" if (end - start).days <= 3 else "week", expr)
    if re.fullmatch(r"(?:over|on|at)\s+the\s+weekend", low):
        # No tense to go by: said Monday to Wednesday it is the weekend just gone, Thursday or Friday the
        # coming one, on a Saturday or Sunday the one under way.
        saturday = base - timedelta(days=(base.weekday() - 5) % 7)
        if base.weekday() in (3, 4):
            saturday += timedelta(days=7)
        return Interval(saturday, saturday + timedelta(days=1), "day", expr)
    m = _WEEKDAYS_AGO.fullmatch(low)
    if m:  # "two Saturdays ago": the Saturday before last
        weekday = _weekday_index(m.group(2))
        last = base - timedelta(days=(base.weekday() - weekday) % 7 or 7)
        day = last - timedelta(days=7 * (_count(m.group(1)) - 1))
        return Interval(day, day, "day", expr)
    m = _SEASONS_AGO.fullmatch(low)
    if m:
        spans = [_season_span(m.group(2), year) for year in range(base.year - 2, base.year + 1)]
        latest = [s for s in spans if s[1] < base][-1]
        start, end = _season_span(m.group(2), latest[0].year - _count(m.group(1)) + 1)
        return Interval(start, end, "season", expr)
    m = re.fullmatch(r"(last|this|next|past|coming)\s+weekend", low)
    if m:
        saturday = base - timedelta(days=(base.weekday() - 5) % 7)  # the latest Saturday on/before base
        if m.group(1) in ("next", "coming") or (m.group(1) == "this" and base.weekday() < 5):
            saturday += timedelta(days=7)
        elif m.group(1) in ("last", "past") and base.weekday() >= 5:
            saturday -= timedelta(days=7)
        return Interval(saturday, saturday + timedelta(days=1), "day", expr)
    m = re.fullmatch(rf"({_NUMBER})\s+weekends?\s+(?:ago|back)", low)
    if m:
        saturday = base - timedelta(days=(base.weekday() - 5) % 7 or 7) - timedelta(days=7 * (_count(m.group(1)) - 1))
        return Interval(saturday, saturday + timedelta(days=1), "day", expr)
    if low == "the other day":
        return Interval(base - timedelta(days=7), base - timedelta(days=1), "week", expr)
    if low == "the day before yesterday":
        day = base - timedelta(days=2)
        return Interval(day, day, "day", expr)
    m = re.fullmatch(rf"(last|this|next|past|coming)\s+({_SEASON})", low)
    if m:
        which, season = m.groups()
        spans = [_season_span(season, year) for year in range(base.year - 2, base.year + 2)]
        if which in ("last", "past"):  # the latest one over before the base day
            start, end = [s for s in spans if s[1] < base][-1]
        elif which in ("next", "coming"):  # the first one not begun by the base day
            start, end = next(s for s in spans if s[0] > base)
        else:  # this: the one holding the base day, else the next one
            start, end = next(s for s in spans if s[1] >= base)
        return Interval(start, end, "season", expr)
    m = re.fullmatch(rf"({_SEASON}),?\s+(?:of\s+)?({_YEAR})", low)
    if m:
        return Interval(*_season_span(m.group(1), int(m.group(2))), "season", expr)
    m = re.fullmatch(r"(early|mid|late|the beginning of|the start of|the end of)[\s-]+(.+)", low)
    if m:
        part_of = "early" if m.group(1) in ("early", "the beginning of", "the start of") else m.group(1)
        inner = resolve(m.group(2), base)
        if inner is not None and inner.precision == "month":
            first, last = inner.start, inner.end
            part = {"early": (1, 10), "mid": (11, 20)}.get(part_of, (21, 31))
            end = first.replace(day=min(part[1], last.day))
            return Interval(first.replace(day=part[0]), end, "week", expr)
        if inner is not None and inner.precision == "year":  # thirds of the year
            months = {"early": (1, 4), "mid": (5, 8)}.get(part_of, (9, 12))
            year = inner.start.year
            return Interval(date(year, months[0], 1), _month_span(year, months[1])[1], "season", expr)
        return inner
    m = re.fullmatch(r"the\s+(first|second|third|last)\s+(week|weekend)\s+of\s+(.+)", low)
    if m:
        inner = resolve(m.group(3), base)
        if inner is not None and inner.precision == "month":
            if m.group(2) == "weekend":
                saturdays = [
                    d for d in (inner.start + timedelta(days=n) for n in range(inner.end.day)) if d.weekday() == 5
                ]
                which = -1 if m.group(1) == "last" else ("first", "second", "third").index(m.group(1))
                return Interval(saturdays[which], saturdays[which] + timedelta(days=1), "day", expr)
            if m.group(1) == "last":
                return Interval(inner.end - timedelta(days=6), inner.end, "week", expr)
            start = inner.start + timedelta(days=7 * ("first", "second", "third").index(m.group(1)))
            return Interval(start, start + timedelta(days=6), "week", expr)
        return inner
    return None


def _normalise(expr: str) -> tuple[str, bool]:
    """Words dateparser does not know, rewritten; and whether the expression is a duration."""
    low = " ".join(expr.lower().split())
    duration = False
    m = re.fullmatch(rf"for\s+(?:about\s+|almost\s+|nearly\s+|over\s+|the\s+(?:past|last)\s+)?({_NUMBER})\s+(\w+)", low)
    if m:  # "for three years" (so far): it began three years before
        low, duration = f"{_count(m.group(1))} {m.group(2)} ago", True
    m = re.fullmatch(rf"({_NUMBER})\s+({_UNIT})\s+(?:ago|back)", low)
    if m:
        low = f"{_count(m.group(1))} {m.group(2)} ago"
    m = re.fullmatch(rf"(in|within)\s+({_NUMBER})\s+(\w+)", low)
    if m:
        low = f"in {_count(m.group(2))} {m.group(3)}"
    m = re.fullmatch(r"(?:on|during|from|of|since)\s+(.+)", low)
    if m:
        low = m.group(1)
    low = re.sub(r"\b(\d{1,2})(?:st|nd|rd|th)\b", r"\1", low).replace(" of ", " ")
    return low, duration


def resolve(expr: str, base: date, *, past: bool = False) -> Interval | None:
    """The interval one time expression denotes, said on ``base``; None if it cannot be resolved.

    ``past``: a month named without a year is the latest one up to ``base`` (for questions, asked
    after the fact), not the one in the year of ``base`` ("in June", said in April, is coming)."""
    interval = _resolve(expr, base)
    if past and interval is not None and interval.start > base and not re.search(_YEAR, expr):
        if interval.precision in ("month", "week", "day") and re.search(_MONTH_FULL, expr, re.IGNORECASE):
            shifted = _resolve(expr, base.replace(year=base.year - 1) if base.month != 2 or base.day < 29 else base)
            return shifted if shifted is not None and shifted.start <= base else interval
    return interval


def _resolve(expr: str, base: date) -> Interval | None:
    if re.fullmatch(_NUMERIC, expr.strip()) and _ambiguous_numeric(expr):
        return None
    hand = _hand_written(expr, base)
    if hand is not None:
        return hand
    text, _duration = _normalise(expr)
    if re.fullmatch(r"\d+\s+weekends?\s+ago", text):
        return _hand_written(text, base)
    prefer = "future" if re.match(r"(next|coming|in\s+\d|tomorrow|this\s+(?!past))", text) else "past"
    if re.fullmatch(rf"(?:in\s+)?{_MONTH_FULL}", text):  # "in June": June of the year it was said
        prefer = "current_period"
    got = _dateparser(text, base, prefer)
    if got is None:
        return None
    day, period = got
    if re.fullmatch(rf"(?:in\s+)?{_YEAR}", text):
        period = "year"
    if period == "day" and re.search(r"\b(today|tonight)\b", text):
        day = base
    start, end = _span_of(day, period)
    return Interval(start, end, period, expr)


def _base_day(when: str | None) -> date | None:
    if not when:
        return None
    try:
        return datetime.fromisoformat(when.strip().replace("Z", "+00:00")).date()
    except ValueError:
        return None


def find(text: str, said: str | date | None, *, past: bool = False) -> list[Interval]:
    """Time expressions in ``text`` resolved against ``said`` (when it was said); [] without a base
    for relative expressions. Absolute dates need no base. ``past``: see :func:`resolve`."""
    base = said if isinstance(said, date) else _base_day(said)
    found: list[Interval] = []
    if not _maybe_time(text):
        return found
    seen: set[tuple[date, date]] = set()
    for match in _SPAN.finditer(text):
        expr = match.group(0)
        anchor = base
        if anchor is None:
            if not re.search(_YEAR, expr):
                continue  # relative to an unknown "now": never guess the clock
            anchor = date(int(re.search(_YEAR, expr).group(0)), 1, 1)  # type: ignore[union-attr]
        try:
            interval = resolve(expr, anchor, past=past)
        except (ValueError, OverflowError, IndexError):  # a base or year near the calendar's ends
            interval = None
        if interval is None or (interval.start, interval.end) in seen:
            continue
        seen.add((interval.start, interval.end))
        found.append(interval)
    return found


def annotate(records: list[Any]) -> None:
    """Set ``event_time`` on records (``MemoryRecord``) from their text and ``time``; called by ingest.

    A record that already carries an ``event_time`` (given in its JSONL line) keeps it."""
    for record in records:
        if record.event_time is not None:
            continue
        found = find(record.text, record.time)
        record.event_time = [i.to_dict() for i in found] or None


def intervals_of(stored: Any) -> list[Interval]:
    """The intervals of a record's ``event_time`` field (malformed entries skipped)."""
    if not isinstance(stored, list):
        return []
    out = []
    for item in stored:
        interval = Interval.from_dict(item) if isinstance(item, dict) else None
        if interval is not None:
            out.append(interval)
    return out


# ---------------------------------------------------------------------------------- queries

_BETWEEN = re.compile(r"\bbetween\s+(.+?)\s+and\s+(.+?)(?=[?.!,;]|$)", re.IGNORECASE)


def query_intervals(query: str, latest: str | date | None) -> list[Interval]:
    """The periods a query names ("in January 2023", "last summer", "between August 11 and August 15
    2023"), relative expressions read against ``latest`` (the cube's latest time)."""
    base = latest if isinstance(latest, date) else _base_day(latest)
    out: list[Interval] = []
    between = _BETWEEN.search(query)
    if between:
        left_text, right_text = between.group(1), between.group(2)
        bare_day = re.fullmatch(_DAY, left_text.strip(), re.IGNORECASE)
        month = re.search(_MONTH_FULL, right_text, re.IGNORECASE)
        if bare_day and month:  # "between 1 and 10 May 2023", "between May 1 and 10, 2023"
            left_text = f"{left_text} {month.group(0)}"
            right_text = re.sub(
                rf"^({_DAY}),?\s+({_YEAR})$", rf"{month.group(0)} \1 \2", right_text.strip(), flags=re.IGNORECASE
            )
        elif re.fullmatch(rf"{_DAY}(?:,?\s+{_YEAR})?", right_text.strip(), re.IGNORECASE):
            month_left = re.search(_MONTH_FULL, left_text, re.IGNORECASE)
            if month_left:  # "between May 1 and 10, 2023"
                right_text = f"{month_left.group(0)} {right_text.strip()}"
        year = re.search(_YEAR, right_text)
        if year and not re.search(_YEAR, left_text):
            left_text = f"{left_text} {year.group(0)}"
        left = find(left_text, base, past=True)
        right = find(right_text, base, past=True)
        if left and right:
            out.append(Interval(left[0].start, right[-1].end, "day", between.group(0)))
            query = query[: between.start()] + query[between.end() :]
    out.extend(find(query, base, past=True))
    return out


def query_plan(query: str, latest: str | date | None) -> tuple[list[tuple[str, str]], str]:
    """What ranking needs of a query's time: the periods it names (inclusive ISO dates) and its
    lexical text with the dates a relative period resolves to added ("last summer" -> "June 2022
    July 2022 August 2022"), so BM25 matches memories said or dated then."""
    if not has_cue(query):
        return [], query
    found = query_intervals(query, latest)
    words = [readable(i) for i in found if not re.search(_YEAR, i.expr)]
    lexical = f"{query} {' '.join(words)}" if words else query
    return [(i.start.isoformat(), i.end.isoformat()) for i in found], lexical


def readable(interval: Interval) -> str:
    """Words for an interval that a question would use: '16 March 2022', 'March 2022', '2022'."""
    start, end = interval.start, interval.end
    if interval.precision == "day" and start == end:
        return f"{start.day} {_MONTH_NAMES[start.month - 1].title()} {start.year}"
    if interval.precision == "year":
        return str(start.year)
    months: list[str] = []
    cursor = start.replace(day=1)
    while cursor <= end and len(months) < 4:
        months.append(f"{_MONTH_NAMES[cursor.month - 1].title()} {cursor.year}")
        cursor = _month_span(cursor.year, cursor.month)[1] + timedelta(days=1)
    return " ".join(months)


_ASKS_WHEN = re.compile(
    r"^\W*(?:when\b|how\s+long\b|since\s+when\b|(?:in\s+)?(?:what|which)\s+(?:year|month|day|date|week)\b)",
    re.IGNORECASE,
)


def asks_when(query: str) -> bool:
    """Whether a question asks for a time ("When did ...", "How long ...", "Which year ..."): the
    answer is then more likely in a memory that dates something."""
    return _ASKS_WHEN.search(query) is not None


def has_cue(text: str) -> bool:
    """Whether ``text`` holds anything this module would try to resolve."""
    return _maybe_time(text) and _SPAN.search(text) is not None


_RELATIVE_TIME = re.compile(
    rf"\b(?:now|today|tonight|yesterday|tomorrow|ago|last|next|this|coming|past|{_WEEKDAY})\b", re.IGNORECASE
)


def is_relative_time(value: str) -> bool:
    """Whether a record's ``time`` string depends on when it is read ("next tuesday", "8 May", "10:30"):
    a relative word, or a date or time of day with no year."""
    if _RELATIVE_TIME.search(value):
        return True
    return not re.search(r"\b\d{4}\b", value) and bool(re.search(rf"\d|\b{_MONTH_FULL}\b", value, re.IGNORECASE))


def resolve_time_value(value: str, base: str | date) -> str | None:
    """A relative ``time`` value read against ``base``: ISO date, or None if it cannot be read."""
    day = base if isinstance(base, date) else _base_day(base)
    if day is None:
        return None
    text = value.strip()
    try:
        hand = _hand_written(text, day)
        if hand is not None:
            return hand.start.isoformat()
        norm, _ = _normalise(text)
        prefer = "future" if re.match(r"(next|coming|in\s|tomorrow)", norm) else "past"
        parsed = _parser(day, prefer).get_date_data(norm)
    except (ValueError, OverflowError, IndexError):  # a base near year 1 or 9999
        return None
    if parsed is None or parsed.date_obj is None:
        return None
    got: datetime = parsed.date_obj
    if parsed.period == "time" or re.search(r"\d:\d\d|\d\s*(am|pm)\b", text, re.IGNORECASE):
        return got.replace(tzinfo=None).isoformat(timespec="seconds")
    return got.date().isoformat()
