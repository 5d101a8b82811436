"""The synthetic corpus of ``pixdex bench query`` carries what the production queries read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixdex.bench.query import populate
from pixdex.index.sqlite import SqliteIndex


def test_every_document_has_a_crop_vector_about_as_close_as_a_real_centre_crop(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "bench.db")
    index.ensure()
    try:
        corpus = populate(index, 300, batch=100)
        stored = index.get_vectors_many(corpus.ids, ("image_vector", "crop_vector"))
        cosines = [float(np.dot(v["image_vector"], v["crop_vector"])) for v in stored.values()]
    finally:
        index.close()
    assert len(cosines) == 300
    assert 0.88 < float(np.median(cosines)) < 0.92
    assert min(cosines) > 0.8
