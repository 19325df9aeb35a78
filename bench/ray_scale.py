"""Embedding throughput: one process vs --engine ray on 1 and 2 local nodes, at two input sizes.

For each configuration the job time at two sizes n1 < n2 separates the fixed cost from the rate:
    rate = (n2 - n1) / (t2 - t1),  fixed = t1 - n1 / rate
(the Ray figures are for an already-running cluster: connect, start the actors, load the model on
them, then embed). Each node gets one CPU (``--num-cpus 1``) and the single-process baseline runs
torch on one thread, so "efficiency" is the rate per CPU relative to one process on one CPU.

The model of N real nodes (c CPUs each) checked against these figures:
    time(n) = fixed + n / (N * c * r1 * e),   fixed = connect + max over actors of (start + model load)
where r1 is the one-process rate per CPU and e the per-CPU efficiency measured here (chunks of 512 texts
travel as ~0.8 MB of vectors back, which is noise next to ~2 s of compute per chunk). It predicts the
two-node rate from the one-node one as 2x; the table prints both.

Usage: python bench/ray_scale.py [--sizes 1024 3072] [--out results.json]
Starts its own head/worker nodes (own ports and temp dir, token auth) and stops them by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = secrets.token_hex(16)
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ports() -> list[str]:
    args = []
    for name in ("node-manager", "object-manager", "metrics-export", "dashboard-agent-listen", "dashboard-agent-grpc"):
        args += [f"--{name}-port", str(_free_port())]
    return [*args, "--runtime-env-agent-port", str(_free_port())]


class LocalCluster:
    """A head (and optionally one worker node) on this machine, one CPU each; stopped by PID."""

    def __init__(self, nodes: int) -> None:
        self.temp = Path("/tmp") / f"memos-rb-{secrets.token_hex(4)}"
        self.temp.mkdir()
        self.token = TOKEN  # one per process: Ray reads RAY_AUTH_TOKEN once
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONPATH=str(REPO),
            HF_HUB_OFFLINE="1",
        )
        ray_bin = str(Path(sys.executable).parent / "ray")
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        head = [ray_bin, "start", "--head", "--port", str(port), "--include-dashboard=false", "--temp-dir"]
        head += [str(self.temp), "--dashboard-port", str(_free_port())]
        self.procs = [self._spawn([*head, *common, *_ports()], "head")]
        deadline = time.monotonic() + 180
        while b"Ray runtime started" not in (self.temp / "head.log").read_bytes():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError((self.temp / "head.log").read_text()[-2000:])
            time.sleep(0.5)
        for i in range(nodes - 1):
            self.procs.append(self._spawn([ray_bin, "start", "--address", self.address, *common, *_ports()], f"w{i}"))
        self.nodes = nodes

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.temp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        leftovers = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if f"RAY_AUTH_TOKEN={self.token}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                        leftovers.append(int(entry.name))
                except OSError:
                    pass
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _texts(n: int) -> list[str]:
    data = REPO / "bench" / "data"
    lines: list[str] = []
    for path in sorted(data.glob("*.jsonl")) if data.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                text = json.loads(line).get("text")
            except (ValueError, AttributeError):
                continue
            if isinstance(text, str) and text.strip():
                lines.append(text)
    base = lines or [f"Note {i}: we talked about the launch and " + "more detail " * (i % 23) for i in range(997)]
    return [f"{base[i % len(base)]} ({i})" for i in range(n)]


def _local(sizes: list[int]) -> dict[str, float]:
    """One process, torch on one thread (so: the rate of one CPU)."""
    code = (
        "import json,sys,time\n"
        "from bench.ray_scale import _texts\n"
        "from memos_cli.models.embedder import load_embedder\n"
        "e=load_embedder(); e.encode(_texts(64)); out={}\n"
        "for n in json.loads(sys.argv[1]):\n"
        "    t=time.perf_counter(); e.encode(_texts(n)); out[n]=time.perf_counter()-t\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, MEMOS_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(sizes)], env=env, capture_output=True, text=True)
    times = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    return _fit(sizes, times, loaded=0.0)


def _ray(nodes: int, sizes: list[int]) -> dict[str, float]:
    cluster = LocalCluster(nodes)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token, PYTHONPATH=str(REPO))
    try:
        import ray

        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        deadline = time.monotonic() + 180
        while len([n for n in ray.nodes() if n.get("Alive")]) < nodes and time.monotonic() < deadline:
            time.sleep(0.5)
        from memos_cli.engine.distributed import EngineOptions, make_engine

        times, fixed = {}, []
        for n in sizes:
            engine = make_engine(EngineOptions("ray", cluster.address, nodes))
            assert engine is not None
            t = time.perf_counter()
            engine.encode(_texts(n))
            times[n] = time.perf_counter() - t
            fixed.append(engine.stats.fixed_seconds)
            used = engine.stats.nodes_used
            engine.close()
        ray.shutdown()
        result = _fit(sizes, times, loaded=sum(fixed) / len(fixed))
        result["nodes_used"] = used
        return result
    finally:
        cluster.stop()


def _fit(sizes: list[int], times: dict[int, float], *, loaded: float) -> dict[str, float]:
    n1, n2 = sizes
    rate = (n2 - n1) / max(times[n2] - times[n1], 1e-9)
    return {
        "seconds": {str(n): round(times[n], 2) for n in sizes},
        "rate": round(rate, 1),
        "fixed_seconds": round(times[n1] - n1 / rate, 2),
        "measured_start_seconds": round(loaded, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1024, 3072])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}"}
    results["local_1cpu"] = local = _local(args.sizes)
    results["ray_1node"] = one = _ray(1, args.sizes)
    results["ray_2nodes"] = two = _ray(2, args.sizes)
    results["efficiency_per_cpu"] = {
        "ray_1node": round(float(one["rate"]) / float(local["rate"]), 2),
        "ray_2nodes": round(float(two["rate"]) / (2 * float(local["rate"])), 2),
    }
    results["model_2nodes_rate"] = round(2 * float(one["rate"]), 1)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
