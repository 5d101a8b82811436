"""The duplicate searches on the embedded index once its vector fields are in the two-stage tier: the
SimHash shortlist, built in the background on the first threshold search, gives the same duplicates and
query-by-image copies as the int8 scan that answers until it is ready."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from pixdex.index.sqlite import SqliteIndex
from pixdex.index.vectors import VectorStore
from pixdex.query import SearchRequest, SearchService
from pixdex.settings import Settings
from pixdex.storage import FolderStore

N = 3000
DIM = 1280


def _unit(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)
    return out


@pytest.fixture
def service(tmp_path: Path) -> SearchService:
    """3,000 photos in 40 look-alike groups (cosine ~0.73 within a group, as the query benchmark's
    corpus), every tenth one with an edited copy (full vector 0.9 alike, its crop vector closer still)."""
    rng = np.random.default_rng(21)
    centres = _unit(rng.standard_normal((40, DIM)).astype(np.float32))
    full = _unit(centres[rng.integers(0, 40, N)] + 0.6 * rng.standard_normal((N, DIM)).astype(np.float32) / 36)
    crop = _unit(full + 0.45 * rng.standard_normal((N, DIM)).astype(np.float32) / 36)
    for i in range(0, N, 10):  # photo i + 1 is an edited copy of photo i
        full[i + 1] = _unit(full[i] + 0.5 * rng.standard_normal(DIM).astype(np.float32) / 36)
        crop[i + 1] = _unit(full[i] + 0.2 * rng.standard_normal(DIM).astype(np.float32) / 36)
    index = SqliteIndex(tmp_path / "index.db", exact_vector_values=1)  # two-stage from the first row
    index.ensure()
    index.upsert_many([(f"p{i:04d}", {
        "tenant": "default", "bucket": "b", "key": f"p{i:04d}.jpg", "sha256": f"{i:064x}",
        "phash": f"{int(rng.integers(0, 2**62)):016x}", "image_vector": full[i], "crop_vector": crop[i],
    }) for i in range(N)])
    settings = Settings(originals_bucket="b", derivatives_bucket="d", data_dir=tmp_path)
    return SearchService(settings, index, FolderStore(tmp_path / "s3"))


def _near(service: SearchService, doc_id: str) -> list[tuple[str, float | None, tuple[str, ...]]]:
    body = service.duplicates(doc_id, "default")
    return [(h["id"], h["similarity"], tuple(h["signals"])) for h in body["near"]]


def _copies_first(service: SearchService, doc_id: str) -> list[str]:
    vectors = service.index.get_vectors(doc_id)
    body = service.by_image(vectors["image_vector"], SearchRequest(size=5), exclude_id=doc_id,
                            crop_vector=vectors["crop_vector"])
    return [h["id"] for h in body["hits"]]


def test_duplicates_and_copies_are_the_same_on_both_paths(service: SearchService,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    index = service.index
    assert isinstance(index, SqliteIndex)
    originals = [f"p{i:04d}" for i in range(0, N, 150)]
    copies = [f"p{i + 1:04d}" for i in range(0, N, 300)]
    with monkeypatch.context() as patch:
        patch.setattr(VectorStore, "_near", lambda *_: None)  # the int8 scan, as before the codes exist
        scanned = {p: _near(service, p) for p in originals + copies}
        scanned_first = {c: _copies_first(service, c) for c in copies}
    _near(service, originals[0])  # starts building the codes
    index.finish_background_work()
    assert all("SimHash shortlist" in tier for tier in index.stats()["vector_search"].values())
    assert {p: _near(service, p) for p in originals + copies} == scanned
    assert {c: _copies_first(service, c) for c in copies} == scanned_first
    # What both paths find: each original lists its edited copy, and a copy as query image finds its original
    # first.
    assert all(f"p{int(p[1:]) + 1:04d}" in [d for d, _, _ in scanned[p]] for p in originals)
    assert all(first[0] == f"p{int(c[1:]) - 1:04d}" for c, first in scanned_first.items())
