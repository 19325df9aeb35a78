"""forget --purge removes the text from every file memos wrote (issue #19, "Purged means gone")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memos_cli.cube.bundle import Cube
from memos_cli.cube.entries import LoraEntry
from memos_cli.engine import ops
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext import usage
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.query import Searcher
from memos_cli.engine.repair import repair

SECRET = "the vault code is XYZZY-7731"
OTHERS = ["Ana's cat is called Miso", "Bob's favourite food is ramen", "The review moved to Thursday"]


def _cube(tmp_path: Path) -> Cube:
    cube = Cube.init(tmp_path / "c", owner="tester")
    lines = [{"text": SECRET, "tags": ["core"]}, *({"text": t, "tags": ["core"]} for t in OTHERS)]
    ingest(cube, [Source("f.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())], actor="tester")
    return cube


def _secret_id(cube: Cube) -> str:
    return next(r.id for r in cube.read_state().current.values() if r.text == SECRET)


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_purge_leaves_the_text_in_no_file_and_verify_passes(tmp_path: Path) -> None:
    cube = _cube(tmp_path)
    secret_id = _secret_id(cube)
    with Searcher([cube]) as searcher:  # builds the index (rows, vectors, BM25) and logs usage
        assert searcher.search("vault code", k=2)[0].id == secret_id
    assert _files_holding(cube.path, b"XYZZY")  # in memories.jsonl and the derived index
    assert secret_id.encode() in (cube.path / ".memos" / "usage.jsonl").read_bytes()

    ops.forget(Cube.open(cube.path), [secret_id], purge=True, actor="tester")

    assert _files_holding(cube.path, b"XYZZY") == []
    assert _files_holding(cube.path, b"vault") == []  # BM25 vocabulary included
    assert _files_holding(cube.path, secret_id.encode()) == ["audit.jsonl"]
    tombstone = cube.read_audit()[-1]
    assert tombstone["op"] == "purge" and tombstone["tombstones"] == [{"id": secret_id, "versions": 1}]
    report = verify(cube.path)
    assert report.ok, report.problems
    assert repair(cube.path).not_fixed == []
    with Searcher([Cube.open(cube.path)], record_usage=False) as searcher:
        hits = searcher.search("vault code", k=4)
    assert secret_id not in {h.id for h in hits} and len(hits) == 3
    assert usage.counts(cube).get(secret_id) is None


def test_purge_keeps_a_row_another_memory_still_indexes(tmp_path: Path) -> None:
    cube = _cube(tmp_path)
    Searcher([cube], record_usage=False)
    keep = next(r.id for r in cube.read_state().current.values() if r.text == OTHERS[0])
    ops.forget(cube, [_secret_id(cube)], purge=True)
    rows = (cube.path / ".memos" / "index" / "rows.jsonl").read_text()
    assert OTHERS[0] in rows and keep in (cube.path / ".memos" / "index" / "current.json").read_text()
    assert verify(cube.path).ok


def _adapter(cube: Cube, name: str, refs: list[str]) -> None:
    """An adapter entry trained on ``refs`` (its files stand in for peft's: the purge only reads the
    manifest; training a real one is test_distill's job and takes a minute here)."""
    import hashlib

    with cube.transaction(actor="tester", op="distill") as tx:
        staged = tx.stage_file(f"lora/{name}")
        staged.mkdir()
        files = {}
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            (staged / file).write_bytes(b"{}")
            files[file] = hashlib.sha256(b"{}").hexdigest()
        tx.manifest.lora[name] = LoraEntry(name=name, files=files, memories=refs)
        tx.touch_manifest()


@pytest.fixture
def llama(tiny_dirs: dict[str, Path]) -> str:
    return str(tiny_dirs["llama"])


def test_purge_drops_snapshots_and_reports_or_drops_adapters(tmp_path: Path, llama: str) -> None:
    from memos_cli.engine.activation.promote import promote_to_activation
    from memos_cli.engine.select import Selection

    cube = _cube(tmp_path)
    promote_to_activation(cube, Selection(all=True), name="everything", model=llama)
    other = next(r.id for r in cube.read_state().current.values() if r.text == OTHERS[1])
    promote_to_activation(Cube.open(cube.path), Selection(ids=[other]), name="bob", model=llama)
    secret_id = _secret_id(cube)
    _adapter(Cube.open(cube.path), "facts", [r.ref for r in cube.read_state().current.values()])

    report = ops.forget(Cube.open(cube.path), [secret_id], purge=True)
    manifest = Cube.open(cube.path).manifest
    assert report.kv_dropped == ["everything"] and set(manifest.kv) == {"bob"}
    assert not (cube.path / "kv" / "everything.safetensors").exists()
    assert report.adapters == ["facts"] and not report.adapters_dropped and "facts" in manifest.lora
    assert verify(cube.path).ok

    # the adapter is dropped on request (a second purge in the same cube, of another memory)
    victim = next(r.id for r in Cube.open(cube.path).read_state().current.values() if r.text == OTHERS[2])
    report = ops.forget(Cube.open(cube.path), [victim], purge=True, drop_adapters=True)
    assert report.adapters == ["facts"] and report.adapters_dropped
    assert "facts" not in Cube.open(cube.path).manifest.lora and not (cube.path / "lora" / "facts").exists()
    assert verify(cube.path).ok
    assert _files_holding(cube.path, b"XYZZY") == []


def test_purge_cli_reports_what_went(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from memos_cli.cli.app import main

    cube = _cube(tmp_path)
    code = main(["forget", str(cube.path), _secret_id(cube), "--purge", "--yes", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["kv_dropped"] == [] and "purged 1 memory " in err
    assert main(["forget", str(cube.path), "m-0000", "--drop-adapters"]) == 2
