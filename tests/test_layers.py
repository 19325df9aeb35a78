"""The layers import only downward: cli -> engine -> cube, with models beside (models may use cube's
records and errors, never engine or cli). docs/ARCHITECTURE.md draws the same picture."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "memos_cli"
FORBIDDEN = {
    "cube": ("memos_cli.engine", "memos_cli.cli", "memos_cli.models"),
    "models": ("memos_cli.engine", "memos_cli.cli"),
    "engine": ("memos_cli.cli",),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_no_import_runs_upward() -> None:
    wrong = []
    for layer, banned in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for line, module in _imports(path):
                if module.startswith(banned):
                    wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
    assert any(m.startswith("memos_cli.models") for p in (PACKAGE / "engine").rglob("*.py") for _, m in _imports(p))
