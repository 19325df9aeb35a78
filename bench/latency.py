"""One-shot latency on a quiet machine and next to one competing CPU-bound process, side by side.

Each figure is measured twice: once as the machine is ("quiet": nothing started by this bench; other
people's work still counts, so the load average is printed), and once while a busy loop that this bench
starts and stops itself (``python -c 'while True: pass'``) takes one core. Figures and targets (issue 16):

- ``memos chat CUBE -m Q --greedy --max-new-tokens 40`` on the example cube (examples/corpus): wall time
  of the whole process (<= 6 s quiet, <= 10 s loaded), SmolLM2 decode tokens/s (>= 25 quiet) and time
  to first token, as ``chat --json`` reports them; each run is paired with one of the plain float32
  decoding loop (``MEMOS_SPECULATIVE=0``, the decoding before the half-precision draft), side by side;
- KV snapshot vs re-prefill time to first token at ~1,500 memory tokens (>= 14x), as bench/kv_bench.py;
- ``memos query`` one shot, whole process, on a cube of ``--ingest-n`` memories (<= 1.2 s);
- ``memos ingest`` (whole process) against the raw embedder in this process, same texts (>= 0.85x);
- threads: decode tokens/s and a 1,500-token prefill at 1 thread and at every core, which is how the
  default (one per physical core, less one; see memos_cli/config.py) was chosen.

Prints a table on stdout; cubes go to a temporary directory that is removed at the end.

    .venv/bin/python bench/latency.py [--repeats 3] [--ingest-n 5000] [--conditions quiet,loaded]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kv_bench import QUESTION as KV_QUESTION
from kv_bench import memories as kv_memories
from kv_bench import ttft_ms as kv_ttft_ms
from throughput import corpus, queries, write_records

ROOT = Path(__file__).resolve().parents[1]
MEMOS = [sys.executable, "-m", "memos_cli"]
CORPUS = ["project-notes.md", "facts.jsonl", "standup-chat.json"]
CHAT_Q = "When does the public beta open?"
# (figure, target, passes(quiet_or_loaded_value, condition))
TARGETS: dict[str, tuple[str, Callable[[float, str], bool]]] = {
    "chat -m wall s": ("<= 6 quiet, <= 10 loaded", lambda v, c: v <= (6.0 if c == "quiet" else 10.0)),
    "chat decode tokens/s": (">= 25 quiet", lambda v, c: c != "quiet" or v >= 25.0),
    "chat TTFT ms": ("", lambda v, c: True),
    "chat -m wall s, plain decoding": ("", lambda v, c: True),
    "chat decode tokens/s, plain decoding": ("", lambda v, c: True),
    "KV TTFT snapshot ms": ("", lambda v, c: True),
    "KV TTFT re-prefill ms": ("", lambda v, c: True),
    "KV speed-up at ~1,500 tokens": (">= 14x", lambda v, c: v >= 14.0),
    "query one-shot wall s": ("<= 1.2", lambda v, c: v <= 1.2),
    "raw embedder texts/s": ("", lambda v, c: True),
    "ingest memories/s": ("", lambda v, c: True),
    "ingest / raw embedder": (">= 0.85x", lambda v, c: v >= 0.85),
}


@contextlib.contextmanager
def competitor(active: bool) -> Iterator[None]:
    """One CPU-bound process for the duration of the block (none when not ``active``); always stopped."""
    if not active:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop it on `kill` too
    try:
        time.sleep(0.5)  # let it reach full speed
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        signal.signal(signal.SIGTERM, previous)


def memos(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    full_env = {**os.environ, **env} if env else None
    done = subprocess.run([*MEMOS, *args], input=stdin, capture_output=True, text=True, env=full_env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"memos {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed, done.stdout


def chat_figures(example: Path, work: Path, repeats: int) -> dict[str, float]:
    """The issue's command, on a fresh copy of the example cube each run (chat remembers its turns); each
    run is followed by one with the plain decoding loop (``MEMOS_SPECULATIVE=0``), so both see the same load."""
    walls, rates, ttfts, plain_walls, plain_rates = [], [], [], [], []
    for n in range(repeats):
        for plain in (False, True):
            cube = work / f"chat-{n}"
            shutil.rmtree(cube, ignore_errors=True)
            shutil.copytree(example, cube)
            env = {"MEMOS_SPECULATIVE": "0" if plain else ""}
            args = ("chat", str(cube), "-m", CHAT_Q, "--greedy", "--max-new-tokens", "40", "--json")
            wall, out = memos(*args, env=env)
            result = json.loads(out)
            if plain:
                plain_walls.append(wall)
                plain_rates.append(result["tokens_per_s"])
            else:
                walls.append(wall)
                rates.append(result["tokens_per_s"])
                ttfts.append(result["ttft_ms"])
            shutil.rmtree(cube)
    return {
        "chat -m wall s": statistics.median(walls),
        "chat decode tokens/s": statistics.median(rates),
        "chat TTFT ms": statistics.median(ttfts),
        "chat -m wall s, plain decoding": statistics.median(plain_walls),
        "chat decode tokens/s, plain decoding": statistics.median(plain_rates),
    }


def kv_figures(lm, snap, repeats: int) -> dict[str, float]:
    kv_ttft_ms(lm, snap, "kv"), kv_ttft_ms(lm, snap, "recompute")  # warm-up
    runs = [(kv_ttft_ms(lm, snap, "kv"), kv_ttft_ms(lm, snap, "recompute")) for _ in range(repeats)]
    kv = statistics.median(r[0] for r in runs)
    re = statistics.median(r[1] for r in runs)
    return {"KV TTFT snapshot ms": kv, "KV TTFT re-prefill ms": re, "KV speed-up at ~1,500 tokens": re / kv}


def ingest_figures(texts_path: Path, texts: list[str], work: Path, query_text: str, repeats: int) -> dict[str, float]:
    from memos_cli.models.embedder import load_embedder

    embedder = load_embedder()
    embedder.encode(texts[:64])  # warm-up
    started = time.perf_counter()
    embedder.encode(texts, batch_size=64)
    raw = len(texts) / (time.perf_counter() - started)
    cube = work / "ingest"
    shutil.rmtree(cube, ignore_errors=True)
    memos("init", str(cube))
    ingest_s, _ = memos("ingest", str(cube), str(texts_path))
    memos("query", str(cube), query_text, "-k", "5", "--no-usage")  # builds nothing new; warms the page cache
    one_shot = statistics.median(
        memos("query", str(cube), query_text, "-k", "5", "--no-usage")[0] for _ in range(repeats)
    )
    rate = len(texts) / ingest_s
    return {
        "query one-shot wall s": one_shot,
        "raw embedder texts/s": raw,
        "ingest memories/s": rate,
        "ingest / raw embedder": rate / raw,
    }


def thread_figures(lm, snap) -> dict[int, tuple[float, float]]:
    """Per torch thread count: (decode tokens/s over 40 greedy tokens, re-prefill TTFT ms at ~1,500)."""
    from memos_cli.config import THREADS_ENV, available_cores, configure_threads
    from memos_cli.models.generation import generate

    out = {}
    before = os.environ.get(THREADS_ENV)
    try:
        for threads in sorted({1, available_cores()}):
            os.environ[THREADS_ENV] = str(threads)  # generate() sizes torch's pool from it
            generate(lm, "Tell me about dragons.", mode="none", greedy=True, max_new_tokens=4)  # warm-up
            rates = [
                generate(lm, "Tell me a long story about a dragon.", mode="none", greedy=True, max_new_tokens=40)
                for _ in range(2)
            ]
            prefill = min(kv_ttft_ms(lm, snap, "recompute") for _ in range(2))
            out[threads] = (statistics.median(r.tokens_per_s for r in rates), prefill)
    finally:
        if before is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = before
        configure_threads()
    return out


def step(condition: str, name: str, work: Callable[[], dict]) -> dict:
    """Run one part, saying on stderr how long it took (a loaded shared machine can take minutes)."""
    started = time.perf_counter()
    out = work()
    print(f"# {condition} {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ingest-n", type=int, default=5_000)
    parser.add_argument("--conditions", default="quiet,loaded")
    args = parser.parse_args()
    conditions = [c for c in args.conditions.split(",") if c]

    import torch

    from memos_cli.config import thread_count
    from memos_cli.engine.activation.snapshots import build_snapshot
    from memos_cli.models.lm import load_lm

    print(
        f"# latency: {platform.machine()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, memos threads {thread_count()} (MEMOS_THREADS={os.environ.get('MEMOS_THREADS')})"
    )
    results: dict[str, dict[str, float]] = {}
    threads: dict[str, dict[int, tuple[float, float]]] = {}
    loads: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        example = work / "example"
        memos("init", str(example), "--name", "example")
        memos("ingest", str(example), *(str(ROOT / "examples" / "corpus" / f) for f in CORPUS))
        records = corpus(args.ingest_n)
        texts_path = work / "ingest.jsonl"
        write_records(texts_path, records)
        texts = [r["text"] for r in records]
        query_text = queries(1)[0]
        lm = load_lm()  # converts SmolLM2 once if needed
        snap = build_snapshot(lm, kv_memories(400), budget=1500)
        chat_figures(example, work, 1)  # warm-up: model conversion cache, page cache
        for condition in conditions:
            with competitor(condition == "loaded"):
                before = os.getloadavg()[0]
                figures = step(condition, "chat", lambda: chat_figures(example, work, args.repeats))
                figures |= step(condition, "kv", lambda: kv_figures(lm, snap, args.repeats))
                figures |= step(
                    condition, "ingest", lambda: ingest_figures(texts_path, texts, work, query_text, args.repeats)
                )
                threads[condition] = step(condition, "threads", lambda: thread_figures(lm, snap))
                loads[condition] = (before, os.getloadavg()[0])
            results[condition] = figures
            print(f"# {condition}: done (load average {loads[condition][0]:.2f} -> {loads[condition][1]:.2f})")
    print(f"\nKV at {snap.token_count} memory tokens ({KV_QUESTION!r}); chat: {CHAT_Q!r}; query cube {args.ingest_n:,}")
    print()
    print("| figure | target | " + " | ".join(conditions) + " | meets target |")
    print("| --- | --- | " + " | ".join("---:" for _ in conditions) + " | :---: |")
    for figure, (target, passes) in TARGETS.items():
        values = [results[c][figure] for c in conditions]
        cells = [f"{v:.2f}" if v < 100 else f"{v:.0f}" for v in values]
        ok = "yes" if all(passes(v, c) for v, c in zip(values, conditions, strict=True)) else "NO"
        print(f"| {figure} | {target} | " + " | ".join(cells) + f" | {ok if target else ''} |")
    print()
    print("| torch threads | " + " | ".join(f"{c} decode tok/s | {c} prefill ms" for c in conditions) + " |")
    print("| ---: | " + " | ".join("---: | ---:" for _ in conditions) + " |")
    for n in sorted(threads[conditions[0]]):
        cells = [f"{threads[c][n][0]:.1f} | {threads[c][n][1]:.0f}" for c in conditions]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print()
    print(
        "# load average (1 min) at the start -> end of each condition: "
        + ", ".join(f"{c} {loads[c][0]:.2f} -> {loads[c][1]:.2f}" for c in conditions)
    )


if __name__ == "__main__":
    main()
