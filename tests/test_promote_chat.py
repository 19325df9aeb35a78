"""promote (activation up, archive down, drop, refresh, staleness) and chat, on a tiny llama model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import snapshot_files
from memos_cli.cube.bundle import Cube
from memos_cli.engine import ops
from memos_cli.engine.activation.promote import drop, promote_to_activation, refresh
from memos_cli.engine.chat import ChatOptions, ChatSession
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.select import Selection
from memos_cli.errors import IncompatibleModel, IntegrityError, InvalidCube, MemosError, UsageError
from tiny_models import build_tiny_model

FACTS = [
    {"text": "Ana's cat is called Miso", "tags": ["core"], "speaker": "Ana"},
    {"text": "Bob's favourite food is ramen", "tags": ["core"], "speaker": "Bob"},
    {"text": "The design review moved to Thursday", "tags": ["work"]},
]


@pytest.fixture
def cube(tmp_path: Path) -> Cube:
    cube = Cube.init(tmp_path / "c", owner="tester")
    ingest(cube, [Source("f.jsonl", "".join(json.dumps(f) + "\n" for f in FACTS).encode())])
    return cube


@pytest.fixture
def llama(tiny_dirs: dict[str, Path]) -> str:
    return str(tiny_dirs["llama"])


def test_promote_writes_a_checked_snapshot(cube: Cube, llama: str) -> None:
    report = promote_to_activation(cube, Selection(tags=["core"]), name="core", model=llama)
    entry = Cube.open(cube.path).manifest.kv["core"].to_dict()
    assert entry["file"] == "kv/core.safetensors" and entry["tokens"] == report.tokens > 0
    assert len(entry["memories"]) == 2 and all("@" in ref for ref in entry["memories"])
    assert entry["dtype"] == "float32" and len(entry["sha256"]) == 64
    with safe_open(str(cube.path / entry["file"]), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["model_fingerprint"] == entry["model_fingerprint"]
    assert verify(cube.path).ok
    assert cube.read_audit()[-1]["op"] == "promote"
    with pytest.raises(UsageError, match="exists"):
        promote_to_activation(cube, Selection(all=True), name="core", model=llama)


def test_budget_caps_the_snapshot(cube: Cube, llama: str) -> None:
    full = promote_to_activation(cube, Selection(all=True), name="all", model=llama)
    capped = promote_to_activation(cube, Selection(all=True), name="small", model=llama, budget=full.tokens - 1)
    assert capped.tokens <= full.tokens - 1 and capped.skipped


def test_stale_snapshot_is_reported_and_refreshed(cube: Cube, llama: str) -> None:
    report = promote_to_activation(cube, Selection(tags=["core"]), name="core", model=llama)
    victim = report.memories[0].split("@")[0]
    ops.forget(cube, [victim], actor="tester")
    assert ops.stats(cube)["kv"]["core"]["stale"] is True
    assert any("stale" in note for note in verify(cube.path).notes)
    fresh = refresh(Cube.open(cube.path), "core", model=llama)
    assert len(fresh.memories) == 1 and ops.stats(Cube.open(cube.path))["kv"]["core"]["stale"] is False


def test_drop_removes_the_snapshot(cube: Cube, llama: str) -> None:
    promote_to_activation(cube, Selection(all=True), name="core", model=llama)
    drop(cube, "core")
    cube = Cube.open(cube.path)
    assert "core" not in cube.manifest.kv and not (cube.path / "kv" / "core.safetensors").exists()
    assert verify(cube.path).ok


def test_chat_with_a_snapshot_equals_recompute_and_never_changes_it(cube: Cube, llama: str) -> None:
    promote_to_activation(cube, Selection(all=True), name="core", model=llama)
    before = snapshot_files(cube.path)
    base = dict(model=llama, greedy=True, max_new_tokens=12, retrieval=False, remember=False)
    kv = ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", **base)).ask("Who is Miso?")
    again = ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", recompute=True, **base)).ask("Who is Miso?")
    assert kv.mode == "kv" and again.mode == "recompute"
    assert kv.answer == again.answer and kv.new_tokens == again.new_tokens
    assert snapshot_files(cube.path) == before


def test_chat_retrieves_and_remembers(cube: Cube, llama: str) -> None:
    session = ChatSession([cube], ChatOptions(model=llama, greedy=True, max_new_tokens=8, k=2))
    result = session.ask("What is the cat called?")
    session.close()
    texts = {r.text for r in result.retrieved}
    assert "Ana's cat is called Miso" in texts
    assert len(result.remembered) == 2
    dialogue = [r for r in cube.read_state().current.values() if r.type == "dialogue"]
    assert {r.speaker for r in dialogue} == {"user", "assistant"}
    assert all(r.metadata["session"] == session.session_id for r in dialogue)
    quiet = ChatSession([cube], ChatOptions(model=llama, greedy=True, max_new_tokens=4, remember=False))
    assert quiet.ask("anything").remembered == []


def test_two_cubes_of_one_name_do_not_collide_and_turns_refresh_only_the_first(
    tmp_path: Path, llama: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memos_cli.engine.plaintext import query

    first = Cube.init(tmp_path / "a" / "notes", name="notes")
    second = Cube.init(tmp_path / "b" / "notes", name="notes")
    ingest(first, [Source("f.jsonl", b'{"text": "The lighthouse keeper is called Ines"}\n')])
    ingest(second, [Source("g.jsonl", b'{"text": "The harbour master is called Tomas"}\n')])
    session = ChatSession([first, second], ChatOptions(model=llama, greedy=True, max_new_tokens=4, k=4))
    result = session.ask("Who is the harbour master?")
    assert "The harbour master is called Tomas" in {r.text for r in result.retrieved}  # found in the second
    refreshed: list[Path] = []
    real = query.Searcher.refresh
    monkeypatch.setattr(query.Searcher, "refresh", lambda self, cube: (refreshed.append(cube.path), real(self, cube)))
    again = session.ask("And the lighthouse keeper?")
    session.close()
    assert refreshed == [first.path]  # only the cube the turn was stored in
    turns = [r for r in Cube.open(first.path).read_state().current.values() if r.type == "dialogue"]
    assert len(turns) == 4 and all("working" in r.tags and r.source == session.session_id for r in turns)
    assert not [r for r in Cube.open(second.path).read_state().current.values() if r.type == "dialogue"]
    assert again.remembered and set(again.remembered) <= {r.id for r in turns}


def test_a_tampered_or_foreign_snapshot_is_refused(cube: Cube, llama: str, tmp_path: Path) -> None:
    promote_to_activation(cube, Selection(all=True), name="core", model=llama)
    other = build_tiny_model(tmp_path / "other", "llama", seed=1)
    with pytest.raises(IncompatibleModel):
        ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", model=str(other), retrieval=False, remember=False))
    path = cube.path / "kv" / "core.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises((IntegrityError, InvalidCube, MemosError)):
        ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", model=llama, retrieval=False, remember=False))
    assert not verify(cube.path).ok


def test_unknown_snapshot_and_bad_names(cube: Cube, llama: str) -> None:
    with pytest.raises(MemosError, match="no KV snapshot"):
        ChatSession([cube], ChatOptions(kv="nope", model=llama, retrieval=False, remember=False))
    with pytest.raises(UsageError):
        promote_to_activation(cube, Selection(all=True), name="../evil", model=llama)


def test_fuse_rebuilds_snapshots_by_prefilling_on_top(tmp_path: Path, llama: str) -> None:
    from memos_cli.engine.activation.snapshots import build_snapshot, load_snapshot
    from memos_cli.engine.fuse import fuse
    from memos_cli.models.lm import load_lm

    parents = []
    for name, texts in (("a", ["Ana's cat is called Miso"]), ("b", ["Bob's favourite food is ramen"])):
        parent = Cube.init(tmp_path / name, name=name)
        ingest(parent, [Source(f"{name}.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())])
        promote_to_activation(parent, Selection(all=True), name="core", model=llama)
        parents.append(parent)
    report = fuse([p.path for p in parents], tmp_path / "ab", model=llama)
    assert report.kv["core"]["memories"] == 2
    fused = Cube.open(tmp_path / "ab")
    lm = load_lm(llama)
    entry = fused.manifest.kv["core"].to_dict()
    snap = load_snapshot(fused.path / entry["file"], lm, expected_sha256=entry["sha256"])
    state = fused.read_state()
    ordered = [state.current[ref.split("@")[0]] for ref in snap.memory_refs]
    reference = build_snapshot(lm, ordered)
    assert snap.token_ids == reference.token_ids
    assert verify(fused.path).ok


def test_chat_with_adapters_and_promote_to_parametric(cube: Cube, llama: str) -> None:
    import contextlib
    import io

    from memos_cli.cli.app import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            ["promote", str(cube.path), "--to", "parametric", "--name", "facts", "--tag", "core", "--model", llama]
        )
    assert code == 0, err.getvalue()
    entry = Cube.open(cube.path).manifest.lora["facts"].to_dict()
    assert len(entry["memories"]) == 2 and entry["base_model_fingerprint"]
    session = ChatSession(
        [Cube.open(cube.path)],
        ChatOptions(loras=["facts"], model=llama, greedy=True, max_new_tokens=4, remember=False, retrieval=False),
    )
    assert session.lm.fingerprint != entry["base_model_fingerprint"]  # adapted weights, its own identity
    assert session.ask("What is the cat called?").mode == "none"
    promote_to_activation(Cube.open(cube.path), Selection(all=True), name="core", model=llama)
    with pytest.raises(IncompatibleModel, match="base model alone"):  # made without the adapter
        ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", loras=["facts"], model=llama, remember=False))
    drop(Cube.open(cube.path), "facts")
    assert "facts" not in Cube.open(cube.path).manifest.lora and verify(cube.path).ok


def test_fuse_combines_adapters_of_one_name(tmp_path: Path, llama: str) -> None:
    import safetensors.torch

    from memos_cli.engine.fuse import fuse
    from memos_cli.engine.parametric.adapters import load_adapters
    from memos_cli.engine.parametric.distill import distill
    from memos_cli.models.lm import load_lm

    parents = []
    for name, text in (("a", "Ana's cat is called Miso"), ("b", "Bob's favourite food is ramen")):
        parent = Cube.init(tmp_path / name, name=name)
        ingest(parent, [Source(f"{name}.jsonl", (json.dumps({"text": text}) + "\n").encode())])
        distill(parent, Selection(all=True), name="facts", model=llama, steps=2)
        parents.append(parent)
    paths = [p.path for p in parents]

    def tensors(cube_path: Path) -> dict:
        return safetensors.torch.load_file(str(cube_path / "lora" / "facts" / "adapter_model.safetensors"))

    dropped = fuse(paths, tmp_path / "dropped", model=llama, adapters="drop")
    assert dropped.lora == {} and any("lora facts of a, b" in d for d in dropped.dropped)
    with pytest.raises(UsageError, match="'adapters' must be one of"):
        fuse(paths, tmp_path / "x", model=llama, adapters="average")

    # peft's combination alone: 'cat' puts the factors side by side, so the update is the parents' sum
    combined = fuse(paths, tmp_path / "cat", model=llama, adapters="combine")
    info = combined.lora["facts"]
    assert info["method"] == "cat" and info["from"] == ["a", "b"] and info["memories"] == 2
    assert "consolidation" not in info and set(info["recall"]) == {"a", "b"}
    assert all(
        0 <= r["combined"] <= 1 and r["probes"] >= 1 and "consolidated" not in r for r in info["recall"].values()
    )
    fused_t, one, two = tensors(tmp_path / "cat"), tensors(paths[0]), tensors(paths[1])
    key_a = next(k for k in one if "lora_A" in k)
    key_b = key_a.replace("lora_A", "lora_B")
    assert fused_t[key_a].shape[0] == 2 * one[key_a].shape[0]  # the ranks add up
    config = json.loads((tmp_path / "cat" / "lora" / "facts" / "adapter_config.json").read_text())
    parent_config = json.loads((paths[0] / "lora" / "facts" / "adapter_config.json").read_text())
    fused_delta = fused_t[key_b] @ fused_t[key_a] * (config["lora_alpha"] / config["r"])
    parent_scale = parent_config["lora_alpha"] / parent_config["r"]
    summed = (one[key_b] @ one[key_a] + two[key_b] @ two[key_a]) * parent_scale
    assert torch.allclose(fused_delta, summed, atol=1e-5)

    # the default goes on to train the combination on both parents' memories, and says how it went
    report = fuse(paths, tmp_path / "ab", model=llama)
    info = report.lora["facts"]
    assert info["method"] == "cat+consolidate" and info["consolidation"]["steps"] >= 1
    assert info["consolidation"]["examples"] >= 2
    assert all({"own", "combined", "consolidated"} <= set(r) for r in info["recall"].values())
    fused = Cube.open(tmp_path / "ab")
    entry = fused.manifest.lora["facts"].to_dict()
    assert entry["recall"] == info["recall"] and len(entry["memories"]) == 2
    assert not torch.equal(tensors(tmp_path / "ab")[key_a], fused_t[key_a])  # trained after combining
    assert verify(fused.path).ok
    adapted = load_adapters(load_lm(llama), fused, ["facts"])  # checks sha256 and the base model
    assert adapted.fingerprint != load_lm(llama).fingerprint

    # the command line: a readable summary per parent, or the report as JSON
    import contextlib
    import io

    from memos_cli.cli.app import main

    for extra, out in (([], "cli"), (["--json"], "cli-json")):
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = ["fuse", *map(str, paths), "-o", str(tmp_path / out), "--model", llama, "--adapters", "combine"]
            code = main(args + extra)
        assert code == 0, stderr.getvalue()
        if extra:
            assert json.loads(stdout.getvalue())["lora"]["facts"]["method"] == "cat"
        else:
            assert "lora facts: cat of a, b" in stdout.getvalue() + stderr.getvalue()
            assert "recall of a's facts: own" in stdout.getvalue() + stderr.getvalue()
