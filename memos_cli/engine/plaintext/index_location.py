"""Where a cube's derived index lives: in the cube when it is writable, else in a cache under
MEMOS_HOME keyed by the cube's id and records, else in a temporary folder for this process."""

from __future__ import annotations

from pathlib import Path

from memos_cli.cube import layout
from memos_cli.cube.bundle import Cube

INDEX_REL = f"{layout.DERIVED_DIR}/{layout.INDEX_DIR}"


def index_location(cube: Cube) -> tuple[Path, str]:
    """Where ``cube``'s index lives, as ``(root, rel)``: the folder ``root/rel``, ``root`` trusted.

    ``.memos/index/`` when the cube is writable. On a read-only cube (read-only media, another user's
    checkout) a folder under MEMOS_HOME's cache, keyed by the cube's id and the sha256 of its records, so
    reads never write to the cube; if even that cache cannot be written, a temporary folder for this
    process (the index is then built in memory and on temporary disk, and dropped at exit)."""
    if cube.writable():
        return cube.path, INDEX_REL
    from memos_cli.cube.io import sha256_file

    try:
        content = sha256_file(cube.memories_path)[:16]
    except FileNotFoundError:
        content = "empty"
    try:
        folder = readonly_cache_root() / f"{safe_id(cube.manifest.id)}-{content}"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = _process_temp_dir() / content
        folder.mkdir(parents=True, exist_ok=True)
    return folder, layout.INDEX_DIR


def readonly_cache_root() -> Path:
    """Where indexes of read-only cubes are kept: ``MEMOS_HOME/readonly-index``."""
    from memos_cli.config import memos_home

    return memos_home() / "readonly-index"


def safe_id(cube_id: str) -> str:
    """A cube id as a folder name: a stranger's manifest may hold anything."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", cube_id)[:64] or "cube"


_TEMP_DIR: Path | None = None


def _process_temp_dir() -> Path:
    global _TEMP_DIR
    if _TEMP_DIR is None:
        import atexit
        import shutil
        import tempfile

        _TEMP_DIR = Path(tempfile.mkdtemp(prefix="memos-index-"))
        atexit.register(shutil.rmtree, _TEMP_DIR, True)
    return _TEMP_DIR
