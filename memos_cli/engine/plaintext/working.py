"""The working tier: what chat remembers of a conversation, kept apart from long-term memories.

Chat stores each turn as a ``dialogue`` memory tagged ``working`` (the model's own answers are also
tagged ``model-answer``). Retrieval leaves working memories out of ``query`` unless asked
(``--include-working``) and ranks them below long-term memories when it takes them (chat does); the
model's answers are never retrieved unless asked for by tag. The scheduler archives working memories
that nobody used for ``schedule.working.idle_days`` (docs/FORMAT.md).
"""

from __future__ import annotations

from memos_cli.cube.records import MemoryRecord

WORKING_TAG = "working"
ANSWER_TAG = "model-answer"

# How far a working memory's score is pushed down, per ranking mode: hybrid scores are in standard
# deviations of the fused score, dense ones are cosines, lexical ones BM25 (multiplied instead).
WORKING_PENALTY = {"hybrid": 1.0, "dense": 0.1}
WORKING_LEXICAL_FACTOR = 0.5


def is_working(record: MemoryRecord) -> bool:
    return WORKING_TAG in record.tags


def is_answer(record: MemoryRecord) -> bool:
    return ANSWER_TAG in record.tags


def demoted_score(score: float, mode: str) -> float:
    """A working memory's score, below a long-term memory that matched as well."""
    if mode == "lexical":
        return score * WORKING_LEXICAL_FACTOR
    return score - WORKING_PENALTY.get(mode, 1.0)
