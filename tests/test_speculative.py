"""Self-speculative greedy decoding (models/speculative.py): the same tokens as the plain float32 loop.

The half-precision draft only proposes; every token comes from the float32 model. Checked on the four tiny
families (with the model's own draft, and with a draft from other random weights that is nearly always
wrong, so that every rejection and crop path runs), with and without an injected snapshot, at every small
token budget, streamed, and on the real SmolLM2 over several prompts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.activation.snapshots import build_snapshot
from memos_cli.models import speculative as spec
from memos_cli.models.generation import generate
from memos_cli.models.lm import LanguageModel, load_lm
from tiny_models import FAMILIES, build_tiny_model

pytestmark = pytest.mark.usefixtures("memos_threads")

FACTS = ["Alice lives in Paris.", "Bob's favourite food is ramen.", "The cat is called Miso."]
MEMORIES = [MemoryRecord(id=f"m-{i}", version=1, text=t, created="2024-06-01T00:00:00Z") for i, t in enumerate(FACTS)]
QUESTIONS = ["Where does Alice live?", "What is the cat called?", "Tell me a story."]


@pytest.fixture
def models(tiny_dirs: dict[str, Path]) -> dict[str, LanguageModel]:
    return {family: load_lm(str(path)) for family, path in tiny_dirs.items()}


@pytest.fixture
def wrong_draft(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Swap in, for one model, a draft made from another random model of its family (same vocabulary)."""
    swapped: list[object] = []

    def swap(lm: LanguageModel, family: str) -> None:
        other = load_lm(str(build_tiny_model(tmp_path_factory.mktemp("other") / family, family, seed=1)))
        spec._DRAFTS[lm.model] = spec.draft_for(other.model)
        swapped.append(lm.model)

    yield swap
    for model in swapped:
        spec._DRAFTS.pop(model, None)


def both(lm: LanguageModel, question: str, **kwargs):  # type: ignore[no-untyped-def]
    plain = generate(lm, question, greedy=True, speculative=False, **kwargs)
    fast = generate(lm, question, greedy=True, speculative=True, **kwargs)
    return plain, fast


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("draft", ["own", "wrong"])
def test_tiny_models_give_the_plain_loops_tokens(family: str, draft: str, models, wrong_draft) -> None:  # type: ignore[no-untyped-def]
    lm = models[family]
    if draft == "wrong":
        wrong_draft(lm, family)
    snap = build_snapshot(lm, MEMORIES)
    drafted = accepted = 0
    for question in QUESTIONS:
        for kwargs in ({"mode": "none"}, {"snapshot": snap, "mode": "kv"}, {"memories": MEMORIES, "mode": "recompute"}):
            plain, fast = both(lm, question, max_new_tokens=24, **kwargs)
            assert fast.token_ids == plain.token_ids, (question, kwargs)
            assert (fast.answer, fast.stop_reason, fast.new_tokens) == (
                plain.answer,
                plain.stop_reason,
                plain.new_tokens,
            )
            assert plain.drafted == 0 and fast.drafted > 0
            drafted, accepted = drafted + fast.drafted, accepted + fast.accepted
    if draft == "wrong":
        assert accepted < drafted  # rejections (and crops) happened
    else:
        assert accepted > 0.5 * drafted


@pytest.mark.parametrize("budget", range(1, 9))
def test_every_small_token_budget(budget: int, models, wrong_draft) -> None:  # type: ignore[no-untyped-def]
    lm = models["llama"]
    for _ in ("own", "wrong"):
        plain, fast = both(lm, "Where does Alice live?", mode="none", max_new_tokens=budget)
        assert fast.token_ids == plain.token_ids and len(fast.token_ids) <= budget
        assert fast.stop_reason == plain.stop_reason
        wrong_draft(lm, "llama")


def test_a_stop_token_ends_the_answer_at_the_same_place(models, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    lm = models["qwen2"]
    reference = generate(lm, "Tell me a story.", mode="none", max_new_tokens=30, speculative=False).token_ids
    stop = reference[9]  # pretend the 10th generated token is an end of turn
    monkeypatch.setattr(type(lm), "stop_token_ids", lambda self: {stop})
    plain, fast = both(lm, "Tell me a story.", mode="none", max_new_tokens=30)
    assert fast.token_ids == plain.token_ids == reference[: reference.index(stop)]
    assert fast.stop_reason == plain.stop_reason == "eos"


def test_streaming_and_the_snapshot_are_unchanged(models) -> None:  # type: ignore[no-untyped-def]
    import torch

    lm = models["llama"]
    snap = build_snapshot(lm, MEMORIES)
    before = [k.clone() for k in snap.keys]
    pieces: list[str] = []
    fast = generate(lm, "Hello?", snapshot=snap, max_new_tokens=20, speculative=True, on_token=pieces.append)
    plain = generate(lm, "Hello?", snapshot=snap, max_new_tokens=20, speculative=False)
    assert "".join(pieces).strip() == fast.answer == plain.answer
    assert all(torch.equal(a, b) for a, b in zip(before, snap.keys, strict=True))
    # The draft's half copy of the snapshot is made once, and reused on the next turn.
    (halves,) = snap.half.values()
    generate(lm, "Again?", snapshot=snap, max_new_tokens=8, speculative=True)
    assert next(iter(snap.half.values())) is halves


def test_sampling_keeps_the_plain_loop(models) -> None:  # type: ignore[no-untyped-def]
    lm = models["llama"]
    a = generate(lm, "Hello?", mode="none", greedy=False, seed=3, max_new_tokens=12, speculative=True)
    b = generate(lm, "Hello?", mode="none", greedy=False, seed=3, max_new_tokens=12, speculative=False)
    assert a.token_ids == b.token_ids and a.drafted == 0


def test_when_drafting_is_chosen(models, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    lm = models["llama"]
    monkeypatch.delenv(spec.SPECULATIVE_ENV, raising=False)
    assert not spec.wanted(lm, greedy=True, max_new_tokens=40)  # a tiny model is not memory-bound
    assert not spec.wanted(lm, greedy=False, max_new_tokens=40)
    monkeypatch.setenv(spec.SPECULATIVE_ENV, "1")
    assert spec.wanted(lm, greedy=True, max_new_tokens=40)
    assert not spec.wanted(lm, greedy=False, max_new_tokens=40)  # never for sampling
    assert not spec.wanted(lm, greedy=True, max_new_tokens=2)
    monkeypatch.setenv(spec.SPECULATIVE_ENV, "0")
    assert not spec.wanted(lm, greedy=True, max_new_tokens=40)


def test_the_probe_is_remembered(monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> None:
    monkeypatch.delenv(spec.SPECULATIVE_ENV, raising=False)
    spec.half_dtype.cache_clear()
    (model_cache / spec.PROBE_FILE).unlink(missing_ok=True)
    first = spec.half_dtype()
    assert (model_cache / spec.PROBE_FILE).is_file()
    spec.half_dtype.cache_clear()
    monkeypatch.setattr(spec, "_probe", lambda: pytest.fail("probed twice"))
    assert spec.half_dtype() == first
    monkeypatch.setenv(spec.SPECULATIVE_ENV, "bfloat16")
    spec.half_dtype.cache_clear()
    assert spec.half_dtype() == "bfloat16"
    spec.half_dtype.cache_clear()


def test_skinny_linears_agree_and_are_removed() -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.Linear(48, 16, bias=False), torch.nn.Linear(16, 64))
    x = torch.randn(1, 5, 16)
    expected = model(x)
    with spec.skinny_linears(model):
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_draft_is_half_and_made_once(models) -> None:  # type: ignore[no-untyped-def]
    import torch

    lm = models["llama"]
    draft = spec.draft_for(lm.model)
    assert spec.draft_for(lm.model) is draft
    assert draft.dtype in (torch.float16, torch.bfloat16) and lm.model.dtype == torch.float32
    assert spec.nbytes(draft) * 2 == spec.nbytes(lm.model)


def test_smollm2_speculative_is_token_identical(smollm2: LanguageModel) -> None:
    snap = build_snapshot(smollm2, MEMORIES)
    drafted = accepted = 0
    for question in ("Where does Alice live?", "Tell me a long story about a dragon.", "What is 12 times 7?"):
        for kwargs in ({"mode": "none"}, {"snapshot": snap, "mode": "kv"}):
            plain, fast = both(smollm2, question, max_new_tokens=40, **kwargs)
            assert fast.token_ids == plain.token_ids, (question, kwargs)
            drafted, accepted = drafted + fast.drafted, accepted + fast.accepted
    assert drafted > 0 and accepted >= 0.8 * drafted
