"""memos chat: talk to a local model that uses and keeps the cube's memories."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from memos_cli.cli.options import AsOpt, JsonOpt, ModelOpt
from memos_cli.cli.output import emit_json, say


def chat(
    cubes: Annotated[list[str], typer.Argument(help="One or more cubes; turns are remembered in the first.")],
    message: Annotated[Optional[str], typer.Option("-m", "--message", help="One-shot: answer this and exit.")] = None,
    kv: Annotated[Optional[str], typer.Option("--kv", help="Inject this KV snapshot as the prompt's prefix.")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", help="Apply this adapter (repeatable).")] = None,
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Prefill the snapshot's text instead of injecting it.")
    ] = False,
    no_retrieval: Annotated[
        bool, typer.Option("--no-retrieval", help="Answer from snapshot/adapter/model alone.")
    ] = False,
    k: Annotated[int, typer.Option("-k", help="Memories retrieved per turn.")] = 5,
    no_remember: Annotated[bool, typer.Option("--no-remember", help="Do not store the conversation.")] = False,
    no_remember_answers: Annotated[
        bool, typer.Option("--no-remember-answers", help="Store the user's turns only.")
    ] = False,
    greedy: Annotated[bool, typer.Option("--greedy", help="Deterministic decoding (reproducible runs).")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest answer, in tokens.")] = 128,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampling seed.")] = None,
    show_memories: Annotated[bool, typer.Option("--show-memories", help="Print the memories each turn used.")] = False,
    model: ModelOpt = None,
    as_: AsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Chat with a local model (SmolLM2-135M-Instruct by default) that answers with the cubes' memories.

    Each turn retrieves memories from every cube given (hybrid search), renders them with the question
    through the model's chat template, and streams the answer. --kv NAME injects a snapshot made by
    'memos promote' instead of re-reading its memories (the stored snapshot is never modified); --lora
    NAME applies adapters made by 'memos distill'. Your turns (and the answers, unless
    --no-remember-answers) are stored in the first cube as dialogue memories with a session id.

    Interactive: type a message; '/memories' shows what the last answer used; '/quit' or Ctrl-D ends.
    One-shot: -m TEXT, with --json for {"answer", "memories_used", "kv", "ttft_ms", "new_tokens",
    "tokens_per_s"}.

    Examples:
      memos chat notes
      memos chat notes -m "when does the beta open?" --greedy --json
      memos chat notes --kv core --no-retrieval -m "who leads the project?"
    """
    from pathlib import Path

    from memos_cli.config import model_spec
    from memos_cli.cube.bundle import Cube
    from memos_cli.engine.chat import ChatOptions, ChatSession

    opened = [Cube.open(Path(c)) for c in cubes]
    options = ChatOptions(
        kv=kv,
        loras=list(lora or []),
        recompute=recompute,
        retrieval=not no_retrieval,
        k=k,
        remember=not no_remember,
        remember_answers=not no_remember_answers,
        greedy=greedy,
        max_new_tokens=max_new_tokens,
        seed=seed,
        model=model_spec(model),
        actor=as_,
    )
    session = ChatSession(opened, options)
    for warning in session.stale:
        say(f"[yellow]warning[/] {warning}")
    try:
        if message is not None:
            stream = None if json_ else _printer()
            result = session.ask(message, on_token=stream)
            if json_:
                emit_json(result.to_dict())
            else:
                sys.stdout.write("\n")
                if show_memories:
                    _show(result)
            return
        if json_:
            from memos_cli.errors import UsageError

            raise UsageError("--json needs a one-shot message (-m TEXT)")
        _interactive(session, show_memories)
    finally:
        session.close()


def _printer():
    """Stream the answer: ``generate`` hands over each new piece of text as it is decoded."""

    def on_token(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    return on_token


def _show(result) -> None:
    if not result.retrieved and not result.kv:
        say("[dim](no memories used)[/]")
    if result.kv:
        say(f"[dim]snapshot {result.kv} injected ({result.mode})[/]")
    for record in result.retrieved:
        say(f"[dim]- {record.id} {record.text[:100]}[/]")


def _interactive(session, show_memories: bool) -> None:
    try:
        _converse(session, show_memories)
    except KeyboardInterrupt as exc:
        remembered = session.options.remember and session.turns > 0
        if not remembered:
            raise  # nothing was written: "interrupted; the cube is unchanged" (exit 130)
        from memos_cli.errors import after_commit

        # Earlier turns are stored: say so (exit 5) rather than claim the cube is unchanged.
        raise after_commit(f"{session.turns} chat turns remembered", "the turn in progress was not", exc) from exc


def _converse(session, show_memories: bool) -> None:
    say("memos chat: '/memories' shows what the last answer used, '/quit' or Ctrl-D ends.")
    last = None
    while True:
        try:
            line = input("you> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/memories":
            if last is None:
                say("[dim](nothing asked yet)[/]")
            else:
                _show(last)
            continue
        sys.stdout.write("memos> ")
        last = session.ask(text, on_token=_printer())
        sys.stdout.write("\n")
        say(f"[dim]{last.new_tokens} tokens, first after {last.ttft_ms:.0f} ms[/]")
        if show_memories:
            _show(last)
