"""All three kinds of memory in one answer: a KV snapshot built with LoRA adapters applied
(`promote --to activation --lora A`), injected by `chat --kv N --lora A` token-identically to a re-prefill,
and refused with any other combination of adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memos_cli.cube.bundle import Cube
from memos_cli.engine.activation.promote import promote_to_activation, refresh
from memos_cli.engine.activation.snapshots import read_snapshot_header
from memos_cli.engine.chat import ChatOptions, ChatSession
from memos_cli.engine.integrity import verify
from memos_cli.engine.parametric.distill import distill
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.select import Selection
from memos_cli.errors import IncompatibleModel

FACTS = [
    {"text": "Ana's cat is called Miso.", "speaker": "Ana", "tags": ["core"]},
    {"text": "The access code for the boathouse is 4471.", "tags": ["core"]},
    {"text": "I'm allergic to hazelnuts.", "speaker": "Priya"},
]


def make(tmp_path: Path, model: str | object, adapters: tuple[str, ...] = ("facts",), lr: float = 1e-2) -> Cube:
    cube = Cube.init(tmp_path / "c", owner="tester")
    ingest(cube, [Source("f.jsonl", "".join(json.dumps(f) + "\n" for f in FACTS).encode())])
    for i, name in enumerate(adapters):
        distill(Cube.open(cube.path), Selection(all=True), name=name, model=model, steps=2, lr=lr, seed=i)
    return Cube.open(cube.path)


def answers(cube: Cube, model: str | None, loras: list[str], question: str = "What is the code?") -> tuple:
    base = {"model": model, "greedy": True, "max_new_tokens": 12, "remember": False, "retrieval": False}
    kv = ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", loras=loras, **base)).ask(question)
    again = ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", loras=loras, recompute=True, **base))
    return kv, again.ask(question)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_snapshot_with_adapters_is_token_identical_to_recompute(
    tmp_path: Path, tiny_dirs: dict[str, Path], family: str
) -> None:
    model = str(tiny_dirs[family])
    cube = make(tmp_path, model)
    report = promote_to_activation(cube, Selection(all=True), name="core", model=model, loras=["facts"])
    cube = Cube.open(cube.path)
    weights = cube.manifest.lora["facts"].weights_sha256
    entry = cube.manifest.kv["core"].to_dict()
    assert report.adapters == entry["adapters"] == {"facts": weights}
    assert entry["base_model_fingerprint"] == cube.manifest.model.fingerprint != entry["model_fingerprint"]
    header = read_snapshot_header(cube.path / entry["file"])
    assert json.loads(header["adapters"]) == {"facts": weights}
    assert header["model_fingerprint"] == entry["model_fingerprint"]
    kv, recomputed = answers(cube, model, ["facts"])
    assert kv.mode == "kv" and recomputed.mode == "recompute"
    assert kv.answer == recomputed.answer  # greedy, float32: the same tokens
    assert verify(cube.path).ok


def test_a_snapshot_is_refused_with_any_other_adapters(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    model = str(tiny_dirs["llama"])
    cube = make(tmp_path, model, adapters=("facts", "other"))
    promote_to_activation(cube, Selection(all=True), name="core", model=model, loras=["facts"])
    base = {"model": model, "remember": False, "retrieval": False}
    for loras in ([], ["other"], ["facts", "other"]):
        with pytest.raises(IncompatibleModel, match="base model"):
            ChatSession([Cube.open(cube.path)], ChatOptions(kv="core", loras=loras, **base))
    promote_to_activation(Cube.open(cube.path), Selection(all=True), name="bare", model=model)
    with pytest.raises(IncompatibleModel):  # and a bare model's snapshot is refused with adapters
        ChatSession([Cube.open(cube.path)], ChatOptions(kv="bare", loras=["facts"], **base))
    # refresh rebuilds it with the same adapters
    refreshed = refresh(Cube.open(cube.path), "core", model=model)
    assert refreshed.adapters == Cube.open(cube.path).manifest.kv["core"].adapters
    assert list(refreshed.adapters) == ["facts"]


def main_(*args: str) -> tuple[int, str, str]:
    """main() (the real error handling), stdout and stderr apart."""
    import contextlib
    import io

    from memos_cli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_promote_with_lora_then_chat(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    from memos_cli.cli.app import app

    model = str(tiny_dirs["qwen2"])
    cube = make(tmp_path, model)
    args = ["promote", str(cube.path), "--to", "activation", "--name", "core", "--all", "--lora", "facts"]
    result = CliRunner().invoke(app, [*args, "--model", model, "--json"])
    assert result.exit_code == 0, result.output
    weights = cube.manifest.lora["facts"].weights_sha256
    assert json.loads(result.stdout)["adapters"] == {"facts": weights}
    chat = ["chat", str(cube.path), "--kv", "core", "--model", model, "--no-retrieval", "--no-remember"]
    code, out, err = main_(*chat, "--lora", "facts", "-m", "hello", "--json")
    assert code == 0, err
    assert json.loads(out)["kv"] == "core"
    code, out, err = main_(*chat, "-m", "hello")
    assert code == 1 and "base model + facts" in err and "--lora facts" in err
    code, _, err = main_("promote", str(cube.path), "--to", "archive", "--all", "--lora", "facts")
    assert code == 2 and "--lora" in err


def test_smollm2_snapshot_with_adapter_is_token_identical(tmp_path: Path, smollm2: object, memos_threads: None) -> None:
    cube = make(tmp_path, smollm2, lr=1e-4)  # a gentle update: the model still answers, with other weights
    promote_to_activation(cube, Selection(tags=["core"]), name="core", loras=["facts"])
    kv, recomputed = answers(Cube.open(cube.path), None, ["facts"], "What is Ana's cat called?")
    assert kv.mode == "kv" and kv.answer == recomputed.answer and kv.new_tokens > 0
