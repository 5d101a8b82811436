"""Checks a processed corpus against its manifest: each kind's document says what the manifest expects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

STAGES = ("compress", "analyze")


def mismatches(
    manifest: Mapping[str, Mapping[str, Any]],
    doc_of: Callable[[str], dict[str, Any] | None],
    derivative: Callable[[str], bytes] | None = None,
) -> list[str]:
    """One line per kind whose document differs from the manifest (empty: the whole corpus is as expected).

    ``doc_of(key)`` returns the indexed document of an original key, or None; ``derivative(key)`` the bytes
    of a derivative by its key in the derivatives bucket (to check that polyglot payloads are gone)."""
    problems: list[str] = []
    for name, entry in manifest.items():
        doc = doc_of(entry["key"])
        if doc is None:
            problems.append(f"{name}: no document")
            continue
        states = {s: doc.get(f"{s}_state") or {} for s in STAGES}
        if entry["expect"] == "ok":
            for stage, state in states.items():
                if not state or state.get("error") is not None:
                    problems.append(f"{name}: {stage} not processed: {state.get('error')}")
            for field, want in entry["props"].items():
                if doc.get(field) != want:
                    problems.append(f"{name}: {field} is {doc.get(field)!r}, expected {want!r}")
            made = doc.get("derivatives") or {}
            if not made.get("thumbnail"):
                problems.append(f"{name}: no thumbnail")
            if entry.get("payload") and derivative is not None:
                for d in made.values():
                    if entry["payload"].encode() in derivative(d["key"]):
                        problems.append(f"{name}: derivative {d['key']} carries the polyglot payload")
        else:
            for stage, state in states.items():
                code = (state.get("error") or {}).get("code")
                if code != entry["code"]:
                    problems.append(f"{name}: {stage} error is {code!r}, expected {entry['code']!r}")
            if doc.get("derivatives"):
                problems.append(f"{name}: a failed image has derivatives")
    return problems
