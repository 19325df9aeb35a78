"""Running the heavy parts (embedding, batch ranking) on a Ray cluster, with the same results as locally.

Why Ray core (actors and tasks) rather than Ray Data: the work is a list of equal chunks whose results
come back to one driver, which commits them; a pool of actors that each load the embedder once does
exactly that, and Ray Data would add ~100 MB of dependencies (pyarrow, pandas) for no gain here.

The contract that keeps results identical:

- the embedder's batching plan (``minilm.PLAN_CHUNK``) makes a text's vector depend only on its chunk,
  and every Ray task is exactly one chunk of the plan, so the vectors are byte-identical to a local run;
- workers only compute: they receive texts (or rank inputs) and return arrays. They never write a cube;
  the driver commits the results with the usual journaled transaction. (A shard actor reads its shard of
  a sharded index where the driver found it, read-only through cube.io, if it sees the very files the
  driver saw; otherwise the driver sends it that shard's bytes. Its answers are the same either way.);
- each finished chunk is staged under the cube's ``.memos/stage/`` (content-addressed by the embedder
  fingerprint and the chunk's texts, validated on reuse), so a rerun after a killed driver or a lost
  node skips the chunks that were done; a chunk whose worker fails is retried on a fresh actor.

Ray is an optional extra (``memos-cli[ray]``): nothing here imports it unless ``--engine ray`` is asked for.

Why one module of ~430 lines: it is the only place that imports Ray; splitting it would spread that
import (and the cluster's failure handling) over several modules.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout
from memos_cli.errors import MemosError, UsageError

ENGINES = ("local", "ray")
RAY_HINT = "install the extra: pip install 'memos-cli[ray]' (make install does it for development)"
STAGE_DIR = "stage"
MAX_ATTEMPTS = 3  # a chunk whose worker dies is retried on a fresh actor this many times in all


class EngineUnavailable(UsageError):
    """``--engine ray`` without Ray installed (a usage error: exit 2, with the install hint)."""

    def __init__(self) -> None:
        super().__init__("{engine} ray needs Ray, which is not installed", hint=RAY_HINT, options=("engine",))


class ClusterError(MemosError):
    """The cluster could not be reached, or a chunk failed on every attempt."""


@dataclass
class EngineOptions:
    """Where the heavy work runs: ``--engine``, ``--address``, ``--actors`` (or MEMOS_ENGINE, MEMOS_RAY_ADDRESS)."""

    engine: str = "local"
    address: str | None = None
    actors: int | None = None

    @classmethod
    def resolve(cls, engine: str | None, address: str | None, actors: int | None) -> EngineOptions:
        engine = engine or os.environ.get("MEMOS_ENGINE") or "local"
        if engine not in ENGINES:
            raise UsageError(f"{{engine}} must be one of {', '.join(ENGINES)}", options=("engine",))
        if actors is not None and actors < 1:
            raise UsageError("{actors} must be at least 1", options=("actors",))
        return cls(engine, address or os.environ.get("MEMOS_RAY_ADDRESS") or None, actors)


@dataclass
class JobStats:
    """What a distributed job reports: on stderr for people, under ``engine`` in ``--json``."""

    engine: str = "ray"
    nodes: int = 0  # alive nodes in the cluster
    nodes_used: int = 0  # nodes whose actors finished at least one chunk
    actors: int = 0
    fixed_seconds: float = 0.0  # connect + start actors + load the model on them
    compute_seconds: float = 0.0
    items: int = 0  # texts embedded (or queries ranked) by the cluster
    chunks: int = 0
    staged_reused: int = 0  # chunks found staged by an earlier (interrupted) run
    retried: int = 0
    chunks_by_node: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items()}
        out["rate"] = round(self.rate, 1)
        out["fixed_seconds"] = round(self.fixed_seconds, 3)
        out["compute_seconds"] = round(self.compute_seconds, 3)
        return out

    def line(self) -> str:
        return (
            f"ray: {self.nodes} node(s) ({self.nodes_used} used), {self.actors} actor(s), "
            f"fixed {self.fixed_seconds:.1f}s, {self.items} items at {self.rate:.0f}/s"
            + (f", {self.staged_reused} staged chunk(s) reused" if self.staged_reused else "")
            + (f", {self.retried} retried" if self.retried else "")
        )


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EngineUnavailable() from None
    return ray


class _Worker:
    """One Ray actor: loads the embedder once, then embeds chunks and ranks queries. Touches no cube."""

    def __init__(self, fingerprint: str, embedder_path: str | None) -> None:
        from memos_cli.models.embedder import load_embedder

        self.embedder = load_embedder(embedder_path)
        if self.embedder.fingerprint != fingerprint:  # one model everywhere, or the results differ
            raise RuntimeError(f"this node's embedder is {self.embedder.fingerprint}, the driver's {fingerprint}")
        self._rank_state: Any = None

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def encode(self, texts: list[str]) -> tuple[str, np.ndarray]:
        return self.node(), self.embedder.encode(texts)

    def query_vectors(self, texts: list[str], mode: str) -> tuple[str, np.ndarray]:
        """Each query's vector as ``rank`` computes it (one text at a time: the same bytes as local)."""
        if mode == "lexical":
            return self.node(), np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        return self.node(), np.stack([self.embedder.encode([text])[0] for text in texts])

    def rank(self, payload: Any, queries: list[Any], k: int, mode: str) -> tuple[str, list[Any]]:
        """Per query, per cube view, the ranked ``(row, score)`` list, exactly as ``Searcher`` computes it.
        Each query is ``(text, [(lexical text, periods, k) or None per view])`` (``Searcher._plan``)."""
        out = []
        for text, plans in queries:
            vec = (
                np.zeros(self.embedder.dim, dtype=np.float32) if mode == "lexical" else self.embedder.encode([text])[0]
            )
            per_view: list[list[tuple[int, float]]] = []
            for (ranker, mask), plan in zip(payload, plans, strict=True):
                if ranker is None or plan is None:
                    per_view.append([])
                    continue
                lexical, periods, view_k = plan
                # index.Unsharded (ranking.rank); a sharded view is ranked by shard actors (shard_actors.py)
                per_view.append(ranker.rank(lexical, vec, k=view_k, mode=mode, mask=mask, periods=periods))
            out.append(per_view)
        return self.node(), out


class RayEngine:
    """A pool of embedder actors on a Ray cluster; ``encode`` duck-types ``Embedder.encode``."""

    def __init__(self, options: EngineOptions, *, fingerprint: str, dim: int, embedder_path: str | None = None) -> None:
        self.options = options
        self.fingerprint = fingerprint
        self.dim = dim
        self.embedder_path = embedder_path
        # Where finished chunks are staged, as (root, rel) for cube.io (no link followed): set per cube by
        # the caller to (<cube>, ".memos/stage") with ``stage_in``; None stages nothing.
        self.stage: tuple[Path, str] | None = None
        self.stats = JobStats()
        self._ray: Any = None
        self._actors: list[Any] = []
        self._remote: Any = None
        self._node_names: dict[str, str] = {}
        self._local: Any = None
        self.shard_peak_rss: list[int] = []  # the last sharded batch's shard actors, bytes each

    # ------------------------------------------------------------------ the cluster
    def start(self) -> None:
        """Connect and start the actors (once); the time is the job's fixed cost."""
        if self._actors:
            return
        started = time.perf_counter()
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.options.address,
                    logging_level="ERROR",
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(
                    f"cannot reach the Ray cluster at {self.options.address or 'a new local instance'}: {exc}",
                    hint="check {address} / MEMOS_RAY_ADDRESS (and RAY_AUTH_TOKEN where token auth is on)",
                    options=("address",),
                ) from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.stats.nodes = len(nodes)
        cpus = int(sum(n.get("Resources", {}).get("CPU", 0) for n in nodes))
        count = self.options.actors or max(1, cpus)
        self._remote = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
        self._actors = [self._new_actor() for _ in range(count)]
        ray.get([a.node.remote() for a in self._actors])  # wait until every actor has loaded the model
        self.stats.actors = count
        self.stats.fixed_seconds += time.perf_counter() - started

    def _new_actor(self) -> Any:
        # SPREAD: actors go to different nodes first, so a two-node cluster uses both.
        return self._remote.options(scheduling_strategy="SPREAD").remote(self.fingerprint, self.embedder_path)

    def _count_node(self, node: str) -> None:
        short = self._node_names.setdefault(node, f"node{len(self._node_names) + 1}")
        self.stats.chunks_by_node[short] = self.stats.chunks_by_node.get(short, 0) + 1
        self.stats.nodes_used = len(self.stats.chunks_by_node)

    def _run(self, jobs: list[tuple[int, Callable[[Any], Any]]], done: Callable[[int, Any], None]) -> None:
        """Run ``jobs`` (key, submit-on-actor) over the actor pool, at most two in flight per actor;
        a job whose actor dies is resubmitted on a fresh actor, up to ``MAX_ATTEMPTS`` in all."""
        ray = self._ray
        from ray.exceptions import RayActorError, RayTaskError

        pending = list(reversed(jobs))
        attempts: dict[int, int] = {}
        flight: dict[Any, tuple[int, Callable[[Any], Any], int]] = {}
        load = [0] * len(self._actors)

        def submit() -> None:
            while pending and min(load) < 2:
                slot = load.index(min(load))
                key, fn = pending.pop()
                attempts[key] = attempts.get(key, 0) + 1
                flight[fn(self._actors[slot])] = (key, fn, slot)
                load[slot] += 1

        submit()
        while flight:
            ready, _ = ray.wait(list(flight), num_returns=1)
            ref = ready[0]
            key, fn, slot = flight.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                if attempts[key] >= MAX_ATTEMPTS:
                    raise ClusterError(f"chunk {key} failed {MAX_ATTEMPTS} times: {exc}") from None
                self.stats.retried += 1
                if isinstance(exc, RayActorError) or not alive(ray, self._actors[slot]):
                    self._actors[slot] = self._new_actor()
                pending.append((key, fn))
            else:
                self._count_node(result[0])
                done(key, result[1])
            submit()

    # ------------------------------------------------------------------ embedding
    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """The same vectors as ``Embedder.encode(texts)``: one Ray task per chunk of the batching plan."""
        from memos_cli.models.minilm import NUMPY_MAX_TEXTS, PLAN_CHUNK

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if len(texts) <= NUMPY_MAX_TEXTS:  # one query: a round trip costs more than it; same code path
            vectors: np.ndarray = self._local_embedder().encode(texts, batch_size=batch_size, progress=progress)
            return vectors
        starts = list(range(0, len(texts), PLAN_CHUNK))
        jobs: list[tuple[int, Callable[[Any], Any]]] = []
        keys: dict[int, str] = {}
        for start in starts:
            chunk = texts[start : start + PLAN_CHUNK]
            keys[start] = self._chunk_key(chunk)
            staged = self._load_staged(keys[start], len(chunk))
            if staged is not None:
                out[start : start + len(chunk)] = staged
                self.stats.staged_reused += 1
                if progress is not None:
                    progress(len(chunk))
                continue
            jobs.append((start, _call("encode", chunk)))
        if not jobs:
            return out
        self.start()
        began = time.perf_counter()

        def done(start: int, vectors: np.ndarray) -> None:
            vectors = np.asarray(vectors, dtype=np.float32)
            out[start : start + len(vectors)] = vectors
            self._stage(keys[start], vectors)
            self.stats.items += len(vectors)
            self.stats.chunks += 1
            if progress is not None:
                progress(len(vectors))

        self._run(jobs, done)
        self.stats.compute_seconds += time.perf_counter() - began
        return out

    def _local_embedder(self) -> Any:
        if self._local is None:
            from memos_cli.models.embedder import load_embedder

            self._local = load_embedder(self.embedder_path)
        return self._local

    # ------------------------------------------------------------------ staging
    def _chunk_key(self, chunk: list[str]) -> str:
        digest = hashlib.sha256(self.fingerprint.encode())
        for text in chunk:
            data = text.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()[:40]

    @property
    def stage_dir(self) -> Path | None:
        return None if self.stage is None else self.stage[0] / self.stage[1]

    @stage_dir.setter
    def stage_dir(self, folder: Path | None) -> None:  # a folder outside any cube (tests, tools)
        self.stage = None if folder is None else (Path(folder).parent, Path(folder).name)

    def stage_in(self, cube_path: Path) -> None:
        """Stage this cube's chunks in its ``.memos/stage`` (derived data, confined to the cube)."""
        self.stage = (cube_path, f"{layout.DERIVED_DIR}/{STAGE_DIR}")

    def _load_staged(self, key: str, count: int) -> np.ndarray | None:
        """A staged chunk, if one exists and is whole: the right size, finite unit vectors."""
        if self.stage is None:
            return None
        root, rel = self.stage[0], f"{self.stage[1]}/{key}.f32"
        try:
            data = cube_io.read_bytes(root, rel, limit=count * self.dim * 4)
        except (OSError, MemosError):  # missing, a link, too large: not a usable chunk
            data = None
        if data is None or len(data) != count * self.dim * 4:
            self._drop_staged(rel)
            return None
        vectors = np.frombuffer(data, dtype=np.float32).reshape(count, self.dim)
        norms = np.linalg.norm(vectors, axis=1)
        if not np.all(np.isfinite(vectors)) or not np.all(np.abs(norms - 1) < 1e-3):
            self._drop_staged(rel)
            return None
        return vectors

    def _drop_staged(self, rel: str) -> None:
        if self.stage is not None:
            try:
                cube_io.remove(self.stage[0], rel)
            except (OSError, MemosError):
                pass  # derived data: a leftover is only a cache miss

    def _stage(self, key: str, vectors: np.ndarray) -> None:
        if self.stage is None:
            return
        root, folder = self.stage
        try:
            cube_io.mkdirs(root, folder)
            cube_io.atomic_write(root, f"{folder}/{key}.f32", np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        except (OSError, MemosError):
            pass  # staging only saves work after a crash: a full disk or a link in its place skips it

    def clear_stage(self) -> None:
        """Drop the staged chunks once their results are committed (they are derived data anyway)."""
        if self.stage is None:
            return
        root, folder = self.stage
        try:
            names = cube_io.listdir(root, folder)
        except (OSError, MemosError):
            return
        for name in names:
            if name.endswith(".f32"):
                self._drop_staged(f"{folder}/{name}")

    # ------------------------------------------------------------------ batch ranking
    def rank_batch(
        self, payload: list[Any], queries: list[Any], *, k: int, mode: str, per_task: int = 64
    ) -> list[list[list[tuple[int, float]]]]:
        """Rank ``queries`` on the cluster; ``payload`` is one ``(ranker, mask)`` per cube view
        (``CubeIndex.ranker``). An unsharded view is shipped whole to the embedder actors, which split the
        queries; a sharded one stays here as its coordinator, and its shards go to shard actors
        (``shard_actors.rank_sharded``). Each query is ``(text, [(lexical text, periods, k) or None per view])``."""
        from memos_cli.engine.plaintext.sharded import ShardedIndex
        from memos_cli.engine.shard_actors import rank_sharded

        self.start()
        ray = self._ray
        began = time.perf_counter()
        sharded = {i for i, (ranker, _mask) in enumerate(payload) if isinstance(ranker, ShardedIndex)}
        plain = [(None, None) if i in sharded else view for i, view in enumerate(payload)]
        out: list[list[list[tuple[int, float]]]] = [[[] for _ in payload] for _ in queries]
        if any(ranker is not None for ranker, _mask in plain):
            ref = ray.put(plain)  # shipped to each node once
            results: dict[int, list[Any]] = {}
            jobs = [
                (start, _call("rank", ref, queries[start : start + per_task], k, mode))
                for start in range(0, len(queries), per_task)
            ]

            def done(start: int, ranked: list[Any]) -> None:
                results[start] = ranked
                self.stats.items += len(ranked)
                self.stats.chunks += 1

            self._run(jobs, done)
            out = [r for start in sorted(results) for r in results[start]]
        if sharded:
            vectors = self._query_vectors([text for text, _plans in queries], mode, per_task)
            for i in sorted(sharded):
                ranker, mask = payload[i]
                ranked = rank_sharded(self, ranker, mask, vectors, [plans[i] for _text, plans in queries], mode)
                for per_view, rows in zip(out, ranked, strict=True):
                    per_view[i] = rows
            if len(sharded) == len(payload):
                self.stats.items += len(queries)
        self.stats.compute_seconds += time.perf_counter() - began
        return out

    def _query_vectors(self, texts: list[str], mode: str, per_task: int) -> np.ndarray:
        parts: dict[int, np.ndarray] = {}
        jobs = [
            (start, _call("query_vectors", texts[start : start + per_task], mode))
            for start in range(0, len(texts), per_task)
        ]
        self._run(jobs, lambda start, vectors: parts.__setitem__(start, np.asarray(vectors, dtype=np.float32)))
        return np.concatenate([parts[start] for start in sorted(parts)])

    def close(self) -> None:
        """Release the actors (the cluster itself keeps running; it is never stopped from here)."""
        if self._ray is not None:
            for actor in self._actors:
                try:
                    self._ray.kill(actor)
                except Exception:  # noqa: BLE001 - an actor that is already gone is fine
                    pass
        self._actors = []


def _call(method: str, *args: Any) -> Callable[[Any], Any]:
    """Submit ``method(*args)`` on whichever actor the pool picks."""
    return lambda actor: getattr(actor, method).remote(*args)


def alive(ray: Any, actor: Any, probe: str = "node") -> bool:
    """Whether ``actor`` answers its cheap ``probe`` method within 30 s (embedder actors: ``node``,
    shard actors: ``loaded``)."""
    try:
        ray.get(getattr(actor, probe).remote(), timeout=30)
    except Exception:  # noqa: BLE001 - any failure means: replace it
        return False
    return True


def make_engine(options: EngineOptions | None) -> RayEngine | None:
    """None for the local engine; a (not yet started) Ray engine otherwise. Fails fast without Ray."""
    if options is None or options.engine == "local":
        return None
    import_ray()
    from memos_cli.models.embedder import embedder_identity

    path = os.environ.get("MEMOS_EMBEDDER") or None
    ident = embedder_identity(path)
    return RayEngine(options, fingerprint=ident.fingerprint, dim=ident.dim, embedder_path=path)
