"""Generated documentation stays in step with the code."""

from __future__ import annotations

from pathlib import Path

from memos_cli.cli.reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_generated_from_help() -> None:
    on_disk = (ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")
    assert on_disk == render(), "docs/CLI.md is stale: regenerate it with `make docs`"


def test_cli_reference_covers_every_command() -> None:
    text = render()
    for name in ("init", "ingest", "query", "fuse", "promote", "distill", "chat", "verify", "import"):
        assert f"## memos {name}\n" in text
    assert "-h, --help" in text


def test_every_command_has_a_cli_test() -> None:
    """Each registered command is run through the CLI by some test (its name appears as an argument)."""
    from memos_cli.cli.app import app

    tests = Path(__file__).resolve().parent
    text = "\n".join(p.read_text() for p in tests.glob("test_*.py") if p.name != "test_errors.py")
    names = [c.name for c in app.registered_commands if c.name]
    assert len(names) >= 23
    assert [n for n in names if f'"{n}"' not in text] == []
