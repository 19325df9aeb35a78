"""Process-wide settings read from the environment.

``MEMOS_HOME`` holds per-user state (config.yaml, caches); it defaults to ``~/.cache/memos``.
``MEMOS_MODEL_CACHE`` holds converted models; it defaults to ``$MEMOS_HOME/models``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def memos_home() -> Path:
    home = os.environ.get("MEMOS_HOME")
    path = Path(home) if home else Path.home() / ".cache" / "memos"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_cache() -> Path:
    """Where converted models (and the memoised hashes of model files) live: ``$MEMOS_MODEL_CACHE``, else
    ``$MEMOS_HOME/models``. Several homes (users, CI jobs, tests) can share one cache."""
    value = os.environ.get("MEMOS_MODEL_CACHE")
    path = Path(value) if value else memos_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lock_timeout() -> float:
    """Seconds a command waits for another process's cube lock before giving up."""
    return float(os.environ.get("MEMOS_LOCK_TIMEOUT", "30"))


def debug() -> bool:
    return os.environ.get("MEMOS_DEBUG", "") not in ("", "0")


def offline_models() -> None:
    """Models come from local folders only: never reach for a model hub at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def actor(override: str | None = None) -> str:
    """The acting identity: ``--as NAME``, else ``MEMOS_USER``, else the login name."""
    if override:
        return override
    env = os.environ.get("MEMOS_USER")
    if env:
        return env
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def setting(name: str) -> object | None:
    """A key of ``$MEMOS_HOME/config.yaml`` (for example ``model: /path/to/hf-folder``), or None."""
    path = memos_home() / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data.get(name) if isinstance(data, dict) else None


def model_spec(cli_value: str | None) -> str | None:
    """The language model to use: ``--model``, else ``$MEMOS_MODEL``, else config.yaml ``model``, else
    None (the default, SmolLM2-135M-Instruct)."""
    if cli_value:
        return cli_value
    if os.environ.get("MEMOS_MODEL"):
        return os.environ["MEMOS_MODEL"]
    value = setting("model")
    return str(value) if value else None


THREADS_ENV = "MEMOS_THREADS"


def available_cores() -> int:
    """Physical cores this process may run on: the CPU affinity mask, capped by a cgroup CPU quota (a
    container's ``--cpus``), divided by the hardware threads per core (SMT siblings share one core's
    arithmetic units, so they add little to torch's dense kernels)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" (no limit) or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            logical = min(logical, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text()
        per_core = sum(int(b) - int(a) + 1 for a, _, b in (r.partition("-") for r in siblings.strip().split(",")))
    except (OSError, ValueError):
        per_core = 1
    return max(1, logical // max(1, per_core))


def default_threads(interactive: bool = False) -> int:
    """Threads for torch and BLAS when ``MEMOS_THREADS`` is not set: one per physical core, less one;
    for ``interactive`` work (generating an answer: short, and someone waits for it) every core when the
    machine is idle as the process starts. Bulk work (embedding an ingest) keeps the margin: it runs long
    enough for other work to start meanwhile.

    The margin is what keeps memos fast next to other work. OpenMP threads spin-wait for each other at
    every parallel step, so when another process takes a core, a pool as wide as the machine stalls on
    its descheduled thread. Measured on 2 cores with one competing CPU-bound process (as bench/latency.py
    does; see bench/RESULTS.md): SmolLM2 decoding at 5.8 tokens/s with 2 threads against 22.9 with 1;
    without the competitor 1 thread decoded as fast or faster (~26 tokens/s), and 2 threads only won the
    prefill (TTFT 94 against 151 ms).
    """
    cores = available_cores()
    if interactive and cores > 1 and _machine_idle():
        return cores  # nothing else wants a core now: all of them (speculative decoding 34 -> 51 tokens/s)
    return max(1, cores - 1)


_IDLE: bool | None = None


def _machine_idle(window: float = 0.03) -> bool:
    """Whether the other processes on this machine use less than a quarter of one core right now: the
    non-idle CPU time of the whole machine over ``window`` seconds, while this process sleeps (Linux
    ``/proc/stat``; False where it cannot be read). Decided once per process: a competitor that starts
    later meets the margin of one core only if it was there at the start (bench/RESULTS.md)."""
    global _IDLE
    if _IDLE is None:
        _IDLE = _busy_cores(window) < 0.25
    return _IDLE


def _busy_cores(window: float) -> float:
    import time

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("inf")
    elapsed = total1 - total0
    if elapsed <= 0:
        return float("inf")
    logical = os.cpu_count() or 1
    return (elapsed - (idle1 - idle0)) / elapsed * logical


def thread_count(interactive: bool = False) -> int:
    """``MEMOS_THREADS`` if it is a positive integer, else ``default_threads(interactive)``."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    return default_threads(interactive)


_FORKED = False


def _after_fork_in_child() -> None:
    global _FORKED
    _FORKED = True


# A child forked from a process whose OpenMP pool ran with several threads hangs in its first parallel
# region (GNU libgomp does not survive fork); such a child runs torch on one thread.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure_threads(interactive: bool = False) -> int:
    """Size torch's intra-op pool (if torch is imported) and the BLAS pools (numpy's OpenBLAS, through
    threadpoolctl) to ``thread_count()``; return that count. Cheap and idempotent: call it wherever heavy
    numeric work starts (model loads, bulk embedding)."""
    import sys

    n = 1 if _FORKED else thread_count(interactive)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if interactive:
        return n  # generation is torch's alone; the BLAS pools stay as bulk work sized them
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")
    return n


SHARD_ROWS_ENV = "MEMOS_INDEX_SHARD_ROWS"


def index_shard_rows() -> int | None:
    """Rows per shard of the derived index: ``MEMOS_INDEX_SHARD_ROWS``, else config.yaml ``index_shard_rows``,
    else None (keep the layout the index has; a new index is unsharded). ``0`` means unsharded."""
    from memos_cli.errors import UsageError

    value: object = os.environ.get(SHARD_ROWS_ENV, "").strip() or setting("index_shard_rows")
    if value is None or value == "":
        return None
    try:
        rows = int(str(value))
    except ValueError:
        rows = -1
    if rows < 0:
        raise UsageError(
            f"{SHARD_ROWS_ENV} (or config.yaml index_shard_rows) must be a whole number >= 0, not {value!r}"
        )
    return rows
