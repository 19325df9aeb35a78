"""Applying a plan step by step, each one journaled transaction with its audit entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from memos_cli.cube.bundle import Cube, utc_now
from memos_cli.engine.schedule.plan import Plan, Step, make_plan, rule_counts
from memos_cli.engine.schedule.policy import SECTION
from memos_cli.errors import InvalidCube, LockTimeout, MemosError


@dataclass
class StepResult:
    step: Step
    outcome: str  # done, kept (adapter rejected, old one stays), skipped, failed
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.step.to_dict(), "outcome": self.outcome, "message": self.message}


@dataclass
class ScheduleReport:
    plan: Plan
    dry_run: bool
    results: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.outcome == "failed" for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "dry_run": self.dry_run,
            "results": [r.to_dict() for r in self.results],
            "failed": self.failed,
        }


Notify = Callable[[str], None]


def wait_for_lock(cube: Cube, wait: float, notify: Notify) -> None:
    """Block until no other writer holds the cube lock (never breaking it), for at most ``wait`` s."""
    from filelock import Timeout

    lock = cube.file_lock()  # checked: never a link
    lock.timeout = 0
    try:
        lock.acquire()
        lock.release()
        return
    except Timeout:
        notify("another memos process holds the cube lock: waiting for it")
    lock.timeout = wait
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeout(cube.path, wait) from None
    lock.release()


def run(
    cube: Cube,
    *,
    now: float | None = None,
    dry_run: bool = False,
    model: str | None = None,
    actor: str | None = None,
    wait: float = 600.0,
    notify: Notify | None = None,
    progress: Any = None,
) -> ScheduleReport:
    """Plan, then (unless ``dry_run``) apply each step in its own transaction. A failed step is
    reported and the others still run; ``report.failed`` says whether any failed."""
    say = notify or (lambda message: None)
    who = cube.check(actor, "read" if dry_run else "write")
    plan = make_plan(cube, now=now)
    report = ScheduleReport(plan=plan, dry_run=dry_run)
    if dry_run:
        return report
    for number, step in enumerate(plan.steps, start=1):
        say(f"step {number}/{len(plan.steps)}: {step.kind} {step.action} {step.name or ''}: {step.reason}")
        try:
            wait_for_lock(cube, wait, say)
            fresh = Cube.open(cube.path)
            if step.kind == "archive":
                result = _archive(fresh, step, plan, who)
            elif step.kind == "activation":
                result = _activation(fresh, step, who, model)
            else:
                result = _parametric(fresh, step, plan, who, model, progress)
        except MemosError as exc:
            result = StepResult(step, "failed", exc.message)
        except (OSError, ValueError, RuntimeError) as exc:  # a model or disk failure: report, go on
            result = StepResult(step, "failed", f"{type(exc).__name__}: {exc}")
        say(f"  {result.outcome}: {result.message}")
        report.results.append(result)
    return report


def _archive(cube: Cube, step: Step, plan: Plan, actor: str) -> StepResult:
    done: list[str] = []
    with cube.transaction(actor=actor, op=SECTION) as tx:
        state = cube.read_state()
        now = utc_now()
        for memory_id in step.ids:
            record = state.current.get(memory_id)
            # Changed since the plan was made (another writer): leave it to the next run.
            if record is None or record.status != "active" or record.version != step.detail["versions"][memory_id]:
                continue
            tx.add(replace(record, version=record.version + 1, status="archived", op=SECTION, actor=actor, created=now))
            done.append(memory_id)
        if done:
            reasons = rule_counts(plan.archive_reasons[i] for i in done)
            tx.log(done, f"scheduler archived {len(done)} memories", step="archive", reasons=reasons)
    skipped = len(step.ids) - len(done)
    return StepResult(
        step, "done", f"archived {len(done)} memories" + (f" ({skipped} changed meanwhile, left)" if skipped else "")
    )


def _activation(cube: Cube, step: Step, actor: str, model: str | None) -> StepResult:
    from memos_cli.engine.activation.promote import promote_to_activation
    from memos_cli.engine.select import Selection

    report = promote_to_activation(
        cube,
        Selection(ids=list(step.ids)),
        name=step.name or "hot",
        model=model,
        budget=step.detail.get("budget"),
        dtype=step.detail.get("dtype", "float32"),
        actor=actor,
        replace=True,
        op=SECTION,
    )
    left = f", {len(report.skipped)} left out by the budget" if report.skipped else ""
    return StepResult(step, "done", f"kv/{report.name}: {len(report.memories)} memories, {report.tokens} tokens{left}")


def _parametric(cube: Cube, step: Step, plan: Plan, actor: str, model: str | None, progress: Any) -> StepResult:
    from memos_cli.engine.parametric.distill import DistillReport, distill
    from memos_cli.engine.select import Selection

    par = plan.policy["parametric"]

    def accept(report: DistillReport) -> str | None:
        recall = report.recall_after.exact
        if recall < par["min_recall"]:
            return f"recall {recall:.0%} < {par['min_recall']:.0%}"
        if report.forgetting_pct > par["max_forgetting_pct"]:
            return f"forgetting {report.forgetting_pct:+.1f}% > {par['max_forgetting_pct']:g}%"
        return None

    name = step.name or "stable"
    report = distill(
        cube,
        Selection(ids=list(step.ids)),
        name=name,
        model=model,
        rank=par["rank"],
        steps=par["steps"],
        lr=par["lr"],
        actor=actor,
        progress=progress,
        accept=accept,
        op=SECTION,
    )
    metrics = report.metrics()
    if report.rejected is None:
        return StepResult(
            step,
            "done",
            f"lora/{name}: {len(report.memories)} memories, recall {metrics['recall_after']:.0%}, "
            f"held-out loss {metrics['forgetting_pct']:+.1f}%",
        )
    held = "the old adapter stays" if name in cube.manifest.lora else "no adapter written"
    why = f"new adapter refused: {report.rejected}; {held}"
    with Cube.open(cube.path).transaction(actor=actor, op=SECTION) as tx:
        tx.log(
            [ref.split("@")[0] for ref in report.memories],
            f"scheduler kept adapter {name}: {why}",
            step="parametric",
            name=name,
            rejected=step.detail["digest"],
            why=report.rejected,
            metrics=metrics,
        )
    return StepResult(step, "kept", why)


def summary(cube: Cube, *, now: float | None = None) -> dict[str, Any]:
    """For ``stats``: the hot set, what is stale, what is due (or the policy's error)."""
    try:
        plan = make_plan(cube, now=now)
    except InvalidCube as exc:
        return {"error": exc.problem}
    return {
        "hot": plan.hot,
        "stale": plan.stale,
        "due": [f"{s.kind} {s.action}{' ' + s.name if s.name else ''}: {s.reason}" for s in plan.steps],
        "qualifying": len(plan.qualifying),
    }
