"""The one table that turns a typed error into what a person reads: the message with the CLI's flags,
and the next ``memos`` command to run, built from the error's fields.

The engine names parameters (``{dtype}``), never flags or commands (memos_cli/errors.py); every flag
here is ``--`` plus the parameter's name with dashes, which the commands keep true (tests/test_errors.py
checks each parameter an engine error names against the generated CLI reference).
"""

from __future__ import annotations

from memos_cli.errors import (
    AdapterNotFound,
    AdaptersMismatch,
    CubeNotFound,
    InvalidCube,
    InvalidPolicy,
    InvalidSnapshot,
    MemoryNotFound,
    MemosError,
    NotAnExport,
    PermissionRefused,
    ScheduleFailed,
    SnapshotMissing,
    UnsafeJournal,
    UnsafePath,
)


def flag(option: str) -> str:
    """The CLI flag of an engine parameter."""
    return "--" + option.replace("_", "-")


def describe(exc: MemosError) -> tuple[str, str | None]:
    """``(message, hint)`` as the CLI prints them."""
    message = exc.render(exc.template, flag) or ""
    return message, next_command(exc) or exc.render(exc.hint_template, flag)


def next_command(exc: MemosError) -> str | None:
    """The command that fixes or explains ``exc``, or None where the error's own advice is all there is.
    Subclasses come before their bases."""
    match exc:
        case CubeNotFound():
            return f"create one with: memos init {exc.path}"
        case MemoryNotFound():
            return "list ids with: memos list CUBE"
        case PermissionRefused():
            return f"see: memos policy {exc.cube}"
        case SnapshotMissing():
            return f"make one: memos promote {exc.path} --to activation --name {exc.name} --all"
        case AdaptersMismatch():
            used = "".join(f" --lora {a}" for a in exc.made_with)
            wanted = "".join(f" --lora {a}" for a in exc.wanted)
            return (
                f"chat with --kv {exc.name}{used}, or make a snapshot for these adapters: "
                f"memos promote {exc.cube} --to activation{wanted}"
            )
        case InvalidSnapshot(rebuild=True):
            if exc.cube is not None and exc.name is not None:
                return f"rebuild it with: memos promote {exc.cube} --refresh {exc.name}"
            return "rebuild it with: memos promote CUBE --refresh NAME"
        case AdapterNotFound():
            return f"see the adapters with: memos stats {exc.path}"
        case ScheduleFailed():
            return f"fix the cause and rerun: memos schedule {exc.path} (done steps are not repeated)"
        case InvalidPolicy():
            return f"see the documented example: memos schedule {exc.path} --init --dry-run"
        case NotAnExport():
            return "make one with: memos export CUBE -o FILE"
        case UnsafeJournal():
            return f"run: memos repair {exc.path} (it moves the journal aside without acting on it)"
        case UnsafePath():
            return f"run: memos verify {exc.path} (memos repair moves what it can aside)"
        case InvalidCube(remedy="verify"):
            return f"run: memos verify {exc.path}"
        case InvalidCube(remedy="repair"):
            return f"run: memos repair {exc.path}"
        case InvalidCube(remedy="restore"):
            file = exc.file or "the file"
            return f"restore it from version control (git checkout -- {file}), then: memos verify {exc.path}"
    return None
