"""Output helpers: stdout is data, stderr is for people; progress bars only on a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from memos_cli.errors import UsageError

_console = None


def console() -> Any:
    """A Rich console on stderr (imported lazily: rich costs import time)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _console


_out = None


def out() -> Any:
    """A Rich console on stdout, for a command's result in human form (tables)."""
    global _out
    if _out is None:
        from rich.console import Console

        _out = Console(highlight=False, soft_wrap=False)
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
