"""The schedule policy: the ``schedule:`` section of cube.yaml, its schema, defaults and example."""

from __future__ import annotations

import math
import re
from typing import Any

from memos_cli.cube.bundle import Cube
from memos_cli.engine.plaintext import usage
from memos_cli.errors import InvalidCube, InvalidPolicy, UsageError

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
