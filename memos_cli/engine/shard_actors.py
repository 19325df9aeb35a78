"""Shard actors: a sharded index ranked on a Ray cluster (``query --batch --engine ray``).

Each shard of the index is held by one ``_ShardWorker`` actor, which loads it once and answers every round
of a batch's queries; the driver runs the coordinator (``ShardedIndex.steps``, in lockstep over a round
of queries) and holds only the rows' metadata and the statistics. An actor reads its shard where the
driver found it when its node sees the very files the driver saw (one machine, shared storage: its
vectors are mapped, not copied); otherwise the driver reads that one shard and sends its bytes
(shard_store.py). Either way the answers are the local ones (tests/test_ray.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memos_cli.engine.distributed import MAX_ATTEMPTS, ClusterError, alive
from memos_cli.words import plural

if TYPE_CHECKING:
    from memos_cli.engine.distributed import RayEngine
    from memos_cli.engine.plaintext.sharded import ShardedIndex


class _ShardWorker:
    """One Ray actor holding one shard of a sharded index: it loads the shard once and answers every round
    of a batch's queries. It reads the shard where the driver found it (``ShardSource``) when it sees the
    same files there; otherwise it is given the shard's bytes (``PackedShard``) and touches no cube."""

    def __init__(self, source: Any, graph: Any) -> None:
        from memos_cli.engine.plaintext.shard_store import PackedShard, open_source, unpack_shard

        self.shard = unpack_shard(source, graph) if isinstance(source, PackedShard) else open_source(source, graph)

    def loaded(self) -> bool:
        """Whether the shard loaded (False: send its bytes)."""
        return self.shard is not None

    def run(self, calls: list[tuple[int, tuple[str, tuple[Any, ...]]]]) -> list[Any]:
        """Each ``(token, (method, args))`` of one round, for the queries in flight (``Shard.call``)."""
        assert self.shard is not None, "the driver sends the bytes of a shard that did not load"
        return [self.shard.call(token, method, args) for token, (method, args) in calls]

    def peak_rss(self) -> int:
        """This actor's peak resident memory in bytes (for bench/shard_bench.py; 0 where unknown)."""
        return peak_rss()


def rank_sharded(
    engine: RayEngine,
    index: ShardedIndex,
    mask: np.ndarray,
    vectors: np.ndarray,
    plans: list[Any],
    mode: str,
    per_round: int = 16,
) -> list[list[tuple[int, float]]]:
    """Rank with ``index`` (a ``ShardedIndex``) as the coordinator here and one shard actor per shard:
    every actor loads its shard once (where it is, or from the bytes of that one shard, read here), then
    each round of ``per_round`` queries is one call per actor."""
    from ray.exceptions import RayActorError, RayTaskError

    from memos_cli.engine.plaintext.index import graph_settings
    from memos_cli.engine.plaintext.shard_store import locate_shard, pack_shard
    from memos_cli.engine.plaintext.sharded import run_steps

    ray = engine._ray
    if index.source is None:
        raise ValueError("a sharded index ranked on the cluster needs the folder it was loaded from")
    root, rel = index.source
    spread = ray.remote(num_cpus=0, max_restarts=0)(_ShardWorker).options(scheduling_strategy="SPREAD")

    def loaded(number: int, actor: Any) -> Any:
        """``actor`` with its shard loaded; where its node does not see the files, a new actor given
        this one shard's bytes, read here."""
        if ray.get(actor.loaded.remote()):
            return actor
        ray.kill(actor)
        actor = spread.remote(pack_shard(root, rel, number, index.shards[number]), graph_settings())
        ray.get(actor.loaded.remote())
        return actor

    started = time.perf_counter()
    actors = [spread.remote(locate_shard(root, rel, n, s), graph_settings()) for n, s in enumerate(index.shards)]
    try:
        actors = [loaded(number, actor) for number, actor in enumerate(actors)]
        engine.stats.fixed_seconds += time.perf_counter() - started  # like the embedder actors' start
        actors_started(actors)

        def run(rounds: list[tuple[int, Any]]) -> list[list[Any]]:
            refs = [
                actor.run.remote([(token, calls[n]) for token, calls in rounds if calls[n] is not None])
                for n, actor in enumerate(actors)
            ]
            per_shard = [iter(answers) for answers in ray.get(refs)]
            return [
                [None if calls[n] is None else next(per_shard[n]) for n in range(len(actors))]
                for _token, calls in rounds
            ]

        ranked: list[list[tuple[int, float]]] = [[] for _ in plans]
        todo = [i for i, plan in enumerate(plans) if plan is not None]
        for begin in range(0, len(todo), per_round):
            chunk = todo[begin : begin + per_round]
            # A shard actor that dies mid-round takes its queries' round-1 state with it: the chunk is
            # ranked again from its first round, on a fresh actor that loads the shard again.
            for attempt in range(1, MAX_ATTEMPTS + 1):
                steps = [
                    index.steps(
                        token, plans[i][0], vectors[i], k=plans[i][2], mode=mode, mask=mask, periods=plans[i][1]
                    )
                    for token, i in enumerate(chunk)
                ]
                try:
                    results = run_steps(steps, run)
                    break
                except (RayActorError, RayTaskError) as exc:
                    if attempt == MAX_ATTEMPTS:
                        raise ClusterError(f"a shard actor failed ({plural(attempt, 'attempt')}): {exc}") from None
                    engine.stats.retried += 1
                    for number, actor in enumerate(actors):
                        if not alive(ray, actor, "loaded"):
                            actors[number] = loaded(
                                number,
                                spread.remote(locate_shard(root, rel, number, index.shards[number]), graph_settings()),
                            )
            for i, rows in zip(chunk, results, strict=True):
                ranked[i] = rows
        engine.shard_peak_rss = ray.get([actor.peak_rss.remote() for actor in actors])
        return ranked
    except (RayActorError, RayTaskError) as exc:
        raise ClusterError(f"a shard actor failed: {exc}") from None
    finally:
        for actor in actors:
            ray.kill(actor)


def actors_started(actors: list[Any]) -> None:
    """Called once the shard actors hold their shards; a seam for the fault-injection test (it kills one,
    tests/test_ray.py), nothing else."""


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, which (unlike ``ru_maxrss``) does not carry
    the parent's peak over a fork and exec; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
