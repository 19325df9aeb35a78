"""Errors: the engine names parameters and never the CLI's flags or commands; the CLI's one table
(memos_cli/cli/errors.py) turns each typed error into its message and the next command to run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from memos_cli.cli.errors import describe, flag
from memos_cli.errors import (
    AdaptersMismatch,
    CubeNotFound,
    InvalidCube,
    InvalidPolicy,
    InvalidSnapshot,
    SnapshotExists,
    UnsafePath,
    UsageError,
)

ROOT = Path(__file__).resolve().parents[1]
BELOW_CLI = [ROOT / "memos_cli" / part for part in ("engine", "cube", "models")] + [ROOT / "memos_cli" / "errors.py"]
COMMANDS = "init|ingest|query|list|show|forget|promote|distill|chat|fuse|schedule|stats|update|history|conflicts|log"
COMMANDS += "|verify|repair|policy|export|import|git-setup|merge-driver"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
COMMAND = re.compile(rf"(?<!a )(?<!sound )\bmemos ({COMMANDS})\b")  # "a memos export" is a thing, not a command
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _sources() -> list[tuple[Path, ast.Module]]:
    files = [p for base in BELOW_CLI for p in ([base] if base.is_file() else sorted(base.rglob("*.py")))]
    return [(p, ast.parse(p.read_text(), str(p))) for p in files]


def _strings(node: ast.AST) -> list[str]:
    """The literal text under ``node`` (f-strings' literal parts too; docstrings are not raised)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _error_calls(tree: ast.Module) -> list[ast.Call]:
    """Calls that build an error: the expression of a ``raise``, and any call given ``hint=``/``options=``."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            calls.append(node.exc)
        elif isinstance(node, ast.Call) and any(k.arg in ("hint", "options") for k in node.keywords):
            calls.append(node)
    return calls


def test_engine_errors_name_no_flag_and_no_command() -> None:
    found = []
    for path, tree in _sources():
        for call in _error_calls(tree):
            for text in _strings(call):
                if FLAG.search(text) or COMMAND.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{call.lineno}: {text!r}")
    assert not found, "engine errors name CLI flags or commands (write {parameter}, add to options):\n" + "\n".join(
        found
    )


def test_each_placeholder_is_a_named_option_and_each_option_a_real_flag() -> None:
    reference = (ROOT / "docs" / "CLI.md").read_text()
    problems = []
    for path, tree in _sources():
        for call in _error_calls(tree):
            options = next((k.value for k in call.keywords if k.arg == "options"), None)
            listed = options.elts if isinstance(options, ast.Tuple) else []
            elements = [e for e in listed if not isinstance(e, ast.Starred)]
            named = [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if isinstance(options, ast.Tuple) and len(named) != len(elements):
                problems.append(f"{path.name}:{call.lineno}: options must be literal names")
            placeholders = {m for text in _strings(call) for m in PLACEHOLDER.findall(text)}
            if placeholders - set(named):
                problems.append(f"{path.name}:{call.lineno}: {sorted(placeholders - set(named))} not in options")
            problems += [f"{path.name}:{call.lineno}: no flag {flag(n)}" for n in named if flag(n) not in reference]
    assert not problems, "\n".join(problems)


def test_the_engine_message_names_parameters_and_the_cli_their_flags() -> None:
    error = UsageError("give {steps} or {epochs}, not both", hint="lower {lr}", options=("steps", "epochs", "lr"))
    assert error.message == "give 'steps' or 'epochs', not both" and error.hint == "lower 'lr'"
    assert str(error) == error.message
    assert describe(error) == ("give --steps or --epochs, not both", "lower --lr")
    # text that is not an option is left alone, braces included
    odd = UsageError("snapshot {x} {steps}", options=("steps",))
    assert describe(odd)[0] == "snapshot {x} --steps"


@pytest.mark.parametrize(
    ("error", "command"),
    [
        (CubeNotFound(Path("/c")), "create one with: memos init /c"),
        (InvalidCube(Path("/c"), "bad"), "run: memos verify /c"),
        (InvalidCube(Path("/c"), "torn", remedy="repair"), "run: memos repair /c"),
        (
            InvalidCube(Path("/c"), "gone", remedy="restore", file="memories.jsonl"),
            "restore it from version control (git checkout -- memories.jsonl), then: memos verify /c",
        ),
        (UnsafePath(Path("/c"), "x", "is a link"), "run: memos verify /c (memos repair moves what it can aside)"),
        (InvalidPolicy(Path("/c"), "bad"), "see the documented example: memos schedule /c --init --dry-run"),
        (
            InvalidSnapshot("kv/a.safetensors", "truncated", cube=Path("/c"), name="a"),
            "rebuild it with: memos promote /c --refresh a",
        ),
        (SnapshotExists(Path("/c"), "a"), "rebuild it with --refresh a, or --drop it first"),
        (
            AdaptersMismatch(Path("/c"), "s", ["x"], ["y"]),
            "chat with --kv s --lora x, or make a snapshot for these adapters: "
            "memos promote /c --to activation --lora y",
        ),
    ],
)
def test_the_table_names_the_next_command(error: Exception, command: str) -> None:
    assert describe(error)[1] == command  # type: ignore[arg-type]
    assert "memos " not in (error.hint or "")  # type: ignore[attr-defined]  # the engine's own advice is words


def test_an_own_hint_wins_over_the_remedy() -> None:
    error = InvalidCube(Path("/c"), "too new", hint="upgrade memos to read this cube")
    assert error.remedy is None and describe(error)[1] == "upgrade memos to read this cube"
    old = InvalidSnapshot("kv/a.safetensors", "format 9", hint="upgrade memos", cube=Path("/c"), name="a")
    assert describe(old)[1] == "upgrade memos"


def test_the_cli_prints_flags_and_next_commands(tmp_path: Path) -> None:
    import contextlib
    import io

    from memos_cli.cli.app import main

    def run(*args: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(list(args))
        return code, err.getvalue()

    code, err = run("query", str(tmp_path / "none"), "x")
    assert code == 3 and f"hint: create one with: memos init {tmp_path / 'none'}" in err
    assert run("init", str(tmp_path / "c"))[0] == 0
    code, err = run("query", str(tmp_path / "c"), "x", "--retrieval", "bogus")
    assert code == 2 and "--retrieval must be one of" in err and "'retrieval'" not in err, err
    code, err = run("log", str(tmp_path / "c"), "--op", "nonsense")
    assert code == 2 and "unknown --op 'nonsense'" in err, err
