"""Typed manifest entries: what ``cube.yaml`` says about a cube's activation and parametric memory.

``kv.<name>`` (a KV snapshot, ``kv/<name>.safetensors``) and ``lora.<name>`` (a LoRA adapter,
``lora/<name>/``) are parsed and validated once, when the manifest is read (``from_dict`` raises
ValueError naming the field), and used as attributes everywhere else. ``to_dict`` writes back every key
memos knows and, unchanged, every key it does not (a newer memos may have written them). docs/FORMAT.md
documents every key below; ``tests/test_entries.py`` checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from memos_cli.cube import layout


@dataclass(frozen=True)
class MemoryRef:
    """One version of one memory, written ``id@version`` (snapshots and adapters hold these)."""

    id: str
    version: int

    @classmethod
    def parse(cls, ref: str) -> MemoryRef:
        memory_id, sep, version = str(ref).rpartition("@")
        if not sep or not memory_id or not version.isdigit():
            raise ValueError(f"{str(ref)[:80]!r} is not a memory reference (id@version)")
        return cls(memory_id, int(version))

    def __str__(self) -> str:
        return f"{self.id}@{self.version}"


def ref_ids(refs: list[str]) -> list[str]:
    """The memory ids of ``id@version`` references, in order (a malformed one counts as its whole text)."""
    return [str(ref).rpartition("@")[0] or str(ref) for ref in refs]


@dataclass(frozen=True)
class ModelRef:
    """The model a cube's snapshots and adapters were made for (``model:`` in cube.yaml)."""

    name: str
    fingerprint: str

    @classmethod
    def from_dict(cls, data: Any) -> ModelRef | None:
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
            raise ValueError("model must be a mapping with a string fingerprint")
        return cls(str(data.get("name") or ""), data["fingerprint"])

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "fingerprint": self.fingerprint}


def _str(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string")
    return value


def _int(data: dict[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{where}.{key} must be a non-negative integer")
    return value


def _strings(data: dict[str, Any], key: str, where: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}.{key} must be a list of strings")
    return list(value)


def _mapping(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}.{key} must be a mapping")
    return dict(value)


def _digests(data: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = _mapping(data, key, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{where}.{key} must map names to sha256 strings")
    return value


def _to_dict(entry: KvEntry | LoraEntry, path_key: str, where_they_apply: tuple[str, ...]) -> dict[str, Any]:
    """Every field but the name, its place under ``path_key``, unknown keys kept; the fields in
    ``where_they_apply`` only when set (they belong to promote --lora or to fuse)."""
    out: dict[str, Any] = {**entry.extra, path_key: entry.rel}
    for f in fields(entry):
        value = getattr(entry, f.name)
        if f.name in ("name", "extra") or (f.name in where_they_apply and not value):
            continue
        out[f.name] = value
    return out


def _known(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - {"name", "extra"}


@dataclass
class KvEntry:
    """``kv.<name>``: a KV snapshot (activation memory), written by promote, fuse and the scheduler."""

    name: str
    sha256: str | None = None  # of kv/<name>.safetensors
    model: str | None = None  # the model's name
    model_fingerprint: str | None = None  # the (adapted) model whose cache it holds
    dtype: str = "float32"
    tokens: int = 0
    memories: list[str] = field(default_factory=list)  # id@version of each memory in the preamble
    skipped: list[str] = field(default_factory=list)  # selected but over the token budget
    selection: dict[str, Any] | None = None  # how the memories were chosen (refresh chooses again)
    budget: int | None = None  # the token budget it was built with
    created: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)  # promote --lora: adapter name -> weights sha256
    base_model_fingerprint: str | None = None  # promote --lora: the base model under the adapters
    fused_from: list[str] = field(default_factory=list)  # fuse: the parent cubes it was rebuilt from
    extra: dict[str, Any] = field(default_factory=dict)  # keys this memos does not know, kept

    @property
    def rel(self) -> str:
        return layout.kv_rel(self.name)

    def ids(self) -> list[str]:
        return ref_ids(self.memories)

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> KvEntry:
        where = f"kv.{name}"
        if data.get("file") not in (None, layout.kv_rel(name)):
            raise ValueError(f"{where}.file must be {layout.kv_rel(name)!r}")
        return cls(
            name=name,
            sha256=_str(data, "sha256", where),
            model=_str(data, "model", where),
            model_fingerprint=_str(data, "model_fingerprint", where),
            dtype=_str(data, "dtype", where) or "float32",
            tokens=_int(data, "tokens", where) or 0,
            memories=_strings(data, "memories", where),
            skipped=_strings(data, "skipped", where),
            selection=_mapping(data, "selection", where) if data.get("selection") is not None else None,
            budget=_int(data, "budget", where),
            created=_str(data, "created", where),
            adapters=_digests(data, "adapters", where),
            base_model_fingerprint=_str(data, "base_model_fingerprint", where),
            fused_from=_strings(data, "fused_from", where),
            extra={k: v for k, v in data.items() if k not in _known(cls) | {"file"}},
        )

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, "file", ("adapters", "base_model_fingerprint", "fused_from"))


@dataclass
class LoraEntry:
    """``lora.<name>``: a LoRA adapter (parametric memory), written by distill, fuse and the scheduler."""

    name: str
    files: dict[str, str] = field(default_factory=dict)  # file name in lora/<name>/ -> sha256
    base_model_fingerprint: str | None = None  # the model it adapts
    model: str | None = None
    memories: list[str] = field(default_factory=list)  # id@version of each memory it was trained on
    selection: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # rank, alpha, steps, lr, targets, ...
    metrics: dict[str, Any] = field(default_factory=dict)  # recall before/after, forgetting, ...
    created: str | None = None
    fused_from: list[str] = field(default_factory=list)  # fuse: the parent cubes
    method: str | None = None  # fuse: copy, cat, cat+consolidate
    recall: dict[str, Any] | None = None  # fuse: recall of each parent's facts after each step
    consolidation: dict[str, Any] | None = None  # fuse: the consolidation passes
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rel(self) -> str:
        return layout.lora_rel(self.name)

    def ids(self) -> list[str]:
        return ref_ids(self.memories)

    @property
    def weights_sha256(self) -> str | None:
        return self.files.get(layout.ADAPTER_FILES[1])

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> LoraEntry:
        where = f"lora.{name}"
        if data.get("path") not in (None, layout.lora_rel(name)):
            raise ValueError(f"{where}.path must be {layout.lora_rel(name)!r}")
        return cls(
            name=name,
            files=_digests(data, "files", where),
            base_model_fingerprint=_str(data, "base_model_fingerprint", where),
            model=_str(data, "model", where),
            memories=_strings(data, "memories", where),
            selection=_mapping(data, "selection", where) if data.get("selection") is not None else None,
            hyperparameters=_mapping(data, "hyperparameters", where),
            metrics=_mapping(data, "metrics", where),
            created=_str(data, "created", where),
            fused_from=_strings(data, "fused_from", where),
            method=_str(data, "method", where),
            recall=_mapping(data, "recall", where) if data.get("recall") is not None else None,
            consolidation=_mapping(data, "consolidation", where) if data.get("consolidation") is not None else None,
            extra={k: v for k, v in data.items() if k not in _known(cls) | {"path"}},
        )

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, "path", ("fused_from", "method", "recall", "consolidation"))
