"""The rough edges of issue #13, each reproduced through the CLI (or the engine where a CLI run would
need a real model) and fixed: no "internal error" anywhere, usage errors exit 2, output that says what
it means."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.query import query
from tests.test_cli import run


@pytest.fixture
def cube(tmp_path: Path) -> Path:
    path = tmp_path / "c"
    Cube.init(path, owner="tester")
    body = "".join(json.dumps({"text": t}) + "\n" for t in ("Ana's cat is called Miso", "Bob cooks ramen"))
    ingest(Cube.open(path), [Source("f.jsonl", body.encode())])
    return path


def _no_internal_error(err: str) -> None:
    assert "internal error" not in err and "Traceback" not in err, err


def test_query_batch_with_a_missing_file_is_a_usage_error(cube: Path) -> None:
    code, _, err = run("query", str(cube), "--batch", "missing.txt")
    _no_internal_error(err)
    assert code == 2 and "missing.txt" in err


def test_init_on_an_existing_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, _, err = run("init", str(tmp_path / "f"))
    _no_internal_error(err)
    assert code == 2 and "not a directory" in err


def test_help_keeps_each_example_on_its_own_line() -> None:
    code, out, err = run("ingest", "--help")
    lines = [line.strip() for line in (out + err).splitlines()]
    assert "memos ingest notes README.md meeting.md --tag work" in lines
    assert "cat facts.jsonl | memos ingest notes - --format jsonl" in lines


@pytest.mark.parametrize("limit", ["-3", "0"])
def test_list_limit_must_be_positive(cube: Path, limit: str) -> None:
    code, _, err = run("list", str(cube), "-n", limit)
    assert code == 2, err
    code, _, err = run("log", str(cube), "-n", limit)
    assert code == 2, err


def test_an_empty_query_is_refused(cube: Path) -> None:
    for text in ("", "   "):
        code, out, err = run("query", str(cube), text)
        assert code == 2 and not out and "empty" in err


def test_type_applies_to_text_and_markdown(tmp_path: Path) -> None:
    Path("notes.md").write_text("# Pets\n\nAna's cat is called Miso.\n")
    Path("notes.txt").write_text("Bob cooks ramen.\n")
    assert run("init", str(tmp_path / "c"))[0] == 0
    code, _, err = run("ingest", str(tmp_path / "c"), "notes.md", "notes.txt", "--type", "fact")
    assert code == 0, err
    assert {r.type for r in Cube.open(tmp_path / "c").read_state().current.values()} == {"fact"}
    Path("more.txt").write_text("Cleo paints.\n")
    run("ingest", str(tmp_path / "c"), "more.txt")
    types = {r.text: r.type for r in Cube.open(tmp_path / "c").read_state().current.values()}
    assert types["Cleo paints."] == "document"  # the default without --type is unchanged


def test_show_and_history_print_the_status(cube: Path) -> None:
    memory_id = next(iter(Cube.open(cube).read_state().current))
    assert run("forget", str(cube), memory_id)[0] == 0
    code, out, _ = run("show", str(cube), memory_id)
    assert code == 0 and "[archived]" in out
    code, out, _ = run("history", str(cube), memory_id)
    assert code == 0 and "[archived]" in out and "[active]" in out


def test_a_short_id_prefix_says_how_long_it_must_be(cube: Path) -> None:
    code, _, err = run("show", str(cube), "m-")
    assert code == 2 and "4 characters" in err


def test_format_pdf_is_a_usage_error(cube: Path) -> None:
    Path("a.txt").write_text("hello\n")
    code, _, err = run("ingest", str(cube), "a.txt", "--format", "pdf")
    assert code == 2 and "pdf" in err


def test_export_checks_its_target(cube: Path, tmp_path: Path) -> None:
    code, _, err = run("export", str(cube), "-o", str(tmp_path / "no" / "such" / "c.tar.gz"))
    assert code == 2 and not (tmp_path / "no").exists(), err
    existing = tmp_path / "c.tar.gz"
    existing.write_bytes(b"precious")
    code, _, err = run("export", str(cube), "-o", str(existing))
    assert code == 2 and existing.read_bytes() == b"precious" and "--force" in err
    assert run("export", str(cube), "-o", str(existing), "--force")[0] == 0
    assert existing.read_bytes() != b"precious"


def test_import_does_not_hint_an_option_it_lacks(tmp_path: Path) -> None:
    import tarfile

    (tmp_path / "x.txt").write_text("hello")
    bogus = tmp_path / "bogus.tar.gz"  # a real archive, but not a memos export
    with tarfile.open(bogus, "w:gz") as tar:
        tar.add(tmp_path / "x.txt", arcname="x.txt")
    code, _, err = run("import", str(bogus), "-o", str(tmp_path / "out"))
    _no_internal_error(err)
    assert code != 0 and "--skip-bad" not in err


def test_log_op_must_be_an_operation(cube: Path) -> None:
    code, _, err = run("log", str(cube), "--op", "bogus")
    assert code == 2 and "ingest" in err
    code, out, _ = run("log", str(cube), "--op", "purge", "--json")
    assert code == 0 and json.loads(out)["entries"] == []  # a known op with no entries is fine


def test_counts_use_the_singular_for_one(tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "c"))[0] == 0
    ingest(Cube.open(tmp_path / "c"), [Source("f.jsonl", b'{"text": "one fact"}\n')])
    code, _, err = run("list", str(tmp_path / "c"))
    assert code == 0 and "1 memory" in err and "1 memories" not in err
    from memos_cli.cli.commands.distill import forgetting_label

    assert forgetting_label(-3.2) == "-3.2%: no forgetting" and forgetting_label(4.0) == "+4.0%: forgetting"


def test_list_never_wraps_ids_at_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memos_cli.cli import output

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(output, "_out", None)
    cube = Cube.init(tmp_path / "c")
    record = {
        "text": "A long memory about the quarterly planning meeting and everything it decided, with many words",
        "speaker": "Anastasia",
        "time": "2024-05-01T10:00:00",
        "type": "preference",
    }
    ids = ingest(cube, [Source("f.jsonl", json.dumps(record).encode() + b"\n")]).ids
    code, out, err = run("list", str(cube.path))
    assert code == 0 and ids[0] in out, err


def test_lexical_search_folds_accents_and_reads_cjk(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c")
    texts = ("Le café ouvre à huit heures", "東京タワーは赤い", "The bakery sells bread")
    ingest(cube, [Source("f.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())])
    assert query(cube, "cafe", k=1, mode="lexical")[0].text == texts[0]
    assert query(cube, "東京", k=1, mode="lexical")[0].text == texts[1]


def test_shell_completion_is_offered() -> None:
    code, out, err = run("--help")
    assert code == 0 and "--install-completion" in out + err  # (already on main when this landed)


def test_verify_and_repair_say_what_to_do_instead_of_pointing_at_each_other(cube: Path) -> None:
    c = Cube.open(cube)
    lines = c.memories_path.read_bytes().splitlines(keepends=True)
    c.memories_path.write_bytes(lines[0] + b'{"not": "a record"}\n' + b"".join(lines[1:]))  # a bad middle line
    c.audit_path.unlink()
    code, _, err = run("verify", str(cube))
    assert code == 3 and "memos repair" in err
    code, _, err = run("repair", str(cube))
    assert code == 0, err
    assert "quarantine" in err and "audit.jsonl" in err
    assert run("verify", str(cube))[0] == 0
    assert len(Cube.open(cube).read_state().current) == 2  # the good lines are all still there
    # a problem repair cannot fix: the hints name the real next step, never the other command
    data = c.memories_path.read_text()
    c.memories_path.write_text(data.replace("Miso", "Tofu"))
    code, _, err = run("verify", str(cube))
    assert code == 3 and "memos repair" not in err and "memos update" in err
    code, _, err = run("repair", str(cube))
    assert code == 3 and "memos verify" not in err


def test_snapshot_problems_are_caught_early_and_name_the_refresh(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from memos_cli.cli.errors import describe
    from memos_cli.engine.activation.promote import promote_to_activation
    from memos_cli.engine.chat import ChatOptions, ChatSession
    from memos_cli.engine.integrity import verify
    from memos_cli.engine.ops import stats
    from memos_cli.engine.select import Selection
    from memos_cli.errors import InvalidSnapshot

    cube = Cube.init(tmp_path / "c")
    ingest(cube, [Source("f.jsonl", b'{"text": "Ana\'s cat is called Miso"}\n{"text": "Bob cooks ramen"}\n')])
    llama = str(tiny_dirs["llama"])
    full = promote_to_activation(cube, Selection(all=True), name="all", model=llama)
    code, _, err = run("promote", str(cube.path), "--drop", "all")
    assert code == 0, err
    cube = Cube.open(cube.path)
    capped = promote_to_activation(cube, Selection(all=True), name="all", model=llama, budget=full.tokens - 1)
    assert capped.skipped
    code, _, err = run("promote", str(cube.path), "--refresh", "all", "--model", llama)
    assert code == 0 and "None" not in err and f"{full.tokens - 1} tokens" in err, err
    path = cube.path / "kv" / "all.safetensors"
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    assert "truncated" in (stats(Cube.open(cube.path))["kv"]["all"]["problem"] or "")
    assert any("--refresh all" in p for p in verify(cube.path).problems)
    with pytest.raises(InvalidSnapshot) as err_info:
        ChatSession([Cube.open(cube.path)], ChatOptions(kv="all", model=str(tmp_path / "no-such-model")))
    # refused before the (missing) model was loaded; the CLI names the command that rebuilds it
    assert err_info.value.name == "all" and err_info.value.cube == cube.path
    assert f"memos promote {cube.path} --refresh all" in (describe(err_info.value)[1] or "")


def test_json_errors_do_not_say_at_at(cube: Path) -> None:
    Path("bad.jsonl").write_text('{"text": "fine"}\n{"text": "unterminated\n')
    code, _, err = run("ingest", str(cube), "bad.jsonl")
    assert code == 1 and "bad.jsonl:2" in err and "at at" not in err and "at column" in err, err
