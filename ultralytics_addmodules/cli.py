"""Pieces shared by the ``python -m ultralytics_addmodules`` subcommands: run folders, tables, one-line errors.

Every subcommand writes its files into a numbered folder under ``runs/<command>/`` (``runs/compare/1``,
``2``, ...), prints a table on screen, and answers bad input with one bilingual line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .messages import bilingual


def new_run_dir(project: Path | str, name: str | None = None) -> Path:
    """``project/name`` (made unique with a suffix), or the next free number ``project/1``, ``project/2``..."""
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    if name:
        candidate, k = project / name, 2
        while candidate.exists():
            candidate, k = project / f"{name}{k}", k + 1
    else:
        taken = [int(p.name) for p in project.iterdir() if p.is_dir() and p.name.isdigit()]
        candidate = project / str(max(taken, default=0) + 1)
    candidate.mkdir()
    return candidate


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[bool] | None = None) -> str:
    """A Markdown table (also readable on a terminal); ``numeric`` columns are right-aligned."""
    numeric = list(numeric) if numeric is not None else [False] + [True] * (len(header) - 1)
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def fail(command: str, zh: str, en: str) -> int:
    """Print one bilingual error line for ``command`` on stderr; returns exit code 2 (bad input)."""
    print(f"{command}: {bilingual('错误：' + zh, 'error: ' + en)}", file=sys.stderr)
    return 2
