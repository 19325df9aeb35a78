"""Peak memory (max resident set size) of `memos import`, `query` and `chat` on crafted hostile inputs.

Each case runs the real CLI in a fresh process under `/usr/bin/time -v` and prints its exit code, wall
time and peak RSS next to a baseline (the same command on a sound input). Issue 19: small inputs must
not take unbounded memory; the limits they meet are documented in docs/FORMAT.md and the README.

Usage:  python bench/peak_memory.py [--no-chat]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def memos(*args: str, env: dict[str, str]) -> tuple[int, float, float, str]:
    """Run `memos ARGS` under /usr/bin/time -v: (exit code, wall seconds, peak RSS MiB, last stderr line)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "memos_cli", *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=env["WORK"])
    wall = time.perf_counter() - started
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("memos")]
    return done.returncode, wall, int(rss.group(1)) / 1024 if rss else float("nan"), (lines or [""])[-1][:110]


def _index(files: dict[str, str]) -> tuple[tarfile.TarInfo, bytes]:
    raw = json.dumps({"format": "memos-export", "version": 1, "files": files}).encode()
    info = tarfile.TarInfo("memos-export.json")
    info.size = len(raw)
    return info, raw


def huge_claim(path: Path) -> None:
    """~500 bytes: an index, then a header claiming a 3 GB memories.jsonl with no data behind it."""
    head, raw = _index({"memories.jsonl": "0" * 64})
    member = tarfile.TarInfo("cube/memories.jsonl")
    member.size = 3 * 10**9
    path.write_bytes(gzip.compress(head.tobuf() + raw + b"\0" * (-len(raw) % 512) + member.tobuf()))


def gzip_bomb(path: Path, size: int) -> None:
    """A listed member of ``size`` zero bytes (its checksum wrong): ~1 MB of gzip per GB."""
    head, raw = _index({"memories.jsonl": "0" * 64})
    member = tarfile.TarInfo("cube/memories.jsonl")
    member.size = size
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    with open(path, "wb") as out:
        out.write(squeeze.compress(head.tobuf() + raw + b"\0" * (-len(raw) % 512) + member.tobuf()))
        block = b"\0" * (1 << 24)
        for _ in range(size // len(block)):
            out.write(squeeze.compress(block))
        out.write(squeeze.compress(b"\0" * (size % len(block) + 1024)))
        out.write(squeeze.flush())


def many_members(path: Path, count: int) -> None:
    """Tens of thousands of small files the manifest does not name."""
    head, raw = _index({})
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(head, io.BytesIO(raw))
        for i in range(count):
            info = tarfile.TarInfo(f"cube/junk/{i}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-chat", action="store_true", help="skip the cases that load the chat model")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memos-peak-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "MEMOS_HOME": os.environ.get("MEMOS_HOME", str(tmp / "home")),
        "MEMOS_USER": "bench",
        "WORK": str(tmp),
    }
    rows: list[tuple[str, int, float, float, str]] = []

    def case(name: str, *cmd: str) -> None:
        code, wall, rss, last = memos(*cmd, env=env)
        rows.append((name, code, wall, rss, last))
        print(f"{name:48s} exit {code:3d}  {wall:6.1f}s  {rss:8.1f} MiB  {last}", flush=True)

    # a sound cube, its export, and the baselines
    good = tmp / "good"
    facts = tmp / "facts.jsonl"
    facts.write_text("".join(json.dumps({"text": f"fact number {i} about topic {i % 7}"}) + "\n" for i in range(200)))
    memos("init", str(good), env=env)
    memos("ingest", str(good), str(facts), env=env)
    memos("export", str(good), "-o", str(tmp / "good.tar.gz"), env=env)
    case("import: sound export (baseline)", "import", str(tmp / "good.tar.gz"), "-o", str(tmp / "imported"))
    case("query: sound 200-memory cube (baseline)", "query", str(good), "topic 3", "-k", "3", "--json")

    huge_claim(tmp / "claim.tar.gz")
    size = (tmp / "claim.tar.gz").stat().st_size
    case(f"import: {size} B archive claiming 3 GB", "import", str(tmp / "claim.tar.gz"), "-o", str(tmp / "x1"))
    gzip_bomb(tmp / "bomb.tar.gz", 1_600_000_000)
    size = (tmp / "bomb.tar.gz").stat().st_size
    case(f"import: {size / 1e6:.1f} MB gzip of 1.6 GB", "import", str(tmp / "bomb.tar.gz"), "-o", str(tmp / "x2"))
    many_members(tmp / "many.tar.gz", 30_000)
    case("import: 30,000 unlisted members", "import", str(tmp / "many.tar.gz"), "-o", str(tmp / "x3"))

    big = tmp / "big"
    memos("init", str(big), env=env)
    record = {
        "id": "m-big",
        "version": 1,
        "text": "word " * 10_000_000,
        "status": "active",
        "created": "2026-01-01T00:00:00Z",
    }
    with open(big / "memories.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    case("query: cube with one 50 MB record", "query", str(big), "word", "--json")
    (tmp / "big.jsonl").write_text(json.dumps({"text": record["text"]}) + "\n")
    case("ingest: one 50 MB JSONL record", "ingest", str(good), str(tmp / "big.jsonl"))
    case("ingest --skip-bad: one 50 MB JSONL record", "ingest", str(good), str(tmp / "big.jsonl"), "--skip-bad")

    if not args.no_chat:
        case(
            "chat: sound cube, SmolLM2, 8 tokens (baseline)",
            "chat",
            str(good),
            "-m",
            "topic 3?",
            "--max-new-tokens",
            "8",
            "--no-remember",
            "--greedy",
        )
        evil = tmp / "evil"
        memos("init", str(evil), env=env)
        _hostile_adapter(evil, env)
        case(
            "chat: adapter with r: 200000",
            "chat",
            str(evil),
            "--lora",
            "evil",
            "-m",
            "hi",
            "--max-new-tokens",
            "8",
            "--no-remember",
        )
    print(f"\n(load average {os.getloadavg()[0]:.1f}; workdir {tmp}, removed)")
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


def _hostile_adapter(cube: Path, env: dict[str, str]) -> None:
    """lora/evil/: a config with r: 200000 (tensors of rank 4) for the default model, sha256s recorded."""
    code = f"""
import hashlib, json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from memos_cli.cube.bundle import Cube
from memos_cli.models.lm import load_lm
from memos_cli.cube.entries import LoraEntry
cube = Cube.open({str(cube)!r})
folder = cube.path / "lora" / "evil"
folder.mkdir(parents=True)
(folder / "adapter_config.json").write_text(json.dumps({{"peft_type": "LORA", "r": 200000, "lora_alpha": 16,
    "target_modules": ["q_proj"], "base_model_name_or_path": "x", "task_type": "CAUSAL_LM"}}))
save_file({{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 576),
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(576, 4)}},
    str(folder / "adapter_model.safetensors"))
with cube.transaction(actor="bench", op="distill") as tx:
    tx.manifest.lora["evil"] = LoraEntry.from_dict("evil", {{"base_model_fingerprint": load_lm(None).fingerprint,
        "files": {{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}},
        "memories": []}})
    tx.touch_manifest()
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=env["WORK"])


if __name__ == "__main__":
    main()
