"""Hostile input: every input of the battery gets a one-line error, its documented exit code, no
traceback, and leaves the cube unchanged. Fuzzed with hypothesis where it fits.

Battery: see BATTERY below (each case runs through the real CLI entry point), plus property tests over
random bytes for sources, random JSON for records, random text for manifests and snapshot headers.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import snapshot_files
from memos_cli.cli.app import main
from memos_cli.cube.bundle import Cube
from memos_cli.cube.manifest import parse_manifest
from memos_cli.cube.records import MemoryRecord
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.sources import parse_source
from memos_cli.errors import BadInput, InvalidCube, MemosError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


# --------------------------------------------------------------------------------------------- fuzzing


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["a.jsonl", "a.json", "a.md", "a.txt", "-"]))
def test_any_bytes_parse_or_fail_cleanly(data: bytes, name: str) -> None:
    try:
        parse_source(data, name)
    except BadInput as exc:
        assert exc.where.startswith(name) and "\n" not in exc.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["id", "version", "text", "status", "created", "tags", "metadata", "x"]),
        json_values,
        max_size=8,
    )
)
def test_any_record_object_is_accepted_or_refused_with_valueerror(obj: dict) -> None:
    try:
        record = MemoryRecord.from_dict(obj)
    except (ValueError, TypeError):
        return
    assert MemoryRecord.from_json(record.to_json()).to_json() == record.to_json()


@FUZZ
@given(st.text(max_size=300))
def test_any_manifest_text_is_parsed_or_refused_as_invalid(text: str) -> None:
    try:
        parse_manifest(text, Path("cube"))
    except InvalidCube:
        pass


@FUZZ
@given(st.binary(min_size=0, max_size=200))
def test_any_snapshot_bytes_are_refused_cleanly(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    from memos_cli.engine.activation.snapshots import read_snapshot_header

    path = tmp_path_factory.mktemp("snap") / "x.safetensors"
    path.write_bytes(data)
    try:
        read_snapshot_header(path)
    except MemosError:
        pass


# --------------------------------------------------------------------------------------------- battery


def _jsonl_file(tmp: Path, body: bytes) -> list[str]:
    path = tmp / "input.jsonl"
    path.write_bytes(body)
    return [str(path)]


def _set_manifest(text: str) -> Callable[[Path], None]:
    def apply(cube: Path) -> None:
        (cube / "cube.yaml").write_text(text)

    return apply


def _mutate_manifest(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(cube: Path) -> None:
        import yaml

        data = yaml.safe_load((cube / "cube.yaml").read_text())
        fn(data)
        (cube / "cube.yaml").write_text(yaml.safe_dump(data))

    return apply


def _snapshot(body: Callable[[], bytes]) -> Callable[[Path], None]:
    """A kv entry named 'core' whose file holds ``body``; its sha256 is recorded honestly, so the
    refusal must come from reading the file, not from the checksum."""

    def apply(cube: Path) -> None:
        import hashlib

        import yaml

        (cube / "kv").mkdir(exist_ok=True)
        data = body()
        (cube / "kv" / "core.safetensors").write_bytes(data)
        manifest = yaml.safe_load((cube / "cube.yaml").read_text())
        manifest["kv"] = {
            "core": {
                "file": "kv/core.safetensors",
                "sha256": hashlib.sha256(data).hexdigest(),
                "model_fingerprint": "llama-0",
                "memories": [],
                "tokens": 1,
            }
        }
        (cube / "cube.yaml").write_text(yaml.safe_dump(manifest))

    return apply


def _lying_header() -> bytes:
    header = json.dumps(
        {
            "__metadata__": {"format": "memos-kv", "token_count": "5"},
            "k0": {"dtype": "F32", "shape": [1, 1, 5, 4], "data_offsets": [0, 10**9]},
        }
    ).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00" * 16


def _huge_header() -> bytes:
    return struct.pack("<Q", 2**40) + b"{}"


BATTERY: list[tuple[str, Callable[[Path], None] | None, Callable[[Path, Path], list[str]], int]] = [
    # (name, how to damage the cube, the command line, expected exit code)
    ("malformed JSON line", None, lambda c, t: ["ingest", str(c), *_jsonl_file(t, b'{"text": "ok"}\n{"text": \n')], 1),
    ("record without text", None, lambda c, t: ["ingest", str(c), *_jsonl_file(t, b'{"speaker": "x"}\n')], 1),
    ("invalid UTF-8", None, lambda c, t: ["ingest", str(c), *_jsonl_file(t, b'{"text": "\xc3\x28"}\n')], 1),
    ("binary file", None, lambda c, t: ["ingest", str(c), *_jsonl_file(t, b"\x7fELF\x02\x01\x00\x00")], 1),
    ("empty file", None, lambda c, t: ["ingest", str(c), *_jsonl_file(t, b"")], 1),
    (
        "huge line",
        None,
        lambda c, t: ["ingest", str(c), *_jsonl_file(t, b'{"text": "' + b"a" * (2 << 20) + b'"}\n')],
        1,
    ),
    ("JSON that is not an object", None, lambda c, t: ["ingest", str(c), *_jsonl_file(t, b"[1, 2, 3]\n42\n")], 1),
    (
        "deeply nested JSON",
        None,
        lambda c, t: ["ingest", str(c), *_jsonl_file(t, b"[" * 100000 + b"]" * 100000 + b"\n")],
        1,
    ),
    ("missing input file", None, lambda c, t: ["ingest", str(c), str(t / "nope.jsonl")], 1),
    (
        "python/object YAML tag",
        _set_manifest("!!python/object/apply:os.system ['touch pwned']\n"),
        lambda c, t: ["list", str(c)],
        3,
    ),
    ("malformed YAML", _set_manifest("format_version: [1\n"), lambda c, t: ["stats", str(c)], 3),
    ("manifest not a mapping", _set_manifest("- 1\n- 2\n"), lambda c, t: ["query", str(c), "x"], 3),
    (
        "future format_version",
        _mutate_manifest(lambda d: d.update(format_version=99)),
        lambda c, t: ["list", str(c)],
        3,
    ),
    (
        "'..' path in manifest",
        _mutate_manifest(lambda d: d.update(kv={"x": {"file": "../../etc/passwd"}})),
        lambda c, t: ["list", str(c)],
        3,
    ),
    (
        "absolute path in manifest",
        _mutate_manifest(lambda d: d.update(lora={"x": {"path": "/etc"}})),
        lambda c, t: ["stats", str(c)],
        3,
    ),
    (
        "truncated snapshot",
        _snapshot(lambda: b'\x10\x00\x00\x00\x00\x00\x00\x00{"__meta'),
        lambda c, t: [
            "chat",
            str(c),
            "--kv",
            "core",
            "--no-retrieval",
            "--no-remember",
            "-m",
            "hi",
            "--model",
            str(t / "model"),
        ],
        3,
    ),
    (
        "lying safetensors header",
        _snapshot(_lying_header),
        lambda c, t: [
            "chat",
            str(c),
            "--kv",
            "core",
            "--no-retrieval",
            "--no-remember",
            "-m",
            "hi",
            "--model",
            str(t / "model"),
        ],
        3,
    ),
    (
        "huge safetensors header length",
        _snapshot(_huge_header),
        lambda c, t: [
            "chat",
            str(c),
            "--kv",
            "core",
            "--no-retrieval",
            "--no-remember",
            "-m",
            "hi",
            "--model",
            str(t / "model"),
        ],
        3,
    ),
    (
        "pickle disguised as a snapshot",
        _snapshot(lambda: __import__("pickle").dumps({"x": 1})),
        lambda c, t: [
            "chat",
            str(c),
            "--kv",
            "core",
            "--no-retrieval",
            "--no-remember",
            "-m",
            "hi",
            "--model",
            str(t / "model"),
        ],
        3,
    ),
    ("not a cube", lambda c: (c / "cube.yaml").unlink(), lambda c, t: ["query", str(c), "x"], 3),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("hostile") / "model", "llama")


@pytest.mark.parametrize(("name", "damage", "command", "code"), BATTERY, ids=[b[0] for b in BATTERY])
def test_battery(tmp_path: Path, tiny_model: Path, name: str, damage, command, code: int) -> None:
    cube = Cube.init(tmp_path / "cube")
    ingest(cube, [Source("seed.jsonl", b'{"text": "seed"}\n')])
    (tmp_path / "model").symlink_to(tiny_model, target_is_directory=True)
    if damage is not None:
        damage(cube.path)
    before = snapshot_files(cube.path)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    exit_code, err = cli(*command(cube.path, tmp_path))
    assert exit_code == code, err
    assert "Traceback" not in err and "internal error" not in err
    assert err.startswith("memos: error: ") and len(err.strip().splitlines()) <= 2  # one line (+ a hint)
    assert snapshot_files(cube.path) == before, f"{name} changed the cube"
    assert not (Path.cwd() / "pwned").exists()


# --------------------------------------------------------------------------------------------- static


def test_no_module_uses_pickle_unsafe_torch_load_or_unsafe_yaml() -> None:
    root = Path(__file__).resolve().parents[1] / "memos_cli"
    offences = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(
                    n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve") for n in names
                ):
                    offences.append(f"{path.name}:{node.lineno} imports a pickle-like module")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                attr, owner = node.func.attr, getattr(node.func.value, "id", None)
                kwargs = {k.arg: k.value for k in node.keywords}
                if attr == "load" and owner == "torch":
                    flag = kwargs.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        offences.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
                if owner == "yaml" and attr in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all"):
                    offences.append(f"{path.name}:{node.lineno} yaml.{attr} (use yaml.safe_load)")
                if attr == "load" and owner in ("np", "numpy"):
                    flag = kwargs.get("allow_pickle")
                    if isinstance(flag, ast.Constant) and flag.value is True:
                        offences.append(f"{path.name}:{node.lineno} numpy load with allow_pickle=True")
    assert not offences, offences
