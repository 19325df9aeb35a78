"""One model per cube: the manifest's ``model`` names the language model that every KV snapshot and
adapter of the cube was made for. promote, distill and fuse check and set it here, and nowhere else."""

from __future__ import annotations

from typing import Any

from memos_cli.cube.entries import ModelRef
from memos_cli.cube.manifest import Manifest
from memos_cli.errors import IncompatibleModel


def claim_model(manifest: Manifest, lm: Any, *, replacing: tuple[str, str] | None = None, what: str = "cube") -> None:
    """Make ``lm`` the cube's model, or raise IncompatibleModel when snapshots or adapters other than
    ``replacing`` (("kv" or "lora", name): the one being rebuilt) were made for another model."""
    held = manifest.model.fingerprint if manifest.model is not None else None
    others = [("kv", n) for n in manifest.kv] + [("lora", n) for n in manifest.lora]
    others = [o for o in others if o != replacing]
    if held and held != lm.fingerprint and others:
        raise IncompatibleModel(
            f"{what} (its KV snapshots and adapters)",
            f"{manifest.model.name if manifest.model is not None else None} ({held})",
            f"{lm.name} ({lm.fingerprint})",
            hint="use the cube's model ({model}), or drop its snapshots and adapters first",
            options=("model",),
        )
    manifest.model = ModelRef(lm.name, lm.fingerprint)
