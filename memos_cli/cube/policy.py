"""Access policy of a cube: ``policy: {owner, readers, writers, frozen}`` in cube.yaml.

It guards against mistakes and pipelines acting as the wrong identity; it is not a security boundary
against someone who can write the files (the integrity checks of ``memos verify`` cover that).
- write: refused on a frozen cube; when ``writers`` is set, only the owner and the writers may write;
- read: when ``readers`` is set, only the owner, the writers and the readers may read;
- admin (changing the policy): the owner only (anyone while no owner is set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memos_cli.errors import PermissionRefused


def _names(policy: dict[str, Any], key: str) -> set[str]:
    value = policy.get(key) or []
    return {str(v) for v in value} if isinstance(value, list) else {str(value)}


def owner_of(policy: dict[str, Any], manifest_owner: str | None) -> str | None:
    return policy.get("owner") or manifest_owner


def check(policy: dict[str, Any], manifest_owner: str | None, actor: str, action: str, cube: Path) -> None:
    owner = owner_of(policy, manifest_owner)
    writers = _names(policy, "writers")
    readers = _names(policy, "readers")
    if action == "admin":
        if owner and actor != owner:
            raise PermissionRefused(actor, "change the policy of", cube, f"only the owner ({owner}) may")
        return
    if action == "write":
        if policy.get("frozen"):
            raise PermissionRefused(actor, "write to", cube, "the cube is frozen")
        if writers and actor != owner and actor not in writers:
            raise PermissionRefused(actor, "write to", cube, "not among its writers")
        return
    if action == "read" and readers and actor != owner and actor not in readers | writers:
        raise PermissionRefused(actor, "read", cube, "not among its readers")
