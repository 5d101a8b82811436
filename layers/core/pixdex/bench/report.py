"""docs/benchmarks.md: one section per benchmark, each replaced in place by its own run."""

from __future__ import annotations

import sys
from pathlib import Path


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with ``heading`` (a '## ...' line), or append it; keep the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join([*lines[:start], *section.rstrip("\n").splitlines(), *([""] if end < len(lines) else []),
                         *lines[end:]]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def publish(section: str, path: Path, heading: str, *, write: bool) -> None:
    """Print a benchmark's section and, unless the run asked for print only, replace it in ``path``."""
    print(section)
    if write:
        write_section(path, heading, section)
        print(f"updated {path}", file=sys.stderr)
