"""A lazily loaded embedder: its identity (name, dim, fingerprint) is known without importing torch,
and the model itself loads only when something must be embedded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memos_cli.models.embedder import EmbedderIdentity, embedder_identity, load_embedder

if TYPE_CHECKING:
    from memos_cli.engine.distributed import RayEngine


class EmbedderHandle:
    """``engine`` (``--engine ray``): bulk embedding runs on the cluster, with the same vectors."""

    def __init__(self, path: str | None = None, engine: RayEngine | None = None) -> None:
        self.path = path
        self.engine = engine

    @property
    def identity(self) -> EmbedderIdentity:
        return embedder_identity(self.path)

    def load(self) -> Any:
        """An object with ``encode(texts, progress=...)``: the local embedder, or the Ray engine."""
        if self.engine is not None:
            return self.engine
        return load_embedder(self.path)
