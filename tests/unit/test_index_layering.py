"""The cluster modules import in one direction: core <- dialect <- composition (no circle)."""

from __future__ import annotations

import ast
from pathlib import Path

INDEX = Path(__file__).resolve().parents[2] / "layers" / "core" / "pixdex" / "index"


def imported_modules(name: str) -> set[str]:
    """Every pixdex.index module a file imports, at module level or inside functions."""
    tree = ast.parse((INDEX / f"{name}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pixdex.index":
                found.update(f"pixdex.index.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("pixdex.index.")}


def test_the_core_imports_no_dialect_and_no_composition() -> None:
    for core in ("opensearch", "requests", "mapping"):
        assert imported_modules(core).isdisjoint({"pixdex.index.elasticsearch", "pixdex.index.clusters"}), core


def test_the_elasticsearch_dialect_builds_on_the_core_only() -> None:
    assert "pixdex.index.clusters" not in imported_modules("elasticsearch")
    assert "pixdex.index.opensearch" in imported_modules("elasticsearch")
