"""Typed errors raised by the cube and engine layers.

Every error carries the fields a caller needs and a ``hint``: the next thing a person should do.
The CLI turns each one into a single line plus the hint, with the exit code named by ``exit_code``
(see docs/FORMAT.md and the README): 1 operation failed, 2 usage, 3 not a cube / invalid bundle,
4 refused by the cube's policy.
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
