"""Parametric memory from plain memories: closed-book recall through natural questions, before and after.

Each fact set in ``bench/data/distill/`` is 20 made-up memories written the way users write them (plain
statements and first-person dialogue turns; no ``metadata.question``) and, kept apart in
``<set>.questions.jsonl``, one natural question per memory phrased unlike any training template. Those
questions never reach training: the cube only ever holds ``<set>.jsonl``.

Per set, through the real engine on a fresh cube: ``ingest``, ``distill`` with the default settings
(training until learned), then the adapter is loaded back from the cube (``load_adapters``) and the
natural questions are asked closed-book (greedy, no retrieval, no snapshot), as they were asked of the
bare model before. Also reported: distill's own held-out recall, forgetting (held-out text loss), why
training stopped, its steps and time, the whole run's time and the process's peak resident memory.

``--scale N`` runs on N synthetic memories (the four shapes, invented names and numbers) instead.

    python bench/distill_plain_bench.py --sets people,dates,codes,prefs,mixed [--threads 2] [--out FILE]
    python bench/distill_plain_bench.py --scale 100 --max-minutes 20
    python bench/distill_plain_bench.py --sets people --loaded   # next to one competing CPU-bound process
    python bench/distill_plain_bench.py --sets fresh5 --keep /tmp/cubes   # keep the cube and its adapter

The ``fresh*`` sets (24 memories of six kinds each) were written by helpers who had not seen the rules:
they are the check on wording nobody tuned the rules for (fresh6's misses have not been read; the
others' have, so they are tuning data now).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "distill"


def synthetic(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``n`` invented memories of the four shapes, with one natural question each."""
    rng = random.Random(seed)
    syll = "ka lo mir ven tas quil dor bre an sel tho rin gal mar ove pel zan fen ris dal cor ny".split()

    def word() -> str:
        return "".join(rng.choice(syll) for _ in range(rng.choice((2, 3)))).capitalize()

    months = "January February March April May June July August September October November December".split()
    roles = ["chief archivist", "head chef", "harbour master", "treasurer", "site manager", "choir director"]
    things = ["boathouse", "garage", "storage unit", "bike shed", "studio", "server room"]
    foods = ["hazelnuts", "shellfish", "sesame", "kiwi fruit", "mustard", "celery"]
    memories, questions = [], []
    for i in range(n):
        shape = i % 4
        place = word()
        if shape == 0:
            person, role = f"{word()} {word()}", rng.choice(roles)
            text, q, a = f"{person} is the {role} at {place}.", f"Who works as {role} in {place}?", person
        elif shape == 1:
            date = f"{rng.randint(1, 28)} {rng.choice(months)} {rng.randint(2026, 2035)}"
            text, q, a = f"The {place} festival takes place on {date}.", f"When is the {place} festival held?", date
        elif shape == 2:
            code, thing = str(rng.randint(1000, 99999)), rng.choice(things)
            text = f"The access code for the {place} {thing} is {code}."
            q, a = f"What's the code to get into the {place} {thing}?", code
        else:
            food = rng.choice(foods)
            text, q, a = f"I'm allergic to {food}.", f"What food allergy does {place} have?", food
        record = {"id": f"syn-{i:04d}", "text": text, "type": "fact"}
        if shape == 3:
            record.update(type="dialogue", speaker=place)
        memories.append(record)
        questions.append({"id": record["id"], "question": q, "answer": a})
    return memories, questions


def run_set(name: str, memories: list[dict], questions: list[dict], args: argparse.Namespace) -> dict:
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.parametric import adapters, evaluation, examples
    from memos_cli.engine.parametric import distill as dist
    from memos_cli.engine.plaintext.ingest import Source, ingest
    from memos_cli.engine.select import Selection
    from memos_cli.models.lm import load_lm

    lm = load_lm(args.model)
    started = time.perf_counter()
    # --keep: the cubes stay in that folder; otherwise they live in a temporary one, removed on exit
    with contextlib.nullcontext(str(args.keep)) if args.keep is not None else tempfile.TemporaryDirectory() as tmp:
        cube = Cube.init(Path(tmp) / name, owner="bench")
        body = "".join(json.dumps(m) + "\n" for m in memories).encode()
        ingest(cube, [Source(f"{name}.jsonl", body)], actor="bench")
        state = cube.read_state()
        by_text = {" ".join(m.text.split()): m.ref for m in state.current.values()}
        refs = {m["id"]: by_text[" ".join(m["text"].split())] for m in memories}
        natural = [examples.Probe(refs[q["id"]], q["question"], q["answer"], "natural") for q in questions]
        if args.questions is not None and len(natural) > args.questions:
            natural = random.Random(0).sample(natural, args.questions)
        last = [0.0]

        def show(stage: str, done: int, total: int, loss: float | None) -> None:
            now = time.perf_counter()
            if stage.startswith("recall of") or done == total or now - last[0] > 30:
                last[0] = now
                extra = f" loss {loss:.3f}" if loss is not None else ""
                print(f"  [{name}] {stage} {done}/{total}{extra}", file=sys.stderr, flush=True)

        before = evaluation.measure_recall(lm, natural, stage="natural before")
        options: dict = {"max_minutes": args.max_minutes, "max_probes": args.max_probes}
        for key in ("steps", "epochs", "lr", "replay_ratio", "precision"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
        distill_started = time.perf_counter()
        report = dist.distill(
            cube, Selection(all=True), name="bench", model=lm, actor="bench", progress=show, **options
        )
        distill_s = time.perf_counter() - distill_started
        adapted = adapters.load_adapters(lm, Cube.open(cube.path), ["bench"])
        after = evaluation.measure_recall(adapted, natural, stage="natural after")
    m = report.metrics()
    return {
        "set": name,
        "memories": len(memories),
        "natural_questions": len(natural),
        "natural_before": before.exact,
        "natural_after": after.exact,
        "heldout_forms_before": m["recall_before"],
        "heldout_forms_after": m["recall_after"],
        "heldout_probes": len(report.recall_after.answers),
        "forgetting_pct": m["forgetting_pct"],
        "stopped": report.stopped,
        "steps": report.steps,
        "train_s": report.train_seconds,
        "distill_s": distill_s,
        "total_s": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "examples": report.examples,
        "trace": report.trace,
        "misses_natural": [a for a in after.answers if not a["hit"]],
        "misses_heldout": [a for a in report.recall_after.answers if not a["hit"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="people,dates,codes,prefs,mixed")
    parser.add_argument("--scale", type=int, default=None, help="N synthetic memories instead of --sets")
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--max-probes", type=int, default=None, help="distill's held-out sample (large runs)")
    parser.add_argument("--questions", type=int, default=None, help="ask only a sample of N natural questions")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--replay-ratio", type=float, default=None)
    parser.add_argument("--precision", default=None, help="distill's --precision (default: auto)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one set in this process
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="build the cubes under this folder and keep them")
    parser.add_argument(
        "--loaded", action="store_true", help="run each set next to one competing CPU-bound process (started here)"
    )
    args = parser.parse_args()
    # memos sizes its own pools (config.configure_threads: answering takes every core of an idle machine);
    # --threads must hold for all of it, or a run started beside another on an idle box takes both cores
    os.environ["MEMOS_THREADS"] = str(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    if args.one is not None:
        if args.one.startswith("scale:"):
            memories, questions = synthetic(int(args.one.split(":")[1]))
        else:
            memories = [json.loads(x) for x in (DATA / f"{args.one}.jsonl").read_text().splitlines() if x.strip()]
            questions = [
                json.loads(x) for x in (DATA / f"{args.one}.questions.jsonl").read_text().splitlines() if x.strip()
            ]
        print(json.dumps(run_set(args.one, memories, questions, args)))
        return
    import subprocess

    names = [f"scale:{args.scale}"] if args.scale else [s.strip() for s in args.sets.split(",") if s.strip()]
    rows = []
    load_before = os.getloadavg()[0]
    passthrough = []  # the child processes get every option but --out (and --loaded: the competitor is here)
    skip = False
    for arg in sys.argv[1:]:
        if skip or arg == "--loaded" or arg.startswith("--out="):
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        passthrough.append(arg)
    sys.path.insert(0, str(HERE))
    from latency import competitor

    for name in names:  # one process per set, so peak memory is per set
        with competitor(args.loaded):
            done = subprocess.run(
                [sys.executable, __file__, *passthrough, "--one", name], stdout=subprocess.PIPE, text=True, check=False
            )
        if done.returncode:
            raise SystemExit(f"{name} failed")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in rows[-1].items() if "misses" not in k}), file=sys.stderr, flush=True)
    table = render(rows, args, load_before, os.getloadavg()[0])
    print(table)
    if args.out:
        args.out.write_text(table)


def render(rows: list[dict], args: argparse.Namespace, load_before: float, load_after: float) -> str:
    head = [
        "| set | memories | natural questions before -> after | held-out forms before -> after | forgetting "
        "| stopped | steps | training | whole distill | peak RSS |",
        "| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    body = [
        f"| {r['set']} | {r['memories']} | {r['natural_before']:.0%} -> **{r['natural_after']:.0%}** "
        f"| {r['heldout_forms_before']:.0%} -> {r['heldout_forms_after']:.0%} ({r['heldout_probes']}) "
        f"| {r['forgetting_pct']:+.1f}% | {r['stopped']} | {r['steps']} | {r['train_s']:.0f} s "
        f"| {r['distill_s']:.0f} s | {r['peak_rss_mb']:.0f} MB |"
        for r in rows
    ]
    notes = [
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} cores "
        f"(CPU only), torch threads {args.threads}; load average (1 min) {load_before:.1f} at start, "
        f"{load_after:.1f} at end; {'next to one competing CPU-bound process' if args.loaded else 'quiet'}",
        f"- command: `python bench/distill_plain_bench.py {' '.join(a for a in sys.argv[1:])}`",
    ]
    for r in rows:
        for miss in r["misses_natural"]:
            notes.append(
                f"- [{r['set']}] natural question missed: {miss['question']!r} (expected {miss['expected']!r}) "
                f"-> {miss['answer'][:80]!r}"
            )
        for miss in r["misses_heldout"]:
            notes.append(
                f"- [{r['set']}] held-out form missed: {miss['question']!r} (expected {miss['expected']!r}) "
                f"-> {miss['answer'][:80]!r}"
            )
    return "\n".join(head + body + notes) + "\n"


if __name__ == "__main__":
    main()
