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
