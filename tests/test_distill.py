"""Parametric memory: distill memories into a LoRA adapter in the cube, load it back, refuse bad ones.

A tiny random 2-layer llama (``tiny_models.build_tiny_model``) stands in for the real model: these tests
check the mechanics (data, training, files, manifest, integrity, transactions), not what is learned;
``bench/distill_bench.py`` measures recall and forgetting on SmolLM2.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import snapshot_files
from memos_cli.cube.bundle import Cube
from memos_cli.cube.entries import ModelRef
from memos_cli.cube.io import sha256_file
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.parametric import adapters as lora_adapters
from memos_cli.engine.parametric import distill as dist
from memos_cli.engine.parametric import evaluation as lora_eval
from memos_cli.engine.parametric import examples as lora_examples
from memos_cli.engine.parametric import training as lora_training
from memos_cli.engine.select import Selection
from memos_cli.errors import IncompatibleModel, IntegrityError, InvalidCube, UsageError
from memos_cli.models.lm import LanguageModel, load_lm
from memos_cli.models.prompt import render_prompt
from tiny_models import build_tiny_model

FACTS = [
    {
        "text": "Alice lives in Paris.",
        "key": "alice home",
        "metadata": {"question": "Where does Alice live?", "answer": "Paris"},
    },
    {"text": "The cat is called Miso.", "speaker": "bob", "time": "2024-05-01"},
    {"text": "Bob visits Tokyo every spring.", "tags": ["travel"]},
]
FAST = {"steps": 4, "lr": 1e-2, "actor": "tester"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("distill-models") / "llama", "llama")


@pytest.fixture
def lm(tiny_dir: Path) -> LanguageModel:
    return load_lm(str(tiny_dir))


@pytest.fixture
def cube(make_cube) -> Cube:  # type: ignore[no-untyped-def]
    return make_cube(FACTS)


def weights(model) -> dict:  # type: ignore[no-untyped-def]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_probes_and_examples_come_from_the_memory_fields(lm: LanguageModel) -> None:
    meta = MemoryRecord(
        "m-1", 2, "Alice lives in Paris.", key="alice.home", metadata={"question": "Where?", "answer": "Paris"}
    )
    probes = lora_examples.probes_for(meta)  # measured on: the memory's own question, then the held-out family
    assert [(p.source, p.question, p.answer) for p in probes] == [
        ("metadata", "Where?", "Paris"),
        ("heldout", "I can't recall who lives in Paris. Can you tell me?", "Alice"),
        ("heldout", "Remind me where Alice lives, please.", "Paris"),
    ]
    assert probes[0].ref == "m-1@2"
    data = lora_examples.training_set(lm, [meta])
    trained = {lm.tokenizer.decode(e.ids) for e in data.examples}
    assert not any("Remind me where" in text for text in trained)  # held-out forms never train
    assert any("Where does Alice live?" in text for text in trained) and data.checks

    example = lora_examples.qa_example(lm, "Where does Alice live?", "Paris")
    prompt = render_prompt(lm, "Where does Alice live?")
    # the prompt is exactly what closed-book chat renders, with no loss on it; the answer turn ends the turn
    assert example.ids[: len(prompt.token_ids)] == prompt.token_ids
    assert set(example.labels[: len(prompt.token_ids)]) == {-100}
    answer = lm.tokenizer.decode(example.ids[len(prompt.token_ids) :])
    assert answer == "Paris<|im_end|>"
    assert lora_eval.answer_matches("Paris", "She lives in paris!") and not lora_eval.answer_matches(
        "Paris", "Parisian"
    )
    assert lora_eval.answer_matches("The Glass Orchard", "Glass Orchard.")
    assert not lora_eval.answer_matches("The Glass Orchard", "Glass")


def test_a_long_memory_trains_as_windows_of_its_statement(lm: LanguageModel) -> None:
    long = MemoryRecord("m-2", 1, "Alice lives in Paris and walks along the river every morning. " * 60)
    data = lora_examples.training_set(lm, [long])
    statements = [e for e in data.examples if e.kind == "statement"]
    assert len(statements) > 1 and all(len(e.ids) <= lora_examples.STATEMENT_TOKENS for e in statements)
    assert all(e.ref == "m-2@1" for e in statements)


def test_distill_writes_a_peft_folder_manifest_entry_and_report(cube: Cube, lm: LanguageModel, tiny_dir: Path) -> None:
    before = weights(lm.model)
    seen: list[tuple[str, int, int]] = []
    report = dist.distill(
        cube, Selection(all=True), name="facts", model=lm, progress=lambda s, d, t, loss: seen.append((s, d, t)), **FAST
    )
    # the shared model is never modified
    assert all((before[k] == v).all() for k, v in lm.model.state_dict().items())
    n = len([p for r in cube.read_state().current.values() for p in lora_examples.probes_for(r)])
    assert ("training", 4, 4) in seen and ("recall before", n, n) in seen and ("recall after", n, n) in seen

    cube = Cube.open(cube.path)
    entry = cube.manifest.lora["facts"].to_dict()
    folder = cube.path / "lora" / "facts"
    assert entry["path"] == "lora/facts"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "report.json",
    ]
    assert entry["files"] == {p.name: sha256_file(p) for p in folder.iterdir()}
    assert entry["base_model_fingerprint"] == lm.fingerprint
    state = cube.read_state()
    assert sorted(entry["memories"]) == sorted(r.ref for r in state.current.values())
    assert entry["hyperparameters"]["steps"] == 4 and entry["hyperparameters"]["rank"] == 8
    assert set(entry["metrics"]) >= {"recall_before", "recall_after", "heldout_loss_before", "forgetting_pct"}
    assert cube.manifest.model == ModelRef(lm.name, lm.fingerprint)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == lm.name  # no absolute path in the bundle
    stored = json.loads((folder / "report.json").read_text())
    probes = [p for r in state.current.values() for p in lora_examples.probes_for(r)]
    assert stored["metrics"] == report.metrics() and len(stored["recall_after"]["answers"]) == len(probes)
    assert report.examples["statement"] == 4  # three memories, and bob's turn quoted
    assert report.examples["wh"] >= 2 and report.examples["cloze"] >= 3 and report.stopped == "steps given"
    assert cube.read_audit()[-1]["op"] == "distill"

    # plain peft loads it, and the trained update is not zero
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ids = torch.tensor([lm.encode("Alice lives in Paris.")])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, folder)(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)


def test_training_lowers_the_loss(cube: Cube, lm: LanguageModel) -> None:
    examples, _ = lora_examples.build_examples(lm, list(cube.read_state().current.values()))
    model, final = lora_training.train_adapter(
        lm, examples, [], rank=8, alpha=16, target_modules="attention", steps=12, lr=2e-2, seed=0
    )
    assert lora_eval.mean_loss(model, examples, 0) < lora_eval.mean_loss(lm.model, examples, 0)
    # "attention" resolves to the linear layers inside the attention blocks only
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_modules() if ".lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_training_runs_until_the_training_questions_are_recalled(
    cube: Cube, lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int, int]] = []
    # a random tiny model never learns: training stops on a plateau (or its cap), and says so
    report = dist.distill(
        cube, Selection(all=True), name="facts", model=lm, rank=2, progress=lambda s, d, t, x: seen.append((s, d, t))
    )
    assert report.stopped in ("plateau", "step limit") and report.steps >= lora_training.MIN_STEPS
    # a plateau is never called within the first pass over the data
    data = lora_examples.training_set(lm, list(cube.read_state().current.values()))
    replay = lora_examples.replay_examples(lm)
    assert report.steps >= lora_training.steps_for(1.0, data.examples, replay, lora_training.REPLAY_RATIO)
    assert report.trace and all(t["step"] % lora_training.CHECK_EVERY == 0 for t in report.trace)
    assert any(stage == "recall of training questions" for stage, _, _ in seen)
    assert report.hyperparameters["until"] == "learned" and report.metrics()["stopped"] == report.stopped
    # once the model answers every training question, training stops at the first check
    monkeypatch.setattr(lora_training, "greedy_recalled", lambda model, examples, pad, **_: [True] * len(examples))
    learned = dist.distill(cube, Selection(all=True), name="facts", model=lm, rank=2)
    assert learned.stopped == "learned" and learned.steps == lora_training.MIN_STEPS
    timed = dist.distill(cube, Selection(all=True), name="facts", model=lm, rank=2, max_minutes=1e-6)
    assert timed.stopped == "time limit" and timed.steps == 1
    fixed = dist.distill(cube, Selection(all=True), name="once", model=lm, rank=2, epochs=1.0)
    assert fixed.stopped == "steps given" and not fixed.trace
    with pytest.raises(UsageError, match="'max_minutes' and 'max_probes' must be positive"):
        dist.distill(cube, Selection(all=True), name="x", model=lm, max_minutes=0)


def test_greedy_recalled_agrees_with_generation(lm: LanguageModel) -> None:
    from memos_cli.models.generation import generate

    stop = lm.tokenizer.eos_token_id
    for question in ["Where does Alice live?", "Who is Miso?"]:
        said = generate(lm, question, mode="none", max_new_tokens=4).token_ids
        prompt = render_prompt(lm, question).token_ids
        right = lora_examples.Example(prompt + said + [stop], [-100] * len(prompt) + said + [stop], "qa")
        other = [(said[0] + 1) % lm.vocab_size, *said[1:]]
        wrong = lora_examples.Example(prompt + other + [stop], [-100] * len(prompt) + other + [stop], "qa")
        assert lora_eval.greedy_recalled(lm.model, [right, wrong], 0) == [True, False]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_batched_greedy_answers_are_the_answers_each_question_gets_alone(
    tiny_dirs: dict[str, Path], family: str
) -> None:
    from memos_cli.models.generation import generate, greedy_batch

    lm = load_lm(str(tiny_dirs[family]))
    questions = [
        "Where does Alice live?",
        "Who is Miso?",
        "What is the access code for the boathouse on the far side of the lake?",
        "Hi",
        "When is the Zelvora project launching, and who leads it?",
    ]
    budgets = [6, 3, 9, 1, 7]  # prompts of different lengths (left padding) and answers of different lengths
    alone = [generate(lm, q, mode="none", max_new_tokens=b).answer for q, b in zip(questions, budgets, strict=True)]
    seen: list[int] = []
    assert greedy_batch(lm, questions, budgets, done=seen.append) == alone
    assert seen == [len(questions)]


def test_adapters_for_another_model_or_with_changed_bytes_are_refused(
    cube: Cube, lm: LanguageModel, tmp_path: Path
) -> None:
    dist.distill(cube, Selection(all=True), name="facts", model=lm, **FAST)
    other = load_lm(str(build_tiny_model(tmp_path / "other", "llama", seed=1)))
    with pytest.raises(IncompatibleModel, match="adapter facts"):
        lora_adapters.load_adapters(other, cube, ["facts"])
    with pytest.raises(IncompatibleModel):  # nor can another model add adapters to this cube
        dist.distill(cube, Selection(all=True), name="more", model=other, **FAST)

    weights_file = cube.path / "lora" / "facts" / "adapter_model.safetensors"
    original = weights_file.read_bytes()
    weights_file.write_bytes(original[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        lora_adapters.load_adapters(lm, cube, ["facts"])
    weights_file.write_bytes(original)
    (weights_file.parent / "adapter_model.bin").write_bytes(b"not a pickle you want to load")
    with pytest.raises(InvalidCube, match="does not list: adapter_model.bin"):
        lora_adapters.load_adapters(lm, cube, ["facts"])
    (weights_file.parent / "adapter_model.bin").unlink()
    assert lora_adapters.load_adapters(lm, cube, ["facts"]).fingerprint.startswith(lm.fingerprint + "+lora-")
    with pytest.raises(dist.AdapterNotFound):
        lora_adapters.load_adapters(lm, cube, ["nope"])


def test_interrupted_training_leaves_the_cube_byte_identical(cube: Cube, lm: LanguageModel) -> None:
    dist.distill(cube, Selection(all=True), name="facts", model=lm, **FAST)
    before = snapshot_files(cube.path)

    def interrupt(stage: str, done: int, total: int, loss: float | None) -> None:
        if stage == "training" and done == 2:
            raise KeyboardInterrupt

    for name in ("facts", "new"):  # replacing an adapter, and adding one
        with pytest.raises(KeyboardInterrupt):
            dist.distill(cube, Selection(all=True), name=name, model=lm, progress=interrupt, **FAST)
        assert snapshot_files(cube.path) == before
    assert not (cube.path / ".memos" / "journal.json").exists()


def test_drop_removes_the_adapter(cube: Cube, lm: LanguageModel) -> None:
    dist.distill(cube, Selection(all=True), name="facts", model=lm, **FAST)
    dist.drop_adapter(cube, "facts", actor="tester")
    cube = Cube.open(cube.path)
    assert "facts" not in cube.manifest.lora
    assert not (cube.path / "lora" / "facts").exists()
    assert cube.read_audit()[-1]["summary"] == "dropped adapter lora/facts"
    with pytest.raises(dist.AdapterNotFound):
        dist.drop_adapter(cube, "facts", actor="tester")


def test_several_adapters_combine_and_staleness_is_reported(cube: Cube, lm: LanguageModel) -> None:
    import torch

    dist.distill(cube, Selection(tags=["travel"]), name="travel", model=lm, **FAST)
    dist.distill(cube, Selection(all=True), name="all", model=lm, target_modules="attention", seed=1, **FAST)
    cube = Cube.open(cube.path)
    name = "model.layers.0.self_attn.q_proj.weight"
    base = lm.model.state_dict()[name].clone()
    one = lora_adapters.load_adapters(lm, cube, ["travel"]).model.state_dict()[name]
    two = lora_adapters.load_adapters(lm, cube, ["all"]).model.state_dict()[name]
    both = lora_adapters.load_adapters(lm, cube, ["travel", "all"])
    assert torch.allclose(both.model.state_dict()[name] - base, (one - base) + (two - base), atol=1e-6)
    assert not torch.equal(one, base) and not torch.equal(two, base)
    assert torch.equal(lm.model.state_dict()[name], base)  # the shared model stays bare
    assert both.fingerprint not in (lm.fingerprint, lora_adapters.load_adapters(lm, cube, ["all"]).fingerprint)

    assert lora_adapters.stale_adapters(cube) == {}
    from memos_cli.engine.ops import forget

    travel = cube.manifest.lora["travel"].memories[0]
    forget(cube, [travel.split("@")[0]], actor="tester")
    assert lora_adapters.stale_adapters(Cube.open(cube.path)) == {"travel": [travel], "all": [travel]}


def lora_layers(model) -> set[int]:  # type: ignore[no-untyped-def]
    """The decoder layers that hold LoRA weights in a peft model."""
    import re

    return {int(m[1]) for k, _ in model.named_parameters() if "lora_A" in k and (m := re.search(r"\.(\d+)\.", k))}


def test_training_adapts_all_layers_or_the_upper_half_or_a_range(cube: Cube, lm: LanguageModel, tmp_path: Path) -> None:
    from peft import PeftModel

    assert lora_training.layer_indexes(30, "upper") == list(range(15, 30))
    assert lora_training.layer_indexes(30, "all") is None
    assert lora_training.layer_indexes(30, "3-5") == [3, 4, 5]
    for bad in ("5-3", "0-30", "top", "-1-2", ""):
        with pytest.raises(UsageError, match="layers"):
            lora_training.layer_indexes(30, bad)
    examples = lora_examples.training_set(lm, [MemoryRecord(id="a", version=1, text="Alice lives in Paris.")])
    for layers, expected in (("upper", {1}), ("all", {0, 1}), ("0-0", {0})):
        for targets in ("all-linear", "attention"):
            model, _fit = lora_training.train_adapter(
                lm,
                examples.examples,
                [],
                rank=2,
                alpha=4,
                target_modules=targets,
                steps=1,
                lr=1e-3,
                seed=0,
                layers=layers,
            )
            assert lora_layers(model) == expected, (layers, targets)
            kinds = {k.split(".lora_A")[0].rsplit(".", 1)[1] for k, _ in model.named_parameters() if "lora_A" in k}
            assert kinds == (
                {"q_proj", "k_proj", "v_proj", "o_proj"}
                | ({"gate_proj", "up_proj", "down_proj"} if targets == "all-linear" else set())
            ), (layers, targets)
    # as distill saves it, loaded back as peft reads it
    assert dist.distill(cube, Selection(all=True), name="every", model=lm, **FAST).hyperparameters["layers"] == "all"
    report = dist.distill(cube, Selection(all=True), name="up", model=lm, layers="upper", **FAST)
    assert report.hyperparameters["layers"] == "upper"
    folder = Cube.open(cube.path).path / "lora" / "up"
    loaded = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(folder))
    assert lora_layers(loaded) == {1}


def test_an_upper_layer_adapter_fuses_with_an_all_layer_one(cube: Cube, lm: LanguageModel) -> None:
    import torch

    dist.distill(cube, Selection(tags=["travel"]), name="up", model=lm, layers="upper", **FAST)
    dist.distill(cube, Selection(all=True), name="every", model=lm, seed=1, **FAST)
    cube = Cube.open(cube.path)
    folders = [cube.path / "lora" / "up", cube.path / "lora" / "every"]
    alone = {n: lora_adapters.load_adapters(lm, cube, [n]).model.state_dict() for n in ("up", "every")}
    for order in (folders, folders[::-1]):  # peft builds the combination from the first parent's config
        fused = lora_adapters.combine_adapters(lm, order).merge_and_unload().state_dict()
        for layer in (0, 1):
            name = f"model.layers.{layer}.mlp.down_proj.weight"
            base = lm.model.state_dict()[name]
            up, every = alone["up"][name] - base, alone["every"][name] - base
            assert bool(up.any()) == (layer == 1) and bool(every.any())
            assert torch.allclose(fused[name] - base, up + every, atol=1e-6), (order, layer)


def test_bad_options_fail_before_any_work(cube: Cube, lm: LanguageModel) -> None:
    with pytest.raises(UsageError, match="layers"):
        dist.distill(cube, Selection(all=True), name="ok", model=lm, actor="tester", layers="0-9")
    for kwargs in ({"name": "../x"}, {"name": "ok", "steps": 3, "epochs": 1.0}, {"name": "ok", "rank": 0}):
        with pytest.raises(UsageError):
            dist.distill(cube, Selection(all=True), model=lm, actor="tester", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="choose memories"):
        dist.distill(cube, Selection(), name="ok", model=lm, actor="tester")


def test_cli_distill_and_drop(cube: Cube, tiny_dir: Path) -> None:
    import typer

    from memos_cli.cli.commands.distill import distill as command

    app = typer.Typer()
    app.command()(command)
    runner = CliRunner()
    result = runner.invoke(
        app, [str(cube.path), "--name", "facts", "--all", "--steps", "3", "--model", str(tiny_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "facts" and data["metrics"]["steps"] == 3
    assert "closed-book recall" in result.stderr
    assert "--target-modules" in runner.invoke(app, ["--help"]).stdout
    result = runner.invoke(app, [str(cube.path), "--drop", "facts"])
    assert result.exit_code == 0, result.output
    assert "facts" not in Cube.open(cube.path).manifest.lora


def test_cli_refuses_an_unknown_precision(cube: Cube, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from memos_cli.cli.app import main

    code = main(["distill", str(cube.path), "--name", "x", "--all", "--precision", "fp8", "--model", str(tiny_dir)])
    assert code == 2 and "--precision" in capsys.readouterr().err
    assert "x" not in Cube.open(cube.path).manifest.lora


def test_replay_loss_is_the_divergence_from_the_base_model(lm: LanguageModel) -> None:
    """Replay pulls towards the base model's own predictions: zero while the adapter changes nothing (LoRA's
    B starts at zero), positive once it does, and cross-entropy on the memory examples alongside."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(lm.model), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    pad = lora_examples.pad_id(lm)
    replay = lora_examples.replay_examples(lm, "General prose about rivers and bread.\n\nAnother paragraph here.")
    base = lora_training._BaseDistributions(model, pad)
    assert float(lora_training._batch_loss(model, replay, pad, base).detach()) == pytest.approx(0.0, abs=1e-4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    assert float(lora_training._batch_loss(model, replay, pad, base).detach()) > 1e-3
    memory = [lora_examples.qa_example(lm, "Where does Alice live?", "Paris")]
    mixed = float(lora_training._batch_loss(model, memory + replay, pad, base).detach())
    alone = float(lora_training._batch_loss(model, memory, pad, base).detach())
    assert mixed < alone  # the replay rows' small divergences are averaged with the question's loss


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_a_shared_prompt_prefix_gives_the_same_losses_and_gradients(tiny_dirs: dict[str, Path], family: str) -> None:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    lm = load_lm(str(tiny_dirs[family]))
    records = [
        MemoryRecord("a", 1, "The access code for the boathouse is 4471."),
        MemoryRecord("b", 1, "I'm allergic to hazelnuts.", speaker="Priya"),
    ]
    batch = lora_examples.training_set(lm, records).examples[:12]
    pad = lora_examples.pad_id(lm)
    groups = lora_eval._prefix_groups(batch)
    if lm.has_chat_template:
        assert any(lora_eval.shared_prefix([batch[i] for i in rows]) for rows in groups)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(lm.model), config)
    results = []
    for share in (True, False):
        model.zero_grad()
        if share:
            losses = lora_eval.token_losses(model, batch, pad)
        else:
            logits, target, keep = lora_eval.scored(model, batch, pad, share=False)
            nll = F.cross_entropy(logits.float(), target, reduction="none")
            rows = keep.nonzero()[:, 0]
            losses = torch.zeros(len(batch)).index_add(0, rows, nll) / keep.sum(dim=1).clamp(min=1)
        losses.mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((losses.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-4)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_one_pass_over_a_mixed_batch_gives_the_losses_and_gradients_of_its_parts(
    tiny_dirs: dict[str, Path], family: str
) -> None:
    """A training step scores memory rows (in several prompt groups) and replay rows in one padded pass:
    the same loss and gradients as cross-entropy over the groups apart plus the replay's divergence."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    lm = load_lm(str(tiny_dirs[family]))
    records = [
        MemoryRecord("a", 1, "The access code for the boathouse is 4471."),
        MemoryRecord("b", 1, "I'm allergic to hazelnuts.", speaker="Priya"),
    ]
    memory = lora_examples.training_set(lm, records).examples[:6]
    replay = lora_examples.replay_examples(lm, "Rivers carry water to the sea.\n\nBread is baked from flour.")
    batch = [memory[0], replay[0], *memory[1:4], replay[1], *memory[4:]]
    pad = lora_examples.pad_id(lm)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(lm.model), config)
    base = lora_training._BaseDistributions(model, pad, lm.model)
    results = []
    for one_pass in (True, False):
        model.zero_grad()
        if one_pass:
            loss = lora_training._batch_loss(model, batch, pad, base)
        else:
            parts = []
            for example in batch:
                logits, target, _ = lora_eval.scored(model, [example], pad)
                if example.kind == "replay":
                    log_probs = torch.log_softmax(logits.float(), dim=-1)
                    kl = F.kl_div(log_probs, base(example).float(), log_target=True, reduction="none")
                    parts.append(kl.sum(dim=-1).mean())
                else:
                    parts.append(F.cross_entropy(logits.float(), target))
            loss = torch.stack(parts).mean()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-4)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4, rtol=1e-3)


def test_bfloat16_training_uses_written_out_attention_on_its_own_copy(lm: LanguageModel) -> None:
    before = lm.model.config._attn_implementation
    copy_ = copy.deepcopy(lm.model)
    lora_training._eager_attention(copy_)
    assert copy_.config._attn_implementation == "eager"
    assert lm.model.config._attn_implementation == before


def test_bfloat16_training_saves_and_measures_a_float32_adapter(cube: Cube, lm: LanguageModel) -> None:
    import torch

    assert lora_training.resolve_precision("float32") == "float32"
    assert lora_training.resolve_precision("auto") in ("float32", "bfloat16")
    with pytest.raises(UsageError, match="precision"):
        lora_training.resolve_precision("fp8")
    report = dist.distill(cube, Selection(all=True), name="bf", model=lm, precision="bfloat16", **FAST)
    assert report.hyperparameters["precision"] == "bfloat16"
    loaded = lora_adapters.load_adapters(lm, Cube.open(cube.path), ["bf"])
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    # the report measured the float32 model that chat loads: the same answers again
    again = lora_eval.measure_recall(
        loaded, [lora_examples.Probe(a["ref"], a["question"], a["expected"], "x") for a in report.recall_after.answers]
    )
    assert [a["answer"] for a in again.answers] == [a["answer"] for a in report.recall_after.answers]
    # and the trained update differs little from float32 training's (same data, seed and steps)
    exact = dist.distill(cube, Selection(all=True), name="fp", model=lm, precision="float32", **FAST)
    assert abs(exact.final_loss - report.final_loss) < 0.1 * max(exact.final_loss, 1e-3)


def test_refocus_trains_the_missed_memories_again_with_replay_in_the_same_ratio() -> None:
    import random

    memory = [lora_examples.Example([i], [i], "qa", ref=f"m{i % 4}") for i in range(8)]
    replay = [lora_examples.Example([100 + i], [100 + i], "replay") for i in range(6)]
    batches = lora_training._Batches(memory, replay, 0.5, random.Random(0))
    first = batches.next()  # one epoch in the pool: 8 memory examples and 4 replay
    assert len(first) == lora_examples.BATCH_SIZE
    before, m1 = len(batches.pool), sum(e.ref == "m1" for e in batches.pool)
    batches.refocus({"m1"})  # memory m1's two examples again, and one replay example with them
    assert len(batches.pool) == before + 3
    assert sum(e.ref == "m1" for e in batches.pool) == m1 + 2
    batches.refocus(set())
    assert len(batches.pool) == before + 3


def test_batched_greedy_answers_match_smollm2_alone(smollm2: LanguageModel) -> None:
    """The real model ends its answers with its stop token: each batched answer stops where its own does."""
    from memos_cli.models.generation import generate, greedy_batch

    questions = [
        "What is the capital of France?",
        "Say hello.",
        "Who wrote Hamlet? Answer in two words.",
        "What is 2 + 2?",
        "Name a colour.",
        "Where does the sun rise?",
        "What is the access code for the boathouse?",
        "Give me one word for happy.",
        "Which planet is red?",
    ]
    budgets = [12, 8, 12, 6, 16, 10, 12, 6, 9]
    alone = [
        generate(smollm2, q, mode="none", max_new_tokens=b).answer for q, b in zip(questions, budgets, strict=True)
    ]
    assert greedy_batch(smollm2, questions, budgets) == alone
