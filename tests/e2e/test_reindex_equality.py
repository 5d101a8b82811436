"""`pixdex reindex --from-bucket` against the running stack rebuilds an index equal to the live one: the same
document ids, the same fields with the same values (apart from when each stage ran), the same vectors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixdex.index.base import SearchQuery
from pixdex.index.sqlite import SqliteIndex
from tests import imagegen
from tests.e2e.conftest import REPO, RunningStack
from tests.e2e.faults import settled

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# When each stage ran, and the event's sequencer (a rebuild reads objects, not events) differ by nature.
VOLATILE_STATE = ("at", "sequencer")


def _all(index: SqliteIndex) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        page = index.search(SearchQuery(size=100, cursor=cursor, sort="oldest"))
        out.update({h.id: index.get(h.id) or {} for h in page.hits})
        if not page.next_cursor:
            return out
        cursor = page.next_cursor


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in ("sequencer", "uploaded_at")}
    for stage in ("compress_state", "analyze_state"):
        if isinstance(out.get(stage), dict):
            out[stage] = {k: v for k, v in out[stage].items() if k not in VOLATILE_STATE}
    return out


def test_reindex_from_bucket_equals_live(stack: RunningStack, tmp_path: Path) -> None:
    s3 = stack.client("s3")
    uploads = {"re/a.jpg": imagegen.jpeg_bytes(800, 600, seed=90, exif=imagegen.exif_with_gps()),
               "re/b.png": imagegen.png_bytes(300, 200, screenshot=True, seed=91),
               "re/c d+e.webp": imagegen.webp_bytes(400, 300, seed=92),
               "re/bad.jpg": imagegen.truncated_jpeg()}
    for key, body in uploads.items():
        s3.put_object(Bucket=stack.originals_bucket, Key=key, Body=body)
    stack.wait_for(lambda: all(settled(stack, k) for k in uploads), timeout=180, what="all processed")

    rebuilt = tmp_path / "rebuilt.db"
    env = {**os.environ, "AWS_ENDPOINT_URL": stack.aws_endpoint, "AWS_ACCESS_KEY_ID": "local",
           "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1",
           "PIXDEX_ORIGINALS_BUCKET": stack.originals_bucket, "PIXDEX_DERIVATIVES_BUCKET": stack.derivatives_bucket,
           "PIXDEX_DATA_DIR": str(stack.data_dir)}
    run = subprocess.run([sys.executable, "-m", "pixdex.cli", "reindex", "--from-bucket",
                          "--index-url", f"sqlite:///{rebuilt}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 objects: 3 indexed, 1 failed" in run.stdout

    with SqliteIndex(stack.data_dir / "index.db") as live_index, SqliteIndex(rebuilt) as new_index:
        live, new = _all(live_index), _all(new_index)
        assert sorted(new) == sorted(live) and len(live) == 4
        for doc_id in live:
            assert _comparable(new[doc_id]) == _comparable(live[doc_id]), live[doc_id]["key"]
            lv, nv = live_index.get_vectors(doc_id), new_index.get_vectors(doc_id)
            assert sorted(lv) == sorted(nv)
            for name in lv:
                cos = float(np.dot(lv[name], nv[name]) / (np.linalg.norm(lv[name]) * np.linalg.norm(nv[name])))
                assert cos > 0.999, (live[doc_id]["key"], name, cos)
    print(f"\n[fault] reindex --from-bucket: {len(live)} live documents, {len(new)} rebuilt, same ids and fields")
