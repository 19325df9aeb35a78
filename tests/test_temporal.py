"""Event time: expressions found and resolved against when a memory was said, time in queries
(ranking prior, lexical dates, --since/--until --time-field) and relative record times."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest

from memos_cli.cli.errors import describe
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.plaintext import temporal
from memos_cli.engine.plaintext.ingest import Defaults, Source, ingest
from memos_cli.engine.plaintext.lexical import LexicalIndex
from memos_cli.engine.plaintext.query import Filters, query
from memos_cli.engine.plaintext.ranking import RankInputs, RankSettings, Row, in_periods, lexical_text, rank, structure
from memos_cli.engine.plaintext.sources import parse_time
from memos_cli.errors import BadInput, UsageError

FRIDAY = date(2023, 6, 9)  # a Friday


def run(*args: str) -> tuple[int, str, str]:
    """main() with its real error handling, stdout and stderr captured apart."""
    import contextlib
    import io

    from memos_cli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def spans(text: str, said: date | str | None = FRIDAY) -> list[tuple[str, str, str]]:
    return [(i.start.isoformat(), i.end.isoformat(), i.precision) for i in temporal.find(text, said)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # resolved by dateparser
        ("I went bowling yesterday", ("2023-06-08", "2023-06-08", "day")),
        ("Last week I went to a parade", ("2023-05-29", "2023-06-04", "week")),
        ("I finally wrapped it up last month", ("2023-05-01", "2023-05-31", "month")),
        ("three years ago I was in Rio", ("2020-01-01", "2020-12-31", "year")),
        ("two weeks ago I read a book", ("2023-05-22", "2023-05-28", "week")),
        ("let's do it next month", ("2023-07-01", "2023-07-31", "month")),
        ("I passed the interview last Friday", ("2023-06-02", "2023-06-02", "day")),
        ("we met on March 16, 2022", ("2022-03-16", "2022-03-16", "day")),
        ("I moved in 2020", ("2020-01-01", "2020-12-31", "year")),
        # hand-written: what dateparser leaves unresolved
        ("I've had them for 3 years", ("2020-01-01", "2020-12-31", "year")),
        ("we went camping two weekends ago", ("2023-05-27", "2023-05-28", "day")),
        ("last weekend we went biking", ("2023-06-03", "2023-06-04", "day")),
        ("I saw someone drawing the other day", ("2023-06-02", "2023-06-08", "week")),
        ("a few weeks ago I went to a parade", ("2023-05-15", "2023-05-21", "week")),
        ("a couple of days ago it rained", ("2023-06-07", "2023-06-07", "day")),
        ("last summer was fun", ("2022-06-01", "2022-08-31", "season")),
        ("summer 2022 was hot", ("2022-06-01", "2022-08-31", "season")),
    ],
)
def test_expressions_resolve_against_when_they_were_said(text: str, expected: tuple[str, str, str]) -> None:
    assert spans(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # said on Friday 9 June 2023
        ("we had the party on 2023-04-12", ("2023-04-12", "2023-04-12", "day")),
        ("the invoice is dated 13/04/2023", ("2023-04-13", "2023-04-13", "day")),
        ("paid on 04.13.2023", ("2023-04-13", "2023-04-13", "day")),
        ("this morning I went for a run", ("2023-06-09", "2023-06-09", "day")),
        ("this afternoon I met Sam", ("2023-06-09", "2023-06-09", "day")),
        ("a fortnight ago I started pottery", ("2023-05-22", "2023-05-28", "week")),
        ("I'll know in a fortnight", ("2023-06-19", "2023-06-25", "week")),
        ("a few weeks back I joined a gym", ("2023-05-15", "2023-05-21", "week")),
        ("the week before last I visited mum", ("2023-05-22", "2023-05-28", "week")),
        ("the year before last we moved", ("2021-01-01", "2021-12-31", "year")),
        ("the summer before last we went to Greece", ("2021-06-01", "2021-08-31", "season")),
        ("two summers ago I was there", ("2021-06-01", "2021-08-31", "season")),
        ("two Saturdays ago I went to a gig", ("2023-05-27", "2023-05-27", "day")),
        ("I've lived here for a decade", ("2013-01-01", "2013-12-31", "year")),
        ("a decade ago I lived in Ohio", ("2013-01-01", "2013-12-31", "year")),
        ("in mid-2021 I changed jobs", ("2021-05-01", "2021-08-31", "season")),
        ("late 2019 was rough", ("2019-09-01", "2019-12-31", "season")),
        ("at the end of last month I finished my thesis", ("2023-05-21", "2023-05-31", "week")),
        ("we went to Italy last Christmas", ("2022-12-25", "2022-12-25", "day")),
        ("on Christmas Eve we sang", ("2022-12-24", "2022-12-24", "day")),
        ("at Thanksgiving we argued", ("2022-11-24", "2022-11-24", "day")),
        ("we hunted eggs at Easter", ("2023-04-09", "2023-04-09", "day")),
        ("Halloween 2021 was the best", ("2021-10-31", "2021-10-31", "day")),
        ("over the weekend I painted", ("2023-06-10", "2023-06-11", "day")),  # said on a Friday: coming
        ("the week before 2 June 2023 I was ill", ("2023-05-26", "2023-06-01", "week")),
        ("the Friday after May 3, 2023 we left", ("2023-05-05", "2023-05-05", "day")),
    ],
)
def test_more_expressions_people_write(text: str, expected: tuple[str, str, str]) -> None:
    assert spans(text) == [expected]


def test_what_is_not_read_as_a_date() -> None:
    # day and month could be either way round: no event time rather than a wrong one
    assert spans("the party was on 4/12/2023") == []
    assert spans("the party was on 04.12.2023") == []
    assert spans("the party was on 31/02/2023") == []
    # a holiday named in passing is no event ("Thanksgiving traditions", "the Christmas magic")
    assert spans("Do you have any favorite Thanksgiving traditions?") == []
    assert spans("It really captures the Christmas magic") == []
    assert spans("Thanksgiving's always special for us") == []
    assert spans("we love Easter eggs, unlike eastern food") == []


def test_holidays_and_the_weekend_depend_on_the_base_day() -> None:
    monday, dec10 = date(2023, 6, 5), date(2023, 12, 10)
    assert spans("over the weekend I painted", monday) == [("2023-06-03", "2023-06-04", "day")]
    assert spans("on the weekend we hiked", date(2023, 6, 10)) == [("2023-06-10", "2023-06-11", "day")]
    assert spans("I'm going home for Christmas", dec10) == [("2023-12-25", "2023-12-25", "day")]
    assert spans("we went skiing over Christmas", date(2024, 2, 1)) == [("2023-12-25", "2023-12-25", "day")]
    assert spans("next Thanksgiving we host", dec10) == [("2024-11-28", "2024-11-28", "day")]
    labour_day = date(2022, 9, 6)
    assert spans("the labor day bbq gets bigger every year", labour_day) == [("2022-09-05", "2022-09-05", "day")]
    assert spans("Memorial Day weekend was fun", date(2023, 6, 1)) == [("2023-05-27", "2023-05-29", "day")]
    assert spans("on Mother's Day we went out", date(2023, 5, 20)) == [("2023-05-14", "2023-05-14", "day")]
    assert spans("on Good Friday we hiked", date(2023, 4, 10)) == [("2023-04-07", "2023-04-07", "day")]
    # a holiday weekend: the Saturday and Sunday next to it, and the holiday itself
    assert spans("over Labor Day weekend we camped", date(2022, 9, 10)) == [("2022-09-03", "2022-09-05", "day")]
    assert spans("Thanksgiving weekend was busy", date(2022, 12, 1)) == [("2022-11-24", "2022-11-27", "day")]
    assert spans("Fourth of July weekend", date(2023, 7, 10)) == [("2023-07-01", "2023-07-04", "day")]
    assert spans("we've been in since saturday", date(2023, 4, 5)) == [("2023-04-01", "2023-04-01", "day")]
    assert temporal._easter(2024) == date(2024, 3, 31)
    assert temporal._easter(2025) == date(2025, 4, 20)
    assert temporal._easter(2000) == date(2000, 4, 23)


def test_bases_at_the_ends_of_the_calendar_resolve_to_nothing_instead_of_failing() -> None:
    for text in ("last Christmas", "two summers ago", "next tuesday", "in 3 weeks", "999 decades ago"):
        for base in (date(1, 1, 5), date(9999, 12, 30)):
            temporal.find(text, base)  # no exception: what falls off the calendar is dropped
            temporal.query_intervals(text, base)
    assert temporal.resolve_time_value("next tuesday", date(9999, 12, 31)) is None
    assert temporal.find("last Christmas", date(1, 1, 5)) == []


def test_text_without_a_time_expression_has_no_event_time() -> None:
    assert spans("We went to a concert and it was great") == []
    assert not temporal.has_cue("We love painting together")


def test_relative_expressions_need_a_base_but_absolute_dates_do_not() -> None:
    assert spans("yesterday I went bowling", said=None) == []
    assert spans("the launch is on 14 March 2033", said=None) == [("2033-03-14", "2033-03-14", "day")]


def test_weekends_and_seasons_depend_on_the_base_day() -> None:
    sunday = date(2023, 6, 11)
    assert spans("last weekend", sunday) == [("2023-06-03", "2023-06-04", "day")]
    assert spans("this weekend", FRIDAY) == [("2023-06-10", "2023-06-11", "day")]
    assert spans("last summer", date(2023, 9, 15)) == [("2023-06-01", "2023-08-31", "season")]
    assert spans("next summer", date(2023, 9, 15)) == [("2024-06-01", "2024-08-31", "season")]
    assert spans("last winter", date(2023, 3, 15)) == [("2022-12-01", "2023-02-28", "season")]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What did Jon do on 16 March 2022?", ("2022-03-16", "2022-03-16")),
        ("What happened in January 2023?", ("2023-01-01", "2023-01-31")),
        ("Where did she go in 2020?", ("2020-01-01", "2020-12-31")),
        ("What did he do during the last week of August 2023?", ("2023-08-25", "2023-08-31")),
        ("What did he do in the first week of May 2023?", ("2023-05-01", "2023-05-07")),
        ("When was John in Seattle, early August 2023?", ("2023-08-01", "2023-08-10")),
        ("Where was John between August 11 and August 15 2023?", ("2023-08-11", "2023-08-15")),
        ("What did they do last summer?", ("2022-06-01", "2022-08-31")),
        ("What did Mel do between 1 and 10 May 2022?", ("2022-05-01", "2022-05-10")),
        ("What did Mel do between May 1 and 10, 2022?", ("2022-05-01", "2022-05-10")),
        ("What did Caroline do the week before 9 June 2022?", ("2022-06-02", "2022-06-08")),
        ("Where did she go the weekend before 17 July 2022?", ("2022-07-09", "2022-07-10")),
        ("What did she do two weekends before 17 July 2022?", ("2022-07-02", "2022-07-03")),
        ("What did he buy the Friday before 15 July 2022?", ("2022-07-08", "2022-07-08")),
        ("Where was he the weekend after 3 August 2022?", ("2022-08-06", "2022-08-07")),
        ("What did they do in the week of 8 May 2022?", ("2022-05-02", "2022-05-08")),
        ("What did she do on the weekend of 6 August 2022?", ("2022-08-06", "2022-08-07")),
        ("What did she do the first weekend of August 2022?", ("2022-08-06", "2022-08-07")),
        ("What did they do around Christmas 2022?", ("2022-12-22", "2022-12-28")),
        ("What happened on 2022-04-12?", ("2022-04-12", "2022-04-12")),
        ("Where did she live in early 2021?", ("2021-01-01", "2021-04-30")),
    ],
)
def test_query_periods(question: str, expected: tuple[str, str]) -> None:
    periods, _ = temporal.query_plan(question, "2023-01-20T10:00:00")
    assert periods == [expected]


def test_query_plan_adds_the_dates_of_relative_periods_only() -> None:
    _, lexical = temporal.query_plan("what did we do last summer?", "2023-01-20")
    assert lexical.endswith("June 2022 July 2022 August 2022")
    assert temporal.query_plan("what happened in May 2023?", "2023-06-01")[1] == "what happened in May 2023?"
    assert temporal.query_plan("which pet does Ana have?", "2023-06-01") == ([], "which pet does Ana have?")


def test_lexical_unit_carries_the_event_dates() -> None:
    event = [temporal.Interval(date(2022, 3, 16), date(2022, 3, 16), "day", "yesterday").to_dict()]
    row = Row(text="I went bowling yesterday", speaker="Ann", time="2022-03-17", event=event)
    assert lexical_text(row) == "Ann (17 March 2022; 16 March 2022): I went bowling yesterday"
    assert lexical_text(Row(text="hi", speaker="Ann", time="2022-03-17")) == "Ann (17 March 2022): hi"


def test_time_prior_lifts_rows_whose_event_or_said_time_is_in_the_period() -> None:
    march = [{"start": "2022-03-16", "end": "2022-03-16", "precision": "day", "expr": "yesterday"}]
    rows = [
        Row(text="went bowling with the team", time="2022-05-01", event=None),
        Row(text="went bowling with the team again", time="2022-03-17", event=march),
        Row(text="went bowling with friends", time="2022-03-16", event=None),
    ]
    vectors = np.tile(np.eye(4, dtype=np.float32)[0], (3, 1))
    lex = LexicalIndex()
    lex.add([lexical_text(r) for r in rows])
    inputs = RankInputs(vectors=vectors, lexical=lex, rows=rows, structure=structure(rows))
    periods = [("2022-03-16", "2022-03-16")]
    assert in_periods(inputs, periods, "event").tolist() == [False, True, False]
    assert in_periods(inputs, periods, "said").tolist() == [False, False, True]
    assert in_periods(inputs, periods).tolist() == [False, True, True]
    settings = RankSettings(episode=0.0, window=0.0)
    base = dict(rank(inputs, "bowling", vectors[0], k=3, settings=settings))
    with_time = dict(rank(inputs, "bowling", vectors[0], k=3, settings=settings, periods=periods))
    assert max(base, key=base.get) == 0  # without the period, the shortest matching row wins
    assert [round(with_time[r] - base[r], 5) for r in range(3)] == [0.0, settings.time, settings.time]
    strong = dict(rank(inputs, "bowling", vectors[0], k=3, settings=RankSettings(time=5.0), periods=periods))
    assert min(strong, key=strong.get) == 0


RECORDS = [
    {"text": "I went bowling yesterday with my team", "time": "2022-03-17", "speaker": "Ana", "id": "1"},
    {"text": "Three years ago I was in Rio for the carnival", "time": "2022-03-17", "speaker": "Ana", "id": "2"},
    {"text": "I love pasta with pesto", "time": "2022-03-16", "speaker": "Ben", "id": "3"},
    {"text": "Let's go hiking in the Alps next month", "time": "2022-03-20", "speaker": "Ben", "id": "4"},
]


def test_ingest_stores_event_time_and_hits_carry_it(make_cube) -> None:
    cube = make_cube(RECORDS)
    stored = {r.source_id: r for r in cube.read_state().current.values()}
    assert stored["1"].event_time == [
        {"start": "2022-03-16", "end": "2022-03-16", "precision": "day", "expr": "yesterday"}
    ]
    assert stored["3"].event_time is None
    line = next(ln for ln in cube.memories_path.read_text().splitlines() if "bowling" in ln)
    assert '"event_time":[{"end":"2022-03-16"' in line  # canonical JSON, documented in FORMAT.md
    # Two of Ana's memories were said that day, and the Rio one borrows its neighbours' date words: with
    # four rows the order is a coin toss, and not the point here; the event time the hit carries is.
    hits = [h.to_dict() for h in query(cube, "what did Ana do on 16 March 2022?", k=2)]
    hit = next(h for h in hits if h["source_id"] == "1")
    assert hit["event_time"][0]["start"] == "2022-03-16"


def test_since_until_match_event_said_or_either(make_cube) -> None:
    cube = make_cube(RECORDS)

    def ids(field: str, since: str, until: str) -> set[str]:
        hits = query(cube, "anything", k=10, filters=Filters(since=since, until=until, time_field=field))
        return {h.source_id for h in hits}

    assert ids("event", "2019-01-01", "2019-12-31") == {"2"}
    assert ids("said", "2019-01-01", "2019-12-31") == set()
    assert ids("either", "2022-04-01", "2022-04-30") == {"4"}
    assert ids("either", "2022-03-16", "2022-03-16") == {"1", "3"}
    assert ids("said", "2022-03-16", "2022-03-16") == {"3"}
    with pytest.raises(UsageError):
        Filters(time_field="when")


def test_records_written_before_event_time_still_read_and_keep_unknown_fields() -> None:
    old = {"id": "m-1", "version": 1, "text": "x", "status": "active", "created": "2024-01-01T00:00:00Z"}
    record = MemoryRecord.from_dict({**old, "future_field": {"a": 1}})
    assert record.event_time is None and "event_time" not in record.to_dict()
    assert record.to_dict()["future_field"] == {"a": 1}
    with pytest.raises(ValueError):
        MemoryRecord.from_dict({**old, "event_time": "yesterday"})
    assert temporal.intervals_of([{"start": "bad"}, {"start": "2024-01-02", "end": "2024-01-02"}])[0].end == date(
        2024, 1, 2
    )


def test_relative_record_time_needs_a_base(make_cube) -> None:
    with pytest.raises(BadInput, match="relative"):
        parse_time("next tuesday", "f.jsonl:1")
    with pytest.raises(BadInput, match="relative"):
        parse_time("8 May", "f.jsonl:1")  # no year: it would be this year's, by the clock
    assert parse_time("next tuesday", "f.jsonl:1", base="2024-03-14") == "2024-03-19"
    assert parse_time("yesterday", "f.jsonl:1", base="2024-03-14") == "2024-03-13"
    assert parse_time("1:56 pm on 8 May, 2023", "x") == "2023-05-08T13:56:00"  # absolute: no base needed
    cube = make_cube()
    body = json.dumps({"text": "dentist appointment", "time": "next tuesday"}).encode()
    before = cube.memories_path.read_bytes()
    with pytest.raises(BadInput, match="'time_base' DATE") as refused:
        ingest(cube, [Source("r.jsonl", body)], actor="tester")
    assert "(ingest: --time-base DATE" in describe(refused.value)[0]  # as the CLI shows it
    assert cube.memories_path.read_bytes() == before
    ingest(cube, [Source("r.jsonl", body)], actor="tester", defaults=Defaults(time_base="2024-03-14"))
    own = json.dumps({"text": "call mum", "time": "tomorrow", "time_base": "2024-03-14"}).encode()
    ingest(cube, [Source("s.jsonl", own)], actor="tester")
    times = {r.text: r.time for r in cube.read_state().current.values()}
    assert times == {"dentist appointment": "2024-03-19", "call mum": "2024-03-15"}


def test_numeric_record_time_whose_day_and_month_order_is_open_needs_a_date_order(make_cube) -> None:
    with pytest.raises(BadInput, match="day/month or month/day"):
        parse_time("4/12/2023", "f.jsonl:1")
    with pytest.raises(BadInput, match="day/month or month/day"):
        parse_time("04.12.23 10:30", "f.jsonl:1")
    assert parse_time("4/12/2023", "x", date_order="dmy") == "2023-12-04"
    assert parse_time("4/12/2023", "x", date_order="mdy") == "2023-04-12"
    assert parse_time("04.12.2023 10:30", "x", date_order="dmy") == "2023-12-04T10:30:00"
    assert parse_time("13/04/2023", "x") == "2023-04-13"  # the numbers settle it: no order needed
    assert parse_time("04/13/2023", "x") == "2023-04-13"
    assert parse_time("5/5/2023", "x") == "2023-05-05"
    assert parse_time("2023/05/08", "x") == "2023-05-08"  # year first is not ambiguous
    with pytest.raises(UsageError) as asked:  # a query's filter points at ISO, not at ingest's option
        Filters(since="4/12/2023")
    assert "ISO date" in describe(asked.value)[0] and "date-order" not in describe(asked.value)[0]
    cube = make_cube()
    body = json.dumps({"text": "party", "time": "4/12/2023"}).encode()
    before = cube.memories_path.read_bytes()
    with pytest.raises(BadInput) as refused:
        ingest(cube, [Source("r.jsonl", body)], actor="tester")
    assert "(ingest: --date-order dmy or mdy)" in describe(refused.value)[0]  # as the CLI shows it
    assert cube.memories_path.read_bytes() == before  # nothing stored
    with pytest.raises(UsageError, match="dmy"):
        ingest(cube, [Source("r.jsonl", body)], actor="tester", defaults=Defaults(date_order="ymd"))
    ingest(cube, [Source("r.jsonl", body)], actor="tester", defaults=Defaults(date_order="dmy"))
    assert [r.time for r in cube.read_state().current.values()] == ["2023-12-04"]


def test_cli_time_base_time_field_and_json_event_time(tmp_path) -> None:
    cube = str(tmp_path / "c")
    assert run("init", cube)[0] == 0
    records = tmp_path / "r.jsonl"
    records.write_text(
        json.dumps({"text": "I got my new bike yesterday", "time": "today", "speaker": "Ana"})
        + "\n"
        + json.dumps({"text": "The garden needs water", "time": "2024-03-10", "speaker": "Ana"})
        + "\n"
    )
    code, _, err = run("ingest", cube, str(records))
    assert code == 1 and "is relative" in err and "--time-base" in err and "Traceback" not in err
    assert run("ingest", cube, str(records), "--time-base", "2024-03-14")[0] == 0
    args = ["query", cube, "bike", "--json", "--no-usage", "--since", "2024-03-13", "--until", "2024-03-13"]
    code, out, _ = run(*args, "--time-field", "event")
    hits = json.loads(out)["hits"]
    assert [h["text"] for h in hits] == ["I got my new bike yesterday"]
    assert hits[0]["time"] == "2024-03-14" and hits[0]["event_time"][0]["start"] == "2024-03-13"
    assert json.loads(run(*args, "--time-field", "said")[1])["hits"] == []
    assert run(*args, "--time-field", "when")[0] == 2


def test_months_without_a_year_in_questions_are_the_latest_before_the_cube_ends() -> None:
    periods, _ = temporal.query_plan("Which country was Tim visiting in the second week of November?", "2024-01-10")
    assert periods == [("2023-11-08", "2023-11-14")]
    assert temporal.query_plan("what did she do in June?", "2024-01-10")[0] == [("2023-06-01", "2023-06-30")]
    # in a memory, "in June" said in April is the coming June
    assert spans("the offsite will be held in June", date(2023, 4, 2)) == [("2023-06-01", "2023-06-30", "month")]


def test_questions_asking_when_favour_rows_that_date_something() -> None:
    assert temporal.asks_when("When did Nate get his turtles?")
    assert temporal.asks_when("How long has Nate had his turtles?")
    assert temporal.asks_when("Which year did they meet?")
    assert not temporal.asks_when("What did Nate get when he was young?")
    dated = [{"start": "2019-01-01", "end": "2019-12-31", "precision": "year", "expr": "for 3 years"}]
    rows = [Row(text="Nate has turtles", time="2022-01-23"), Row(text="Nate has had turtles", event=dated)]
    vectors = np.tile(np.eye(4, dtype=np.float32)[0], (2, 1))
    lex = LexicalIndex()
    lex.add([lexical_text(r) for r in rows])
    inputs = RankInputs(vectors=vectors, lexical=lex, rows=rows, structure=structure(rows))
    off = RankSettings(dated=0.0, episode=0.0, window=0.0)
    on = RankSettings(dated=1.0, episode=0.0, window=0.0)
    for question in ("When did Nate get turtles?", "Does Nate have turtles?"):
        before = dict(rank(inputs, question, vectors[0], k=2, settings=off))
        after = dict(rank(inputs, question, vectors[0], k=2, settings=on))
        lift = 1.0 if question.startswith("When") else 0.0
        assert [round(after[r] - before[r], 5) for r in (0, 1)] == [0.0, lift]


def test_update_of_text_or_time_resolves_event_time_again(make_cube) -> None:
    from memos_cli.engine.plaintext.versions import Update, update

    cube = make_cube(RECORDS[:1])
    memory = next(iter(cube.read_state().current.values()))
    moved = update(cube, memory.id, Update(time="2022-04-01"), actor="tester")
    assert moved.event_time[0]["start"] == "2022-03-31"
    retold = update(cube, memory.id, Update(text="I went bowling with my team"), actor="tester")
    assert retold.event_time is None
    tagged = update(cube, memory.id, Update(add_tags=["fun"]), actor="tester")
    assert tagged.event_time is None and tagged.version == 4
