"""Output helpers: stdout is data, stderr is for people; progress bars only on a terminal."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from memos_cli.errors import UsageError

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\r``, ...): memory text
    from a stranger's cube cannot move the cursor, recolour or rewrite the terminal. Tabs are kept, and
    newlines unless ``newlines`` (then they are escaped too, for one-line output). JSON output does not
    use this: it stays exact (json escapes control characters itself)."""

    def show(match: re.Match[str]) -> str:
        char = match.group()
        return {"\r": "\\r", "\x1b": "\\x1b"}.get(char) or char.encode("unicode_escape").decode("ascii")

    text = _CONTROL.sub(show, text)
    return text.replace("\n", "\\n") if newlines else text


def _safe(obj: Any) -> Any:
    """Escape control characters in what a Rich console is asked to print (strings, Text, table cells)."""
    if isinstance(obj, str):
        return escape_controls(obj)
    from rich.table import Table
    from rich.text import Text

    if isinstance(obj, Text):
        obj.plain = escape_controls(obj.plain)
    elif isinstance(obj, Table):  # cells hold data: shown as plain text, never as markup
        for column in obj.columns:
            column._cells = [Text(escape_controls(c)) if isinstance(c, str) else _safe(c) for c in column._cells]
    return obj


def _safe_console(**options: Any) -> Any:
    from rich.console import Console

    class SafeConsole(Console):
        def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
            super().print(*(_safe(o) for o in objects), **kwargs)

    return SafeConsole(**options)


_console = None


def console() -> Any:
    """A Rich console on stderr (imported lazily: rich costs import time); control characters escaped."""
    global _console
    if _console is None:
        _console = _safe_console(stderr=True, highlight=False, soft_wrap=True)
    return _console


_out = None


def out() -> Any:
    """A Rich console on stdout, for a command's result in human form (tables)."""
    global _out
    if _out is None:
        _out = _safe_console(highlight=False, soft_wrap=False)
    return _out


def say(message: str) -> None:
    console().print(message)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def emit_jsonl(items: list[Any] | Iterator[Any]) -> None:
    for item in items:
        sys.stdout.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
    sys.stdout.flush()


def check_exclusive(**flags: bool) -> None:
    chosen = [name for name, on in flags.items() if on]
    if len(chosen) > 1:
        raise UsageError("choose one of " + ", ".join("--" + n.replace("_", "-") for n in chosen))


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback drawing a bar on stderr when it is a terminal, else doing nothing."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
    )
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(label, total=total)
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


@contextmanager
def stage_progress() -> Iterator[Callable[[str, int, int, float | None], None]]:
    """A ``(stage, done, total, loss)`` callback: a bar per stage (with the training loss while training),
    on stderr when it is a terminal, else doing nothing."""
    if not sys.stderr.isatty():
        yield lambda stage, done, total, loss: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, loss: float | None) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, loss="")
        bar.update(tasks[stage], completed=done, total=total, loss=f"loss {loss:.3f}" if loss is not None else "")

    with bar:
        yield update


def confirm(question: str, yes: bool) -> None:
    """Ask before something destructive; a non-interactive run must pass --yes instead."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} needs confirmation: pass --yes to run it without a terminal")
    import typer

    if not typer.confirm(question, default=False, err=True):
        raise UsageError("cancelled")
