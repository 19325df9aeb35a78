"""memos distill: memories -> a trained LoRA adapter in the cube, with a recall and forgetting report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, CubeArg, JsonOpt, ModelOpt, TagOpt
from memos_cli.cli.output import emit_json, say, stage_progress
from memos_cli.words import plural


def distill(
    cube: CubeArg,
    name: Annotated[
        Optional[str], typer.Option("--name", "-n", help="Adapter name: it is saved as lora/NAME/.")
    ] = None,
    ids: Annotated[
        Optional[list[str]], typer.Option("--ids", help="Memory ids or unique prefixes (repeatable).")
    ] = None,
    query: Annotated[
        Optional[str], typer.Option("--query", "-q", help="Distill the top -k hits of this query.")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="How many query hits to take.")] = 10,
    tag: TagOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Every active memory.")] = False,
    hot: Annotated[
        Optional[int], typer.Option("--hot", help="The N most used memories (recent uses count most).")
    ] = None,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 8,
    alpha: Annotated[float, typer.Option("--alpha", help="LoRA alpha (the update is scaled by alpha/rank).")] = 16,
    target_modules: Annotated[
        str,
        typer.Option("--target-modules", help="all-linear, attention, or module names separated by commas."),
    ] = "all-linear",
    layers: Annotated[
        str,
        typer.Option(
            "--layers",
            help="Decoder layers that get LoRA weights: all, upper (the upper half: a third faster a step, but "
            "questions worded unlike the training's are answered less often), or a 0-based range A-B.",
        ),
    ] = "all",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Training steps (batches of 8).")] = None,
    epochs: Annotated[
        Optional[float], typer.Option("--epochs", help="Fixed passes over the training data (default: until learned).")
    ] = None,
    max_minutes: Annotated[
        float, typer.Option("--max-minutes", help="Stop training after this many minutes, learned or not.")
    ] = 30.0,
    max_probes: Annotated[
        Optional[int],
        typer.Option("--max-probes", help="Measure recall on a sample of this many held-out questions (default: all)."),
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 2e-3,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="Training arithmetic: auto (bfloat16 where the CPU has it natively, else float32), float32 "
            "or bfloat16. The adapter is stored in float32 and measured in float32 either way.",
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed for the LoRA initialisation and the data order.")] = 0,
    model: ModelOpt = None,
    replay: Annotated[
        Optional[Path], typer.Option("--replay", help="A text file of general prose to mix in (default: built in).")
    ] = None,
    drop: Annotated[
        Optional[str], typer.Option("--drop", help="Remove the adapter NAME from the cube instead.")
    ] = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Train memories into a LoRA adapter (parametric memory) stored in the cube as lora/NAME/.

    The training data comes from the memories alone, with no LLM call: each statement (and, for a
    dialogue turn, the speaker's words in the third person) as plain text, and question-and-answer turns
    in the model's chat template about the subject and every name, place, date, number and object in each
    clause, reworded variants of those questions, cloze completions, who/when questions from the speaker
    and time, and metadata.question when present. General replay text is mixed in to limit forgetting.
    Training runs until the model answers its training questions (checked every few steps; the memories
    it misses are trained again), stops improving, or hits --max-minutes; the report says which. --steps
    or --epochs fix the length instead.

    The report is measured, not assumed: closed-book recall on held-out questions (a template family
    training never uses, plus each memory's own metadata.question), with no retrieval and no KV
    snapshot, before and after, listing every miss, as exact-answer matches and mean answer loss, and
    forgetting as the change of loss on held-out general text that training never sees. It is printed,
    stored in lora/NAME/report.json, and summarised in cube.yaml with the base model's fingerprint, the
    memory ids and versions, the hyperparameters and the sha256 of every file.

    The folder is a standard peft adapter (PeftModel.from_pretrained loads it). `memos chat --lora NAME`
    uses it, and refuses it for another model or if a file was changed. Ctrl-C stops cleanly: the cube
    is written only after training and measuring, in one short transaction.

    Examples:
      memos distill notes --name facts --tag fact
      memos distill notes --name team --query "who is on the team" -k 20 --epochs 8
      memos distill notes --drop facts
    """
    from memos_cli.config import actor
    from memos_cli.cube.bundle import Cube
    from memos_cli.errors import UsageError

    opened = Cube.open(cube)
    who = actor(as_)
    if drop is not None:
        if name or ids or query or tag or all_ or hot:
            raise UsageError("--drop takes only the adapter's name")
        from memos_cli.engine.parametric.distill import drop_adapter

        entry = drop_adapter(opened, drop, actor=who)
        if json_:
            emit_json({"dropped": drop, "memories": entry.get("memories", [])})
        say(f"dropped adapter lora/{drop} ({plural(len(entry.get('memories', [])), 'memory')})")
        return
    if not name:
        raise UsageError("name the adapter with --name (or remove one with --drop NAME)")

    from memos_cli.engine.select import Selection

    selection = Selection(ids=list(ids or []), query=query, k=k, tags=list(tag or []), all=all_, hot=hot)
    run_distill(
        opened,
        selection,
        name=name,
        model=model,
        actor=who,
        json_=json_,
        rank=rank,
        alpha=alpha,
        target_modules=target_modules,
        layers=layers,
        steps=steps,
        epochs=epochs,
        lr=lr,
        seed=seed,
        replay=replay,
        max_minutes=max_minutes,
        max_probes=max_probes,
        precision=precision,
    )


def run_distill(
    opened: object,
    selection: object,
    *,
    name: str,
    model: str | None,
    actor: str | None,
    json_: bool,
    rank: int = 8,
    alpha: float = 16,
    target_modules: str = "all-linear",
    layers: str = "all",
    steps: int | None = None,
    epochs: float | None = None,
    lr: float = 2e-3,
    seed: int = 0,
    replay: Path | None = None,
    max_minutes: float | None = 30.0,
    max_probes: int | None = None,
    precision: str = "auto",
) -> None:
    """Train, measure and report: shared by `memos distill` and `memos promote --to parametric`."""
    from memos_cli.config import model_spec
    from memos_cli.engine.parametric.distill import distill as engine_distill

    with stage_progress() as bar:
        report = engine_distill(
            opened,  # type: ignore[arg-type]
            selection,  # type: ignore[arg-type]
            name=name,
            model=model_spec(model),
            rank=rank,
            alpha=alpha,
            target_modules=target_modules,
            layers=layers,
            steps=steps,
            epochs=epochs,
            lr=lr,
            seed=seed,
            replay_path=replay,
            max_minutes=max_minutes,
            max_probes=max_probes,
            precision=precision,
            actor=actor,
            progress=bar,
        )
    if json_:
        emit_json(report.to_dict())
    m = report.metrics()
    say(
        f"distilled {plural(len(report.memories), 'memory')} into [bold]{report.path}[/] "
        f"({report.steps} steps, {report.train_seconds:.0f}s training, {report.adapter_bytes / 1e6:.1f} MB)"
    )
    if report.trace:
        last = report.trace[-1]
        say(
            f"  training stopped: {report.stopped} "
            f"(recall of training questions {last['recall']:.0%} at step {last['step']})"
        )
    else:
        say(f"  training stopped: {report.stopped}")
    say(
        f"  closed-book recall  {m['recall_before']:.0%} -> {m['recall_after']:.0%}   "
        f"answer loss {m['answer_loss_before']:.2f} -> {m['answer_loss_after']:.2f}"
    )
    say(
        f"  held-out text loss  {m['heldout_loss_before']:.3f} -> {m['heldout_loss_after']:.3f} "
        f"({forgetting_label(m['forgetting_pct'])})"
    )
    missed = [a for a in report.recall_after.answers if not a["hit"]]
    if missed:
        say(f"  held-out questions not recalled: {len(missed)} of {len(report.recall_after.answers)}")
    for answer in missed[:5]:
        expected = answer["expected"]
        say(f"  [yellow]not recalled[/] {answer['question']!r} (expected {expected!r}): {answer['answer'][:80]!r}")
    if len(missed) > 5:
        say(f"  ... and {len(missed) - 5} more (see --json or {report.path}/report.json)")


def forgetting_label(change_pct: float) -> str:
    """The held-out loss change in words: a loss that went up is forgetting; one that went down is not."""
    if change_pct > 0:
        return f"{change_pct:+.1f}%: forgetting"
    return f"{change_pct:+.1f}%: no forgetting"
