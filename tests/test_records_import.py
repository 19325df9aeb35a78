"""One record validator for every reader and writer, a streaming bounded import, full-match names (#19)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from memos_cli.cli.app import main
from memos_cli.cube import layout, records
from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.versions import merge_memories
from memos_cli.engine.repair import repair
from memos_cli.engine.transfer import export_cube, import_cube
from memos_cli.errors import BadInput, UsageError


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


GOOD = {"id": "m-1", "version": 1, "text": "hello", "status": "active", "created": "2024-01-01T00:00:00Z"}
BAD = {**GOOD, "id": "m-2"}
DEEP = '{"a":' * 100_000 + "1" + "}" * 100_000
BAD_LINES = {
    "speaker": json.dumps({**BAD, "speaker": 5}),
    "time": json.dumps({**BAD, "time": 12345}),
    "tags": json.dumps({**BAD, "tags": [["x"]]}),
    "type": json.dumps({**BAD, "type": {}}),
    "created": json.dumps({**BAD, "created": 5}),
    "span": json.dumps({**BAD, "span": ["a", None]}),
    "nan": json.dumps({**BAD, "metadata": {"x": float("nan")}}),
    "infinity": json.dumps({**BAD, "metadata": {"x": 1}}).replace('"x": 1}', '"x": 1e999}'),
    "deep": json.dumps(BAD)[:-1] + ',"metadata":' + DEEP + "}",
    "large": json.dumps({**BAD, "text": "x" * (records.MAX_RECORD_BYTES + 10)}),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_verify_rejects_what_readers_cannot_read_and_readers_fail_cleanly(tmp_path: Path, kind: str) -> None:
    cube = Cube.init(tmp_path / "c", owner="tester")
    cube.memories_path.write_text(json.dumps(GOOD) + "\n" + BAD_LINES[kind] + "\n")
    report = verify(cube.path)
    assert not report.ok and any("memories.jsonl:2" in p for p in report.problems), report.problems
    for args in (["list", "--jsonl"], ["stats", "--json"], ["query", "hello", "--retrieval", "lexical"]):
        code, out, err = run(args[0], str(cube.path), *args[1:])
        assert code == 3, (args, err)
        assert "memories.jsonl:2" in err and "internal error" not in err and "Recursion" not in err
        assert out == ""
    # repair moves the unreadable line to .memos/quarantine/, byte for byte (issue 13), and keeps the rest
    repaired = repair(cube.path)
    assert any("memories.jsonl" in f and "quarantine" in f for f in repaired.fixed), repaired.fixed
    assert not repaired.not_fixed and verify(cube.path).ok
    assert [r.id for r in Cube.open(cube.path).read_state().versions] == ["m-1"]
    (kept,) = (cube.path / ".memos" / "quarantine").iterdir()
    assert kept.read_bytes() == (BAD_LINES[kind] + "\n").encode()


def test_the_validator_bounds_depth_numbers_and_size() -> None:
    with pytest.raises(ValueError, match="deeper"):
        records.loads(DEEP)
    with pytest.raises(ValueError, match="finite|not a number"):
        records.loads('{"x": NaN}')
    with pytest.raises(ValueError, match="longer"):
        records.loads('"' + "x" * records.MAX_RECORD_BYTES + '"')
    assert records.MemoryRecord.from_json(json.dumps(GOOD)).text == "hello"


def test_skip_bad_skips_every_kind_of_bad_record(tmp_path: Path) -> None:
    cube = Cube.init(tmp_path / "c", owner="tester")
    lines = [
        '{"text": "good one"}',
        '{"text": "nan", "metadata": {"x": NaN}}',
        '{"text": "inf", "score": Infinity}',
        '{"text": "big", "metadata": {"x": 1e999}}',
        '{"text": "deep", "metadata": ' + DEEP + "}",
        '{"text": "nested", "metadata": ' + '{"a":' * 40 + "1" + "}" * 40 + "}",
        '{"text": "' + "y" * (records.MAX_RECORD_BYTES - 100) + '", "metadata": {"pad": "' + "z" * 200 + '"}}',
        '{"text": "good two"}',
    ]
    body = ("\n".join(lines) + "\n").encode()
    with pytest.raises(BadInput, match="records.jsonl:2"):
        ingest(cube, [Source("records.jsonl", body)], actor="tester")
    assert cube.read_state().current == {}
    report = ingest(cube, [Source("records.jsonl", body)], skip_bad=True, actor="tester")
    assert report.added == 2 and len(report.rejected) == 6
    assert sorted(r.text for r in cube.read_state().current.values()) == ["good one", "good two"]
    assert verify(cube.path).ok
    code, out, _ = run("list", str(cube.path), "--jsonl")
    assert code == 0 and all(json.loads(line) for line in out.splitlines())


def test_merge_refuses_a_record_readers_would_reject() -> None:
    bad = (BAD_LINES["nan"] + "\n").encode()
    with pytest.raises(ValueError, match="finite|not a number"):
        merge_memories(b"", (json.dumps(GOOD) + "\n").encode(), bad)


# ------------------------------------------------------------------------------------------ import


def _export(tmp_path: Path) -> tuple[Cube, Path]:
    cube = Cube.init(tmp_path / "src", owner="tester")
    ingest(cube, [Source("r.jsonl", b'{"text": "Ana has a cat"}\n')], actor="tester")
    archive = tmp_path / "src.tar.gz"
    export_cube(cube, archive)
    return cube, archive


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], files: dict[str, str] | None = None) -> Path:
    """A hand-made export: the index first (listing ``files``, default: every member), then members."""
    listed = (
        files
        if files is not None
        else {m.name[len("cube/") :]: hashlib.sha256(data).hexdigest() for m, data in members if m.isfile()}
    )
    raw = json.dumps({"format": "memos-export", "version": 1, "files": listed}).encode()
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("memos-export.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _bundle(tmp_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    cube, _ = _export(tmp_path)
    return [
        _file(f"cube/{rel}", (cube.path / rel).read_bytes())
        for rel in (".gitignore", "audit.jsonl", "cube.yaml", "memories.jsonl")
    ]


def _strays(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


def test_import_round_trip_and_no_strays(tmp_path: Path) -> None:
    _, archive = _export(tmp_path)
    info = import_cube(archive, tmp_path / "dst")
    assert info["files"] == 4 and verify(tmp_path / "dst").ok and _strays(tmp_path) == []


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("cube/.git/config", "cube format"),
        ("cube/.memos/index/rows.jsonl", "cube format"),
        ("cube/notes.txt", "cube format"),
        ("cube/lora/x/evil.py", "cube format"),
        ("cube/kv/../cube.yaml", "cube format"),
        ("cube/memories.jsonl", "appears twice"),
    ],
)
def test_import_refuses_members_the_format_does_not_name(tmp_path: Path, extra: str, problem: str) -> None:
    members = _bundle(tmp_path) + [_file(extra, b"[core]\n")]
    files = {m.name[5:]: hashlib.sha256(d).hexdigest() for m, d in members[:-1]}
    files.setdefault(extra[5:], hashlib.sha256(b"[core]\n").hexdigest())
    archive = _archive(tmp_path / "bad.tar.gz", members, files)
    with pytest.raises(BadInput, match=problem) as caught:
        import_cube(archive, tmp_path / "dst")
    assert "--skip-bad" not in (caught.value.hint or "")
    assert not (tmp_path / "dst").exists() and _strays(tmp_path) == []
    if problem == "cube format":  # refused by the member's own name too, when the index does not list it
        files.pop(extra[5:])
        with pytest.raises(BadInput, match="not a file of the cube format|unsafe"):
            import_cube(_archive(tmp_path / "bad2.tar.gz", members, files), tmp_path / "dst")


def test_import_refuses_links_and_devices(tmp_path: Path) -> None:
    link = tarfile.TarInfo("cube/audit.jsonl")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _archive(tmp_path / "l.tar.gz", _bundle(tmp_path)[:1] + [(link, b"")], {"audit.jsonl": "0" * 64})
    with pytest.raises(BadInput, match="links"):
        import_cube(archive, tmp_path / "dst")


def test_import_checks_sizes_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a header claiming 3 GB, with no data behind it: refused from the header alone
    info = tarfile.TarInfo("cube/memories.jsonl")
    info.size = 3 * 10**9
    index = json.dumps({"files": {"memories.jsonl": "0" * 64}}).encode()
    head = tarfile.TarInfo("memos-export.json")
    head.size = len(index)
    raw = head.tobuf() + index + b"\0" * (-len(index) % 512) + info.tobuf()
    archive = tmp_path / "huge.tar.gz"
    archive.write_bytes(gzip.compress(raw))
    monkeypatch.setenv("MEMOS_IMPORT_MAX_BYTES", str(2 * 10**9))
    with pytest.raises(BadInput, match="more than 2,000,000,000 bytes"):
        import_cube(archive, tmp_path / "dst")
    # the total of several files counts, not each alone
    monkeypatch.setenv("MEMOS_IMPORT_MAX_BYTES", "600")
    with pytest.raises(BadInput, match="more than 600 bytes"):
        import_cube(_archive(tmp_path / "a.tar.gz", _bundle(tmp_path)), tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and _strays(tmp_path) == []


def test_import_refuses_a_huge_extended_header(tmp_path: Path) -> None:
    member, data = _file("cube/memories.jsonl", b"")
    member.pax_headers = {"comment": "x" * 2_000_000}
    archive = _archive(tmp_path / "pax.tar.gz", [(member, data)])
    with pytest.raises(BadInput, match="extended header"):
        import_cube(archive, tmp_path / "dst")


def test_import_truncates_a_long_member_name_in_its_message(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "long.tar.gz", [_file("cube/" + "n" * 5000, b"x")])
    code, _, err = run("import", str(archive), "-o", str(tmp_path / "dst"))
    assert code == 1 and "n" * 200 not in err and "more characters" in err


def test_a_killed_import_leaves_a_staging_folder_the_next_import_removes(tmp_path: Path) -> None:
    _, archive = _export(tmp_path)
    leftover = tmp_path / ".dst.importing-killed"
    (leftover / "cube").mkdir(parents=True)
    import_cube(archive, tmp_path / "dst")
    assert not leftover.exists() and _strays(tmp_path) == []


def test_import_refuses_an_archive_whose_cube_does_not_verify(tmp_path: Path) -> None:
    members = _bundle(tmp_path)
    members[-1] = _file("cube/memories.jsonl", (BAD_LINES["speaker"] + "\n").encode())
    with pytest.raises(BadInput, match="does not verify"):
        import_cube(_archive(tmp_path / "v.tar.gz", members), tmp_path / "dst")


# ------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["core\n", "core\nx", "", "..", "a/b", "x" * 65, "-a"])
def test_names_must_match_in_full(name: str) -> None:
    from memos_cli.engine.activation import promote
    from memos_cli.engine.parametric import distill

    assert not layout.valid_name(name)
    with pytest.raises(UsageError):
        promote.check_name(name)
    with pytest.raises(UsageError):
        distill.check_name(name)


def test_an_empty_cube_path_is_refused(tmp_path: Path) -> None:
    code, _, err = run("init", "")
    assert code == 2 and "empty" in err
    assert not (Path.cwd() / "cube.yaml").exists()
    assert run("list", "")[0] == 2


# ------------------------------------------------------------------------------------------ adapters


def test_an_adapter_config_with_a_huge_rank_is_refused_before_peft(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from memos_cli.engine.parametric.adapters import MAX_LORA_RANK, check_adapter_bounds
    from memos_cli.errors import InvalidCube

    cube = Cube.init(tmp_path / "c", owner="tester")
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(
        {"m.lora_A.weight": torch.zeros(4, 8), "m.lora_B.weight": torch.zeros(8, 4)}, folder / layout.ADAPTER_FILES[1]
    )
    for config, problem in [
        ({"peft_type": "LORA", "r": 200_000}, "rank"),
        ({"peft_type": "LORA", "r": 4, "rank_pattern": {"x": 10**6}}, "rank"),
        ({"peft_type": "LORA", "r": 2}, "shape"),
        ({"peft_type": "PREFIX", "r": 4}, "not a LoRA"),
    ]:
        (folder / layout.ADAPTER_FILES[0]).write_text(json.dumps(config))
        with pytest.raises(InvalidCube, match=problem):
            check_adapter_bounds(cube, "a", folder)
    (folder / layout.ADAPTER_FILES[0]).write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": NaN}')
    with pytest.raises(InvalidCube, match="not valid"):
        check_adapter_bounds(cube, "a", folder)
    (folder / layout.ADAPTER_FILES[0]).write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    check_adapter_bounds(cube, "a", folder)
    assert MAX_LORA_RANK >= 64
