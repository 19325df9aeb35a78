"""Policy edits and the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memos_cli.cube.bundle import Cube
from memos_cli.errors import UsageError

# Operations the audit log names (a cube written by a newer memos may name others: those are accepted too)
AUDIT_OPS = frozenset(
    {"init", "ingest", "update", "forget", "purge", "promote", "demote", "distill", "fuse", "policy", "chat"}
)


@dataclass
class PolicyChange:
    owner: str | None = None
    add_writers: list[str] = field(default_factory=list)
    remove_writers: list[str] = field(default_factory=list)
    add_readers: list[str] = field(default_factory=list)
    remove_readers: list[str] = field(default_factory=list)
    frozen: bool | None = None

    def empty(self) -> bool:
        return not (
            self.owner
            or self.add_writers
            or self.remove_writers
            or self.add_readers
            or self.remove_readers
            or self.frozen is not None
        )


def set_policy(cube: Cube, change: PolicyChange, *, actor: str | None = None) -> dict[str, Any]:
    """Apply ``change`` (owner only) and return the new policy."""
    if change.empty():
        raise UsageError("nothing to change")
    with cube.transaction(actor=actor, op="policy", action="admin") as tx:
        policy = dict(tx.manifest.policy)
        for key, add, remove in (
            ("writers", change.add_writers, change.remove_writers),
            ("readers", change.add_readers, change.remove_readers),
        ):
            names = [n for n in (policy.get(key) or []) if n not in remove]
            names += [n for n in add if n not in names]
            policy[key] = names
        if change.owner:
            policy["owner"] = change.owner
            tx.manifest.owner = change.owner
        if change.frozen is not None:
            policy["frozen"] = change.frozen
        policy.setdefault("frozen", False)
        tx.manifest.policy = policy
        tx.touch_manifest()
        tx.log([], "policy: " + ", ".join(f"{k}={v}" for k, v in sorted(policy.items())))
    return policy


def audit_log(
    cube: Cube, *, actor: str | None = None, limit: int | None = None, op: str | None = None
) -> list[dict[str, Any]]:
    cube.check(actor, "read")
    everything = cube.read_audit()
    present = {str(e.get("op")) for e in everything}
    if op is not None and op not in AUDIT_OPS and op not in present:
        raise UsageError(
            f"unknown {{op}} {op!r}: choose from {', '.join(sorted(AUDIT_OPS | present))}", options=("op",)
        )
    entries = [e for e in everything if op is None or e.get("op") == op]
    return entries[-limit:] if limit else entries
