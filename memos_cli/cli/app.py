"""The ``memos`` command: registers one module per command. ``main`` is the only place errors are caught."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from memos_cli import __version__
from memos_cli.cli.commands.chat import chat
from memos_cli.cli.commands.conflicts import conflicts
from memos_cli.cli.commands.distill import distill
from memos_cli.cli.commands.forget import forget
from memos_cli.cli.commands.fuse import fuse
from memos_cli.cli.commands.gitcmd import git_setup, merge_driver
from memos_cli.cli.commands.ingest import ingest
from memos_cli.cli.commands.init import init
from memos_cli.cli.commands.list import list_
from memos_cli.cli.commands.log import log
from memos_cli.cli.commands.policy import policy
from memos_cli.cli.commands.promote import promote
from memos_cli.cli.commands.query import query
from memos_cli.cli.commands.schedule import schedule
from memos_cli.cli.commands.show import show
from memos_cli.cli.commands.stats import stats
from memos_cli.cli.commands.transfer import export, import_
from memos_cli.cli.commands.verify import repair, verify
from memos_cli.cli.commands.versions import history, update
from memos_cli.cli.output import escape_controls

if TYPE_CHECKING:
    from memos_cli.errors import MemosError


def _examples_kept(command: Callable[..., None]) -> Callable[..., None]:
    """Keep a docstring's example paragraphs as written in --help: click rewraps every paragraph into
    one line unless it starts with a \\b line, which would run the examples together."""
    doc = inspect.getdoc(command) or ""
    paragraphs = doc.split("\n\n")
    kept = []
    for paragraph in paragraphs:
        lines = paragraph.splitlines()
        example = any(line.lstrip().lower().startswith(("example", "$ ", "memos ")) for line in lines)
        indented = any(line.startswith("  ") for line in lines[1:])
        kept.append("\b\n" + paragraph if example or indented else paragraph)
    command.__doc__ = "\n\n".join(kept)
    return command


app = typer.Typer(
    name="memos",
    help=(
        "memos: a memory OS for LLMs over cube bundles on disk.\n\n"
        "A cube is a directory (cube.yaml, memories.jsonl, kv/, lora/) that git can hold. "
        'Start with: memos init DIR; memos ingest DIR FILE...; memos query DIR "question".'
    ),
    no_args_is_help=True,
    add_completion=True,  # memos --install-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("init")(_examples_kept(init))
app.command("ingest")(_examples_kept(ingest))
app.command("query")(_examples_kept(query))
app.command("list")(_examples_kept(list_))
app.command("show")(_examples_kept(show))
app.command("forget")(_examples_kept(forget))
app.command("promote")(_examples_kept(promote))
app.command("distill")(_examples_kept(distill))
app.command("chat")(_examples_kept(chat))
app.command("fuse")(_examples_kept(fuse))
app.command("schedule")(_examples_kept(schedule))
app.command("stats")(_examples_kept(stats))
app.command("update")(_examples_kept(update))
app.command("history")(_examples_kept(history))
app.command("conflicts")(_examples_kept(conflicts))
app.command("log")(_examples_kept(log))
app.command("verify")(_examples_kept(verify))
app.command("repair")(_examples_kept(repair))
app.command("policy")(_examples_kept(policy))
app.command("git-setup")(_examples_kept(git_setup))
app.command("merge-driver")(_examples_kept(merge_driver))
app.command("export")(_examples_kept(export))
app.command("import")(_examples_kept(import_))


def _version(value: bool) -> None:
    if value:
        print(f"memos {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """memos: a memory OS for LLMs over cube bundles on disk."""


INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; typed errors become one line on stderr (plus a hint) and their exit code."""
    from memos_cli.config import debug
    from memos_cli.errors import MemosError, storage_error

    try:
        # typer turns Ctrl-C into a returned 130 (and typer.Exit into its code) when not standalone.
        code = app(args=argv, prog_name="memos", standalone_mode=False)
    except MemosError as exc:
        if debug():
            raise
        return _fail(exc)
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if isinstance(exc, typer.Exit):
            return exc.exit_code
        if isinstance(exc, _click_errors()):  # a usage error: unknown option, missing argument...
            exc.show()  # type: ignore[attr-defined]  # a ClickException (the tuple's types are found at run time)
            usage_code: int = exc.exit_code  # type: ignore[attr-defined]
            return usage_code
        if isinstance(exc, typer.Abort):
            if isinstance(exc.__context__, KeyboardInterrupt):
                return _interrupted()
            sys.stderr.write("memos: aborted\n")
            return 1
        if debug():
            raise
        typed = storage_error(exc) if isinstance(exc, OSError) else None
        if typed is not None:  # disk full, permission denied, read-only: named, not an "internal error"
            return _fail(typed)
        sys.stderr.write(f"memos: internal error: {type(exc).__name__}: {escape_controls(str(exc), newlines=True)}\n")
        sys.stderr.write("  hint: rerun with MEMOS_DEBUG=1 for a traceback, and report it\n")
        return 1
    if code == INTERRUPTED:
        return _interrupted()
    return code if isinstance(code, int) else 0


def _fail(exc: MemosError) -> int:
    from memos_cli.cli.errors import describe

    message, hint = describe(exc)
    sys.stderr.write(f"memos: error: {escape_controls(message, newlines=True)}\n")
    if hint:
        sys.stderr.write(f"  hint: {escape_controls(hint, newlines=True)}\n")
    return exc.exit_code


def _interrupted() -> int:
    """Every command leaves the cube unchanged when stopped before its commit; a command stopped after
    its commit raises PostCommitError instead (exit 5), so this message is true where it is printed."""
    sys.stderr.write("memos: interrupted; the cube is unchanged\n")
    return INTERRUPTED


def _click_errors() -> tuple[type[Exception], ...]:
    """click's ClickException, and typer's vendored copy of it (typer 0.2x ships its own click, whose
    exceptions are not click's): found through a public typer class rather than a private module."""
    import click

    vendored = [c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"]
    return (click.ClickException, *vendored)


def run() -> None:
    """Console-script entry point."""
    code = main()
    if "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """End a process that imported torch without the interpreter's teardown.

    Tearing down torch and transformers (module dicts, every tensor and class freed one by one) took
    0.5-1.5 s of a one-shot ``chat -m`` or ``promote`` (measured here). The command has finished by now
    and every cube write is complete (atomic, under locks already released); what teardown would do
    that matters is done by hand: the exit handlers run and both streams are flushed.
    """
    import atexit
    import os

    try:
        atexit._run_exitfuncs()  # the same handlers the interpreter would run (coverage, logging, temp dirs)
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    except Exception:  # noqa: BLE001 - an odd handler must not cost the exit code; fall back to a normal exit
        sys.exit(code)
    os._exit(code)
