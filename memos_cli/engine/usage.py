"""Usage counts: every query or chat hit is a use of a memory; the scheduler promotes the hottest.

Uses are appended to ``.memos/usage.jsonl`` (derived, git-ignored), one line per query with the ids it
returned, so concurrent readers only ever append a few bytes. ``hot`` folds the log into one score per
memory, each use decayed by its age (``half_life_days``), so memories used often *and recently* win.
"""

from __future__ import annotations

import io as _io
import json
import math
import time
from collections import defaultdict

from memos_cli.cube import io, layout
from memos_cli.cube.bundle import Cube
from memos_cli.errors import InvalidCube

USAGE_REL = f"{layout.DERIVED_DIR}/{layout.USAGE_FILE}"

DEFAULT_HALF_LIFE_DAYS = 7.0


def record(cube: Cube, batches: list[list[str]], *, now: float | None = None) -> None:
    stamp = round(now if now is not None else time.time(), 3)
    lines = "".join(json.dumps({"t": stamp, "ids": ids}, separators=(",", ":")) + "\n" for ids in batches if ids)
    if not lines or not cube.writable():  # a read-only cube answers queries; its uses go unrecorded
        return
    try:
        io.append(cube.path, USAGE_REL, lines.encode("utf-8"))
    except (InvalidCube, OSError):
        pass  # usage is advisory: never written through a link, and a full disk must not fail the query


def forget_ids(cube: Cube, ids: set[str]) -> bool:
    """Rewrite the usage log without ``ids`` (purge); returns whether anything was removed."""
    try:
        raw = io.read_bytes(cube.path, USAGE_REL, missing_ok=True)
    except InvalidCube:  # a link or special file in its place (derived data): removed, never followed
        return io.remove(cube.path, USAGE_REL)
    if raw is None or not any(memory_id.encode("utf-8") in raw for memory_id in ids):
        return False
    kept = [
        json.dumps({"t": stamp, "ids": left}, separators=(",", ":")) + "\n"
        for stamp, used in _entries(cube)
        if (left := [i for i in used if i not in ids])
    ]
    io.atomic_write(cube.path, USAGE_REL, "".join(kept).encode("utf-8"))
    return True


def _entries(cube: Cube) -> list[tuple[float, list[str]]]:
    try:
        raw = io.open_read(cube.path, USAGE_REL)
    except (FileNotFoundError, InvalidCube):
        return []
    entries = []
    with _io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
                entries.append((float(entry["t"]), [str(i) for i in entry["ids"]]))
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # a torn last line from a killed reader: usage is advisory, skip it
    return entries


def scores(cube: Cube, *, half_life_days: float = DEFAULT_HALF_LIFE_DAYS, now: float | None = None) -> dict[str, float]:
    """Decayed use count of every memory that was ever hit, as of ``now`` (default: the latest use,
    so that a cube left alone for years keeps its ranking instead of decaying to zero)."""
    entries = _entries(cube)
    if not entries:
        return {}
    ref = now if now is not None else max(t for t, _ in entries)
    rate = math.log(2) / (half_life_days * 86400.0)
    totals: dict[str, float] = defaultdict(float)
    for stamp, ids in entries:
        weight = math.exp(-rate * max(0.0, ref - stamp))
        for memory_id in ids:
            totals[memory_id] += weight
    return dict(totals)


def counts(cube: Cube) -> dict[str, int]:
    """Plain (undecayed) number of uses per memory."""
    totals: dict[str, int] = defaultdict(int)
    for _stamp, ids in _entries(cube):
        for memory_id in ids:
            totals[memory_id] += 1
    return dict(totals)


def hot(cube: Cube, n: int, *, half_life_days: float = DEFAULT_HALF_LIFE_DAYS) -> list[str]:
    """The ``n`` memory ids with the highest decayed use, best first (ties broken by id)."""
    ranked = sorted(scores(cube, half_life_days=half_life_days).items(), key=lambda kv: (-kv[1], kv[0]))
    return [memory_id for memory_id, _ in ranked[:n]]
