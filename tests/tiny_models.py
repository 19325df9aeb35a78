"""Tiny randomly initialised causal LMs (2 layers, hidden 64) of four families, built from a config.

They stand in for real models in the tests of KV snapshots, adapters and chat across architectures; the
``tiny_dirs`` fixture in conftest.py builds each family once per session.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
