"""Words in messages: a count with its noun in the right number (used by the CLI and audit summaries)."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 memory``, ``2 memories``, ``0 cubes``."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or (word[:-1] + 'ies' if word.endswith('y') else word + 's')}"
