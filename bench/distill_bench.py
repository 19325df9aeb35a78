"""Parametric memory on the default model (SmolLM2-135M-Instruct): made-up facts distilled into LoRA.

For each ``--target-modules`` choice (attention only, all linear layers): closed-book exact recall of
the facts before and after ``distill``, mean answer loss, forgetting (loss on held-out general text
before/after, and its change in percent), training time, whole-run time and adapter size. The facts
(``bench/data/facts.jsonl``) are invented, with explicit question/answer metadata, so the base model
cannot know them.

Each run goes through the real engine: a fresh cube in a temporary directory, ``ingest``, ``distill``
(which measures, trains, measures and commits), then ``load_adapters`` to check the saved adapter
reproduces the measured recall. Prints a Markdown table on stdout; ``--out FILE`` also writes it.

    python bench/distill_bench.py [--threads 2] [--targets attention,all-linear] [--epochs 6] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=Path, default=HERE / "data" / "facts.jsonl")
    parser.add_argument("--targets", default="attention,all-linear")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N facts")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check-reload", action="store_true", help="re-measure recall with load_adapters")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.parametric import adapters, evaluation, examples
    from memos_cli.engine.parametric import distill as dist
    from memos_cli.engine.plaintext.ingest import Source, ingest
    from memos_cli.engine.select import Selection
    from memos_cli.models.lm import load_lm

    lines = args.facts.read_text(encoding="utf-8").splitlines()[: args.limit]
    facts = "".join(line + "\n" for line in lines if line.strip())
    lm = load_lm(args.model)
    load_before = os.getloadavg()[0]
    rows = []
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            cube = Cube.init(Path(tmp) / "bench", owner="bench")
            ingest(cube, [Source("facts.jsonl", facts.encode())], actor="bench")

            def show(stage: str, done: int, total: int, loss: float | None, target: str = target) -> None:
                if done == total or (stage == "training" and done % 10 == 0):
                    extra = f" loss {loss:.3f}" if loss is not None else ""
                    print(f"  [{target}] {stage} {done}/{total}{extra}", file=sys.stderr, flush=True)

            options = {"rank": args.rank, "alpha": args.alpha, "seed": args.seed}
            if args.lr is not None:
                options["lr"] = args.lr
            started = time.perf_counter()
            report = dist.distill(
                cube,
                Selection(all=True),
                name=f"bench-{target}",
                model=lm,
                target_modules=target,
                steps=args.steps,
                epochs=args.epochs,
                actor="bench",
                progress=show,
                **options,
            )
            total = time.perf_counter() - started
            reloaded = None
            if args.check_reload:
                adapted = adapters.load_adapters(lm, Cube.open(cube.path), [report.name])
                probes = [examples.probes_for(r)[0] for r in dist.select(cube, Selection(all=True))]
                reloaded = evaluation.measure_recall(adapted, probes).exact
            m = report.metrics()
            rows.append(
                {
                    "target": target,
                    "facts": len(report.memories),
                    "steps": report.steps,
                    "recall_before": m["recall_before"],
                    "recall_after": m["recall_after"],
                    "recall_reloaded": reloaded,
                    "answer_loss_before": m["answer_loss_before"],
                    "answer_loss_after": m["answer_loss_after"],
                    "heldout_before": m["heldout_loss_before"],
                    "heldout_after": m["heldout_loss_after"],
                    "forgetting_pct": m["forgetting_pct"],
                    "train_s": report.train_seconds,
                    "total_s": total,
                    "adapter_mb": report.adapter_bytes / 1e6,
                    "hyper": report.hyperparameters,
                    "misses": [a for a in report.recall_after.answers if not a["hit"]],
                }
            )
            print(json.dumps(rows[-1], default=str), file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]
    table = render(rows, args, load_before, load_after, lm.name)
    print(table)
    if args.out:
        args.out.write_text(table)


def render(rows: list[dict], args: argparse.Namespace, load_before: float, load_after: float, model: str) -> str:
    head = [
        "| target modules | facts | steps | recall before | recall after | answer loss before -> after "
        "| held-out loss before -> after | forgetting | training | whole distill | adapter |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    body = [
        f"| {r['target']} | {r['facts']} | {r['steps']} | {r['recall_before']:.0%} | {r['recall_after']:.0%}"
        + (f" (reloaded {r['recall_reloaded']:.0%})" if r["recall_reloaded"] is not None else "")
        + f" | {r['answer_loss_before']:.2f} -> {r['answer_loss_after']:.2f}"
        f" | {r['heldout_before']:.3f} -> {r['heldout_after']:.3f} | {r['forgetting_pct']:+.1f}%"
        f" | {r['train_s']:.0f} s | {r['total_s']:.0f} s | {r['adapter_mb']:.1f} MB |"
        for r in rows
    ]
    argv = " ".join(sys.argv[1:])
    notes = [
        "",
        f"- date: {datetime.date.today().isoformat()}; model: {model}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores (CPU only), torch threads {args.threads}",
        f"- load average (1 min) at start {load_before:.1f}, at end {load_after:.1f} (other jobs shared the cores)",
        f"- command: `python bench/distill_bench.py {argv}`",
        f"- hyperparameters: {json.dumps(rows[0]['hyper'], sort_keys=True) if rows else '{}'}",
    ]
    for r in rows:
        for miss in r["misses"]:
            notes.append(f"- [{r['target']}] not recalled: {miss['question']!r} -> {miss['answer'][:80]!r}")
    return "\n".join(head + body + notes) + "\n"


if __name__ == "__main__":
    main()
