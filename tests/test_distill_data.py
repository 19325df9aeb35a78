"""Training data from plain memories (engine/parametric/distill_data.py): spans, question forms, the third person of
dialogue turns, and the held-out family that training never sees."""

from __future__ import annotations

from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.parametric.distill_data import HELDOUT, find_spans, memory_data, third_person


def kinds(sentence: str) -> dict[str, str]:
    return {s.text: s.kind for s in find_spans(sentence)}


def checks(text: str, speaker: str | None = None) -> dict[str, str]:
    """The training checks (question -> answer) built for one memory."""
    return {c.question: c.answer for c in memory_data(MemoryRecord("m", 1, text, speaker=speaker)).checks}


def test_spans_find_names_numbers_dates_places_and_objects() -> None:
    assert kinds("The access code for the boathouse is 4471.") == {"4471": "number"}
    assert kinds("Osric Vantelle is the lighthouse keeper on Quillmoor Island.") == {
        "Osric Vantelle": "person",
        "lighthouse keeper": "object",
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
    assert kinds("Signed the lease on 22/08/2025.")["22/08/2025"] == "date"  # numeric dates too
    assert kinds("Version 2.5 ships soon.")["2.5"] == "number"


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


def test_objects_stop_at_prepositions_and_conjunctions_and_skip_modals() -> None:
    assert kinds("Ines always drinks oat milk in Ines's coffee.") == {"Ines": "person", "oat milk": "object"}
    assert kinds("Kwame can't stand coriander.")["coriander"] == "object"
    assert kinds("Yusuf prefers green tea to black tea.")["green tea"] == "object"
    assert kinds("Jonah takes the train everywhere.")["train"] == "object"
    # a word that labels the number after it is not an object; nor is anything when a date is the answer
    assert kinds("The storage unit at Halden is number 217.") == {"Halden": "place", "217": "number"}
    assert "place" not in kinds("The Tarnwick regatta takes place on 9 August 2031.")
    assert kinds("Leila runs along the Tessel canal before work.")["Tessel canal"] == "place"
    assert kinds("My dentist is Dr. Sabine Oakhurst.") == {"Dr. Sabine Oakhurst": "person"}


def test_compound_sentences_are_asked_about_clause_by_clause() -> None:
    from memos_cli.engine.parametric.spans import clauses

    assert clauses("Lukas is vegetarian, but Lukas eats eggs.") == ["Lukas is vegetarian.", "Lukas eats eggs."]
    assert clauses("I bought apples, pears and plums.") == ["I bought apples, pears and plums."]
    data = memory_data(MemoryRecord("m", 1, "I hate flying, so I take the train everywhere.", speaker="Jonah"))
    pairs = {(p.question, p.answer) for p in data.pairs}
    assert ("What does Jonah take everywhere?", "train") in pairs
    assert ("What does Jonah hate?", "flying") in pairs


def test_variant_questions_reword_the_subject_and_ask_for_the_type() -> None:
    def variants(text: str, speaker: str | None = None) -> set[tuple[str, str]]:
        data = memory_data(MemoryRecord("m", 1, text, speaker=speaker))
        return {(p.question, p.answer) for p in data.pairs if p.form == "variant"}

    assert ("What is the code for the boathouse?", "4471") in variants("The access code for the boathouse is 4471.")
    assert ("What is the combination for the Frostgate bike lock?", "3907") in variants(
        "The Frostgate bike lock combination is 3907."
    )
    assert ("What kind of milk does Ines always drink in Ines's coffee?", "oat milk") in variants(
        "I always drink oat milk in my coffee.", "Ines"
    )
    assert ("Which band is Tomas's favourite?", "Copper Lanterns") in variants(
        "My favourite band is the Copper Lanterns.", "Tomas"
    )
    floor = memory_data(MemoryRecord("m", 1, "The Kingfisher flat is on floor 11."))
    assert ("What floor is the Kingfisher flat on?", "11") in {(p.question, p.answer) for p in floor.checks}
    assert ("Who was the architect on the Orvale bridge?", "Tobiah Senwick") in variants(
        "The lead architect on the Orvale bridge was Tobiah Senwick."
    )


def test_past_tense_verbs_have_their_base_form() -> None:
    from memos_cli.engine.parametric.spans import base_verb

    pairs = {"closed": "close", "opened": "open", "stopped": "stop", "called": "call", "carried": "carry"}
    pairs |= {"liked": "like", "started": "start", "used": "use", "missed": "miss", "played": "play"}
    assert {w: base_verb(w) for w in pairs} == pairs
    assert base_verb("need") is None


def test_a_capitalised_english_word_opening_a_sentence_is_not_a_name() -> None:
    assert kinds("Vet appointment for Biscuit moved to Friday at 4pm.") == {
        "Biscuit": "name",
        "Friday": "date",
        "4pm": "time",
    }
    assert "Sabrine Thalcott" in kinds("Met Sabrine Thalcott today.")
    assert kinds("Passport renewal deadline is 9 November 2031.") == {"9 November 2031": "date"}
    # ... but it is a name before a verb, a copula or as half of a two-word name
    assert kinds("Mark plays the cello.")["Mark"] == "person"
    assert kinds("Rose is the treasurer.")["Rose"] == "person"
    assert kinds("Grace Hopper wrote the compiler.")["Grace Hopper"] == "person"
    assert "Rose" in kinds("We asked Rose about it.")


def test_notes_lose_their_marker_and_label_value_notes_become_statements() -> None:
    assert checks("Note: the spare key is under the blue flowerpot.") == {
        "Where is the spare key?": "under the blue flowerpot"
    }
    assert checks("Bike lock combo: 4817")["What is the bike lock combo?"] == "4817"
    assert checks("physio -> Dr. Orlaith Quenby") == {"Who is the physio?": "Dr. Orlaith Quenby"}
    assert checks("Kestrel Bay regatta: 3 June 2031")["When is the Kestrel Bay regatta?"] == "3 June 2031"
    listed = checks("storage unit @ Pinecrest: unit 318, gate code 90427")
    assert listed["What is the gate code for the storage unit at Pinecrest?"] == "90427"
    assert listed["What is the unit for the storage unit at Pinecrest?"] == "318"
    # a time's colon is not a label
    assert (
        checks("The Wrenfield office closes at 6:30 on Fridays.")[
            "What time does the Wrenfield office close on Fridays?"
        ]
        == "6:30"
    )
    assert "Who would always rather take the night train than fly?" in checks(
        "Honestly I'd always rather take the night train than fly.", "Oskar"
    )


def test_units_pronouns_and_got_married() -> None:
    assert (
        checks("The project budget for Lumen is 48,000 euros.")["What is the project budget for Lumen?"]
        == "48,000 euros"
    )
    assert (
        checks("The greenhouse thermostat is set to 24 degrees.")["What is the greenhouse thermostat set to?"]
        == "24 degrees"
    )
    met = checks("Met Sabrine Thalcott today; she takes over as site manager at the Quarrydown depot next month.")
    assert met["Who takes over as site manager at the Quarrydown depot next month?"] == "Sabrine Thalcott"
    wed = checks("Ilse and Bram got married on 17 September 2029 in Oxwell Gardens.")
    assert wed["When did Ilse and Bram get married in Oxwell Gardens?"] == "17 September 2029"


def test_a_huge_memory_is_asked_about_its_first_part_quickly() -> None:
    import time

    from memos_cli.engine.parametric.distill_data import RULE_CHARS

    huge = "The Velmont office closes at 6:30 on Fridays and " + "Ada Brisk and Tom Vale went " * 12_000 + "home."
    started = time.perf_counter()
    data = memory_data(MemoryRecord("m", 1, huge))
    assert time.perf_counter() - started < 5  # 330 kB in one sentence took 27 s before the cap
    assert all(len(p.question) <= RULE_CHARS + 200 for p in data.pairs + data.heldout)
    assert max(len(s) for s in data.statements) <= RULE_CHARS + 100
    assert any(c.answer == "6:30" for c in data.checks)


def test_note_shorthand_is_spelled_out_before_asking() -> None:
    from memos_cli.engine.parametric.distill_data import plain_statements, spelled_out

    assert spelled_out("flight back frm osterwick, dep 06:40") == "flight back from osterwick, departure 06:40"
    assert spelled_out("Membership no. for the rowing club") == "Membership number for the rowing club"
    assert spelled_out("Say no. Then go.") == "Say no. Then go."  # "no." is "number" only before what numbers take
    assert spelled_out("REF AB-12, pw inside") == "REF AB-12, password inside"  # all capitals may be a name
    assert spelled_out("meet w/ Sam") == "meet with Sam"
    # "NQ 604" is one flight number, not a label "NQ" with the value 604
    assert plain_statements("flight back frm osterwick -> NQ 604, dep 06:40") == [
        "The flight back from osterwick is NQ 604, departure 06:40.",
        "The departure for the flight back from osterwick is 06:40.",
    ]


def test_spans_flight_numbers_and_names_with_their_nouns() -> None:
    assert kinds("The flight is NQ 604 at 06:40.") == {"NQ 604": "number", "06:40": "time"}
    assert kinds("Take the BA 2490 tomorrow.")["BA 2490"] == "number"
    assert "5521" in kinds("My ID 5521 opens it.")  # a label before the digits is not part of them
    # a name before common nouns, in an object, is asked about with them (the answer says what it is) ...
    assert kinds("He was adopted from the Crestwyn animal shelter.") == {"Crestwyn animal shelter": "name"}
    assert kinds("Bea is training for the Harrowfield half marathon.")["Harrowfield half marathon"] == "name"
    # ... but not past a verb, and not in the subject
    assert "Marlow Street" in kinds("The lease on the Marlow Street flat ends on 31 July 2032.")
    assert "Pelhurst" in kinds("The Pelhurst allotment society is chaired by Hesper Mauldin.")
    # what a favourite restaurant is called is a name, asked with "what"; a mayor is a person
    assert kinds("Ignatius's favourite restaurant is Casa Brindle on Kilnsey Row.")["Casa Brindle"] == "name"
    assert kinds("Ignatius's favourite restaurant is Casa Brindle on Kilnsey Row.")["Kilnsey Row"] == "place"
    assert kinds("The mayor of Stillwater Cove is Imogen Tarrasque.")["Imogen Tarrasque"] == "person"
    # a possessor's noun is not an object ("Who is Wendell's sister?" asks it), nor a pronoun phrase
    assert kinds("Tindra is Wendell's sister.") == {"Tindra": "person", "Wendell": "person"}
    assert kinds("I keep forgetting it lol") == {}


def test_clauses_split_comma_splices_and_drop_requests() -> None:
    from memos_cli.engine.parametric.spans import clauses

    assert clauses("Jarrah is allergic to cashews, so please keep them out of anything you cook.") == [
        "Jarrah is allergic to cashews."
    ]
    assert clauses("Her favourite cafe is Casa Brindle on Kilnsey Row, Ignatius would eat there every week.") == [
        "Her favourite cafe is Casa Brindle on Kilnsey Row.",
        "Ignatius would eat there every week.",
    ]
    assert clauses("I love the Copper Lanterns, they play every Friday.") == [
        "I love the Copper Lanterns.",
        "They play every Friday.",
    ]
    assert clauses("In 2024, Quill opened it.") == ["In 2024, Quill opened it."]
    assert clauses("Ines, Tomas and Kwame like tea.") == ["Ines, Tomas and Kwame like tea."]


def test_appositions_are_asked_as_their_own_statements() -> None:
    from memos_cli.engine.parametric.distill_data import appositions

    assert appositions("Tindra, Wendell's sister, runs a pottery studio in Brackenholt.") == [
        "Tindra runs a pottery studio in Brackenholt.",
        "Tindra is Wendell's sister.",
    ]
    assert appositions("My godmother, Zephyrine Okafor, teaches cello.") == [
        "Zephyrine Okafor teaches cello.",
        "My godmother is Zephyrine Okafor.",
    ]
    assert appositions("Ines, Tomas and Kwame like tea.") == ["Ines, Tomas and Kwame like tea."]
    data = memory_data(MemoryRecord(id="a", version=1, text="Brambleton, our ferret, turned four in spring."))
    asked = {p.question: p.answer for p in data.pairs}
    assert asked["Who is our ferret?"] == "Brambleton"
    assert asked["Who turned four in spring?"] == "Brambleton"
    assert "Brambleton is our ferret." in data.statements


def test_questions_never_hold_their_answer_and_codes_are_asked_by_their_label() -> None:
    record = MemoryRecord(
        id="r",
        version=1,
        text="My favourite restaurant is Casa Brindle, I'd eat there every week if I could.",
        speaker="Ignatius",
    )
    data = memory_data(record)  # "Ignatius would eat there if Ignatius could": no question about "Ignatius" there
    assert data.checks and data.heldout
    for pair in data.checks + data.heldout:
        assert pair.answer.lower() not in pair.question.lower(), pair
    wifi_note = "the wifi at the Bleakwater cabin uses the password plumwick59"
    wifi = memory_data(MemoryRecord(id="w", version=1, text=wifi_note))
    assert ("What password does the wifi at the Bleakwater cabin use?", "plumwick59") in {
        (p.question, p.answer) for p in wifi.checks
    }
    parcel_note = "Our parcel was shipped with tracking number ZX-58103-Q."
    parcel = memory_data(MemoryRecord(id="p", version=1, text=parcel_note))
    assert "What tracking number was our parcel shipped with?" in {p.question for p in parcel.checks}


def test_when_is_also_asked_of_a_day_and_time_said_together() -> None:
    data = memory_data(MemoryRecord(id="o", version=1, text="The Wrenfield office closes at 6:30 on Fridays."))
    asked = {(p.question, p.answer) for p in data.checks}
    assert ("When does the Wrenfield office close?", "6:30 on Fridays") in asked
    assert ("What time does the Wrenfield office close on Fridays?", "6:30") in asked
    lone = memory_data(MemoryRecord(id="l", version=1, text="The review moved to Thursday."))
    assert [p.answer for p in lone.checks] == ["Thursday"]


def test_street_abbreviations_and_where_answers_keep_their_preposition() -> None:
    from memos_cli.engine.parametric.distill_data import spelled_out

    assert spelled_out("bike locker at Tandry St, combo 0-9-3-6") == "bike locker at Tandry Street, combo 0-9-3-6"
    assert spelled_out("We live on Mill Rd. It is quiet.") == "We live on Mill Road. It is quiet."
    assert spelled_out("the Tandry St. bike locker") == "the Tandry Street bike locker"
    assert spelled_out("St Ives is lovely") == "St Ives is lovely"  # a saint, before a name
    assert kinds("The spare key is under the blue watering can.") == {"under the blue watering can": "place"}
    assert kinds("The spare key is under green watering can, back porch.") == {"under green watering can": "place"}
    data = memory_data(MemoryRecord(id="k", version=1, text="The spare key is under the blue watering can."))
    assert ("Where is the spare key?", "under the blue watering can") in {(p.question, p.answer) for p in data.checks}


def test_clauses_split_at_dashes_and_pronoun_subjects_and_leave_asides_out() -> None:
    from memos_cli.engine.parametric.spans import clauses

    assert clauses("Hesper and Rook adopted Tallowfax in August (she's 4) and they're fostering Mizzen.") == [
        "Hesper and Rook adopted Tallowfax in August.",
        "They're fostering Mizzen.",
    ]
    assert clauses("Lucan's at the Ormsby Kite Museum now — it's next to the lighthouse in Port Ambrel.") == [
        "Lucan's at the Ormsby Kite Museum now.",
        "It's next to the lighthouse in Port Ambrel.",
    ]
    assert clauses("passports are in the grey box (behind the board games)") == ["Passports are in the grey box."]
    assert clauses("Ilse and Bram got married on 3 June.") == ["Ilse and Bram got married on 3 June."]
    assert clauses("Fish and chips and peas are on the menu.") == ["Fish and chips and peas are on the menu."]
    assert clauses("The shop is open Mon - Fri from 9 to 5.") == ["The shop is open Mon - Fri from 9 to 5."]
    assert clauses("Gate code: 4819# — the keypad is on the left-hand pillar.") == [
        "Gate code: 4819#.",
        "The keypad is on the left-hand pillar.",
    ]


def test_sentences_end_neither_after_abbreviations_nor_inside_brackets_and_notes_split_in_lower_case() -> None:
    from memos_cli.engine.parametric.spans import sentences

    assert sentences("Ottilie next door (no. 14) used to be a vet. She keeps goats.") == [
        "Ottilie next door (no. 14) used to be a vet.",
        "She keeps goats.",
    ]
    assert sentences("Call Dr. Sabine on tel. 0161 555 203, approx. 3 rings.") == [
        "Call Dr. Sabine on tel. 0161 555 203, approx. 3 rings."
    ]
    assert sentences("new landlord = Fenwick Tarrasco. he manages the whole block") == [
        "new landlord = Fenwick Tarrasco.",
        "he manages the whole block",
    ]
    assert sentences("Apples, pears etc. and more. Also plums (see the list. It is long) today.") == [
        "Apples, pears etc. and more.",
        "Also plums (see the list. It is long) today.",
    ]
    assert sentences("I met J. R. Tolkien at 5 p.m. on Friday. He was kind.") == [
        "I met J. R. Tolkien at 5 p.m. on Friday.",
        "He was kind.",
    ]
    # the landlord is then asked about as a plain statement
    assert (
        checks("new landlord as of this month = Fenwick Tarrasco. he manages the Quillmoor block")[
            "Who is the new landlord as of this month?"
        ]
        == "Fenwick Tarrasco"
    )


def test_a_note_opening_with_a_reminder_to_oneself_is_asked_about_without_it() -> None:
    for opening in (
        "Just so I don't forget:",
        "Note to self -",
        "For the record,",
        "dont forget:",
        "Just so I don’t forget:",
    ):
        asked = checks(f"{opening} Dr. Sunniva Okarsdottir is my dentist at Pellham Dental.")
        assert "Who is my dentist at Pellham Dental?" in asked, (opening, asked)
        assert not any("forget" in q or "record" in q or "self" in q for q in asked), (opening, asked)


def test_answers_keep_their_whole_extent() -> None:
    # a plural subject before its verb is not the verb: the object is what follows the copula
    assert kinds("My favourite flowers are ranunculus, the peachy ones.") == {"ranunculus": "object"}
    assert kinds("My sister drinks oat milk in her coffee.") == {"oat milk": "object"}
    assert set(checks("Christmas decorations -> loft").values()) >= {"loft"}
    # a code written in two groups is one answer; plain numbers and flight numbers are unchanged
    assert kinds("Trailer plate = KV71 ZRD") == {"KV71 ZRD": "number"}
    assert kinds("Our postcode is SW1A 1AA now.")["SW1A 1AA"] == "number"
    assert kinds("Flight NQ 604 leaves at 6pm.") == {"NQ 604": "number", "6pm": "time"}
    assert kinds("The access code for the boathouse is 4471.") == {"4471": "number"}
    # a name with its model number, and with the nouns after a possessive
    assert kinds("Bought a Harnwick 9 e-bike from Spokesmith.")["Harnwick 9"] == "name"
    assert "Verlaine fountain pen" in kinds("I still sign everything with my grandad's Verlaine fountain pen.")
    # a title introduces a name in a note written in lower case
    assert kinds("dentist is dr. pim achterberg now, old one retired") == {"dr. pim achterberg": "person"}
    assert checks("dentist is dr. pim achterberg now") == {"Who is dentist now?": "dr. pim achterberg"}
