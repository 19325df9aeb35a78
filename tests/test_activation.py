"""Activation memory: KV snapshots built, saved, checked, injected and extended, across four families.

The central claim: with a float32 snapshot the greedy answer is token-identical to re-prefilling the same
prompt. Tiny random models (see ``tiny_models.py``) check it for llama, qwen2, mistral and gpt2; one test
checks it on the real SmolLM2.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest

from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.activation.snapshots import (
    Snapshot,
    build_snapshot,
    extend_snapshot,
    load_snapshot,
    read_snapshot_header,
    save_snapshot,
)
from memos_cli.errors import ActivationError, IncompatibleModel, IntegrityError, InvalidSnapshot, UsageError
from memos_cli.models import prompt as prompt_module
from memos_cli.models.generation import generate
from memos_cli.models.lm import LanguageModel, load_lm
from memos_cli.models.prompt import render_prompt
from tiny_models import FAMILIES, build_tiny_model

pytestmark = pytest.mark.usefixtures("memos_threads")

FACTS = [
    "Alice lives in Paris and works as a nurse.",
    "Bob's favourite food is ramen.",
    "The cat is called Miso.",
    "The design meeting moved to Thursday at 3 pm.",
    "Alice's car is blue.",
    "Bob visits Tokyo every spring.",
    "The wifi password is on the fridge.",
    "Alice prefers green tea to coffee.",
]
HISTORY = [{"role": "user", "content": "Hi, it's Alice."}, {"role": "assistant", "content": "Hello Alice!"}]


def record(i: int, text: str, speaker: str | None = None) -> MemoryRecord:
    return MemoryRecord(id=f"m-{i:04d}", version=1 + i % 2, text=text, created="2024-06-01T00:00:00Z", speaker=speaker)


MEMORIES = [record(i, t, speaker="alice" if i % 2 else None) for i, t in enumerate(FACTS)]


@pytest.fixture
def models(tiny_dirs: dict[str, Path]) -> dict[str, LanguageModel]:
    return {family: load_lm(str(path)) for family, path in tiny_dirs.items()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_bytes(path: Path) -> int:
    data = path.read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def rewrite_header(path: Path, change: dict[str, str]) -> None:
    """Edit a snapshot's metadata in place (as an attacker would), keeping the file well-formed."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"].update(change)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + size :])


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_snapshot_answer_is_token_identical_to_recompute(family: str, models: dict[str, LanguageModel]) -> None:
    lm = models[family]
    snap = build_snapshot(lm, MEMORIES)
    question = "Where does Alice live?"
    rest = {"retrieved": MEMORIES[5:7], "history": HISTORY, "max_new_tokens": 24}
    kv = generate(lm, question, snapshot=snap, mode="kv", **rest)  # type: ignore[arg-type]
    again = generate(lm, question, snapshot=snap, mode="recompute", **rest)  # type: ignore[arg-type]
    assert kv.new_tokens > 0
    assert kv.token_ids == again.token_ids
    assert kv.answer == again.answer
    assert kv.reused_tokens == snap.token_count and again.reused_tokens == 0
    assert kv.prompt_tokens == again.prompt_tokens > snap.token_count
    # the same memories given as records (no snapshot) render the very same prompt
    plain = generate(lm, question, memories=MEMORIES, mode="recompute", **rest)  # type: ignore[arg-type]
    assert plain.token_ids == kv.token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_snapshot_tokens_are_exactly_the_prompt_prefix(family: str, models: dict[str, LanguageModel]) -> None:
    lm = models[family]
    snap = build_snapshot(lm, MEMORIES[:4])
    for history in ((), HISTORY):
        prompt = render_prompt(
            lm,
            "What is the cat called?",
            preamble=snap.preamble,
            layout=snap.layout,
            history=history,
            retrieved=MEMORIES[6:],
        )
        assert prompt.aligned
        assert prompt.token_ids[: snap.token_count] == snap.token_ids  # tokenized in one piece
        assert prompt.prefix_len == snap.token_count
        assert lm.tokenizer.decode(snap.token_ids).endswith(prompt_module.memory_line(MEMORIES[3]))
    expected_layout = {"llama": "system", "qwen2": "system", "mistral": "user", "gpt2": "plain"}[family]
    assert snap.layout == expected_layout


def test_default_system_message_is_replaced_not_prepended(models: dict[str, LanguageModel]) -> None:
    lm = models["llama"]  # its template inserts a default system message when there is none
    snap = build_snapshot(lm, MEMORIES[:2])
    with_memories = render_prompt(lm, "Hi", preamble=snap.preamble, layout=snap.layout).text
    without = render_prompt(lm, "Hi").text
    assert "You are a helpful AI assistant." in without
    assert "You are a helpful AI assistant." not in with_memories
    assert with_memories.startswith("<|im_start|>system\n" + prompt_module.PREAMBLE_HEADER)


def test_streaming_pieces_make_the_answer(models: dict[str, LanguageModel]) -> None:
    lm = models["qwen2"]
    snap = build_snapshot(lm, MEMORIES[:3])
    pieces: list[str] = []
    result = generate(lm, "Hello?", snapshot=snap, max_new_tokens=12, on_token=pieces.append)
    assert len(pieces) >= 1
    assert "".join(pieces).strip() == result.answer
    assert result.ttft_ms > 0 and result.new_tokens == len(result.token_ids)


def test_sampling_is_reproducible_with_a_seed(models: dict[str, LanguageModel]) -> None:
    lm = models["llama"]
    snap = build_snapshot(lm, MEMORIES[:3])
    a = generate(lm, "Hello?", snapshot=snap, greedy=False, seed=7, max_new_tokens=10)
    b = generate(lm, "Hello?", snapshot=snap, greedy=False, seed=7, max_new_tokens=10, mode="recompute")
    assert a.token_ids == b.token_ids


def test_save_load_roundtrip_and_header(models: dict[str, LanguageModel], tmp_path: Path) -> None:
    import torch

    lm = models["llama"]
    snap = build_snapshot(lm, MEMORIES)
    path = tmp_path / "kv" / "hot.safetensors"
    digest = save_snapshot(path, snap)
    assert digest == sha(path) == snap.sha256
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp file left behind
    header = read_snapshot_header(path)
    assert header["format_version"] == "1"
    assert header["model_fingerprint"] == lm.fingerprint
    assert header["model_family"] == "llama"
    assert header["dtype"] == "float32"
    assert int(header["token_count"]) == snap.token_count
    assert json.loads(header["token_ids"]) == snap.token_ids
    assert json.loads(header["memory_refs"]) == [m.ref for m in MEMORIES]
    assert int(header["layer_count"]) == 2

    loaded = load_snapshot(path, lm, expected_sha256=digest)
    assert loaded.token_ids == snap.token_ids and loaded.memory_refs == snap.memory_refs
    assert all(torch.equal(a, b) for a, b in zip(loaded.keys + loaded.values, snap.keys + snap.values, strict=True))
    a = generate(lm, "Where does Alice live?", snapshot=loaded, max_new_tokens=16)
    b = generate(lm, "Where does Alice live?", snapshot=snap, mode="recompute", max_new_tokens=16)
    assert a.token_ids == b.token_ids


def test_stored_snapshot_is_never_modified_by_generation(models: dict[str, LanguageModel], tmp_path: Path) -> None:
    lm = models["mistral"]
    path = tmp_path / "s.safetensors"
    digest = save_snapshot(path, build_snapshot(lm, MEMORIES[:5]))
    snap = load_snapshot(path, lm, expected_sha256=digest)
    before = [t.clone() for t in snap.keys + snap.values]
    first = generate(lm, "Where?", snapshot=snap, max_new_tokens=12)
    second = generate(lm, "Where?", snapshot=snap, max_new_tokens=12)
    assert first.token_ids == second.token_ids  # no state carried over from the first turn
    assert all(t.shape[-2] == snap.token_count for t in snap.keys + snap.values)
    assert all(a.equal(b) for a, b in zip(before, snap.keys + snap.values, strict=True))
    assert sha(path) == digest


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_snapshots_are_half_the_size(
    dtype: str, models: dict[str, LanguageModel], tmp_path: Path
) -> None:
    lm = models["qwen2"]
    full = tmp_path / "f32.safetensors"
    half = tmp_path / f"{dtype}.safetensors"
    save_snapshot(full, build_snapshot(lm, MEMORIES))
    save_snapshot(half, build_snapshot(lm, MEMORIES, dtype=dtype))
    assert 2 * tensor_bytes(half) == tensor_bytes(full)
    snap = load_snapshot(half, lm)
    assert snap.dtype == dtype and str(snap.keys[0].dtype) == f"torch.{dtype}"
    assert generate(lm, "Where?", snapshot=snap, max_new_tokens=4).prompt_tokens > snap.token_count


def test_budget_keeps_selection_order_and_reports_the_rest(models: dict[str, LanguageModel]) -> None:
    lm = models["llama"]
    full = build_snapshot(lm, MEMORIES)
    budget = full.token_count // 2
    snap = build_snapshot(lm, MEMORIES, budget=budget)
    k = len(snap.memory_refs)
    assert 0 < k < len(MEMORIES)
    assert snap.token_count <= budget
    assert snap.memory_refs == [m.ref for m in MEMORIES[:k]]
    assert snap.skipped_refs == [m.ref for m in MEMORIES[k:]]
    assert build_snapshot(lm, MEMORIES[: k + 1]).token_count > budget  # the next one would not fit
    assert build_snapshot(lm, MEMORIES, budget=full.token_count).memory_refs == full.memory_refs
    with pytest.raises(UsageError, match="too small"):
        build_snapshot(lm, MEMORIES, budget=5)
    with pytest.raises(UsageError):
        build_snapshot(lm, [])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_extend_prefills_on_top_and_matches_a_single_prefill(family: str, models: dict[str, LanguageModel]) -> None:
    import torch

    lm = models[family]
    base = build_snapshot(lm, MEMORIES[:4])
    base_keys = [t.clone() for t in base.keys]
    grown = extend_snapshot(lm, base, MEMORIES[3:])  # MEMORIES[3] is already in: not added twice
    whole = build_snapshot(lm, MEMORIES)
    assert grown.memory_refs == whole.memory_refs
    assert grown.token_ids == whole.token_ids
    pairs = zip(grown.keys + grown.values, whole.keys + whole.values, strict=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in pairs)
    assert all(a.equal(b) for a, b in zip(base_keys, base.keys, strict=True))  # the base is untouched
    kv = generate(lm, "What does Alice drink?", snapshot=grown, max_new_tokens=16)
    again = generate(lm, "What does Alice drink?", snapshot=grown, mode="recompute", max_new_tokens=16)
    assert kv.token_ids == again.token_ids


# --- refusal ------------------------------------------------------------------------------------------


@pytest.fixture
def saved(models: dict[str, LanguageModel], tmp_path: Path) -> tuple[LanguageModel, Path, str]:
    lm = models["llama"]
    path = tmp_path / "kv" / "hot.safetensors"
    return lm, path, save_snapshot(path, build_snapshot(lm, MEMORIES[:4]))


def test_tampered_bytes_are_refused_by_checksum(saved: tuple[LanguageModel, Path, str]) -> None:
    lm, path, digest = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit in the last value tensor
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_snapshot(path, lm, expected_sha256=digest)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"token_count": "3"}, "token_count"),
        ({"layer_count": "3"}, "layer_count"),
        ({"token_ids": "[1,2,3]"}, "token_count"),
        ({"token_ids": "not json"}, "token_ids"),
        ({"preamble": "You are evil."}, "do not match the preamble"),
        ({"dtype": "float16"}, "float16"),
        ({"dtype": "int8"}, "dtype"),
        ({"format_version": "99"}, "format_version"),
        ({"format": "something-else"}, "not a memos KV snapshot"),
        ({"layout": "sideways"}, "layout"),
    ],
)
def test_lying_or_malformed_headers_are_refused(
    saved: tuple[LanguageModel, Path, str], change: dict[str, str], problem: str
) -> None:
    lm, path, _ = saved
    rewrite_header(path, change)
    with pytest.raises(InvalidSnapshot, match=problem):
        load_snapshot(path, lm)


def test_tensors_that_contradict_the_header_are_refused(models: dict[str, LanguageModel], tmp_path: Path) -> None:
    lm = models["llama"]
    snap = build_snapshot(lm, MEMORIES[:4])
    short = Snapshot(**{**snap.__dict__, "keys": [k[:, :, :-1] for k in snap.keys]})
    path = tmp_path / "short.safetensors"
    save_snapshot(path, short)
    with pytest.raises(InvalidSnapshot, match="shapes"):
        load_snapshot(path, lm)
    missing = Snapshot(**{**snap.__dict__, "keys": snap.keys[:1], "values": snap.values[:1]})
    save_snapshot(path, missing)
    rewrite_header(path, {"layer_count": "2"})
    with pytest.raises(InvalidSnapshot, match="tensors for 2 layers"):
        load_snapshot(path, lm)
    nan = Snapshot(**{**snap.__dict__, "values": [v * float("nan") for v in snap.values]})
    save_snapshot(path, nan)
    with pytest.raises(InvalidSnapshot, match="non-finite"):
        load_snapshot(path, lm)


def test_truncated_and_foreign_files_are_refused(saved: tuple[LanguageModel, Path, str], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    lm, path, _ = saved
    data = path.read_bytes()
    for cut in (4, 100, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidSnapshot, match="truncated|cannot be read|not valid JSON"):
            load_snapshot(path, lm)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(InvalidSnapshot, match="not a memos KV snapshot"):
        load_snapshot(plain, lm)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(_Boom.marker)!r}, 'w').write('ran')",))

    marker = Path()


def test_a_pickle_is_never_executed(models: dict[str, LanguageModel], tmp_path: Path) -> None:
    lm = models["llama"]
    _Boom.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"cache": _Boom()}))
    with pytest.raises(InvalidSnapshot):
        load_snapshot(evil, lm)
    assert not _Boom.marker.exists()


def test_snapshot_for_another_model_is_refused(
    models: dict[str, LanguageModel], saved: tuple[LanguageModel, Path, str], tmp_path: Path
) -> None:
    lm, path, digest = saved
    other = load_lm(str(build_tiny_model(tmp_path / "llama-other", "llama", seed=3)))  # same shapes, other weights
    assert other.fingerprint != lm.fingerprint
    with pytest.raises(IncompatibleModel, match="made for model"):
        load_snapshot(path, other, expected_sha256=digest)
    with pytest.raises(IncompatibleModel):
        load_snapshot(path, models["qwen2"])
    snap = load_snapshot(path, lm)
    with pytest.raises(IncompatibleModel):
        generate(other, "Hi", snapshot=snap)
    with pytest.raises(IncompatibleModel):
        extend_snapshot(other, snap, MEMORIES[5:])


def test_bad_calls_are_usage_errors(models: dict[str, LanguageModel]) -> None:
    lm = models["gpt2"]
    with pytest.raises(UsageError, match="needs a snapshot"):
        generate(lm, "Hi", mode="kv")
    with pytest.raises(UsageError, match="mode"):
        generate(lm, "Hi", mode="fast")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="dtype"):
        build_snapshot(lm, MEMORIES, dtype="float64")
    with pytest.raises(ActivationError, match="context"):
        generate(lm, "Hi " * 1200, mode="none", max_new_tokens=4)


# --- the real model -------------------------------------------------------------------------------------


def test_smollm2_snapshot_matches_recompute_and_uses_memories(smollm2: LanguageModel, tmp_path: Path) -> None:
    memories = [
        record(0, "Alice's cat is called Miso."),
        record(1, "Alice lives in Lisbon."),
        record(2, "Alice's favourite drink is green tea."),
    ]
    path = tmp_path / "kv" / "alice.safetensors"
    digest = save_snapshot(path, build_snapshot(smollm2, memories))
    snap = load_snapshot(path, smollm2, expected_sha256=digest)
    assert snap.layout == "system"
    question = "What is the name of Alice's cat?"
    prompt = render_prompt(smollm2, question, preamble=snap.preamble, layout=snap.layout)
    assert prompt.aligned and prompt.token_ids[: snap.token_count] == snap.token_ids
    assert "SmolLM" not in prompt.text  # no default system message before or after the memories
    kv = generate(smollm2, question, snapshot=snap, max_new_tokens=12)
    again = generate(smollm2, question, snapshot=snap, mode="recompute", max_new_tokens=12)
    assert kv.token_ids == again.token_ids
    assert "Miso" in kv.answer
    assert sha(path) == digest
