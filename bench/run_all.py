"""Run every benchmark in turn (make bench). Each prints its own figures; see bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "locomo.py",
    "throughput.py",
    "fuse_bench.py",
    "kv_bench.py",
    "latency.py",
    "distill_bench.py",
    "fuse_lora_bench.py",
]

if __name__ == "__main__":
    failed = []
    for script in SCRIPTS:
        if not (HERE / script).exists():
            continue
        print(f"\n===== {script}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)]).returncode != 0:
            failed.append(script)
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
