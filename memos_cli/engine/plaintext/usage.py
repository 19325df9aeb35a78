"""Usage counts: every query or chat hit is a use of a memory; the scheduler promotes the hottest.

Uses are appended to ``.memos/usage.jsonl`` (derived, git-ignored), one line per query with the ids it
returned, so concurrent readers only ever append a few bytes. ``hot`` folds the log into one score per
memory, each use decayed by its age (``half_life_days``), so memories used often *and recently* win.
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass

from memos_cli.cube import io, layout
from memos_cli.cube.bundle import Cube
from memos_cli.errors import InvalidCube

USAGE_REL = f"{layout.DERIVED_DIR}/{layout.USAGE_FILE}"

DEFAULT_HALF_LIFE_DAYS = 7.0


def record(cube: Cube, batches: list[list[str]], *, now: float | None = None) -> None:
    """Append one line per batch. Readers run concurrently: each call is one write of whole lines to a
    file opened with O_APPEND, so lines of two processes never interleave; a line torn by a killed
    process is ended first, so it spoils only itself, and readers skip it."""
    stamp = round(now if now is not None else time.time(), 3)
    lines = "".join(json.dumps({"t": stamp, "ids": ids}, separators=(",", ":")) + "\n" for ids in batches if ids)
    if not lines or not cube.writable():  # a read-only cube answers queries; its uses go unrecorded
        return
    try:
        if _torn_tail(cube):
            lines = "\n" + lines
        io.append(cube.path, USAGE_REL, lines.encode("utf-8"))
    except (InvalidCube, OSError):
        pass  # usage is advisory: never written through a link, and a full disk must not fail the query


def _torn_tail(cube: Cube) -> bool:
    try:
        with io.open_read(cube.path, USAGE_REL) as handle:
            size = os.fstat(handle.fileno()).st_size
            if not size:
                return False
            handle.seek(size - 1)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


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
    with _io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().split("\n")
    try:  # the common case, every line whole: one parse as a JSON array (much cheaper than per line)
        return [
            (float(e["t"]), [str(i) for i in e["ids"]]) for e in json.loads("[" + ",".join(filter(None, lines)) + "]")
        ]
    except (ValueError, KeyError, TypeError, RecursionError):
        pass
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
            entries.append((float(entry["t"]), [str(i) for i in entry["ids"]]))
        except (ValueError, KeyError, TypeError, RecursionError):
            continue  # a torn line from a killed writer: usage is advisory, skip it
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


@dataclass
class Uses:
    """One memory's use: how often, first and last (epoch seconds), and the decayed score at a time."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    score: float = 0.0


def profile(cube: Cube, *, now: float, half_life_days: float = DEFAULT_HALF_LIFE_DAYS) -> dict[str, Uses]:
    """Every used memory's ``Uses`` as of ``now`` (uses after ``now`` are left out: time injection)."""
    rate = math.log(2) / (half_life_days * 86400.0)
    out: dict[str, Uses] = {}
    for stamp, ids in _entries(cube):
        if stamp - now > 1e-3:  # stamps are rounded to the millisecond
            continue
        weight = math.exp(-rate * max(0.0, now - stamp))
        for memory_id in ids:
            held = out.get(memory_id)
            if held is None:
                out[memory_id] = Uses(1, stamp, stamp, weight)
                continue
            held.count += 1
            held.first = min(held.first, stamp)
            held.last = max(held.last, stamp)
            held.score += weight
    return out


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
