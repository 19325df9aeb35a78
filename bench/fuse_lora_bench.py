"""Fused adapters keep each parent's facts: distill half the made-up facts into cube A and half into
cube B (same adapter name), then compare peft's combination methods side by side on closed-book recall
of each parent's facts (the distill issue's measure) and on held-out text loss, and run `fuse` end to
end with its default (peft ``cat``, then two short consolidation passes over the parents' memories).

    .venv/bin/python bench/fuse_lora_bench.py [--facts bench/data/facts.jsonl] [--limit 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent

# peft add_weighted_adapter combination types (with their options) compared against each other
METHODS = [
    ("cat", {}),
    ("linear", {}),
    ("svd", {"svd_rank": 16}),
    ("ties_svd", {"density": 0.5, "svd_rank": 16}),
    ("dare_linear_svd", {"density": 0.5, "svd_rank": 16}),
    ("magnitude_prune_svd", {"density": 0.5, "svd_rank": 16}),
]
# the exact sum, and the best of the others before consolidation, each consolidated
CONSOLIDATED = [("cat", {}), ("ties_svd", {"density": 0.5, "svd_rank": 16})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=Path, default=HERE / "data" / "facts.jsonl")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.fuse import fuse
    from memos_cli.engine.parametric import adapters as lora_adapters
    from memos_cli.engine.parametric import distill as D
    from memos_cli.engine.parametric import evaluation as lora_eval
    from memos_cli.engine.parametric import examples as lora_examples
    from memos_cli.engine.parametric import training as lora_training
    from memos_cli.engine.plaintext.ingest import Source, ingest
    from memos_cli.engine.select import Selection
    from memos_cli.models.lm import load_lm

    lines = [line for line in args.facts.read_text().splitlines() if line.strip()][: args.limit]
    halves = {"a": lines[: len(lines) // 2], "b": lines[len(lines) // 2 :]}
    lm = load_lm()
    heldout = lora_examples.text_examples(
        lm, lora_examples.read_text_resource("heldout.txt"), lora_examples.HELDOUT_TOKENS, "heldout"
    )
    pad = lora_examples.pad_id(lm)
    heldout_base = lora_eval.mean_loss(lm.model, heldout, pad, token_weighted=True)
    results: dict[str, dict[str, float]] = {}

    def measure(label: str, model: object, probes: dict[str, list[lora_examples.Probe]]) -> None:
        adapted = replace(lm, model=model, fingerprint=f"{lm.fingerprint}+bench-{label}")
        row = {name: lora_eval.measure_recall(adapted, questions).exact for name, questions in probes.items()}
        row["heldout_pct"] = 100 * (lora_eval.mean_loss(model, heldout, pad, token_weighted=True) / heldout_base - 1)
        results[label] = row
        print(
            f"{label:<22} "
            + "  ".join(f"{name} {row[name]:>4.0%}" for name in probes)
            + f"  held-out loss {row['heldout_pct']:+.1f}%",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        probes: dict[str, list[lora_examples.Probe]] = {}
        for name, part in halves.items():
            cube = Cube.init(root / name, name=name)
            ingest(cube, [Source(f"{name}.jsonl", ("\n".join(part) + "\n").encode())])
            started = time.perf_counter()
            report = D.distill(cube, Selection(all=True), name="facts", model=lm)
            probes[name] = [
                p for r in Cube.open(root / name).read_state().current.values() for p in lora_examples.probes_for(r)
            ]
            results[f"own {name}"] = {name: report.recall_after.exact}
            print(
                f"parent {name}: {len(part)} facts, {len(probes[name])} questions, own adapter's recall "
                f"{report.recall_after.exact:.0%}, held-out loss {report.metrics()['forgetting_pct']:+.1f}% "
                f"({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
        folders = [root / name / "lora" / "facts" for name in halves]
        print("\npeft combination (weights 1, 1)   recall of each parent's facts")
        for method, options in METHODS:
            model = lora_adapters.combine_adapters(lm, folders, method=method, **options)
            measure(method + "".join(f" {k}={v}" for k, v in options.items()).replace("svd_rank", "r"), model, probes)
            del model

        print(
            f"\nthen consolidated ({lora_training.CONSOLIDATE_EPOCHS:g} passes over both memories, "
            f"lr {lora_training.CONSOLIDATE_LR:g})"
        )
        examples, _ = lora_examples.build_examples(
            lm, [r for name in halves for r in Cube.open(root / name).read_state().current.values()]
        )
        replay = lora_examples.replay_examples(lm)
        for method, options in CONSOLIDATED:
            model = lora_adapters.combine_adapters(lm, folders, method=method, **options)
            lora_training.consolidate_adapter(lm, model, examples, replay)
            measure(f"{method} + consolidate", model, probes)
            del model

        started = time.perf_counter()
        report = fuse([root / "a", root / "b"], root / "ab")
        fused_seconds = time.perf_counter() - started
        info = report.lora["facts"]
        print(
            f"\nmemos fuse (default --adapters consolidate): {fused_seconds:.0f}s; method {info['method']}; "
            f"consolidation {info['consolidation']['steps']} steps, {info['consolidation']['seconds']:.0f}s"
        )
        print("  fuse's own report:", json.dumps(info["recall"]))
        fused_lm = lora_adapters.load_adapters(
            lm, Cube.open(root / "ab"), ["facts"]
        )  # the adapter as written, reloaded
        measure("fused cube's adapter", fused_lm.model, probes)
        print(json.dumps({"facts": len(lines), "results": results, "fuse_seconds": round(fused_seconds, 1)}))


if __name__ == "__main__":
    main()
