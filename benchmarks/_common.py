"""Shared by the benchmark scripts: the markdown table each of them writes, the code version a cell records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def code_version() -> str:
    """The commit the benchmark runs (``+dirty`` when ``autoprompt/`` has uncommitted changes): the cells of
    one table may come from different versions of the code, and each says which."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "autoprompt") else "")
