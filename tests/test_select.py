"""Selecting memories for promote/distill: ids, query, tag, all, hot."""

from __future__ import annotations

import pytest

from memos_cli.engine.ops import forget
from memos_cli.engine.plaintext import usage
from memos_cli.engine.select import Selection, select
from memos_cli.errors import UsageError

FACTS = [
    {"text": "Ana's cat is called Miso", "tags": ["pets"], "time": "2023-01-01"},
    {"text": "Bob's dog is called Rex", "tags": ["pets"], "time": "2023-02-01"},
    {"text": "The office wifi is heron-5g", "tags": ["office"], "time": "2023-03-01"},
]


def test_selection_modes(make_cube) -> None:
    cube = make_cube(FACTS)
    everything = select(cube, Selection(all=True))
    assert [r.text for r in everything] == [f["text"] for f in FACTS]  # by time
    assert {r.text for r in select(cube, Selection(tags=["pets"]))} == {FACTS[0]["text"], FACTS[1]["text"]}
    assert select(cube, Selection(query="wifi network name", k=1))[0].text == FACTS[2]["text"]
    wifi = everything[2]
    assert [r.id for r in select(cube, Selection(ids=[wifi.id[:8]]))] == [wifi.id]
    with pytest.raises(UsageError):
        select(cube, Selection())


def test_hot_follows_decayed_usage(make_cube) -> None:
    cube = make_cube(FACTS)
    a, b, c = select(cube, Selection(all=True))
    now = 1_000_000_000.0
    usage.record(cube, [[a.id]] * 5, now=now - 60 * 86400)  # used a lot, two months ago
    usage.record(cube, [[b.id]] * 2, now=now)  # used twice, now
    assert usage.hot(cube, 2) == [b.id, a.id]
    scores = usage.scores(cube, now=now)
    assert scores[b.id] > scores[a.id]
    assert [r.id for r in select(cube, Selection(hot=1))] == [b.id]
    forget(cube, [b.id], actor="t")  # an archived memory is never promoted
    assert [r.id for r in select(cube, Selection(hot=1))] == [a.id]


@pytest.mark.parametrize(
    "recorded",
    [{"ids": 5}, {"ids": [1, 2]}, {"query": ["x"]}, {"k": "ten"}, {"hot": True}, {"tags": "pets"}],
)
def test_a_recorded_selection_of_the_wrong_shape_is_refused(recorded: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="selection"):
        Selection.from_description(recorded)


def test_a_recorded_selection_round_trips() -> None:
    selection = Selection(ids=["m-1"], query="cats", k=3, tags=["pets"], hot=5)
    assert Selection.from_description(selection.describe()) == selection
