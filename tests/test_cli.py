"""The command line: exit codes, JSON output a script can parse, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from memos_cli.cli.app import app, main

runner = CliRunner()


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    """Invoke main() (the real error handling) capturing stdout/stderr separately."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode()), encoding="utf-8")
    old_stdin = sys.stdin
    sys.stdin = stdin
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue()


def _records(path: Path) -> Path:
    lines = [
        {"text": "Ana adopted a grey cat named Miso", "speaker": "Ana", "time": "2023-03-01"},
        {"text": "Bob is allergic to peanuts", "speaker": "Bob", "time": "2022-11-20", "tags": ["health"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("init", "ingest", "query", "list", "show", "forget", "stats"):
        assert command in result.output


def test_round_trip_through_the_cli(tmp_path: Path) -> None:
    cube = str(tmp_path / "c")
    code, out, err = run("init", cube, "--name", "demo", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "demo"
    code, out, err = run("ingest", cube, str(_records(tmp_path / "r.jsonl")), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["added"] == 2 and report["rejected"] == []
    code, out, err = run("ingest", cube, str(tmp_path / "r.jsonl"))
    assert code == 0 and "added 0, duplicates 2" in err and "already in the cube" in err
    code, out, err = run("query", cube, "who has a cat", "-k", "1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["query"] == "who has a cat" and doc["hits"][0]["speaker"] == "Ana"
    memory_id = doc["hits"][0]["id"]
    code, out, _ = run("show", cube, memory_id[:8], "--json")
    assert code == 0 and json.loads(out)["id"] == memory_id and json.loads(out)["uses"] == 1
    code, out, _ = run("list", cube, "--jsonl")
    assert code == 0 and len(out.strip().splitlines()) == 2
    code, out, _ = run("forget", cube, memory_id, "--json")
    assert code == 0 and json.loads(out)["archived"] == [memory_id]
    code, out, _ = run("stats", cube, "--json")
    stats = json.loads(out)
    assert stats["by_status"] == {"active": 1, "archived": 1}


def test_batch_mode_prints_one_line_per_query_in_order(tmp_path: Path) -> None:
    cube = str(tmp_path / "c")
    run("init", cube)
    run("ingest", cube, str(_records(tmp_path / "r.jsonl")))
    code, out, err = run("query", cube, "--batch", "-", "-k", "1", input="peanuts\n\ncat named Miso\n")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["query"] for d in lines] == ["peanuts", "cat named Miso"]
    assert lines[0]["hits"][0]["speaker"] == "Bob" and lines[1]["hits"][0]["speaker"] == "Ana"


def test_stdin_ingest(tmp_path: Path) -> None:
    cube = str(tmp_path / "c")
    run("init", cube)
    code, _, err = run("ingest", cube, "-", "--tag", "piped", input="A note read from standard input.\n")
    assert code == 0, err
    code, out, _ = run("list", cube, "--json")
    (memory,) = json.loads(out)["memories"]
    assert memory["source"] == "-" and memory["tags"] == ["piped"]


def test_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    code, _, err = run("query", str(tmp_path / "nowhere"), "x")
    assert code == 3 and "not a memos cube" in err and "Traceback" not in err
    cube = str(tmp_path / "c")
    run("init", cube)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    code, _, err = run("ingest", cube, str(bad))
    assert code == 1 and "bad.jsonl:2: malformed JSON" in err and "--skip-bad" in err
    code, _, err = run("query", cube, "x", "--status", "nope")
    assert code == 2 and "--status" in err
    code, _, err = run("query", cube)
    assert code == 2
    code, _, err = run("query", cube, "x", "--bogus")  # click's usage errors, as typer vendors them
    assert code == 2 and "No such option: --bogus" in err and "internal error" not in err
    code, _, err = run("ingest")
    assert code == 2 and "Missing argument" in err and "internal error" not in err
    code, _, err = run("show", cube, "m-doesnotexist")
    assert code == 1 and "no memory" in err
    code, _, err = run("init", cube)
    assert code == 1 and "already exists" in err


def test_purge_needs_yes_without_a_terminal(tmp_path: Path) -> None:
    cube = str(tmp_path / "c")
    run("init", cube)
    run("ingest", cube, str(_records(tmp_path / "r.jsonl")))
    _, out, _ = run("list", cube, "--json")
    memory_id = json.loads(out)["memories"][0]["id"]
    code, _, err = run("forget", cube, memory_id, "--purge")
    assert code == 2 and "--yes" in err
    code, _, err = run("forget", cube, memory_id, "--purge", "--yes")
    assert code == 0, err
    audit = [json.loads(line) for line in (Path(cube) / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["op"] == "purge" and audit[-1]["tombstones"][0]["id"] == memory_id


def test_help_does_not_import_torch() -> None:
    code = "import sys; from memos_cli.cli.app import main; main(['--help']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")
