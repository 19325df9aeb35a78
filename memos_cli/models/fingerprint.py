"""Content fingerprints of model files, cached by (path, size, mtime) so a model is hashed once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from memos_cli.config import model_cache


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_file_sha256(path: Path) -> str:
    """sha256 of a (large, rarely changing) file, memoised in the model cache's hashes.json."""
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    store = model_cache() / "hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return str(known[key])
    digest = file_sha256(path)
    known[key] = digest
    tmp = store.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, sort_keys=True))
    tmp.replace(store)
    return digest
