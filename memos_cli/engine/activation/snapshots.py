"""Activation memory: memories prefilled once into a KV cache, saved as a safetensors snapshot, and
injected as the prompt's prefix instead of being read again on every turn.

The one rule everything here serves: **a snapshot's tokens are exactly the first tokens of the prompt it
is used with**. The memory *preamble* (a header and one line per memory) is placed in the conversation by
the model's own chat template, and the snapshot covers the rendered text up to the end of the preamble,
no further. Then:

- any question, retrieved memories or conversation history can follow it (they are prefilled per turn);
- a snapshot can be *extended* by prefilling more memory lines on top of its cache (independently computed
  caches must never be concatenated: the later tokens would not have attended to the earlier ones);
- the prompt can be re-prefilled from scratch (``mode="recompute"``) from the same text and token ids,
  which is how the snapshot is checked: in float32 the greedy answers are token-identical.

Where the preamble goes (the *layout*) is detected per model: in a system message (ChatML, Llama 3), at
the start of the first user message (templates that refuse or move system messages, such as Mistral's),
or plain text for models without a chat template (gpt2). A system message of our own also stops
templates like SmolLM2's from inserting their default one, which would otherwise sit before the memories
in one rendering and not in another.

Snapshot files are safetensors (no pickle, nothing executed on load). The header records the format
version, model fingerprint and family, dtype, token ids, memory refs, layer count, layout and preamble
text; ``load_snapshot`` checks every one of them against the tensors and the model before use.

Why one module of ~500 lines: the writer (``save_snapshot``), the reader's checks (``read_snapshot``,
``load_snapshot``) and verify's check of the files (``check_snapshots``) are one file format and change
together; the in-memory cache and
its injection live in models/kvcache.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout as cube_layout
from memos_cli.cube.bundle import Cube
from memos_cli.cube.io import atomic_write_bytes
from memos_cli.cube.records import MemoryRecord
from memos_cli.errors import (
    ActivationError,
    IncompatibleModel,
    IntegrityError,
    InvalidCube,
    InvalidSnapshot,
    UsageError,
)
from memos_cli.models.kvcache import Snapshot, check_compatible, inject
from memos_cli.models.lm import DTYPES, LanguageModel, torch_dtype
from memos_cli.models.prompt import (
    PREAMBLE_HEADER,
    Layout,
    check_length,
    detect_layout,
    fit_memories,
    memory_line,
    prefill,
    prefix_ids,
    render_preamble,
)

FORMAT = "memos-kv"
FORMAT_VERSION = 1
_MAX_HEADER_BYTES = cube_layout.MAX_SNAPSHOT_HEADER_BYTES


def _snapshot_from_cache(
    lm: LanguageModel,
    cache: Any,
    *,
    token_ids: list[int],
    refs: list[str],
    preamble: str,
    layout: Layout,
    dtype: str,
    skipped: list[str],
) -> Snapshot:
    target = torch_dtype(dtype)
    keys, values = [], []
    for i, layer in enumerate(cache.layers):
        if layer.keys is None or int(layer.keys.shape[-2]) != len(token_ids):
            raise ActivationError(f"layer {i} of {lm.name} did not keep all {len(token_ids)} tokens in its cache")
        keys.append(layer.keys.detach().to(target).contiguous())
        values.append(layer.values.detach().to(target).contiguous())
    return Snapshot(
        keys=keys,
        values=values,
        token_ids=token_ids,
        memory_refs=refs,
        preamble=preamble,
        layout=layout,
        model_fingerprint=lm.fingerprint,
        model_family=lm.family,
        dtype=dtype,
        skipped_refs=skipped,
    )


def build_snapshot(
    lm: LanguageModel,
    memories: Sequence[MemoryRecord],
    *,
    dtype: str = "float32",
    budget: int | None = None,
) -> Snapshot:
    """Prefill the preamble of ``memories`` once and keep every layer's keys and values.

    Memories are taken in the given (selection) order; the first one that would take the snapshot past
    ``budget`` tokens stops the selection, and it and all later ones are reported in ``skipped_refs``.
    """
    if dtype not in DTYPES:
        raise UsageError(f"{{dtype}} must be one of {', '.join(DTYPES)}, not {dtype}", options=("dtype",))
    if not memories:
        raise UsageError("no memories selected for the snapshot")
    layout = detect_layout(lm)
    count = fit_memories(lm, layout, [PREAMBLE_HEADER], memories, budget)
    if count == 0:
        need = len(prefix_ids(lm, layout, render_preamble(memories[:1]))[1])
        raise UsageError(
            f"{{budget}} {budget} is too small: the first memory alone needs {need} tokens", options=("budget",)
        )
    chosen = list(memories[:count])
    preamble = render_preamble(chosen)
    _, ids = prefix_ids(lm, layout, preamble)
    check_length(lm, len(ids))
    cache = prefill(lm, ids, None).past_key_values
    return _snapshot_from_cache(
        lm,
        cache,
        token_ids=ids,
        refs=[m.ref for m in chosen],
        preamble=preamble,
        layout=layout,
        dtype=dtype,
        skipped=[m.ref for m in memories[count:]],
    )


def extend_snapshot(
    lm: LanguageModel,
    snap: Snapshot,
    more: Sequence[MemoryRecord],
    *,
    budget: int | None = None,
    dtype: str | None = None,
) -> Snapshot:
    """A new snapshot: ``snap``'s memories followed by ``more``, prefilling only the new lines on top of a
    copy of ``snap``'s cache (``snap`` itself is not modified).

    The result is the cache a single prefill of the longer preamble would give (up to float rounding),
    because the new tokens attend to the earlier ones, unlike two independently computed caches glued
    together. Memories already in ``snap`` (same ref) are not added twice.
    """
    check_compatible(lm, snap, what="KV snapshot")
    known = set(snap.memory_refs)
    fresh = [m for m in more if m.ref not in known]
    count = fit_memories(lm, snap.layout, [snap.preamble], fresh, budget)
    chosen = fresh[:count]
    if not chosen:
        raise UsageError("nothing to add: the memories are already in the snapshot or exceed the budget")
    preamble = "\n".join([snap.preamble, *(memory_line(m) for m in chosen)])
    _, ids = prefix_ids(lm, snap.layout, preamble)
    if ids[: snap.token_count] != snap.token_ids:
        raise ActivationError(
            "the new memories change how the snapshot's last tokens are split, so it cannot be extended",
            hint="rebuild it from its memories instead ({refresh} NAME)",
            options=("refresh",),
        )
    check_length(lm, len(ids))
    cache = inject(lm, snap)
    cache = prefill(lm, ids[snap.token_count :], cache).past_key_values
    return _snapshot_from_cache(
        lm,
        cache,
        token_ids=ids,
        refs=[*snap.memory_refs, *(m.ref for m in chosen)],
        preamble=preamble,
        layout=snap.layout,
        dtype=dtype or snap.dtype,
        skipped=[m.ref for m in fresh[count:]],
    )


# ---------------------------------------------------------------------------------------------------------
# Files


def save_snapshot(path: Path | str, snap: Snapshot) -> str:
    """Write ``snap`` as a safetensors file, atomically (temp file, fsync, rename); return its sha256."""
    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, Any] = {}
    for i, (k, v) in enumerate(zip(snap.keys, snap.values, strict=True)):
        tensors[f"layers.{i}.keys"] = k.contiguous()
        tensors[f"layers.{i}.values"] = v.contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_fingerprint": snap.model_fingerprint,
        "model_family": snap.model_family,
        "dtype": snap.dtype,
        "token_count": str(snap.token_count),
        "token_ids": json.dumps(snap.token_ids, separators=(",", ":")),
        "memory_refs": json.dumps(snap.memory_refs, separators=(",", ":")),
        "layer_count": str(snap.layer_count),
        "layout": snap.layout,
        "preamble": snap.preamble,
    }
    if snap.adapters:
        metadata["adapters"] = json.dumps(snap.adapters, separators=(",", ":"))
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    snap.sha256 = digest
    return digest


def read_snapshot_header(path: Path | str) -> dict[str, str]:
    """The metadata of a snapshot file, read without loading any tensor (for ``show``/``stats``/``verify``)."""
    path = Path(path)
    with cube_io.open_read(path.parent, path.name) as handle:
        head = handle.read(8)
        size = _header_size(path, head, os.fstat(handle.fileno()).st_size)
        raw = handle.read(size)
    return _parse_metadata(path, raw)


def snapshot_problem(root: Path, rel: str, *, expected_sha256: str | None = None) -> str | None:
    """Why the snapshot file ``rel`` of cube ``root`` cannot be used, without a model or its tensors:
    missing, a link or special file, bytes that differ from ``expected_sha256``, a torn or malformed
    header, or tensors that run past the end of the file (truncated). None when it looks whole. Cheap
    enough for ``stats`` and for ``chat`` before it loads the model. Read through the confined
    primitives (cube/io.py): nothing outside the cube is followed."""
    from memos_cli.errors import UnsafePath

    shown = Path(root) / rel
    try:
        what = cube_io.kind(root, rel)
        if what is None:
            return "the file is missing"
        if what != "file":
            return "it is a symbolic link" if what == "link" else "it is not a regular file"
        if expected_sha256 is not None and cube_io.sha256(root, rel) != expected_sha256:
            return "its bytes do not match the recorded sha256 (modified or corrupted)"
        with cube_io.open_read(root, rel) as handle:
            total = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            size = _header_size(shown, head, total)
            raw = handle.read(size)
        _parse_metadata(shown, raw)
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    except UnsafePath as exc:
        return exc.why
    except InvalidSnapshot as exc:
        return exc.problem
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"unreadable ({type(exc).__name__})"
    if 8 + size + max(ends, default=0) > total:
        return "the file is truncated (its tensors run past the end)"
    return None


def _header_size(path: Path, head: bytes, total: int) -> int:
    if len(head) < 8:
        raise InvalidSnapshot(path, "the file is truncated (no safetensors header)")
    size = int.from_bytes(head, "little")
    if size > _MAX_HEADER_BYTES or 8 + size > total:
        raise InvalidSnapshot(path, "the file is truncated or its header size is corrupt")
    return size


def _parse_metadata(path: Path, raw: bytes) -> dict[str, str]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise InvalidSnapshot(path, f"the header is not valid JSON ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InvalidSnapshot(path, "not a memos KV snapshot (no memos-kv metadata)")
    for key, value in meta.items():
        if len(str(value)) > cube_layout.MAX_SNAPSHOT_FIELD_CHARS:
            raise InvalidSnapshot(
                path,
                f"header field {str(key)[:40]!r} is longer than the limit of "
                f"{cube_layout.MAX_SNAPSHOT_FIELD_CHARS:,} characters (docs/FORMAT.md, Limits)",
            )
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise InvalidSnapshot(
            path, f"format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}", hint="upgrade memos"
        )
    return {str(k): str(v) for k, v in meta.items()}


@dataclass
class SnapshotFile:
    """A snapshot file's bytes, read and checked without a model: sha256, safetensors header, metadata."""

    path: Path
    data: bytes
    sha256: str
    meta: dict[str, str]


def read_snapshot(path: Path | str, *, expected_sha256: str | None = None) -> SnapshotFile:
    """Read a snapshot file and run the checks that need no model, so that a damaged or foreign file
    fails in milliseconds, before seconds go into loading the model (``chat --kv`` calls it first).

    Raises IntegrityError when the bytes differ from ``expected_sha256`` (before anything is parsed),
    InvalidSnapshot for a truncated file or a header that is not a memos snapshot of this format version.
    """
    path = Path(path)
    try:
        data = cube_io.read_bytes(path.parent, path.name)
        assert data is not None
    except OSError as exc:
        raise InvalidSnapshot(path, f"cannot read it ({exc.strerror})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        cube = path.parent.parent if path.parent.name == "kv" else path.parent
        raise IntegrityError(cube, f"{path.parent.name}/{path.name}", expected_sha256, digest)
    size = _header_size(path, data[:8], len(data))
    return SnapshotFile(path, data, digest, _parse_metadata(path, data[8 : 8 + size]))


def load_snapshot(
    path: Path | str | SnapshotFile, lm: LanguageModel, *, expected_sha256: str | None = None
) -> Snapshot:
    """Read and check a snapshot file (or one already read by ``read_snapshot``) for ``lm``.

    Refused, each with its own error: bytes that differ from ``expected_sha256`` (IntegrityError, before
    anything is parsed), a truncated or malformed file or a header that contradicts its tensors
    (InvalidSnapshot), a snapshot made for another model (IncompatibleModel). Only safetensors parses the
    tensors: nothing in the file is executed.
    """
    file = path if isinstance(path, SnapshotFile) else read_snapshot(path, expected_sha256=expected_sha256)
    path, data, digest, meta = file.path, file.data, file.sha256, file.meta
    header = _checked_header(path, meta, lm)
    keys, values = _checked_layers(path, data, header, lm)
    return Snapshot(
        keys=keys,
        values=values,
        token_ids=header.token_ids,
        memory_refs=header.refs,
        preamble=header.preamble,
        layout=header.layout,
        model_fingerprint=header.fingerprint,
        model_family=header.family,
        dtype=header.dtype,
        sha256=digest,
        adapters=header.adapters,
    )


@dataclass
class _Header:
    fingerprint: str
    family: str
    dtype: str
    layout: Layout
    token_ids: list[int]
    refs: list[str]
    preamble: str
    layer_count: int
    adapters: dict[str, str]


def _checked_header(path: Path, meta: dict[str, str], lm: LanguageModel) -> _Header:
    """The header's fields, each checked against the others and against ``lm`` (InvalidSnapshot or
    IncompatibleModel on the first that is wrong)."""

    def field_(name: str) -> str:
        if name not in meta:
            raise InvalidSnapshot(path, f"the header lacks {name}")
        return meta[name]

    def json_list(name: str, kind: type) -> list[Any]:
        try:
            value = json.loads(field_(name))
        except ValueError as exc:
            raise InvalidSnapshot(path, f"{name} is not valid JSON") from exc
        if not isinstance(value, list) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in value):
            raise InvalidSnapshot(path, f"{name} must be a list of {kind.__name__}")
        return value

    fingerprint = field_("model_fingerprint")
    if fingerprint != lm.fingerprint:
        raise IncompatibleModel(f"KV snapshot {path.name}", fingerprint, lm.fingerprint)
    dtype = field_("dtype")
    if dtype not in DTYPES:
        raise InvalidSnapshot(path, f"unknown dtype {dtype!r}")
    layout = field_("layout")
    if layout not in ("system", "user", "plain"):
        raise InvalidSnapshot(path, f"unknown layout {layout!r}")
    token_ids = json_list("token_ids", int)
    refs = json_list("memory_refs", str)
    preamble = field_("preamble")
    try:
        token_count = int(field_("token_count"))
        layer_count = int(field_("layer_count"))
    except ValueError as exc:
        raise InvalidSnapshot(path, "token_count and layer_count must be integers") from exc
    if token_count != len(token_ids) or token_count == 0:
        raise InvalidSnapshot(path, f"token_count {token_count} but {len(token_ids)} token ids")
    if layer_count != lm.num_layers:
        raise InvalidSnapshot(path, f"layer_count {layer_count}, but {lm.name} has {lm.num_layers} layers")
    if any(t < 0 or t >= lm.vocab_size for t in token_ids):
        raise InvalidSnapshot(path, "a token id is outside the model's vocabulary")
    # The header's text and token ids must agree, or a re-prefill would not reproduce the cache.
    if prefix_ids(lm, layout, preamble)[1] != token_ids:  # type: ignore[arg-type]
        raise InvalidSnapshot(path, "the token ids do not match the preamble text in the header")

    adapters: dict[str, str] = {}
    if "adapters" in meta:
        try:
            adapters = json.loads(meta["adapters"])
        except ValueError as exc:
            raise InvalidSnapshot(path, "adapters is not valid JSON") from exc
        if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
            raise InvalidSnapshot(path, "adapters must map adapter names to sha256 strings")

    return _Header(
        fingerprint=fingerprint,
        family=field_("model_family"),
        dtype=dtype,
        layout=layout,  # type: ignore[arg-type]  # one of the three, checked above
        token_ids=token_ids,
        refs=refs,
        preamble=preamble,
        layer_count=layer_count,
        adapters=adapters,
    )


def _checked_layers(path: Path, data: bytes, header: _Header, lm: LanguageModel) -> tuple[list[Any], list[Any]]:
    """Keys and values of every layer, parsed by safetensors only and checked against the header and
    ``lm``'s cache shapes: names, shapes, dtype, finite values."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    layer_count, dtype, token_count = header.layer_count, header.dtype, len(header.token_ids)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidSnapshot(path, f"the tensors cannot be read ({exc})") from exc
    expected_names = {f"layers.{i}.{kind}" for i in range(layer_count) for kind in ("keys", "values")}
    if set(tensors) != expected_names:
        raise InvalidSnapshot(path, f"expected tensors for {layer_count} layers, found {len(tensors)} tensors")
    target = torch_dtype(dtype)
    shapes = lm.kv_shapes()
    keys, values = [], []
    for i in range(layer_count):
        k, v = tensors[f"layers.{i}.keys"], tensors[f"layers.{i}.values"]
        kh, kd, vh, vd = shapes[i]
        if tuple(k.shape) != (1, kh, token_count, kd) or tuple(v.shape) != (1, vh, token_count, vd):
            raise InvalidSnapshot(
                path,
                f"layer {i} has shapes {tuple(k.shape)}/{tuple(v.shape)}, expected "
                f"{(1, kh, token_count, kd)}/{(1, vh, token_count, vd)}",
            )
        if k.dtype != target or v.dtype != target:
            raise InvalidSnapshot(path, f"layer {i} is {k.dtype}, but the header says {dtype}")
        if not (bool(k.isfinite().all()) and bool(v.isfinite().all())):
            raise InvalidSnapshot(path, f"layer {i} holds non-finite values")
        keys.append(k)
        values.append(v)
    return keys, values


def check_snapshots(
    cube: Cube, active_refs: set[str], problem: Callable[[str], None], note: Callable[[str], None]
) -> set[str]:
    """verify's activation part: each KV snapshot the manifest names is a file of its recorded sha256
    whose header names the manifest's model; a stale one is noted. Returns the files it covered."""
    referenced: set[str] = set()
    for name, entry in cube.manifest.kv.items():
        rel = f"{cube_layout.KV_DIR}/{name}.safetensors"
        referenced.add(rel)
        refresh = f"rebuild it: memos promote {cube.path} --refresh {name}"
        try:
            committed = cube.committed_rel(rel)
        except InvalidCube as exc:
            problem(f"kv {name}: {exc.problem}")
            continue
        if cube_io.kind(cube.path, committed) != "file":
            problem(f"kv {name}: {rel} is missing ({refresh})")
            continue
        if entry.sha256 and cube_io.sha256(cube.path, committed) != entry.sha256:
            problem(f"kv {name}: {rel} does not match its recorded sha256 (modified or corrupted; {refresh})")
            continue
        try:
            fingerprint = read_snapshot_header(cube.path / committed).get("model_fingerprint")
            if fingerprint and entry.model_fingerprint and fingerprint != entry.model_fingerprint:
                problem(f"kv {name}: header names model {fingerprint}, manifest {entry.model_fingerprint}")
        except Exception as exc:  # noqa: BLE001 - any unreadable header is a problem to name, not a crash
            problem(f"kv {name}: unreadable snapshot header ({exc}; {refresh})")
        stale = [m for m in entry.memories if m not in active_refs]
        if stale:
            note(f"kv {name} is stale: {len(stale)} of its memories changed (memos promote --refresh {name})")
    return referenced
