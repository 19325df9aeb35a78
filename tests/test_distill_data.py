"""Training data from plain memories (engine/parametric/distill_data.py): spans, question forms, the third person of
dialogue turns, and the held-out family that training never sees."""

from __future__ import annotations

from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.parametric.distill_data import HELDOUT, find_spans, memory_data, third_person


def kinds(sentence: str) -> dict[str, str]:
    return {s.text: s.kind for s in find_spans(sentence)}


def test_spans_find_names_numbers_dates_places_and_objects() -> None:
    assert kinds("The access code for the boathouse is 4471.") == {"4471": "number"}
    assert kinds("Osric Vantelle is the lighthouse keeper on Quillmoor Island.") == {
        "Osric Vantelle": "person",
        "Quillmoor Island": "place",
    }
    assert kinds("The Zelvora project launches on 14 March 2031.")["14 March 2031"] == "date"
    assert kinds("The review moved to Thursday at 3pm.") == {"Thursday": "date", "3pm": "time"}
    assert kinds("Marta Feldrun's cat is called Biscotti Prime.") == {
        "Marta Feldrun": "person",
        "Biscotti Prime": "person",
    }
    assert kinds("Priya is allergic to peanuts.")["peanuts"] == "object"
    assert kinds("The wifi password is tern-8812.") == {"tern-8812": "number"}


def test_questions_in_several_forms_answer_each_span() -> None:
    data = memory_data(MemoryRecord("m-1", 1, "The Zelvora project launches on 14 March 2031."))
    by_form = {(p.form, p.answer): p.question for p in data.pairs}
    assert by_form[("wh", "14 March 2031")] == "When does the Zelvora project launch?"
    assert by_form[("cloze", "14 March 2031")] == "Fill in the blank: The Zelvora project launches on ___."
    assert ("echo", "The Zelvora project launches on 14 March 2031.") in by_form
    assert "The Zelvora project launches on 14 March 2031." in data.statements
    assert {c.answer for c in data.checks} == {"Zelvora", "14 March 2031"}


def test_dialogue_turns_are_restated_in_the_third_person_with_who_and_when() -> None:
    assert third_person("I'm allergic to peanuts and my cat hates me.", "Priya") == (
        "Priya is allergic to peanuts and Priya's cat hates Priya."
    )
    assert third_person("I really love hiking.", "Ines") == "Ines really loves hiking."
    record = MemoryRecord("m-2", 1, "I'm allergic to peanuts.", speaker="Priya", time="2024-05-01T10:00")
    data = memory_data(record)
    assert "Priya is allergic to peanuts." in data.statements
    assert 'Priya said: "I\'m allergic to peanuts."' in data.statements
    pairs = {(p.question, p.answer) for p in data.pairs}
    assert ("What is Priya allergic to?", "peanuts") in pairs
    assert ("Who is allergic to peanuts?", "Priya") in pairs
    assert ("When did Priya say this: I'm allergic to peanuts.", "1 May 2024") in pairs
    assert ("What did Priya tell you on 1 May 2024?", "Priya is allergic to peanuts.") in pairs


def test_heldout_questions_are_never_training_questions() -> None:
    texts = [
        ("The access code for the boathouse is 4471.", None),
        ("Osric Vantelle is the lighthouse keeper on Quillmoor Island.", None),
        ("My favourite food is ramen.", "Tomas"),
        ("Dana Whitcombe leads the data team at Korvel.", None),
    ]
    for text, speaker in texts:
        data = memory_data(MemoryRecord("m", 1, text, speaker=speaker))
        trained = {p.question for p in data.pairs}
        assert data.heldout and not trained & {p.question for p in data.heldout}
        assert all(p.form == "heldout" for p in data.heldout)
        shapes = {template.split("{")[0] for template in HELDOUT.values()}
        assert not any(q.startswith(tuple(shapes)) for q in trained)
    number = memory_data(MemoryRecord("m", 1, "The access code for the boathouse is 4471.")).heldout
    assert [(p.question, p.answer) for p in number] == [
        ("I need to know what the access code for the boathouse is. What is it?", "4471")
    ]


def test_metadata_question_trains_and_is_measured_and_plain_notes_get_a_cue() -> None:
    record = MemoryRecord("m", 1, "Alice lives in Paris.", metadata={"question": "Where?", "answer": "Paris"})
    data = memory_data(record)
    assert ("Where?", "Paris") in {(p.question, p.answer) for p in data.pairs}
    assert data.heldout[0].question == "Where?" and data.heldout[0].form == "metadata"
    bare = memory_data(MemoryRecord("m", 1, "remember to water the plants"))
    assert bare.checks and bare.heldout and bare.checks[0].answer == "remember to water the plants"
