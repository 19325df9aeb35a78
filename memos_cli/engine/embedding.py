"""A lazily loaded embedder: its identity (name, dim, fingerprint) is known without importing torch,
and the model itself loads only when something must be embedded."""

from __future__ import annotations

from memos_cli.models.embedder import Embedder, EmbedderIdentity, embedder_identity, load_embedder


class EmbedderHandle:
    def __init__(self, path: str | None = None) -> None:
        self.path = path

    @property
    def identity(self) -> EmbedderIdentity:
        return embedder_identity(self.path)

    def load(self) -> Embedder:
        return load_embedder(self.path)
