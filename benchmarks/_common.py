"""Shared by the benchmark scripts: the markdown table each of them writes."""

from __future__ import annotations

import sys
from pathlib import Path


def write_markdown(out: str | Path, title: str, notes: str, header: list[str], rows: list[list[str]]) -> str:
    """Write (and return) a markdown report: title, the exact command, notes, one table."""
    lines = [
        f"# {title}",
        "",
        "Command: `" + " ".join(["python", *sys.argv]) + "`",
        "",
        notes,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return text
