"""Typed errors raised by the cube and engine layers.

Every error carries the fields a caller needs and a ``hint``: the next thing a person should do.
The CLI turns each one into a single line plus the hint, with the exit code named by ``exit_code``
(see docs/FORMAT.md and the README): 1 operation failed, 2 usage, 3 not a cube / invalid bundle,
4 refused by the cube's policy, 5 committed but a later step failed (``PostCommitError``: the change is
stored, derived data catches up by itself), 130 interrupted (Ctrl-C) with the cube unchanged.
"""

from __future__ import annotations

from pathlib import Path


class MemosError(Exception):
    """Base of every error memos raises on purpose."""

    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MemosError):
    """The command was called wrongly (bad option combination, bad value)."""

    exit_code = 2


class CubeNotFound(MemosError):
    exit_code = 3

    def __init__(self, path: Path) -> None:
        super().__init__(f"not a memos cube: {path} (no cube.yaml)", hint=f"create one with: memos init {path}")
        self.path = path


class CubeExists(MemosError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"a cube already exists at {path}", hint="choose another directory")
        self.path = path


class InvalidCube(MemosError):
    """The bundle is malformed: bad manifest, torn or malformed records, unsafe paths, bad checksums."""

    exit_code = 3

    def __init__(self, path: Path, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"invalid cube {path}: {problem}", hint=hint or f"run: memos verify {path}")
        self.path = path
        self.problem = problem


class UnsupportedFormat(InvalidCube):
    def __init__(self, path: Path, found: object, supported: int) -> None:
        super().__init__(
            path,
            f"format_version {found!r} is newer than this memos understands ({supported})",
            hint="upgrade memos to read this cube",
        )
        self.found = found
        self.supported = supported


SKIP_BAD_HINT = "fix the input, or pass --skip-bad to store the good records and report the rest"


class BadInput(MemosError):
    """An input file or record could not be read. ``where`` is ``file:line``. (ingest adds the hint of
    its --skip-bad; other readers, import among them, have no such option.)"""

    def __init__(self, where: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{where}: {problem}", hint=hint or "fix the input")
        self.where = where
        self.problem = problem


class MemoryNotFound(MemosError):
    def __init__(self, memory_id: str) -> None:
        super().__init__(f"no memory with id {memory_id}", hint="list ids with: memos list CUBE")
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
        super().__init__(f"{actor} may not {action} {cube}: {why}", hint="see: memos policy " + str(cube))
        self.actor = actor
        self.action = action


class ModelUnavailable(MemosError):
    def __init__(self, name: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"model {name}: {problem}", hint=hint)
        self.name = name


class IncompatibleModel(MemosError):
    """A snapshot, adapter or index was made for another model than the one in use."""

    def __init__(self, what: str, expected: str, found: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"{what} was made for model {expected}, not {found}",
            hint=hint or "rebuild it for this model, or use the model it was made for",
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


class ActivationError(MemosError):
    """A snapshot cannot be built or used with this model (layout, length, extension)."""


class InvalidSnapshot(MemosError):
    """A snapshot file is truncated, malformed, or its header contradicts its tensors."""

    exit_code = 3

    def __init__(self, path: Path | str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"invalid KV snapshot {path}: {problem}",
            hint=hint or "rebuild it with: memos promote CUBE --refresh NAME",
        )
        self.path = Path(path)
        self.problem = problem


class UnsafePath(InvalidCube):
    """A bundle path that memos will not follow: a link, a special file, a hard-linked file it would
    write into, or a name outside its folder (absolute, '..', control characters)."""

    def __init__(self, path: Path, rel: str, why: str) -> None:
        shown = rel.encode("unicode_escape").decode("ascii")
        super().__init__(
            path,
            f"{shown} {why}; memos never follows links or special files out of a cube",
            hint=f"run: memos verify {path} (memos repair moves what it can aside)",
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
            hint=f"run: memos repair {path} (it moves the journal aside without acting on it)",
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
            hint=f"make one: memos promote {path} --to activation --name {name} --all",
        )
        self.path = path
        self.name = name
        self.available = sorted(available)


class AdapterNotFound(MemosError):
    """The cube has no LoRA adapter of that name."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(f"no adapter named {name!r} in {path}", hint=f"see the adapters with: memos stats {path}")
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
            hint=f"fix the cause and rerun: memos schedule {path} (done steps are not repeated)",
        )
        self.path = path
        self.failed = failed
