"""The embedded index when its disk is full: SQLite's max_page_count caps the file (a real SQLITE_FULL from
the same code path as a full filesystem, without needing a mount; tests/e2e/test_faults.py fills a real
tmpfs where mounting is permitted). The write fails as a retryable BackendUnavailableError, what was
committed stays intact and readable, and writes succeed once there is room again."""

from __future__ import annotations

from pathlib import Path

from pixdex.errors import BackendUnavailableError
from pixdex.index.sqlite import SqliteIndex


def _doc(i: int) -> dict[str, object]:
    return {"key": f"k/{i}.jpg", "name_text": f"photo number {i} " + "word " * 200, "format": "jpeg", "width": i}


def test_full_disk_is_retryable_and_loses_nothing(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "index.db")
    index.ensure()
    for i in range(20):
        index.upsert(f"d{i}", _doc(i))
    conn = index._connection()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    failure: BackendUnavailableError | None = None
    for i in range(20, 200):
        try:
            index.upsert(f"d{i}", _doc(i))
        except BackendUnavailableError as exc:
            failure = exc
            break
    assert failure is not None and failure.retryable and "full" in failure.message
    written = index.count()
    assert written >= 20
    assert all(index.get(f"d{i}") is not None for i in range(20))
    assert index.get("d0") == {**_doc(0)}
    conn.execute("PRAGMA max_page_count = 1073741823")
    for i in range(written, 200):
        index.upsert(f"d{i}", _doc(i))
    assert index.count() == 200
    index.close()
