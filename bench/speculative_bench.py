"""SmolLM2 greedy decoding: the plain float32 loop against self-speculative decoding (models/speculative.py).

In one process, interleaved (plain, speculative, plain, ...) so that both see the same machine load: each
prompt is answered by both, with and without a KV snapshot injected, ``--repeats`` times. Prints the
median decode tokens/s of each, the draft's acceptance rate, whether every answer was token-identical,
the draft's size and the time to make it.

    .venv/bin/python bench/speculative_bench.py [--repeats 3] [--max-new-tokens 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

PROMPTS = [
    "Tell me a long story about a dragon.",
    "When does the public beta open?",
    "Explain how a CPU cache works.",
    "Write a poem about the sea.",
    "Describe your ideal weekend in detail.",
]
FACTS = [
    "The public beta opens on 14 March.",
    "Alice leads the storage team and lives in Lisbon.",
    "The release train leaves every second Tuesday.",
    "Bob's favourite food is ramen.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    args = parser.parse_args()

    import torch

    from memos_cli.cube.records import MemoryRecord
    from memos_cli.engine.activation.snapshots import build_snapshot
    from memos_cli.models import speculative as spec
    from memos_cli.models.generation import generate
    from memos_cli.models.lm import load_lm

    lm = load_lm()
    started = time.perf_counter()
    dtype = spec.half_dtype()
    probe_s = time.perf_counter() - started
    started = time.perf_counter()
    draft = spec.draft_for(lm.model)
    draft_s = time.perf_counter() - started
    memories = [
        MemoryRecord(id=f"m-{i}", version=1, text=t, created="2026-11-01T00:00:00Z") for i, t in enumerate(FACTS)
    ]
    snap = build_snapshot(lm, memories)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"# draft {dtype}: {spec.nbytes(draft) / 1e6:.0f} MB next to the {spec.nbytes(lm.model) / 1e6:.0f} MB float32 "
        f"model, made in {draft_s:.2f} s (probe {probe_s * 1000:.0f} ms, cached after the first run)"
    )
    generate(lm, "Hi", mode="none", max_new_tokens=8, speculative=True)  # warm-up
    rates: dict[tuple[str, bool], list[float]] = {}
    drafted = accepted = 0
    identical = True
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            for where, kwargs in (("none", {"mode": "none"}), ("kv", {"snapshot": snap, "mode": "kv"})):
                answers = []
                for fast in (False, True):
                    result = generate(
                        lm, prompt, greedy=True, max_new_tokens=args.max_new_tokens, speculative=fast, **kwargs
                    )
                    rates.setdefault((where, fast), []).append(result.tokens_per_s)
                    answers.append(result.token_ids)
                    drafted += result.drafted
                    accepted += result.accepted
                identical = identical and answers[0] == answers[1]
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    print()
    print("| prompt | plain tok/s (median) | speculative tok/s (median) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for where in ("none", "kv"):
        plain = statistics.median(rates[(where, False)])
        fast = statistics.median(rates[(where, True)])
        label = "no snapshot" if where == "none" else f"KV snapshot ({snap.token_count} tokens)"
        print(f"| {label} | {plain:.1f} | {fast:.1f} | {fast / plain:.2f}x |")
    print()
    print(f"acceptance {accepted}/{drafted} = {accepted / max(drafted, 1):.3f}; token-identical answers: {identical}")


if __name__ == "__main__":
    main()
