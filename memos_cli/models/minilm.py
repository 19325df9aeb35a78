"""A small, exact BERT-encoder forward for sentence embedders of the all-MiniLM-L6-v2 family.

Why not ``transformers.AutoModel``: importing transformers' BERT costs ~2.5 s on top of torch's ~1.5 s, and a
one-shot ``memos query`` embeds a single sentence. This module reads the same ``config.json``,
``tokenizer.json`` (with the ``tokenizers`` library) and ``model.safetensors`` and runs the same maths: post-LN
BERT with exact (erf) GELU, additive key masking for padded batches, then mean pooling over real tokens and
L2 normalisation. ``tests/test_minilm.py`` holds it to transformers' output within 1e-4 (measured: ~3e-7).

Two backends share one set of weights (numpy arrays; torch views them without copying):

- numpy, for small inputs: no torch import at all (it alone costs ~1.5 s), so a cold one-query process spends
  ~0.3 s of CPU instead of ~6.5 s with transformers, and one sentence is also faster warm (less per-op
  overhead than torch: ~6 ms against ~7.5 ms single-threaded);
- torch, for bulk: its element-wise kernels (GELU, softmax, LayerNorm) use every core, where numpy's run on
  one, so at batch 64 it keeps ingest at least as fast as the transformers path.

Which one runs depends only on the number of texts, never on what the process has imported, so the same
texts always get the same vectors; the two agree to ~1e-6 anyway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.errors import ModelUnavailable

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256-token inputs; longer text is truncated
# Up to this many texts use numpy: one small batch costs well under the ~1.5 s a torch import would.
NUMPY_MAX_TEXTS = 32
# The batching plan: texts are cut, in input order, into chunks of PLAN_CHUNK; each chunk is sorted by token
# count (stably) and cut into batches. Which texts share a batch (so the exact floats of each vector) then
# depends only on a text's chunk, never on the rest of the input: any split at a multiple of PLAN_CHUNK
# (one process, or many Ray workers) gives byte-identical vectors. 512 texts keep padding low (sorting
# within 512 short texts pads nearly as little as a global sort) and are ~2 s of work per chunk.
PLAN_CHUNK = 512

# Abramowitz & Stegun 7.1.26 for erfc, max abs error 1.5e-7 (float32 rounding is ~6e-8): the formula ATen's
# vectorised float erf uses. Halved here so that t * poly(t) * exp(-x^2/2) is Phi(-|x|) with no extra pass.
_ERFC_P = np.float32(0.3275911 / math.sqrt(2))
_ERFC_A = tuple(np.float32(a / 2) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))
_GELU_ROWS = 64  # rows per chunk: the ~5 scratch rows of 1536 floats stay in L2 instead of streaming memory


@dataclass(frozen=True)
class EncoderConfig:
    """The parts of a BERT ``config.json`` the forward needs, checked to be ones it implements."""

    hidden: int
    heads: int
    layers: int
    intermediate: int
    eps: float
    max_positions: int

    @classmethod
    def from_file(cls, path: Path) -> EncoderConfig:
        """Read ``config.json``; refuse anything this forward would silently compute wrongly."""
        try:
            cfg: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(str(path.parent), f"unreadable config.json: {exc}") from None

        def refuse(problem: str) -> ModelUnavailable:
            return ModelUnavailable(
                str(path.parent),
                f"unsupported encoder config: {problem}",
                hint="memos embeds with BERT encoders (model_type bert, absolute positions, exact gelu), "
                "such as all-MiniLM-L6-v2; point MEMOS_EMBEDDER at one",
            )

        checks = {  # key: (allowed values, transformers' default when absent)
            "model_type": (("bert",), None),
            "hidden_act": (("gelu",), "gelu"),  # exact erf GELU; gelu_new / tanh variants are other functions
            "position_embedding_type": (("absolute",), "absolute"),
        }
        for key, (allowed, default) in checks.items():
            value = cfg.get(key, default)
            if value not in allowed:
                raise refuse(f"{key}={value!r} (supported: {', '.join(allowed)})")
        for key in ("is_decoder", "add_cross_attention"):
            if cfg.get(key):
                raise refuse(f"{key}=true (only plain encoders are supported)")
        try:
            conf = cls(
                hidden=int(cfg["hidden_size"]),
                heads=int(cfg["num_attention_heads"]),
                layers=int(cfg["num_hidden_layers"]),
                intermediate=int(cfg["intermediate_size"]),
                eps=float(cfg.get("layer_norm_eps", 1e-12)),
                max_positions=int(cfg["max_position_embeddings"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise refuse(f"missing or invalid {exc}") from None
        if conf.hidden % conf.heads:
            raise refuse(f"hidden_size {conf.hidden} is not a multiple of num_attention_heads {conf.heads}")
        return conf


@dataclass(frozen=True)
class _Layer:
    """One encoder layer's weights, projections stored [out, in] as torch's Linear keeps them: numpy computes
    ``(w @ x.T).T + b`` and torch ``linear(x, w, b)``. With few tokens (a query) OpenBLAS's ``x @ w`` packs
    the whole weight matrix on every call; ``w @ x.T`` packs the few token rows instead (a 16-token query:
    0.26 against 0.53 ms a 384 x 1536 projection, one thread)."""

    qkv_w: np.ndarray  # query | key | value fused: one GEMM instead of three
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


@dataclass(frozen=True)
class _Weights:
    word: np.ndarray
    position: np.ndarray
    token_type0: np.ndarray  # single-sentence inputs only ever use token type 0
    ln_w: np.ndarray
    ln_b: np.ndarray
    layers: tuple[_Layer, ...]


def _load_weights(path: Path, config: EncoderConfig) -> _Weights:
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except Exception as exc:  # SafetensorError derives from Exception only
        raise ModelUnavailable(str(path.parent), f"unreadable model.safetensors: {exc}") from None
    # BertFor* checkpoints prefix the encoder with "bert."; sentence-transformers' exports do not.
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""
    h, i = config.hidden, config.intermediate

    def get(key: str, shape: tuple[int, ...]) -> np.ndarray:
        array = raw.get(prefix + key)
        if array is None or array.shape != shape:
            found = "missing" if array is None else f"shape {array.shape}"
            raise ModelUnavailable(str(path.parent), f"weight {key} is {found}, config.json expects {shape}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def proj(key: str, n_in: int, n_out: int) -> np.ndarray:
        return get(key, (n_out, n_in))  # [out, in], as torch's Linear stores it

    layers = []
    for n in range(config.layers):
        p = f"encoder.layer.{n}."
        names = ("query", "key", "value")
        layers.append(
            _Layer(
                qkv_w=np.concatenate([proj(f"{p}attention.self.{q}.weight", h, h) for q in names], axis=0),
                qkv_b=np.concatenate([get(f"{p}attention.self.{q}.bias", (h,)) for q in names]),
                out_w=proj(f"{p}attention.output.dense.weight", h, h),
                out_b=get(f"{p}attention.output.dense.bias", (h,)),
                ln1_w=get(f"{p}attention.output.LayerNorm.weight", (h,)),
                ln1_b=get(f"{p}attention.output.LayerNorm.bias", (h,)),
                up_w=proj(f"{p}intermediate.dense.weight", h, i),
                up_b=get(f"{p}intermediate.dense.bias", (i,)),
                down_w=proj(f"{p}output.dense.weight", i, h),
                down_b=get(f"{p}output.dense.bias", (h,)),
                ln2_w=get(f"{p}output.LayerNorm.weight", (h,)),
                ln2_b=get(f"{p}output.LayerNorm.bias", (h,)),
            )
        )
    word = raw.get(prefix + "embeddings.word_embeddings.weight")
    types = raw.get(prefix + "embeddings.token_type_embeddings.weight")
    if word is None or word.ndim != 2 or word.shape[1] != h or types is None or types.shape[1:] != (h,):
        raise ModelUnavailable(str(path.parent), "word or token-type embeddings missing or not of hidden_size")
    return _Weights(
        word=np.ascontiguousarray(word, dtype=np.float32),
        position=get("embeddings.position_embeddings.weight", (config.max_positions, h)),
        token_type0=np.ascontiguousarray(types[0], dtype=np.float32),
        ln_w=get("embeddings.LayerNorm.weight", (h,)),
        ln_b=get("embeddings.LayerNorm.bias", (h,)),
        layers=tuple(layers),
    )


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: np.float32) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    x *= 1 / np.sqrt(np.square(x).mean(-1, keepdims=True) + eps)
    x *= w
    x += b
    return x


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact GELU in place: x * Phi(x) = max(x, 0) - |x| * Phi(-|x|), in L2-sized row chunks.

    numpy has no erf; this costs ~20 passes of SIMD ufuncs with no temporaries, ~4x faster than the naive
    ``0.5 * x * (1 + erf(x / sqrt 2))`` spelled out with ``np.where``.
    """
    rows = min(_GELU_ROWS, x.shape[0])
    a, t, r = (np.empty((rows, x.shape[1]), np.float32) for _ in range(3))
    for start in range(0, x.shape[0], rows):
        xc = x[start : start + rows]
        n = xc.shape[0]
        ac, tc, rc = a[:n], t[:n], r[:n]
        np.abs(xc, out=ac)
        np.multiply(ac, _ERFC_P, out=tc)
        tc += 1
        np.reciprocal(tc, out=tc)
        np.multiply(tc, _ERFC_A[0], out=rc)
        for coef in _ERFC_A[1:]:
            rc += coef
            rc *= tc
        rc *= ac
        np.square(xc, out=ac)
        ac *= np.float32(-0.5)
        np.exp(ac, out=ac)
        rc *= ac
        np.maximum(xc, 0, out=xc)
        xc -= rc
    return x


@cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded in this process (found once: ~7 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run numpy's GEMMs on one thread: on these small matrices OpenBLAS's threads cost more than they give.

    Measured on 2 busy cores: 40 short texts took 0.2 s of CPU single-threaded and 1.0-2.0 s with two
    threads (spinning and handing off per GEMM), and one query went from ~6 ms to tens or hundreds of ms.
    """
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def _forward_numpy(w: _Weights, cfg: EncoderConfig, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence vectors ``[batch, hidden]`` for padded ``ids`` / ``mask``."""
    with _single_threaded_blas():
        return _forward_numpy_unthreaded(w, cfg, ids, mask)


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ w.T + b`` for ``w`` stored [out, in] (see ``_Layer``), as a C-contiguous array."""
    y = np.ascontiguousarray((w @ x.T).T)
    y += b
    return y


def _forward_numpy_unthreaded(w: _Weights, cfg: EncoderConfig, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    batch, seq = ids.shape
    heads, head_dim = cfg.heads, cfg.hidden // cfg.heads
    eps = np.float32(cfg.eps)
    x = (w.word[ids] + w.position[:seq] + w.token_type0).reshape(batch * seq, cfg.hidden)
    x = _layer_norm(x, w.ln_w, w.ln_b, eps)
    scale = np.float32(1 / math.sqrt(head_dim))
    # -inf on padded keys; every row keeps its [CLS] key, so no softmax row is all -inf.
    key_bias = None if mask.all() else np.where(mask[:, None, None, :] > 0, np.float32(0), np.float32(-np.inf))
    for layer in w.layers:
        qkv = _linear(x, layer.qkv_w, layer.qkv_b)
        qkv = qkv.reshape(batch, seq, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
        scores = (qkv[0] * scale) @ qkv[1].transpose(0, 1, 3, 2)
        if key_bias is not None:
            scores += key_bias
        scores -= scores.max(-1, keepdims=True)
        np.exp(scores, out=scores)
        scores *= 1 / scores.sum(-1, keepdims=True)
        ctx = (scores @ qkv[2]).transpose(0, 2, 1, 3).reshape(batch * seq, cfg.hidden)
        attn = _linear(ctx, layer.out_w, layer.out_b)
        attn += x
        x = _layer_norm(attn, layer.ln1_w, layer.ln1_b, eps)
        up = _linear(x, layer.up_w, layer.up_b)
        down = _linear(_gelu_(up), layer.down_w, layer.down_b)
        down += x
        x = _layer_norm(down, layer.ln2_w, layer.ln2_b, eps)
    m = mask.astype(np.float32)[:, :, None]
    pooled = (x.reshape(batch, seq, -1) * m).sum(1) / np.maximum(m.sum(1), np.float32(1e-9))
    unit: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
    return unit


class _TorchForward:
    """The same forward in torch, over zero-copy views of the numpy weights; built on first bulk use."""

    def __init__(self, w: _Weights, cfg: EncoderConfig) -> None:
        import torch

        from memos_cli.config import configure_threads

        configure_threads()
        self.torch = torch
        self.cfg = cfg
        t = torch.from_numpy
        self.word, self.position, self.token_type0 = t(w.word), t(w.position), t(w.token_type0)
        self.ln = (t(w.ln_w), t(w.ln_b))
        self.layers = [{f.name: t(getattr(layer, f.name)) for f in fields(layer)} for layer in w.layers]

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch, cfg = self.torch, self.cfg
        F = torch.nn.functional
        hidden, heads = cfg.hidden, cfg.heads
        with torch.inference_mode():
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            batch, seq = ids_t.shape
            x = (F.embedding(ids_t, self.word) + self.position[:seq] + self.token_type0).view(-1, hidden)
            x = F.layer_norm(x, (hidden,), *self.ln, cfg.eps)
            attend = None if bool(mask_t.all()) else mask_t.bool()[:, None, None, :]
            for p in self.layers:
                qkv = F.linear(x, p["qkv_w"], p["qkv_b"])
                q, k, v = qkv.view(batch, seq, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2).reshape(-1, hidden)
                attn = F.linear(ctx, p["out_w"], p["out_b"]) + x
                x = F.layer_norm(attn, (hidden,), p["ln1_w"], p["ln1_b"], cfg.eps)
                up = F.gelu(F.linear(x, p["up_w"], p["up_b"]))  # approximate="none": the erf form
                down = F.linear(up, p["down_w"], p["down_b"]) + x
                x = F.layer_norm(down, (hidden,), p["ln2_w"], p["ln2_b"], cfg.eps)
            m = mask_t.to(x.dtype).unsqueeze(-1)
            pooled = (x.view(batch, seq, hidden) * m).sum(1) / m.sum(1).clamp(min=1e-9)
            unit: np.ndarray = F.normalize(pooled, p=2, dim=1).numpy()
            return unit


@dataclass
class MiniLMEncoder:
    """A BERT sentence encoder with mean pooling; ``encode`` matches ``Embedder.encode``."""

    path: Path
    config: EncoderConfig
    tokenizer: Tokenizer  # truncates to max_tokens; no padding, batches are padded in encode
    max_tokens: int
    _weights: _Weights
    _torch: _TorchForward | None = None

    @property
    def dim(self) -> int:
        return self.config.hidden

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with [CLS] ... [SEP], truncated to ``max_tokens`` (same ids as transformers' tokenizer)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` into an ``[n, dim]`` float32 array of unit vectors.

        Texts follow the batching plan (``PLAN_CHUNK``): within each chunk of the input they are batched
        in order of token count, which keeps padding (wasted compute) small, and a text's vector depends
        only on its chunk, so ``encode(texts)[a:b] == encode(texts[a:b])`` whenever ``a`` is a multiple of
        ``PLAN_CHUNK`` (and ``b`` is too, or the end). ``progress`` is called with the number of texts
        finished after each batch.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), PLAN_CHUNK):
            chunk = texts[start : start + PLAN_CHUNK]
            out[start : start + len(chunk)] = self._encode_chunk(chunk, batch_size, progress)
        return out

    def _encode_chunk(
        self, texts: Sequence[str], batch_size: int, progress: Callable[[int], None] | None
    ) -> np.ndarray:
        """One chunk of the plan: a stable sort by token count, then fixed-size batches; the backend
        depends only on the chunk's size."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        forward = self._forward_for(len(texts))
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda n: len(ids[n]))  # sorted() is stable
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seq = max(len(ids[n]) for n in idx)
            batch = np.zeros((len(idx), seq), dtype=np.int64)  # 0 is [PAD]; masked out below anyway
            mask = np.zeros((len(idx), seq), dtype=np.int64)
            for row, n in enumerate(idx):
                batch[row, : len(ids[n])] = ids[n]
                mask[row, : len(ids[n])] = 1
            out[idx] = forward(batch, mask)
            if progress is not None:
                progress(len(idx))
        return out

    def _forward_for(self, n_texts: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        if n_texts <= NUMPY_MAX_TEXTS:
            return lambda ids, mask: _forward_numpy(self._weights, self.config, ids, mask)
        if self._torch is None:
            self._torch = _TorchForward(self._weights, self.config)
        return self._torch


def load_encoder(folder: Path, *, max_tokens: int = MAX_TOKENS) -> MiniLMEncoder:
    """Load a BERT sentence encoder from a folder with config.json, tokenizer.json and model.safetensors."""
    from tokenizers import Tokenizer

    config = EncoderConfig.from_file(folder / "config.json")
    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises plain Exception for a missing or malformed file
        raise ModelUnavailable(str(folder), f"could not load tokenizer.json: {exc}") from None
    # tokenizer.json may carry its own truncation/padding (this model's: fixed 128); ours replace them.
    tokenizer.no_padding()
    tokenizer.enable_truncation(min(max_tokens, config.max_positions))
    weights = _load_weights(folder / "model.safetensors", config)
    return MiniLMEncoder(folder, config, tokenizer, min(max_tokens, config.max_positions), weights)
