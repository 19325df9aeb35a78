"""The memory scheduler: one plan from the cube's ``schedule:`` policy, its usage log and its memories,
applied step by step.

The policy lives in ``cube.yaml`` (docs/FORMAT.md, "schedule"); every key has a default, so a cube
without the section is scheduled too (archive by ``expires``, working memories idle 14 days). A plan has
at most three steps, in this order, each one journaled transaction with an audit entry ``op: schedule``:

1. **archive**: memories past a per-type time-to-live, unused for ``unused_days``, past their own
   ``expires`` time, and working memories (chat turns) nobody used for ``working.idle_days``;
2. **activation**: (re)build KV snapshot NAME of the hottest memories (decayed use score), when it is
   missing, stale, or the hot set changed by more than ``rebuild_share``;
3. **parametric**: distill the memories used at least ``min_uses`` times over at least ``min_days``
   days (or tagged with one of ``tags``) into adapter NAME once ``min_new`` of them are not in it yet;
   the new adapter replaces the old only if its measured recall and forgetting pass the thresholds,
   otherwise the old one stays and the audit log says why (and the same memories are not retried).

Planning reads no index and loads no model: a cube with nothing due is answered in well under a second
(``bench/schedule_bench.py``). The plan is computed against the archive step's outcome, so a second run
right after the first finds nothing to do.
"""

from memos_cli.engine.schedule.apply import ScheduleReport, StepResult, run, summary, wait_for_lock
from memos_cli.engine.schedule.plan import ROWS_CACHE, Plan, Step, explain, make_plan, parse_now, scan
from memos_cli.engine.schedule.policy import DAY, INIT_TEXT, SCHEMA, SECTION, load_policy, write_init

__all__ = [
    "DAY",
    "INIT_TEXT",
    "ROWS_CACHE",
    "SCHEMA",
    "SECTION",
    "Plan",
    "ScheduleReport",
    "Step",
    "StepResult",
    "explain",
    "load_policy",
    "make_plan",
    "parse_now",
    "run",
    "scan",
    "summary",
    "wait_for_lock",
    "write_init",
]
