"""``pixdex bench duplicates`` end to end on two small photos, and its threshold picking on made-up scores."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

from pixdex.bench.duplicates import CONFIGURED, Pairs, analyze_cost, pick_thresholds, run_photos
from pixdex.packages import package_dir


def test_thresholds_keep_a_margin_from_the_closest_different_photo() -> None:
    pairs = Pairs(other_sim=[0.2, 0.77, 0.5], other_dist=[30, 34, 14],
                  other_pairs=[(0.2, 30, "a", "b"), (0.77, 34, "a", "c"), (0.5, 14, "b", "c")])
    picked = pick_thresholds(pairs, joint_max_distance=20)
    assert picked.max_distance == 10          # nearest different hash 14, minus 4
    assert picked.min_similarity == 0.81      # most similar different photo 0.77, plus 0.04
    assert picked.joint_min_similarity == 0.54  # within 20 bits only (b, c) at 0.5, plus 0.04
    # Look-alikes beyond 1 - margin cannot push a threshold past what a cosine can be.
    assert pick_thresholds(Pairs(other_sim=[0.99], other_dist=[2], other_pairs=[(0.99, 2, "a", "b")]),
                           20).joint_min_similarity == 1.0


def test_the_benchmark_runs_the_pipeline_and_writes_its_section(tmp_path: Path) -> None:
    skimage = package_dir("skimage")
    if skimage is None:
        pytest.skip("scikit-image (sample photos) is not installed")
    photos = []
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        image = Image.open(skimage / "data" / name).convert("RGB")
        image.thumbnail((160, 160))
        photos.append(tmp_path / f"{Path(name).stem}.png")
        image.save(photos[-1])
    output = tmp_path / "quality.md"
    output.write_text("# Model quality\n\n## Other section\n\nkept\n")
    args = argparse.Namespace(photos=tmp_path, same_scene=[], output=output, photos_note="test", keep=None,
                              no_cost=True, scale_rows=5000)
    result = run_photos(photos, args)
    assert result["photos"] == 3 and result["copies"] == 3 * 27
    # Fused never does worse than the pHash baseline it includes, and these three photos look nothing alike.
    recall = result["recall"]
    assert recall[CONFIGURED] >= recall["pHash only, <= 8 bits (old default)"]
    assert recall[CONFIGURED] > 0.8
    assert result["false_positives"][CONFIGURED] == 0
    # Crop vectors only add candidates and take the best cosine, so with the same thresholds they find at
    # least the copies that full vectors alone find.
    assert result["picked_crossed"]["min_similarity"] >= result["picked_full"]["min_similarity"]
    text = output.read_text()
    assert "## Other section\n\nkept" in text
    assert "## Near duplicates and query by image (fused signals)" in text and f"| {CONFIGURED} |" in text
    assert "copies first, full + crop vectors (now)" in text
    # At scale (the real vectors among mixtures of them, two-stage tier), the SimHash shortlist keeps every
    # row the exact scan finds at the floor.
    scale = result["scale"]
    assert set(scale) == {"full against image vectors", "full against crop vectors", "crop against image vectors"}
    assert all(s["true"] > 0 and s["missed_simhash"] == 0 for s in scale.values())
    assert "### The duplicate searches at library scale (SimHash shortlist)" in text


def test_the_crop_vector_cost_is_timed_both_ways(tmp_path: Path) -> None:
    skimage = package_dir("skimage")
    if skimage is None:
        pytest.skip("scikit-image (sample photos) is not installed")
    cost = analyze_cost([skimage / "data" / "chelsea.png", skimage / "data" / "coffee.png"], images=2, rounds=1)
    assert cost["images"] == 2 and cost["without_s"] > 0 and cost["with_s"] > 0
    assert cost["ratio"] == pytest.approx(cost["with_s"] / cost["without_s"])
