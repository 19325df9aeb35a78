"""The memory scheduler: one plan from the cube's ``schedule:`` policy, its usage log and its memories,
applied step by step.

The policy lives in ``cube.yaml`` (docs/FORMAT.md, "schedule"); every key has a default, so a cube
without the section is scheduled too (archive by ``expires``, working memories idle 14 days). A plan has
at most three steps, in this order, each one journaled transaction with an audit entry ``op: schedule``:

1. **archive**: memories past a per-type time-to-live, unused for ``unused_days``, past their own
   ``expires`` time, and working memories (chat turns) nobody used for ``working.idle_days``;
2. **activation**: (re)build KV snapshot NAME of the hottest memories (decayed use score), when it is
   missing, stale, or the hot set changed by more than ``rebuild_share``;
3. **parametric**: distill the memories used at least ``min_uses`` times over at least ``min_days``
   days (or tagged with one of ``tags``) into adapter NAME once ``min_new`` of them are not in it yet;
   the new adapter replaces the old only if its measured recall and forgetting pass the thresholds,
   otherwise the old one stays and the audit log says why (and the same memories are not retried).

Planning reads no index and loads no model: a cube with nothing due is answered in well under a second
(``bench/schedule_bench.py``). The plan is computed against the archive step's outcome, so a second run
right after the first finds nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.cube.entries import KvEntry, LoraEntry
from memos_cli.cube.io import TornLine
from memos_cli.engine.plaintext import usage
from memos_cli.engine.plaintext.working import ANSWER_TAG, WORKING_TAG, is_answer, is_working
from memos_cli.errors import InvalidCube, InvalidPolicy, LockTimeout, MemosError, UsageError

DAY = 86400.0
# promote.check_name's rule, spelt here too: importing promote pulls in numpy (a third of a run's time)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SECTION = "schedule"

# kind of each key: "bool", "name", "int", "num" (>= 0), "share" (0..1), "tags", "ttl", "dtype";
# a trailing "?" allows null. The defaults are what a cube without the section gets.
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "activation": {
        "enabled": ("bool", False),
        "name": ("name", "hot"),
        "max_memories": ("int", 20),
        "budget": ("int?", 1500),
        "min_score": ("num", 1.0),
        "half_life_days": ("num", usage.DEFAULT_HALF_LIFE_DAYS),
        "rebuild_share": ("share", 0.25),
        "dtype": ("dtype", "float32"),
    },
    "parametric": {
        "enabled": ("bool", False),
        "name": ("name", "stable"),
        "min_uses": ("int", 5),
        "min_days": ("num", 7.0),
        "tags": ("tags", []),
        "min_new": ("int", 5),
        "min_recall": ("share", 0.5),
        "max_forgetting_pct": ("num", 10.0),
        "steps": ("int?", None),
        "lr": ("num", 2e-3),
        "rank": ("int", 8),
    },
    "archive": {
        "enabled": ("bool", True),
        "ttl_days": ("ttl", {}),
        "unused_days": ("num?", None),
        "expires": ("bool", True),
        "keep_tags": ("tags", ["pinned"]),
    },
    "working": {
        "enabled": ("bool", True),
        "idle_days": ("num", 14.0),
    },
}

INIT_TEXT = """\
schedule:
  # The memory scheduler's policy, applied by `memos schedule CUBE` (cron- and CI-friendly: exit 0
  # when nothing was due or all was done, 1 when a step failed). Every key is optional; the values
  # below are the defaults unless a comment says otherwise. Times are in days.
  activation:
    # Keep KV snapshot `name` made of the hottest memories (each query or chat hit is a use,
    # decayed by its age with `half_life_days`), within `budget` tokens.
    enabled: true             # default: false (building a snapshot loads the language model)
    name: hot
    max_memories: 20
    budget: 1500
    min_score: 1.0            # decayed uses a memory needs to count as hot
    half_life_days: 7.0
    rebuild_share: 0.25       # rebuild when the hot set changed by more than this share, or is stale
    dtype: float32
  parametric:
    # Distill stable knowledge into LoRA adapter `name`: memories used at least `min_uses` times
    # over at least `min_days`, or carrying one of `tags`, once `min_new` of them are not in it yet.
    # The new adapter replaces the old only if it recalls at least `min_recall` of its memories and
    # raises the loss on held-out text by at most `max_forgetting_pct` percent.
    enabled: false
    name: stable
    min_uses: 5
    min_days: 7.0
    tags: []
    min_new: 5
    min_recall: 0.5
    max_forgetting_pct: 10.0
    steps: null               # training steps (null: distill's default)
    lr: 0.002
    rank: 8
  archive:
    # Archive (never delete) long-term memories: older than a per-type time-to-live, unused for
    # `unused_days`, or past a record's own `expires` time. Memories tagged with one of `keep_tags`
    # are never archived by the scheduler.
    enabled: true
    ttl_days: {}              # for example {event: 365, dialogue: 90}
    unused_days: null         # for example 180
    expires: true
    keep_tags: [pinned]
  working:
    # Chat turns are working memories (tag `working`): archived once nobody used them for `idle_days`.
    enabled: true
    idle_days: 14.0
"""


# ---------------------------------------------------------------------------------------------------------
# Policy


def _check(cube: Cube, where: str, kind: str, value: Any) -> Any:
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and nullable:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "bool": isinstance(value, bool),
        "name": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "num": number and math.isfinite(value) and value >= 0,
        "share": number and 0 <= value <= 1,
        "tags": isinstance(value, list) and all(isinstance(t, str) and t for t in value),
        "ttl": isinstance(value, dict)
        and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for k, v in value.items()
        ),  # fmt: skip
        "dtype": value in ("float32", "float16", "bfloat16"),
    }[kind]
    if kind == "name" and ok:
        ok = bool(_NAME.match(value))
    if not ok:
        expected = {
            "bool": "true or false",
            "name": "a plain name (letters, digits, '.', '-', '_')",
            "int": "a whole number >= 0",
            "num": "a number >= 0",
            "share": "a number from 0 to 1",
            "tags": "a list of tags",
            "ttl": "a mapping of memory type to days (> 0)",
            "dtype": "float32, float16 or bfloat16",
        }[kind]
        raise InvalidPolicy(
            cube.path, f"cube.yaml schedule.{where} is {value!r}; expected {expected}{' or null' if nullable else ''}"
        )
    return float(value) if kind in ("num", "share") else value


def load_policy(cube: Cube) -> dict[str, dict[str, Any]]:
    """The validated ``schedule:`` section with every default filled in. Raises InvalidCube naming the
    first wrong key (unknown keys too: a misspelt key would silently do nothing)."""
    raw = cube.manifest.extra.get(SECTION)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidCube(cube.path, "cube.yaml 'schedule' must be a mapping")
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise InvalidCube(
            cube.path, f"cube.yaml schedule has unknown section {unknown[0]!r} (known: {', '.join(SCHEMA)})"
        )
    policy: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise InvalidCube(cube.path, f"cube.yaml schedule.{section} must be a mapping")
        unknown = sorted(set(given) - set(keys))
        if unknown:
            raise InvalidCube(
                cube.path,
                f"cube.yaml schedule.{section} has unknown key {unknown[0]!r} (known: {', '.join(keys)})",
            )
        policy[section] = {
            key: _check(cube, f"{section}.{key}", kind, given.get(key, default))
            for key, (kind, default) in keys.items()
        }
    return policy


def write_init(cube: Cube, *, actor: str | None = None, force: bool = False) -> str:
    """Add the commented example section to cube.yaml (one transaction); returns its text."""
    import yaml

    with cube.transaction(actor=actor, op="schedule") as tx:
        if SECTION in tx.manifest.extra and not force:
            raise UsageError(
                f"cube {cube.path} already has a schedule policy",
                hint="edit cube.yaml, or pass {force} to reset it",
                options=("force",),
            )
        tx.manifest.extra[SECTION] = yaml.safe_load(INIT_TEXT)[SECTION]
        tx.manifest.verbatim[SECTION] = INIT_TEXT
        load_policy(cube)  # the example is valid: a test of the template as much as a check
        tx.touch_manifest()
        tx.log([], "wrote the example schedule policy", step="init")
    return INIT_TEXT


# ---------------------------------------------------------------------------------------------------------
# Plan


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


def _rule_counts(reasons: Any) -> dict[str, int]:
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
    cube, policy = ctx.cube, ctx.policy
    plan = Plan(now=ctx.now, policy=policy)
    rows = ctx.rows

    # 1. archive
    for memory_id, row in rows.items():
        if row.status == "active" and (why := _archive_reason(ctx, row)) is not None:
            plan.archive_reasons[memory_id] = why
    plan.archive_reasons = dict(sorted(plan.archive_reasons.items()))
    if plan.archive_reasons:
        kinds = _rule_counts(plan.archive_reasons.values())
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

    def remains(memory_id: str) -> bool:
        row = rows.get(memory_id)
        return row is not None and row.status == "active" and memory_id not in plan.archive_reasons

    held_by: list[tuple[str, str, KvEntry | LoraEntry]] = [("kv", n, e) for n, e in cube.manifest.kv.items()]
    held_by += [("lora", n, e) for n, e in cube.manifest.lora.items()]
    for kind, name, entry in held_by:
        changed = []
        for ref in entry.memories:
            memory_id, _, version = str(ref).partition("@")
            if not remains(memory_id) or str(rows[memory_id].version) != version:
                changed.append(str(ref))
        if changed:
            plan.stale[f"{kind} {name}"] = changed

    # 2. activation
    act = policy["activation"]
    scored = sorted(
        ((u.score, i) for i, u in ctx.uses.items() if remains(i) and _long_term(rows[i])),
        key=lambda pair: (-pair[0], pair[1]),
    )
    plan.hot = [i for score, i in scored if score >= act["min_score"]][: act["max_memories"]]
    if act["enabled"]:
        name = act["name"]
        snapshot = cube.manifest.kv.get(name)
        detail = {"budget": act["budget"], "dtype": act["dtype"]}
        if not plan.hot:
            plan.notes.append(f"activation: no memory has a use score of {act['min_score']:g} yet")
        elif snapshot is None:
            plan.steps.append(
                Step("activation", "build", name, plan.hot, f"{len(plan.hot)} hot memories, no snapshot yet", detail)
            )
        else:
            held = _entry_ids(snapshot)
            union = set(plan.hot) | set(held)
            share = len(set(plan.hot) ^ set(held)) / len(union) if union else 0.0
            stale = plan.stale.get(f"kv {name}")
            if stale:
                reason = f"stale: {len(stale)} of its memories changed or are archived"
            elif share > act["rebuild_share"]:
                reason = f"the hot set changed by {share:.0%} (> {act['rebuild_share']:.0%})"
            else:
                reason = ""
                plan.notes.append(f"activation: kv/{name} is current (hot set changed {share:.0%})")
            if reason:
                plan.steps.append(Step("activation", "rebuild", name, plan.hot, reason, detail))

    # 3. parametric
    par = policy["parametric"]
    tags = set(par["tags"])
    candidates = set(ctx.uses)
    if tags:
        candidates |= {i for i, row in rows.items() if row.tags and tags & set(row.tags)}
    for memory_id in sorted(candidates):
        if not remains(memory_id) or not _long_term(rows[memory_id]):
            continue
        u = ctx.uses.get(memory_id)
        used = u is not None and u.count >= par["min_uses"] and (u.last - u.first) >= par["min_days"] * DAY
        if used or tags & set(rows[memory_id].tags):
            plan.qualifying.append(memory_id)
    if par["enabled"]:
        name = par["name"]
        adapter = cube.manifest.lora.get(name)
        have = set(adapter.memories) if adapter is not None else set()
        new = [i for i in plan.qualifying if rows[i].ref not in have]
        if len(new) < max(par["min_new"], 1):
            plan.notes.append(f"parametric: {len(new)} new memories qualify, {par['min_new']} needed")
        else:
            kept = [i for i in _entry_ids(adapter) if remains(i) and i not in plan.qualifying]
            ids = plan.qualifying + kept
            digest = _digest([rows[i].ref for i in ids])
            rejected = _last_rejection(cube, name)
            if rejected is not None and rejected.get("rejected") == digest:
                plan.notes.append(
                    f"parametric: training these {len(ids)} memories was rejected on {rejected.get('time')} "
                    f"({rejected.get('why')}); waiting for new ones"
                )
            else:
                plan.steps.append(
                    Step(
                        "parametric",
                        "distill",
                        name,
                        ids,
                        f"{len(new)} new memories qualify (>= {par['min_new']})",
                        {"digest": digest},
                    )
                )
    return plan


# ---------------------------------------------------------------------------------------------------------
# Explain


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


# ---------------------------------------------------------------------------------------------------------
# Apply


@dataclass
class StepResult:
    step: Step
    outcome: str  # done, kept (adapter rejected, old one stays), skipped, failed
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.step.to_dict(), "outcome": self.outcome, "message": self.message}


@dataclass
class ScheduleReport:
    plan: Plan
    dry_run: bool
    results: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.outcome == "failed" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "dry_run": self.dry_run,
            "results": [r.to_dict() for r in self.results],
            "failed": self.failed,
        }


Notify = Callable[[str], None]


def wait_for_lock(cube: Cube, wait: float, notify: Notify) -> None:
    """Block until no other writer holds the cube lock (never breaking it), for at most ``wait`` s."""
    from filelock import Timeout

    lock = cube.file_lock()  # checked: never a link
    lock.timeout = 0
    try:
        lock.acquire()
        lock.release()
        return
    except Timeout:
        notify("another memos process holds the cube lock: waiting for it")
    lock.timeout = wait
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeout(cube.path, wait) from None
    lock.release()


def run(
    cube: Cube,
    *,
    now: float | None = None,
    dry_run: bool = False,
    model: str | None = None,
    actor: str | None = None,
    wait: float = 600.0,
    notify: Notify | None = None,
    progress: Any = None,
) -> ScheduleReport:
    """Plan, then (unless ``dry_run``) apply each step in its own transaction. A failed step is
    reported and the others still run; ``report.failed`` says whether any failed."""
    say = notify or (lambda message: None)
    who = cube.check(actor, "read" if dry_run else "write")
    plan = make_plan(cube, now=now)
    report = ScheduleReport(plan=plan, dry_run=dry_run)
    if dry_run:
        return report
    for number, step in enumerate(plan.steps, start=1):
        say(f"step {number}/{len(plan.steps)}: {step.kind} {step.action} {step.name or ''}: {step.reason}")
        try:
            wait_for_lock(cube, wait, say)
            fresh = Cube.open(cube.path)
            if step.kind == "archive":
                result = _archive(fresh, step, plan, who)
            elif step.kind == "activation":
                result = _activation(fresh, step, who, model)
            else:
                result = _parametric(fresh, step, plan, who, model, progress)
        except MemosError as exc:
            result = StepResult(step, "failed", exc.message)
        except (OSError, ValueError, RuntimeError) as exc:  # a model or disk failure: report, go on
            result = StepResult(step, "failed", f"{type(exc).__name__}: {exc}")
        say(f"  {result.outcome}: {result.message}")
        report.results.append(result)
    return report


def _archive(cube: Cube, step: Step, plan: Plan, actor: str) -> StepResult:
    done: list[str] = []
    with cube.transaction(actor=actor, op=SECTION) as tx:
        state = cube.read_state()
        now = utc_now()
        for memory_id in step.ids:
            record = state.current.get(memory_id)
            # Changed since the plan was made (another writer): leave it to the next run.
            if record is None or record.status != "active" or record.version != step.detail["versions"][memory_id]:
                continue
            tx.add(replace(record, version=record.version + 1, status="archived", op=SECTION, actor=actor, created=now))
            done.append(memory_id)
        if done:
            reasons = _rule_counts(plan.archive_reasons[i] for i in done)
            tx.log(done, f"scheduler archived {len(done)} memories", step="archive", reasons=reasons)
    skipped = len(step.ids) - len(done)
    return StepResult(
        step, "done", f"archived {len(done)} memories" + (f" ({skipped} changed meanwhile, left)" if skipped else "")
    )


def _activation(cube: Cube, step: Step, actor: str, model: str | None) -> StepResult:
    from memos_cli.engine.activation.promote import promote_to_activation
    from memos_cli.engine.select import Selection

    report = promote_to_activation(
        cube,
        Selection(ids=list(step.ids)),
        name=step.name or "hot",
        model=model,
        budget=step.detail.get("budget"),
        dtype=step.detail.get("dtype", "float32"),
        actor=actor,
        replace=True,
        op=SECTION,
    )
    left = f", {len(report.skipped)} left out by the budget" if report.skipped else ""
    return StepResult(step, "done", f"kv/{report.name}: {len(report.memories)} memories, {report.tokens} tokens{left}")


def _parametric(cube: Cube, step: Step, plan: Plan, actor: str, model: str | None, progress: Any) -> StepResult:
    from memos_cli.engine.parametric.distill import DistillReport, distill
    from memos_cli.engine.select import Selection

    par = plan.policy["parametric"]

    def accept(report: DistillReport) -> str | None:
        recall = report.recall_after.exact
        if recall < par["min_recall"]:
            return f"recall {recall:.0%} < {par['min_recall']:.0%}"
        if report.forgetting_pct > par["max_forgetting_pct"]:
            return f"forgetting {report.forgetting_pct:+.1f}% > {par['max_forgetting_pct']:g}%"
        return None

    name = step.name or "stable"
    report = distill(
        cube,
        Selection(ids=list(step.ids)),
        name=name,
        model=model,
        rank=par["rank"],
        steps=par["steps"],
        lr=par["lr"],
        actor=actor,
        progress=progress,
        accept=accept,
        op=SECTION,
    )
    metrics = report.metrics()
    if report.rejected is None:
        return StepResult(
            step,
            "done",
            f"lora/{name}: {len(report.memories)} memories, recall {metrics['recall_after']:.0%}, "
            f"held-out loss {metrics['forgetting_pct']:+.1f}%",
        )
    held = "the old adapter stays" if name in cube.manifest.lora else "no adapter written"
    why = f"new adapter refused: {report.rejected}; {held}"
    with Cube.open(cube.path).transaction(actor=actor, op=SECTION) as tx:
        tx.log(
            [ref.split("@")[0] for ref in report.memories],
            f"scheduler kept adapter {name}: {why}",
            step="parametric",
            name=name,
            rejected=step.detail["digest"],
            why=report.rejected,
            metrics=metrics,
        )
    return StepResult(step, "kept", why)


def summary(cube: Cube, *, now: float | None = None) -> dict[str, Any]:
    """For ``stats``: the hot set, what is stale, what is due (or the policy's error)."""
    try:
        plan = make_plan(cube, now=now)
    except InvalidCube as exc:
        return {"error": exc.problem}
    return {
        "hot": plan.hot,
        "stale": plan.stale,
        "due": [f"{s.kind} {s.action}{' ' + s.name if s.name else ''}: {s.reason}" for s in plan.steps],
        "qualifying": len(plan.qualifying),
    }
