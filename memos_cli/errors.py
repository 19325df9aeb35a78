"""Typed errors raised by the cube and engine layers.

Every error carries the fields a caller needs and a ``hint``: advice in words, never a command line.
The engine knows its parameters, not the CLI's flags or commands: a message or hint that names a
parameter writes it as ``{name}`` and lists it in ``options``; the engine's own ``message`` shows it
as ``'name'``, and the CLI's table (``memos_cli/cli/errors.py``) shows its flag and adds the next
``memos`` command to run, from the error's fields. The exit code is ``exit_code`` (docs/FORMAT.md,
README): 1 operation failed, 2 usage, 3 not a cube / invalid bundle, 4 refused by the cube's policy,
5 committed but a later step failed (``PostCommitError``: the change is stored, derived data catches
up by itself), 130 interrupted (Ctrl-C) with the cube unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal


def parameter(option: str) -> str:
    """How the engine's own messages name a parameter (the CLI shows its flag instead)."""
    return f"'{option}'"


class MemosError(Exception):
    """Base of every error memos raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, options: tuple[str, ...] = ()) -> None:
        self.template = message
        self.hint_template = hint
        self.options = options  # parameter names written as {name} in the message and the hint
        super().__init__(self.message)

    def render(self, text: str | None, name: Callable[[str], str]) -> str | None:
        """``text`` with each ``{option}`` written as ``name(option)`` (the CLI passes its flag)."""
        if text is None:
            return None
        for option in self.options:
            text = text.replace("{" + option + "}", name(option))
        return text

    @property
    def message(self) -> str:
        return self.render(self.template, parameter) or ""

    @property
    def hint(self) -> str | None:
        return self.render(self.hint_template, parameter)

    def advise(self, hint: str, *options: str) -> None:
        """Replace the hint (a caller that knows more, such as ingest naming its skip_bad)."""
        self.hint_template = hint
        self.options = tuple(dict.fromkeys((*self.options, *options)))

    def __str__(self) -> str:
        return self.message


class UsageError(MemosError):
    """The command was called wrongly (bad option combination, bad value)."""

    exit_code = 2


class CubeNotFound(MemosError):
    exit_code = 3

    def __init__(self, path: Path) -> None:
        super().__init__(f"not a memos cube: {path} (no cube.yaml)", hint="check the path, or create a cube there")
        self.path = path


class CubeExists(MemosError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"a cube already exists at {path}", hint="choose another directory")
        self.path = path


# What to do about an invalid cube: the CLI's table turns each into a command.
Remedy = Literal["verify", "repair", "restore"]
_REMEDY_ADVICE = {
    "verify": "verify the cube to see every problem",
    "repair": "repair the cube (it moves what it cannot read aside)",
    "restore": "restore the file from version control, then verify the cube",
}


class InvalidCube(MemosError):
    """The bundle is malformed: bad manifest, torn or malformed records, unsafe paths, bad checksums.
    ``remedy`` is what to do next when ``hint`` gives no advice of its own; ``file`` the one to restore."""

    exit_code = 3

    def __init__(
        self,
        path: Path,
        problem: str,
        *,
        hint: str | None = None,
        options: tuple[str, ...] = (),
        remedy: Remedy | None = "verify",
        file: str | None = None,
    ) -> None:
        remedy = None if hint is not None else remedy
        advice = _REMEDY_ADVICE[remedy] if remedy is not None else None
        super().__init__(f"invalid cube {path}: {problem}", hint=hint or advice, options=options)
        self.path = path
        self.problem = problem
        self.remedy: Remedy | None = remedy
        self.file = file


class UnsupportedFormat(InvalidCube):
    def __init__(self, path: Path, found: object, supported: int) -> None:
        super().__init__(
            path,
            f"format_version {found!r} is newer than this memos understands ({supported})",
            hint="upgrade memos to read this cube",
        )
        self.found = found
        self.supported = supported


SKIP_BAD_HINT = "fix the input, or pass {skip_bad} to store the good records and report the rest"


FIX_INPUT = "fix the input"


class BadInput(MemosError):
    """An input file or record could not be read. ``where`` is ``file:line``. (ingest adds the hint of
    its skip_bad; other readers, import among them, have no such option.)"""

    def __init__(self, where: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{where}: {problem}", hint=hint or FIX_INPUT)
        self.where = where
        self.problem = problem


class NotAnExport(BadInput):
    """A file given to import is not an archive memos export wrote."""

    def __init__(self, archive: str, problem: str) -> None:
        super().__init__(archive, f"not a memos export ({problem})", hint="import reads archives made by export")


class MemoryNotFound(MemosError):
    def __init__(self, memory_id: str) -> None:
        super().__init__(f"no memory with id {memory_id}", hint="list the cube's memories to see their ids")
        self.memory_id = memory_id


class LockTimeout(MemosError):
    def __init__(self, path: Path, seconds: float) -> None:
        super().__init__(
            f"cube {path} is locked by another memos process (waited {seconds:g}s)",
            hint="retry when the other command finishes, or raise MEMOS_LOCK_TIMEOUT",
        )
        self.path = path
        self.seconds = seconds


class PermissionRefused(MemosError):
    exit_code = 4

    def __init__(self, actor: str, action: str, cube: Path, why: str) -> None:
        super().__init__(f"{actor} may not {action} {cube}: {why}", hint="see the cube's policy in cube.yaml")
        self.actor = actor
        self.action = action
        self.cube = cube


class ModelUnavailable(MemosError):
    def __init__(self, name: str, problem: str, *, hint: str | None = None, options: tuple[str, ...] = ()) -> None:
        super().__init__(f"model {name}: {problem}", hint=hint, options=options)
        self.name = name


class IncompatibleModel(MemosError):
    """A snapshot, adapter or index was made for another model than the one in use."""

    def __init__(
        self, what: str, expected: str, found: str, *, hint: str | None = None, options: tuple[str, ...] = ()
    ) -> None:
        super().__init__(
            f"{what} was made for model {expected}, not {found}",
            hint=hint or "rebuild it for this model, or use the model it was made for",
            options=options,
        )
        self.what = what
        self.expected = expected
        self.found = found


class IntegrityError(InvalidCube):
    """A payload file's bytes do not match the checksum the manifest records."""

    def __init__(self, path: Path, file: str, expected: str, found: str) -> None:
        super().__init__(
            path,
            f"{file} does not match its recorded sha256 (expected {expected[:12]}..., found {found[:12]}...)",
            hint="the file was modified or corrupted; rebuild it or restore it from version control",
        )
        self.file = file


class AdaptersMismatch(IncompatibleModel):
    """A KV snapshot made with one set of LoRA adapters applied, used with another."""

    def __init__(self, cube: Path, name: str, made_with: list[str], wanted: list[str]) -> None:
        def model(adapters: list[str]) -> str:
            return "the base model + " + ", ".join(adapters) if adapters else "the base model alone"

        super().__init__(
            f"KV snapshot {name}",
            model(made_with),
            model(wanted),
            hint="use the adapters it was made with, or make a snapshot for these adapters",
        )
        self.cube = cube
        self.name = name
        self.made_with = made_with
        self.wanted = wanted


class ActivationError(MemosError):
    """A snapshot cannot be built or used with this model (layout, length, extension)."""


class InvalidSnapshot(MemosError):
    """A snapshot file is truncated, malformed, or its header contradicts its tensors. ``cube`` and
    ``name``, where the caller knows them, let the CLI name the command that rebuilds it."""

    exit_code = 3

    def __init__(
        self,
        path: Path | str,
        problem: str,
        *,
        hint: str | None = None,
        cube: Path | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            f"invalid KV snapshot {path}: {problem}", hint=hint or "rebuild the snapshot from its memories"
        )
        self.rebuild = hint is None  # rebuilding it is the remedy (not, say, upgrading memos)
        self.path = Path(path)
        self.problem = problem
        self.cube = cube
        self.name = name


class SnapshotExists(UsageError):
    def __init__(self, path: Path, name: str) -> None:
        super().__init__(
            f"snapshot {name!r} exists",
            hint=f"rebuild it with {{refresh}} {name}, or {{drop}} it first",
            options=("refresh", "drop"),
        )
        self.path = path
        self.name = name


class UnsafePath(InvalidCube):
    """A bundle path that memos will not follow: a link, a special file, a hard-linked file it would
    write into, or a name outside its folder (absolute, '..', control characters)."""

    def __init__(self, path: Path, rel: str, why: str) -> None:
        shown = rel.encode("unicode_escape").decode("ascii")
        super().__init__(
            path,
            f"{shown} {why}; memos never follows links or special files out of a cube",
            remedy="repair",
        )
        self.rel = rel
        self.why = why


class TooLarge(InvalidCube):
    """A bundle file or field is over its documented size limit (docs/FORMAT.md, "Limits")."""

    def __init__(self, path: Path, what: str, limit: int) -> None:
        super().__init__(path, f"{what} is larger than the limit of {limit:,} bytes (docs/FORMAT.md, Limits)")
        self.what = what
        self.limit = limit


class UnsafeJournal(InvalidCube):
    """``.memos/journal.json`` names something memos would not have written for a transaction."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            path,
            f".memos/journal.json is not a journal memos wrote ({problem}); it was not acted on",
            remedy="repair",
        )


class WriteFailed(MemosError):
    """A write inside a transaction failed (disk full, I/O error); everything was rolled back."""

    def __init__(self, path: Path, file: str, strerror: str) -> None:
        what = "no space left on device" if "space" in strerror.lower() else strerror.lower()
        super().__init__(
            f"{what} while writing {file}; the cube is unchanged", hint="free some space, then run the command again"
        )
        self.path = path
        self.file = file


class SnapshotMissing(MemosError):
    """The cube has no KV snapshot of that name."""

    def __init__(self, path: Path, name: str, available: list[str]) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"cube {path} has no KV snapshot {name!r} (it has: {names})",
            hint="promote memories to a snapshot of that name first",
        )
        self.path = path
        self.name = name
        self.available = sorted(available)


class AdapterNotFound(MemosError):
    """The cube has no LoRA adapter of that name."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(f"no adapter named {name!r} in {path}", hint="the cube's stats list its adapters")
        self.path = path
        self.name = name


# Storage failures the user can act on, named in one line instead of "internal error". errno -> words.
_STORAGE_PROBLEMS = {
    "ENOSPC": ("no space left on the device", "free some space, then rerun the command"),
    "EDQUOT": ("the disk quota is exceeded", "free some space, then rerun the command"),
    "EACCES": ("permission denied", "check the permissions of the cube and its files"),
    "EPERM": ("operation not permitted", "check the permissions of the cube and its files"),
    "EROFS": ("read-only file system", "write to a copy of the cube on writable storage"),
}


class StorageError(MemosError):
    """The file system refused a read or write: disk full, permission denied, read-only file system."""

    def __init__(self, problem: str, filename: str | None, *, hint: str | None = None) -> None:
        where = f" ({filename})" if filename else ""
        super().__init__(f"{problem}{where}", hint=hint)
        self.problem = problem
        self.filename = filename


def storage_error(exc: OSError) -> StorageError | None:
    """The typed error for an OSError the user can act on, or None for one that is a bug.

    The one place OSErrors are mapped: the CLI's ``main`` and the engine's post-commit handling use it."""
    import errno

    name = errno.errorcode.get(exc.errno or -1, "")
    if name not in _STORAGE_PROBLEMS:
        return None
    problem, hint = _STORAGE_PROBLEMS[name]
    filename = exc.filename if isinstance(exc.filename, str) else None
    return StorageError(problem, filename, hint=hint)


class PostCommitError(MemosError):
    """The change is committed (and stays), but a step after the commit failed, such as updating the
    derived index. Exit code 5: retrying the command is not needed (and would find nothing to do)."""

    exit_code = 5

    def __init__(self, committed: str, pending: str, cause: str) -> None:
        super().__init__(f"{committed}; {pending} ({cause})", hint="nothing to redo: the change is stored")
        self.committed = committed
        self.pending = pending
        self.cause = cause


def after_commit(committed: str, pending: str, exc: BaseException) -> PostCommitError:
    """The PostCommitError for ``exc`` raised after a commit, its cause named as the CLI would name it."""
    if isinstance(exc, KeyboardInterrupt):
        cause = "interrupted"
    elif isinstance(exc, OSError) and (typed := storage_error(exc)) is not None:
        cause = typed.message
    elif isinstance(exc, MemosError):
        cause = exc.message
    else:
        cause = f"{type(exc).__name__}: {exc}"
    error = PostCommitError(committed, pending, cause)
    error.__cause__ = exc
    return error


def shorten(value: object, limit: int = 80) -> str:
    """A name from outside (an archive member, a snapshot name) as a message shows it: at most
    ``limit`` characters, the rest counted, so a 5,000-character name cannot flood the terminal."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}...({len(text) - limit + 20:,} more characters)"


class ScheduleFailed(MemosError):
    """One or more steps of a scheduled run failed (the others ran; each is reported)."""

    def __init__(self, path: Path, failed: list[str], total: int) -> None:
        super().__init__(
            f"{len(failed)} of {total} schedule steps failed on {path}: {'; '.join(failed)}",
            hint="fix the cause and run the schedule again (done steps are not repeated)",
        )
        self.path = path
        self.failed = failed


class InvalidPolicy(InvalidCube):
    """cube.yaml's schedule section has a value of the wrong kind."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(path, problem, hint="compare it with the documented example of the schedule policy")


class TrainingDiverged(MemosError):
    def __init__(self) -> None:
        super().__init__("training diverged (the loss is not finite)", hint="lower {lr}", options=("lr",))
