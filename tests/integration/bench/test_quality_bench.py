"""pixdex bench quality on a tiny set: real pipeline, real models, real query handler; its ranks checked
against ranks computed independently from the index's stored vectors and texts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pixdex.bench.evalset import EvalPhoto, EvalSetMissingError, eval_photos
from pixdex.bench.quality import BUCKET, evaluate, fused_rank, render, render_fusion, summarise
from pixdex.document import document_id
from pixdex.index import open_index
from pixdex.models.analysis import ImageAnalyzer, ModelSettings
from pixdex.query import HYBRID_PARTIAL_WEIGHT, RRF_K
from pixdex.settings import Settings

# chelsea (cat), coffee, page (printed text), rocket: four photos, one description each that OCR or the
# classifier can reach, and one that neither can.
TINY = {"skimage/data/chelsea.png": ("a cat", "a pet with green eyes"),
        "skimage/data/coffee.png": ("a cup of coffee",),
        "skimage/data/page.png": ("segmentation",),
        "skimage/data/rocket.jpg": ("a rocket on the launch pad at night",)}


@pytest.fixture(scope="module")
def tiny_set() -> list[EvalPhoto]:
    try:
        photos = eval_photos(sources=("pypi:scikit-image",))
    except EvalSetMissingError as exc:
        pytest.skip(str(exc))
    return [replace(p, descriptions=TINY[p.package_path]) for p in photos if p.package_path in TINY]


def test_bench_ranks_match_the_index_and_the_report(tiny_set: list[EvalPhoto], tmp_path: Path) -> None:
    assert len(tiny_set) == 4
    results, extra = evaluate(tiny_set, tmp_path, "v2")
    assert len(results) == 3 * sum(len(p.descriptions) for p in tiny_set)
    by = {(r.description, r.mode): r for r in results}
    # The OCR'd word is found by keyword search, and only in that photo.
    page_key = next(p.key for p in tiny_set if p.package_path.endswith("page.png"))
    assert by[("segmentation", "keyword")].rank == 1 and by[("segmentation", "keyword")].top_key == page_key
    # ImageNet covers cats and espresso: semantic search puts those first.
    assert by[("a cat", "semantic")].rank == 1
    assert by[("a cup of coffee", "semantic")].rank == 1

    # Independent semantic ranks: cosine of the query embedding with the stored caption vectors.
    index = open_index(Settings(index_url=f"sqlite:///{tmp_path / 'quality-v2.db'}"))
    vectors = {p.key: index.get_vectors(document_id(BUCKET, p.key)).get("caption_vector") for p in tiny_set}
    index.close()
    analyzer = ImageAnalyzer(ModelSettings())
    keys = list(vectors)
    matrix = np.stack([np.asarray(vectors[k], dtype=np.float32) for k in keys])
    for photo in tiny_set:
        for description in photo.descriptions:
            scores = matrix @ analyzer.embed_query(description)["caption_vector"]
            expected = 1 + int(np.sum(scores > scores[keys.index(photo.key)] + 1e-4))
            assert by[(description, "semantic")].rank == expected, description
    # No image holds every word of the rocket's description: keyword search falls back to any word, and
    # the word "rocket" is one of that photo's labels.
    assert by[("a rocket on the launch pad at night", "keyword")].rank == 1
    # The fusion section scores hybrid from the same rankings the handler fused.
    fusion = render_fusion(extra["legs"], "v2", "pixdex bench quality")
    hybrid = {r.description: r.rank for r in results if r.mode == "hybrid"}
    for leg, description in zip(extra["legs"], [d for p in tiny_set for d in p.descriptions], strict=True):
        assert fused_rank(leg, k=RRF_K, partial=HYBRID_PARTIAL_WEIGHT, scaled=True) == hybrid[description]
    assert fusion.startswith("## Hybrid fusion on the evaluation photos") and "(shipped)" in fusion

    table = summarise(results)
    ranks = [r.rank for r in results if r.mode == "semantic"]
    assert table[("semantic", "all")].hits_at_1 == sum(r == 1 for r in ranks) / len(ranks)
    section = render({"v2": (results, extra)}, tiny_set, "pixdex bench quality")
    assert section.startswith("## Search quality on the evaluation photos")
    assert f"| v2 | semantic | {table[('semantic', 'test')].hits_at_1:.3f} |" in section
