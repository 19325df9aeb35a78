"""fuse: union of versions, duplicates, near duplicates, keys, lineage, snapshots, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from memos_cli.cli.errors import describe
from memos_cli.cube.bundle import Cube
from memos_cli.engine.fuse import fuse
from memos_cli.engine.integrity import verify
from memos_cli.engine.plaintext.ingest import Source, ingest
from memos_cli.engine.plaintext.query import Filters, query
from memos_cli.engine.plaintext.versions import Update, history, update
from memos_cli.errors import CubeExists, IncompatibleModel, UsageError


def _cube(path: Path, name: str, records: list[dict]) -> Cube:
    cube = Cube.init(path / name, name=name)
    ingest(cube, [Source(f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())])
    return cube


def test_fuse_unions_dedups_and_keeps_lineage(tmp_path: Path) -> None:
    a = _cube(
        tmp_path,
        "a",
        [
            {"text": "Ana's cat is called Miso", "time": "2023-01-01"},
            {"text": "The office moved to the third floor", "key": "office", "time": "2023-02-01"},
            {"text": "Rent is due on the third of each month", "time": "2023-01-05"},
        ],
    )
    b = _cube(
        tmp_path,
        "b",
        [
            {"text": "Ana's cat is called Miso", "time": "2023-03-01"},  # exact duplicate, another source
            {"text": "The office moved to the fourth floor", "key": "office", "time": "2023-06-01"},
            {"text": "Rent is due on the 3rd of each month", "time": "2023-04-01"},  # near duplicate
            {"text": "Bob plays the cello", "time": "2023-04-02"},
        ],
    )
    dry = fuse([a.path, b.path], tmp_path / "dry", dry_run=True, dedup_threshold=0.9)
    assert dry.exact_duplicates == 1 and not (tmp_path / "dry").exists()
    report = fuse([a.path, b.path], tmp_path / "ab", dedup_threshold=0.9)
    assert report.exact_duplicates == 1 and len(report.near_duplicates) == 1 and report.superseded_by_key == 1
    fused = Cube.open(tmp_path / "ab")
    assert verify(fused.path).ok
    manifest = yaml.safe_load((fused.path / "cube.yaml").read_text())
    assert [p["name"] for p in manifest["lineage"]] == ["a", "b"]
    assert all(len(p["content_sha256"]) == 64 for p in manifest["lineage"])
    active = {r.text: r for r in fused.read_state().current.values() if r.status == "active"}
    assert set(active) == {
        "Ana's cat is called Miso",
        "The office moved to the fourth floor",
        "Rent is due on the 3rd of each month",
        "Bob plays the cello",
    }
    cat = active["Ana's cat is called Miso"]
    assert cat.metadata["also_from"][0]["cube"] == "b"
    rent = active["Rent is due on the 3rd of each month"]
    assert rent.metadata["merged_from"][0]["cube"] == "a"
    everything = {r.text: r for r in fused.read_state().current.values()}
    assert everything["Rent is due on the third of each month"].status == "superseded"
    assert everything["The office moved to the third floor"].status == "superseded"
    hits = query(fused, "which floor is the office on", k=1)
    assert hits[0].text == "The office moved to the fourth floor"
    assert query(fused, "rent due", k=5, filters=Filters(status="superseded"))
    with pytest.raises(CubeExists):
        fuse([a.path, b.path], tmp_path / "ab")


def test_fuse_keeps_every_version_of_a_shared_memory(tmp_path: Path) -> None:
    a = _cube(tmp_path, "a", [{"text": "The launch is in March"}])
    (memory_id,) = [r.id for r in a.read_state().current.values()]
    b_path = tmp_path / "b"
    import shutil

    shutil.copytree(a.path, b_path, ignore=shutil.ignore_patterns(".memos"))
    b = Cube.open(b_path)
    b.manifest_path.write_text(b.manifest_path.read_text().replace(a.manifest.id, "cube-0000000000bb"))
    b = Cube.open(b_path)
    update(a, memory_id, Update(text="The launch is in April"), actor="ana")
    update(b, memory_id, Update(text="The launch is in May"), actor="bob")
    report = fuse([a.path, b.path], tmp_path / "ab")
    assert report.version_conflicts == 1
    versions = history(Cube.open(tmp_path / "ab"), memory_id)[1]
    texts = [v.text for v in versions]
    assert texts[:3] == ["The launch is in March", "The launch is in April", "The launch is in May"]
    # the text changed two ways: a merge version marks the conflict, both values stay in the history
    assert versions[-1].op == "merge" and len(versions) == 4


def test_fuse_refuses_other_embedders_and_bad_arguments(tmp_path: Path) -> None:
    a = _cube(tmp_path, "a", [{"text": "one"}])
    b = _cube(tmp_path, "b", [{"text": "two"}])
    data = yaml.safe_load(b.manifest_path.read_text())
    data["embedder"]["fingerprint"] = "other-model:0123"
    b.manifest_path.write_text(yaml.safe_dump(data))
    with pytest.raises(IncompatibleModel) as err:
        fuse([a.path, b.path], tmp_path / "ab")
    assert err.value.options == ("reembed",) and "--reembed" in (describe(err.value)[1] or "")
    assert fuse([a.path, b.path], tmp_path / "ab", reembed=True).memories == 2
    with pytest.raises(UsageError):
        fuse([a.path], tmp_path / "x")


def test_the_same_memory_ingested_in_two_cubes_is_one_version(tmp_path: Path) -> None:
    records = [{"text": "Shared fact one", "id": "1"}, {"text": "Shared fact two", "id": "2"}]
    a = Cube.init(tmp_path / "a", name="a")
    b = Cube.init(tmp_path / "b", name="b")
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    ingest(a, [Source("common.jsonl", body)], actor="ana")
    ingest(b, [Source("common.jsonl", body)], actor="bob")  # later, by someone else: same content
    report = fuse([a.path, b.path], tmp_path / "ab")
    assert report.shared_versions == 2 and report.version_conflicts == 0 and report.memories == 2
    assert len(Cube.open(tmp_path / "ab").read_state().versions) == 2


def test_fused_cube_is_owned_by_its_creator(tmp_path: Path) -> None:
    a = _cube(tmp_path, "a", [{"text": "one"}])
    b = _cube(tmp_path, "b", [{"text": "two"}])
    fuse([a.path, b.path], tmp_path / "ab")  # no --as: the acting user (MEMOS_USER) creates it
    fused = Cube.open(tmp_path / "ab")
    assert fused.manifest.owner == "tester" and fused.manifest.policy["owner"] == "tester"
    from memos_cli.engine.governance import PolicyChange, set_policy
    from memos_cli.errors import PermissionRefused

    with pytest.raises(PermissionRefused):
        set_policy(fused, PolicyChange(frozen=True), actor="mallory")


def test_near_duplicate_merge_keeps_the_key(tmp_path: Path) -> None:
    a = _cube(
        tmp_path, "a", [{"text": "The team offsite is in Sintra in June", "key": "offsite", "time": "2025-01-01"}]
    )
    b = _cube(tmp_path, "b", [{"text": "The team offsite is in Sintra in June.", "time": "2025-02-01"}])
    report = fuse([a.path, b.path], tmp_path / "ab")
    assert len(report.near_duplicates) == 1
    active = [r for r in Cube.open(tmp_path / "ab").read_state().current.values() if r.status == "active"]
    assert [r.key for r in active] == ["offsite"]


def test_diverged_copies_of_one_cube_fuse_as_a_merge(tmp_path: Path) -> None:
    import shutil

    a = _cube(tmp_path, "a", [{"text": "The beta opens on 14 March"}, {"text": "Ana runs QA"}])
    shutil.copytree(a.path, tmp_path / "copy", ignore=shutil.ignore_patterns(".memos"))  # a clone: same id
    copy = Cube.open(tmp_path / "copy")
    beta = next(r.id for r in a.read_state().current.values() if "beta" in r.text)
    update(a, beta, Update(add_tags=["beta"]), actor="ana")
    update(copy, beta, Update(text="The beta opens on 21 March"), actor="bob")
    ingest(copy, [Source("extra.jsonl", b'{"text": "Bob owns the release notes"}\n')])
    report = fuse([a.path, copy.path], tmp_path / "merged")
    assert report.version_conflicts == 0
    fused = Cube.open(tmp_path / "merged")
    current = fused.read_state().current
    assert current[beta].text == "The beta opens on 21 March" and current[beta].tags == ["beta"]
    assert {r.text for r in current.values()} >= {"Ana runs QA", "Bob owns the release notes"}
    assert verify(fused.path).ok
    with pytest.raises(UsageError):
        fuse([a.path, a.path], tmp_path / "twice")
