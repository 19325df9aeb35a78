"""Shared fixtures: every test runs with its own MEMOS_HOME and working directory."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube

# Converted models are cached in MEMOS_HOME; keep one cache for the whole session so the real models
# are converted once, while cubes and working directories stay per-test.
_SESSION_HOME: Path | None = None


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    global _SESSION_HOME
    _SESSION_HOME = tmp_path_factory.mktemp("memos-home")
    return _SESSION_HOME


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_home: Path) -> None:
    monkeypatch.setenv("MEMOS_HOME", str(session_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEMOS_USER", "tester")
    monkeypatch.delenv("MEMOS_DEBUG", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def make_cube(tmp_path: Path) -> Callable[..., Cube]:
    """Create a cube, optionally pre-filled from JSONL records (dicts with at least 'text')."""
    from memos_cli.engine.ingest import Source, ingest

    counter = iter(range(1000))

    def factory(records: list[dict] | None = None, *, name: str | None = None, **kwargs) -> Cube:
        path = tmp_path / (name or f"cube{next(counter)}")
        cube = Cube.init(path, name=name, owner="tester")
        if records:
            body = "".join(json.dumps(r) + "\n" for r in records).encode()
            ingest(cube, [Source("records.jsonl", body)], actor="tester", **kwargs)
        return cube

    return factory


def snapshot_files(path: Path) -> dict[str, bytes]:
    """Every bundle file's bytes (derived .memos/ excluded): to assert a cube is unchanged."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and ".memos" not in p.relative_to(path).parts
    }


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
