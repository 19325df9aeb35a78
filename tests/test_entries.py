"""Typed manifest entries (cube/entries.py) and the keys docs/FORMAT.md documents for them."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.cube.entries import KvEntry, LoraEntry, MemoryRef, ModelRef, ref_ids
from memos_cli.errors import InvalidCube

FORMAT = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def _table_after(heading: str) -> set[str]:
    """The keys (first column, in backticks) of the first table after the line starting with ``heading``."""
    lines = FORMAT.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    keys: set[str] = set()
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            in_table = True
            match = re.match(r"\| `([a-z_0-9]+)` \|", line)
            if match:
                keys.add(match.group(1))
        elif in_table:
            break
    return keys


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - {"name", "extra"}


def test_documented_entry_keys_are_the_typed_fields() -> None:
    assert _table_after("A snapshot entry, `kv.<name>`") == _field_names(KvEntry) | {"file"}
    assert _table_after("An adapter entry, `lora.<name>`") == _field_names(LoraEntry) | {"path"}


def test_documented_snapshot_header_keys_are_what_memos_writes(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from safetensors import safe_open

    from memos_cli.engine.activation.promote import promote_to_activation
    from memos_cli.engine.plaintext.ingest import Source, ingest
    from memos_cli.engine.select import Selection

    cube = Cube.init(tmp_path / "c")
    ingest(cube, [Source("f.jsonl", b'{"text": "the ferry leaves at nine"}\n')])
    promote_to_activation(cube, Selection(all=True), name="s", model=str(tiny_dirs["llama"]))
    with safe_open(str(cube.path / "kv" / "s.safetensors"), framework="pt") as handle:
        written = set(handle.metadata())
        tensors = set(handle.keys())
    documented = _table_after("A safetensors file whose tensors")
    assert written == documented - {"adapters"}  # adapters: only with promote --lora
    assert tensors and all(re.fullmatch(r"layers\.\d+\.(keys|values)", t) for t in tensors)
    entry = Cube.open(cube.path).manifest.kv["s"]
    assert set(entry.to_dict()) <= _table_after("A snapshot entry, `kv.<name>`") and not entry.extra


def test_entries_round_trip_and_keep_unknown_keys() -> None:
    data = {
        "file": "kv/s.safetensors",
        "sha256": "ab" * 32,
        "tokens": 12,
        "memories": ["m-1@2", "m-3@1"],
        "selection": {"ids": ["m-1", "m-3"]},
        "from_a_newer_memos": {"x": 1},
    }
    entry = KvEntry.from_dict("s", data)
    assert entry.ids() == ["m-1", "m-3"] and entry.rel == "kv/s.safetensors" and entry.tokens == 12
    assert entry.to_dict()["from_a_newer_memos"] == {"x": 1}
    assert KvEntry.from_dict("s", entry.to_dict()) == entry
    adapter = LoraEntry.from_dict("a", {"files": {"adapter_model.safetensors": "cd" * 32}, "memories": ["m-1@1"]})
    assert adapter.weights_sha256 == "cd" * 32 and adapter.to_dict()["path"] == "lora/a"
    assert LoraEntry.from_dict("a", adapter.to_dict()) == adapter


@pytest.mark.parametrize(
    ("section", "entry", "problem"),
    [
        ("kv", {"file": "memories.jsonl"}, "kv.s.file must be"),
        ("kv", {"tokens": "many"}, "kv.s.tokens must be a non-negative integer"),
        ("kv", {"memories": "m-1@1"}, "kv.s.memories must be a list of strings"),
        ("kv", {"adapters": {"a": 5}}, "kv.s.adapters must map names to sha256 strings"),
        ("lora", {"path": "../elsewhere"}, "lora.s.path must be"),
        ("lora", {"metrics": [1, 2]}, "lora.s.metrics must be a mapping"),
    ],
)
def test_a_manifest_with_a_mistyped_entry_is_refused_naming_the_key(
    tmp_path: Path, section: str, entry: dict[str, object], problem: str
) -> None:
    import yaml

    cube = Cube.init(tmp_path / "c")
    manifest = yaml.safe_load((cube.path / "cube.yaml").read_text())
    manifest[section] = {"s": entry}
    (cube.path / "cube.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(InvalidCube, match=re.escape(problem)):
        Cube.open(cube.path)


def test_memory_refs_and_model_refs() -> None:
    assert MemoryRef.parse("m-ab@3") == MemoryRef("m-ab", 3) and str(MemoryRef("m-ab", 3)) == "m-ab@3"
    for bad in ("m-ab", "m-ab@", "@3", "m-ab@x"):
        with pytest.raises(ValueError):
            MemoryRef.parse(bad)
    assert ref_ids(["a@1", "b@c@2"]) == ["a", "b@c"]
    assert ModelRef.from_dict({"name": "n", "fingerprint": "f"}) == ModelRef("n", "f")
    assert ModelRef.from_dict(None) is None
    with pytest.raises(ValueError):
        ModelRef.from_dict({"name": "n"})
