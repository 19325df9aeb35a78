"""Speed mechanics that can be checked without timing: thread defaults, linear streaming detokenisation,
a damaged snapshot refused before the model loads, and the fast exit of a process that imported torch.
(Timings themselves live in bench/latency.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memos_cli import config
from memos_cli.cube.bundle import Cube
from memos_cli.engine.activation.promote import promote_to_activation
from memos_cli.engine.activation.snapshots import read_snapshot
from memos_cli.engine.chat import ChatOptions, ChatSession
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.select import Selection
from memos_cli.errors import IncompatibleModel, IntegrityError, InvalidSnapshot
from memos_cli.models import lm as lm_mod
from memos_cli.models.generation import generate
from memos_cli.models.lm import TextStream, load_lm
from tiny_models import _tokenizer, build_tiny_model

pytestmark = pytest.mark.usefixtures("memos_threads")

TEXT = "Héllo wörld 🎉 — the beta opens on 14 March.\n  Done! 日本語, naïve café;  spaces   and\ttabs."


# ---------------------------------------------------------------------------------------------------------
# Threads


def test_threads_default_is_one_per_core_less_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.THREADS_ENV, raising=False)
    monkeypatch.setattr(config, "_machine_idle", lambda: False)
    for cores, expected in ((1, 1), (2, 1), (4, 3), (16, 15)):
        monkeypatch.setattr(config, "available_cores", lambda cores=cores: cores)
        assert config.thread_count() == expected


def test_an_idle_machine_gets_every_core_for_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.THREADS_ENV, raising=False)
    monkeypatch.setattr(config, "_machine_idle", lambda: True)
    for cores, expected in ((1, 1), (2, 2), (4, 4)):
        monkeypatch.setattr(config, "available_cores", lambda cores=cores: cores)
        assert config.thread_count(interactive=True) == expected
        assert config.thread_count() == max(1, cores - 1)  # bulk work keeps the margin


def test_busy_cores_sees_a_competing_process() -> None:
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert config._busy_cores(0.2) >= 0.5  # the spinner holds most of a core
    finally:
        spinner.kill()
        spinner.wait()


def test_memos_threads_overrides_and_bad_values_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "available_cores", lambda: 8)
    monkeypatch.setattr(config, "_machine_idle", lambda: False)
    monkeypatch.setenv(config.THREADS_ENV, "3")
    assert config.thread_count() == 3
    monkeypatch.setenv(config.THREADS_ENV, "0")
    assert config.thread_count() == 1
    monkeypatch.setenv(config.THREADS_ENV, "many")
    assert config.thread_count() == 7


def test_available_cores_respects_the_affinity_mask() -> None:
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert 1 <= config.available_cores() <= len(os.sched_getaffinity(0))


def test_configure_threads_sizes_torch_and_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    try:
        monkeypatch.setenv(config.THREADS_ENV, "2")
        assert config.configure_threads() == 2
        assert torch.get_num_threads() == 2
        assert all(i["num_threads"] == 2 for i in threadpool_info() if i["user_api"] == "blas")
        monkeypatch.setenv(config.THREADS_ENV, "1")
        config.configure_threads()
        assert torch.get_num_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
    finally:
        torch.set_num_threads(before)
        from threadpoolctl import threadpool_limits

        for info in blas:
            threadpool_limits(limits=info["num_threads"], user_api="blas")


def test_a_model_load_applies_the_thread_default(tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv(config.THREADS_ENV, "1")
    torch.set_num_threads(2)
    load_lm(str(tiny_dirs["llama"]))
    assert torch.get_num_threads() == 1


# ---------------------------------------------------------------------------------------------------------
# Streaming detokenisation


def _metaspace_tokenizer():
    """A sentencepiece-style tokenizer (spaces as '▁', the first one dropped on decode): the case where
    decoding a window on its own would lose a leading space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "</s>", *[f"<0x{b:02X}>" for b in range(256)]],
    )
    tok.train_from_iterator([TEXT.replace("🎉", "").replace("日本語", "")] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def _byte_level_tokenizer():
    return _tokenizer(None, "gpt2")


class _Counting:
    """A tokenizer whose decode records how many ids it was given each time."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sizes: list[int] = []

    def decode(self, ids, **kwargs):
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


@pytest.mark.parametrize("make", [_byte_level_tokenizer, _metaspace_tokenizer], ids=["byte-level", "metaspace"])
def test_text_stream_pieces_join_to_the_full_decode(make) -> None:
    tokenizer = make()
    ids = tokenizer(TEXT * 3, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    ids = ids[:20] + [eos] + ids[20:]  # a special token mid-answer is skipped, as in the final decode
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in p for p in pieces)  # multi-byte characters are never handed over split


def test_text_stream_decodes_a_bounded_window_per_token() -> None:
    tokenizer = _Counting(_byte_level_tokenizer())
    ids = tokenizer.tokenizer(TEXT * 40, add_special_tokens=False)["input_ids"]
    assert len(ids) > 500
    stream = TextStream(tokenizer)
    for i in ids:
        stream.push(i)
    # Re-decoding the whole answer each token (the old loop) would reach len(ids) and sum to ~n^2/2.
    assert max(tokenizer.sizes) <= 8
    assert sum(tokenizer.sizes) <= 8 * len(ids)


def test_streamed_generation_is_the_same_answer(tiny_dirs: dict[str, Path]) -> None:
    lm = load_lm(str(tiny_dirs["qwen2"]))
    plain = generate(lm, "Where does Alice live?", mode="none", greedy=True, max_new_tokens=40)
    pieces: list[str] = []
    streamed = generate(
        lm, "Where does Alice live?", mode="none", greedy=True, max_new_tokens=40, on_token=pieces.append
    )
    assert streamed.token_ids == plain.token_ids
    assert "".join(pieces).strip() == streamed.answer == plain.answer
    assert streamed.new_tokens == len(streamed.token_ids) and streamed.ttft_ms > 0


# ---------------------------------------------------------------------------------------------------------
# Snapshot checks before the model loads


@pytest.fixture
def snapshot_cube(tmp_path: Path, tiny_dirs: dict[str, Path]) -> Cube:
    cube = Cube.init(tmp_path / "c", owner="tester")
    body = b'{"text": "Ana\'s cat is called Miso"}\n{"text": "Bob likes ramen"}\n'
    ingest(cube, [Source("f.jsonl", body)])
    promote_to_activation(cube, Selection(all=True), name="core", model=str(tiny_dirs["llama"]))
    return Cube.open(cube.path)


def _no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the snapshot was checked")

    monkeypatch.setattr(lm_mod, "load_lm", refuse)


def test_a_damaged_snapshot_fails_before_the_model_loads(
    snapshot_cube: Cube, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = snapshot_cube.path / "kv" / "core.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    _no_model_load(monkeypatch)
    options = ChatOptions(kv="core", model=str(tiny_dirs["llama"]), retrieval=False, remember=False)
    with pytest.raises(IntegrityError):
        ChatSession([snapshot_cube], options)


def test_a_snapshot_for_another_model_fails_before_the_model_loads(
    snapshot_cube: Cube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = build_tiny_model(tmp_path / "other", "llama", seed=1)
    _no_model_load(monkeypatch)
    with pytest.raises(IncompatibleModel):
        ChatSession([snapshot_cube], ChatOptions(kv="core", model=str(other), retrieval=False, remember=False))


def test_read_snapshot_checks_header_without_a_model(snapshot_cube: Cube, tmp_path: Path) -> None:
    entry = snapshot_cube.manifest.kv["core"].to_dict()
    file = read_snapshot(snapshot_cube.path / entry["file"], expected_sha256=entry["sha256"])
    assert file.meta["format"] == "memos-kv" and file.sha256 == entry["sha256"]
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(file.data[:100])
    with pytest.raises(InvalidSnapshot):
        read_snapshot(truncated)


def test_chat_with_a_checked_snapshot_still_answers(snapshot_cube: Cube, tiny_dirs: dict[str, Path]) -> None:
    options = ChatOptions(kv="core", model=str(tiny_dirs["llama"]), retrieval=False, remember=False, greedy=True)
    options.max_new_tokens = 4
    result = ChatSession([snapshot_cube], options).ask("What is the cat called?")
    assert result.kv == "core" and result.mode == "kv"


# ---------------------------------------------------------------------------------------------------------
# Fast exit


def test_exit_now_runs_exit_handlers_flushes_and_keeps_the_code(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import atexit, sys
        from memos_cli.cli.app import _exit_now
        atexit.register(lambda: print("handler ran"))
        sys.stdout.write("partial line without newline")
        sys.stderr.write("to stderr")
        _exit_now(3)
        print("not reached")
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(root)}
    )
    assert done.returncode == 3
    assert done.stdout == "partial line without newlinehandler ran\n"
    assert done.stderr == "to stderr"


def test_a_forked_child_runs_torch_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv(config.THREADS_ENV, raising=False)
    monkeypatch.setattr(config, "_machine_idle", lambda: True)
    monkeypatch.setattr(config, "available_cores", lambda: 4)
    assert config.thread_count(interactive=True) == 4
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, str(config.configure_threads(interactive=True)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"1"
