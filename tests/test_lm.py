"""The language-model registry: default SmolLM2 conversion, local folders of four families, fingerprints.

Tiny randomly initialised models (tests/tiny_models.py) stand in for real ones. The real SmolLM2 is
converted once per session into the session's model cache (about 15-30 s on 2 cores), then loads in well
under a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memos_cli.errors import ModelUnavailable
from memos_cli.models import lm as lm_mod
from memos_cli.models.lm import LanguageModel, load_lm, model_fingerprint
from tiny_models import FAMILIES, TEMPLATES, build_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    smollm2: LanguageModel, model_cache: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert smollm2.name == lm_mod.DEFAULT_LM
    assert smollm2.family == "llama"
    folder = smollm2.path
    assert folder.parent == model_cache
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
