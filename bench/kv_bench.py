"""KV snapshot vs re-prefill on the default model (SmolLM2-135M-Instruct), in one run.

For about 500, 1,500 and 3,000 memory tokens: time to first token (median of ``--repeats`` runs) with the
snapshot injected and with the same prompt re-prefilled, and their ratio. Then, per snapshot dtype, the
file size, load time (sha256 and every header check included) and whether the greedy answer is
token-identical to the float32 re-prefill.

Prints a table on stdout and writes nothing else (the model conversion cache under MEMOS_HOME aside).
Snapshot files go to a temporary directory that is removed at the end.

    python bench/kv_bench.py [--repeats 5] [--max-new-tokens 32] [--model DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.activation.snapshots import Snapshot, build_snapshot, load_snapshot, save_snapshot
from memos_cli.models.generation import generate
from memos_cli.models.lm import DTYPES, LanguageModel, load_lm

SIZES = (500, 1500, 3000)
NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Esther", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lena"]
THINGS = [
    ("favourite colour", ["teal", "amber", "crimson", "olive", "navy", "lilac"]),
    ("home town", ["Porto", "Ghent", "Kyoto", "Tartu", "Cusco", "Bergen"]),
    ("pet", ["a cat called Miso", "a parrot called Kiwi", "a dog called Pepper", "two goldfish"]),
    ("job", ["nurse", "carpenter", "data engineer", "violin teacher", "pilot", "baker"]),
    ("favourite food", ["ramen", "paella", "pierogi", "falafel", "dumplings", "lasagne"]),
    ("weekend hobby", ["bouldering", "birdwatching", "pottery", "sailing", "chess", "gardening"]),
]
QUESTION = "What is Greta's favourite food?"


def memories(n: int) -> list[MemoryRecord]:
    out = []
    for i in range(n):
        name = NAMES[i % len(NAMES)]
        thing, values = THINGS[(i // len(NAMES)) % len(THINGS)]
        value = values[(i * 7 + i // 5) % len(values)]
        text = f"{name}'s {thing} is {value} (noted in session {i // 9 + 1})."
        out.append(MemoryRecord(id=f"m-{i:05d}", version=1, text=text, created="2025-01-01T00:00:00Z"))
    return out


def ttft_ms(lm: LanguageModel, snap: Snapshot, mode: str) -> float:
    return generate(lm, QUESTION, snapshot=snap, mode=mode, max_new_tokens=1).ttft_ms  # type: ignore[arg-type]


def load_ms(lm: LanguageModel, path: Path, digest: str) -> float:
    started = time.perf_counter()
    load_snapshot(path, lm, expected_sha256=digest)
    return (time.perf_counter() - started) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_lm(args.model)
    pool = memories(400)
    print(f"# kv_bench: model {lm.name} ({lm.family}, {lm.fingerprint}), torch {torch.__version__}")
    print(
        f"# machine: {platform.machine()} {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
        f"load average at start {os.getloadavg()[0]:.2f}; repeats {args.repeats}, greedy, "
        f"{args.max_new_tokens} new tokens for the answer check"
    )
    print()
    print("| memory tokens | memories | TTFT snapshot ms | TTFT re-prefill ms | speed-up | greedy answer identical |")
    print("| ---: | ---: | ---: | ---: | ---: | :---: |")
    by_size = {}
    for size in SIZES:
        snap = build_snapshot(lm, pool, budget=size)
        by_size[size] = snap

        ttft_ms(lm, snap, "kv"), ttft_ms(lm, snap, "recompute")  # warm-up: allocator and kernels
        # Interleaved, so that both modes see the same background load on a shared machine.
        runs = [(ttft_ms(lm, snap, "kv"), ttft_ms(lm, snap, "recompute")) for _ in range(args.repeats)]
        kv_ms = statistics.median(r[0] for r in runs)
        re_ms = statistics.median(r[1] for r in runs)
        kv = generate(lm, QUESTION, snapshot=snap, mode="kv", max_new_tokens=args.max_new_tokens)
        re = generate(lm, QUESTION, snapshot=snap, mode="recompute", max_new_tokens=args.max_new_tokens)
        same = "yes" if kv.token_ids == re.token_ids else "NO"
        row = (snap.token_count, len(snap.memory_refs), f"{kv_ms:.0f}", f"{re_ms:.0f}", f"{re_ms / kv_ms:.1f}x", same)
        print("| " + " | ".join(str(x) for x in row) + " |")

    size = 1500
    base = by_size[size]
    reference = generate(lm, QUESTION, snapshot=base, mode="recompute", max_new_tokens=args.max_new_tokens)
    print()
    print(f"Snapshot files at {base.token_count} memory tokens; answer: {reference.answer!r}")
    print()
    print(
        "| dtype | file MB | KB per token | load ms | TTFT snapshot ms | greedy answer identical to fp32 re-prefill |"
    )
    print("| --- | ---: | ---: | ---: | ---: | :---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in DTYPES:
            snap = build_snapshot(lm, pool, budget=size, dtype=dtype)
            path = Path(tmp) / f"{dtype}.safetensors"
            digest = save_snapshot(path, snap)
            nbytes = path.stat().st_size
            load_ms(lm, path, digest)
            loaded_ms = statistics.median(load_ms(lm, path, digest) for _ in range(args.repeats))
            loaded = load_snapshot(path, lm, expected_sha256=digest)
            kv_ms = statistics.median(ttft_ms(lm, loaded, "kv") for _ in range(args.repeats))
            answer = generate(lm, QUESTION, snapshot=loaded, max_new_tokens=args.max_new_tokens)
            same = "yes" if answer.token_ids == reference.token_ids else "no"
            print(
                f"| {dtype} | {nbytes / 1e6:.1f} | {nbytes / 1024 / snap.token_count:.1f} | {loaded_ms:.0f} "
                f"| {kv_ms:.0f} | {same} |"
            )
    print()
    print(f"# load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
