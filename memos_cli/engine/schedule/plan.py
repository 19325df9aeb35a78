"""Planning: which memories are due for archive, activation and parametric steps, read from plain
JSON rows (cached in .memos/) and the usage log, loading no index and no model; ``explain`` for one
memory.

Why one module of ~470 lines: the rows cache, the rules and ``explain`` read the same rows and policy;
``explain`` must say exactly what the planner would do.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube
from memos_cli.cube.entries import KvEntry, LoraEntry
from memos_cli.cube.io import TornLine
from memos_cli.engine.plaintext import usage
from memos_cli.engine.plaintext.working import ANSWER_TAG, WORKING_TAG, is_answer, is_working
from memos_cli.engine.schedule.policy import DAY, SECTION, load_policy
from memos_cli.errors import InvalidCube, UsageError


def parse_now(value: str | None) -> float:
    """Epoch seconds of an ISO date/time (naive: UTC), or the clock when None."""
    if value is None:
        return time.time()
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{{now}} {value!r} is not an ISO date or date-time", options=("now",)) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Step:
    kind: str  # archive, activation, parametric
    action: str  # archive, build, rebuild, distill
    name: str | None
    ids: list[str]
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "action": self.action,
            "name": self.name,
            "ids": self.ids,
            "reason": self.reason,
            **self.detail,
        }


@dataclass
class Plan:
    now: float
    policy: dict[str, dict[str, Any]]
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hot: list[str] = field(default_factory=list)
    qualifying: list[str] = field(default_factory=list)
    archive_reasons: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (rule, words)
    stale: dict[str, list[str]] = field(default_factory=dict)  # "kv NAME" / "lora NAME" -> refs

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": _iso(self.now),
            "steps": [s.to_dict() for s in self.steps],
            "notes": self.notes,
            "hot": self.hot,
            "stale": self.stale,
        }


@dataclass(slots=True)
class Row:
    """What planning needs of one memory's current version (read without building full records)."""

    id: str
    version: int
    status: str
    type: str
    tags: list[str]
    created: str  # of its first version: when it entered the cube
    expires: str | None

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"


_MAX_ROWS_CACHE = 1 << 30  # bytes of the rows cache read back (derived: a larger one is rebuilt)
ROWS_CACHE = "schedule-rows.json"  # derived, in .memos/: the rows as of a prefix of memories.jsonl


def scan(cube: Cube) -> dict[str, Row]:
    """Every memory's current version as a ``Row``, read with plain JSON parsing (building and
    validating 100,000 full records took seconds). ``memories.jsonl`` only grows between rewrites, so
    the rows of the prefix read last time are kept in ``.memos/schedule-rows.json`` (with that prefix's
    sha256) and only what was appended since is parsed. A line this cannot read is left to
    ``read_state``, which names it."""
    data = cube.committed_bytes(layout.MEMORIES)
    rows, offset = _load_rows(cube, data)
    try:
        _parse_rows(rows, data[offset:])
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, TornLine):
        cube.read_state()  # raises InvalidCube naming the line
        raise
    if offset != len(data):
        _save_rows(cube, rows, data)
    return rows


def _parse_rows(rows: dict[str, Row], data: bytes) -> None:
    lines = data.decode("utf-8").split("\n")
    if lines.pop().strip():
        raise TornLine("the last line is incomplete")
    # One parse of all lines as a JSON array, much cheaper than a loads() per line. (A line is one
    # object and JSON strings escape newlines, so the lines are the array's elements.)
    for record in json.loads("[" + ",".join(line for line in lines if line.strip()) + "]"):
        memory_id, version, created = record["id"], record["version"], record.get("created") or ""
        held = rows.get(memory_id)
        if held is not None and held.version > version:
            if created and created < held.created:
                held.created = created
            continue
        first = created if held is None or (created and created < held.created) else held.created
        metadata = record.get("metadata")
        expires = record.get("expires") or (metadata.get("expires") if isinstance(metadata, dict) else None)
        rows[memory_id] = Row(
            memory_id,
            version,
            record["status"],
            record.get("type", "note"),
            record.get("tags") or [],
            first,
            expires if isinstance(expires, str) else None,
        )


def _load_rows(cube: Cube, data: bytes) -> tuple[dict[str, Row], int]:
    try:
        cached = json.loads(
            cube_io.read_bytes(cube.path, f"{layout.DERIVED_DIR}/{ROWS_CACHE}", limit=_MAX_ROWS_CACHE) or b""
        )
        offset = cached["offset"]
        if not isinstance(offset, int) or not 0 < offset <= len(data) or data[offset - 1 : offset] != b"\n":
            return {}, 0
        if hashlib.sha256(data[:offset]).hexdigest() != cached["sha256"]:
            return {}, 0  # rewritten (purge, merge, checkout): read it all again
        return {r[0]: Row(*r) for r in cached["rows"]}, offset
    except (OSError, ValueError, TypeError, KeyError, RecursionError, InvalidCube):  # derived: read it all
        return {}, 0


def _save_rows(cube: Cube, rows: dict[str, Row], data: bytes) -> None:
    body = {
        "offset": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": [[r.id, r.version, r.status, r.type, r.tags, r.created, r.expires] for r in rows.values()],
    }
    try:
        cube_io.mkdirs(cube.path, layout.DERIVED_DIR)
        cube_io.atomic_write(
            cube.path, f"{layout.DERIVED_DIR}/{ROWS_CACHE}", json.dumps(body, separators=(",", ":")).encode("utf-8")
        )
    except (OSError, InvalidCube):
        pass  # a read-only cube, or a link in its place: derived state is an optimisation only


@dataclass
class _Context:
    """What planning needs, read once."""

    cube: Cube
    rows: dict[str, Row]
    policy: dict[str, dict[str, Any]]
    now: float
    uses: dict[str, usage.Uses]
    _epochs: dict[str, float | None] = field(default_factory=dict)

    def epoch(self, value: str | None) -> float | None:
        """``_epoch``, memoised: a batch of memories shares one ``created`` string."""
        if not value:
            return None
        if value not in self._epochs:
            self._epochs[value] = _epoch(value)
        return self._epochs[value]

    def last_active(self, row: Row) -> float | None:
        """The later of its first write and its last use."""
        written = self.epoch(row.created)
        used = self.uses[row.id].last if row.id in self.uses else None
        known = [t for t in (written, used) if t is not None]
        return max(known) if known else None


def _archive_reason(ctx: _Context, row: Row) -> tuple[str, str] | None:
    """Why the scheduler archives this active memory now, as (rule, words), or None to keep it."""
    archive, working = ctx.policy["archive"], ctx.policy["working"]
    if row.tags and set(archive["keep_tags"]) & set(row.tags):
        return None
    if WORKING_TAG in row.tags:
        if not working["enabled"]:
            return None
        last = ctx.last_active(row)
        if last is not None and ctx.now - last > working["idle_days"] * DAY:
            return "working", f"working memory idle {(ctx.now - last) / DAY:.0f} days (> {working['idle_days']:g})"
        return None
    if not archive["enabled"]:
        return None
    if archive["expires"] and row.expires:
        when = ctx.epoch(row.expires)
        if when is not None and when <= ctx.now:
            return "expired", f"expired on {row.expires}"
    ttl = archive["ttl_days"].get(row.type)
    if ttl is not None:
        written = ctx.epoch(row.created)
        if written is not None and ctx.now - written > ttl * DAY:
            return "ttl", f"{row.type} older than its time-to-live ({(ctx.now - written) / DAY:.0f} > {ttl:g} days)"
    if archive["unused_days"] is not None:
        last = ctx.last_active(row)
        if last is not None and ctx.now - last > archive["unused_days"] * DAY:
            return "unused", f"unused for {(ctx.now - last) / DAY:.0f} days (> {archive['unused_days']:g})"
    return None


def rule_counts(reasons: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule, _words in reasons:
        counts[rule] = counts.get(rule, 0) + 1
    return dict(sorted(counts.items()))


def _long_term(row: Row) -> bool:
    return not (WORKING_TAG in row.tags or ANSWER_TAG in row.tags)


def _entry_ids(entry: KvEntry | LoraEntry | None) -> list[str]:
    if entry is None:
        return []
    ids = (entry.selection or {}).get("ids")
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return list(ids)
    return entry.ids()


def _digest(refs: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(refs)).encode("utf-8")).hexdigest()[:16]


def _last_rejection(cube: Cube, name: str) -> dict[str, Any] | None:
    """The scheduler's latest verdict on adapter ``name`` in the audit log, if it was a rejection."""
    for entry in reversed(cube.read_audit()):
        if entry.get("op") == SECTION and entry.get("step") == "parametric" and entry.get("name") == name:
            return entry if entry.get("rejected") else None
    return None


def _context(cube: Cube, now: float | None) -> _Context:
    policy = load_policy(cube)
    when = time.time() if now is None else now
    uses = usage.profile(cube, now=when, half_life_days=policy["activation"]["half_life_days"])
    return _Context(cube=cube, rows=scan(cube), policy=policy, now=when, uses=uses)


def make_plan(cube: Cube, *, now: float | None = None) -> Plan:
    """The steps due now (no writes, no model, no index)."""
    return _plan(_context(cube, now))


def _plan(ctx: _Context) -> Plan:
    """The three steps in order; activation and parametric see the memories the archive step leaves."""
    plan = Plan(now=ctx.now, policy=ctx.policy)
    _plan_archive(ctx, plan)
    _mark_stale(ctx, plan)
    _plan_activation(ctx, plan)
    _plan_parametric(ctx, plan)
    return plan


def _remains(ctx: _Context, plan: Plan, memory_id: str) -> bool:
    """Active now and not archived by this plan."""
    row = ctx.rows.get(memory_id)
    return row is not None and row.status == "active" and memory_id not in plan.archive_reasons


def _plan_archive(ctx: _Context, plan: Plan) -> None:
    rows = ctx.rows
    for memory_id, row in rows.items():
        if row.status == "active" and (why := _archive_reason(ctx, row)) is not None:
            plan.archive_reasons[memory_id] = why
    plan.archive_reasons = dict(sorted(plan.archive_reasons.items()))
    if plan.archive_reasons:
        kinds = rule_counts(plan.archive_reasons.values())
        plan.steps.append(
            Step(
                "archive",
                "archive",
                None,
                sorted(plan.archive_reasons),
                f"{len(plan.archive_reasons)} memories due: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
                {"versions": {i: rows[i].version for i in plan.archive_reasons}},
            )
        )


def _mark_stale(ctx: _Context, plan: Plan) -> None:
    """Snapshots and adapters holding a memory that changed or that the plan archives."""
    cube, rows = ctx.cube, ctx.rows
    held_by: list[tuple[str, str, KvEntry | LoraEntry]] = [("kv", n, e) for n, e in cube.manifest.kv.items()]
    held_by += [("lora", n, e) for n, e in cube.manifest.lora.items()]
    for kind, name, entry in held_by:
        changed = []
        for ref in entry.memories:
            memory_id, _, version = str(ref).partition("@")
            if not _remains(ctx, plan, memory_id) or str(rows[memory_id].version) != version:
                changed.append(str(ref))
        if changed:
            plan.stale[f"{kind} {name}"] = changed


def _plan_activation(ctx: _Context, plan: Plan) -> None:
    rows, act = ctx.rows, ctx.policy["activation"]
    scored = sorted(
        ((u.score, i) for i, u in ctx.uses.items() if _remains(ctx, plan, i) and _long_term(rows[i])),
        key=lambda pair: (-pair[0], pair[1]),
    )
    plan.hot = [i for score, i in scored if score >= act["min_score"]][: act["max_memories"]]
    if not act["enabled"]:
        return
    name = act["name"]
    snapshot = ctx.cube.manifest.kv.get(name)
    detail = {"budget": act["budget"], "dtype": act["dtype"]}
    if not plan.hot:
        plan.notes.append(f"activation: no memory has a use score of {act['min_score']:g} yet")
        return
    if snapshot is None:
        plan.steps.append(
            Step("activation", "build", name, plan.hot, f"{len(plan.hot)} hot memories, no snapshot yet", detail)
        )
        return
    held = _entry_ids(snapshot)
    union = set(plan.hot) | set(held)
    share = len(set(plan.hot) ^ set(held)) / len(union) if union else 0.0
    stale = plan.stale.get(f"kv {name}")
    if stale:
        reason = f"stale: {len(stale)} of its memories changed or are archived"
    elif share > act["rebuild_share"]:
        reason = f"the hot set changed by {share:.0%} (> {act['rebuild_share']:.0%})"
    else:
        plan.notes.append(f"activation: kv/{name} is current (hot set changed {share:.0%})")
        return
    plan.steps.append(Step("activation", "rebuild", name, plan.hot, reason, detail))


def _plan_parametric(ctx: _Context, plan: Plan) -> None:
    rows, par = ctx.rows, ctx.policy["parametric"]
    tags = set(par["tags"])
    candidates = set(ctx.uses)
    if tags:
        candidates |= {i for i, row in rows.items() if row.tags and tags & set(row.tags)}
    for memory_id in sorted(candidates):
        if not _remains(ctx, plan, memory_id) or not _long_term(rows[memory_id]):
            continue
        u = ctx.uses.get(memory_id)
        used = u is not None and u.count >= par["min_uses"] and (u.last - u.first) >= par["min_days"] * DAY
        if used or tags & set(rows[memory_id].tags):
            plan.qualifying.append(memory_id)
    if not par["enabled"]:
        return
    name = par["name"]
    adapter = ctx.cube.manifest.lora.get(name)
    have = set(adapter.memories) if adapter is not None else set()
    new = [i for i in plan.qualifying if rows[i].ref not in have]
    if len(new) < max(par["min_new"], 1):
        plan.notes.append(f"parametric: {len(new)} new memories qualify, {par['min_new']} needed")
        return
    kept = [i for i in _entry_ids(adapter) if _remains(ctx, plan, i) and i not in plan.qualifying]
    ids = plan.qualifying + kept
    digest = _digest([rows[i].ref for i in ids])
    rejected = _last_rejection(ctx.cube, name)
    if rejected is not None and rejected.get("rejected") == digest:
        plan.notes.append(
            f"parametric: training these {len(ids)} memories was rejected on {rejected.get('time')} "
            f"({rejected.get('why')}); waiting for new ones"
        )
        return
    reason = f"{len(new)} new memories qualify (>= {par['min_new']})"
    plan.steps.append(Step("parametric", "distill", name, ids, reason, {"digest": digest}))


def explain(cube: Cube, ref: str, *, now: float | None = None, actor: str | None = None) -> dict[str, Any]:
    """Why one memory is where it is: tier, status, uses, snapshots and adapters, and what the policy
    says about it now."""
    from memos_cli.engine.ops import resolve_id

    cube.check(actor, "read")
    ctx = _context(cube, now)
    plan = _plan(ctx)
    state = cube.read_state()
    memory_id = resolve_id(state, ref)
    record = state.current[memory_id]
    row = ctx.rows[memory_id]
    u = ctx.uses.get(memory_id)
    lines: list[str] = []
    tier = "working (a chat turn)" if is_working(record) else "long-term"
    if is_answer(record):
        tier += ", the model's own answer (never retrieved as a fact)"
    lines.append(f"{memory_id} v{record.version} is {record.status}, {tier}, type {record.type}")
    if record.status != "active":
        last = state.history(memory_id)[-1]
        lines.append(f"  made {record.status} by {last.op} ({last.actor or 'unknown'}) at {last.created}")
    if u is None:
        lines.append("  never used by a query or chat")
    else:
        lines.append(f"  used {u.count} times, first {_iso(u.first)}, last {_iso(u.last)}; decayed score {u.score:.2f}")
    held: list[tuple[str, str, KvEntry | LoraEntry]] = [("kv", n, e) for n, e in sorted(cube.manifest.kv.items())]
    held += [("lora", n, e) for n, e in sorted(cube.manifest.lora.items())]
    for kind, name, entry in held:
        refs = list(entry.memories)
        if record.ref in refs:
            lines.append(f"  in {kind} {name}")
        elif any(r.startswith(memory_id + "@") for r in refs):
            lines.append(f"  in {kind} {name} as an older version (stale)")
    act, par = ctx.policy["activation"], ctx.policy["parametric"]
    if memory_id in plan.hot:
        lines.append(f"  hot: rank {plan.hot.index(memory_id) + 1} of {len(plan.hot)} (activation {act['name']})")
    elif record.status == "active" and _long_term(row):
        lines.append(
            f"  not hot: score {u.score if u else 0:.2f} (needs {act['min_score']:g} and a place in the top "
            f"{act['max_memories']})"
        )
    if memory_id in plan.qualifying:
        lines.append(f"  qualifies for parametric memory ({par['name']})")
    elif record.status == "active" and _long_term(row):
        span = (u.last - u.first) / DAY if u else 0.0
        lines.append(
            f"  does not qualify for parametric memory: {u.count if u else 0} uses over {span:.1f} days "
            f"(needs {par['min_uses']} over {par['min_days']:g}) and no tag of {par['tags'] or '[]'}"
        )
    if memory_id in plan.archive_reasons:
        lines.append(f"  due for the archive: {plan.archive_reasons[memory_id][1]}")
    elif record.status == "active":
        if set(ctx.policy["archive"]["keep_tags"]) & set(record.tags):
            lines.append("  kept: it carries a keep tag")
        else:
            lines.append("  not due for the archive")
    for step in plan.steps:
        if memory_id in step.ids:
            lines.append(f"  next run: {step.kind} {step.action}{' ' + step.name if step.name else ''}")
    return {"id": memory_id, "version": record.version, "status": record.status, "lines": lines}
