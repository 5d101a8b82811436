"""Ranking metrics of pixdex bench quality and the evaluation set's own rules."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from pixdex.bench.evalset import EvalSetMissingError, eval_photos
from pixdex.bench.quality import QueryResult, metrics, summarise

REQUIRED_CATEGORIES = {"animals", "people", "food", "buildings", "vehicles", "landscapes", "documents", "space",
                       "objects"}


def test_metrics_of_known_ranks() -> None:
    m = metrics([1, 2, None, 6])
    assert (m.queries, m.hits_at_1, m.hits_at_5) == (4, 0.25, 0.5)
    assert m.mrr == pytest.approx((1 + 1 / 2 + 1 / 6) / 4)
    assert metrics([]).queries == 0


def test_summary_splits_by_mode_and_split() -> None:
    results = [QueryResult("img/001.png", "a", "test", "x", "semantic", 1, "img/001.png"),
               QueryResult("img/002.png", "b", "dev", "x", "semantic", 3, "img/009.png"),
               QueryResult("img/002.png", "b", "dev", "x", "keyword", None, None)]
    table = summarise(results)
    assert table[("semantic", "test")].hits_at_1 == 1.0
    assert table[("semantic", "dev")].hits_at_1 == 0.0 and table[("semantic", "dev")].hits_at_5 == 1.0
    assert table[("semantic", "all")].mrr == pytest.approx((1 + 1 / 3) / 2)
    assert table[("keyword", "all")].hits_at_5 == 0.0


def test_descriptions_file_follows_the_rules() -> None:
    raw = json.loads(resources.files("pixdex.data").joinpath("evalset.json").read_text(encoding="utf-8"))
    photos = raw["photos"]
    assert len(photos) >= 60
    assert len({p["source"] for p in photos}) > 1
    assert len({(p["source"], p["path"]) for p in photos}) == len(photos)
    assert {p["category"] for p in photos} >= REQUIRED_CATEGORIES
    for p in photos:
        assert 2 <= len(p["descriptions"]) <= 3, p["path"]
        assert p["licence"] and p["version"] and p["split"] in ("dev", "test")
        assert len(set(p["descriptions"])) == len(p["descriptions"])
    test = sum(p["split"] == "test" for p in photos)
    assert 0.3 <= test / len(photos) <= 0.5


def test_keys_are_wordless_and_stable_across_subsets() -> None:
    try:
        some = eval_photos(sources=("pypi:scikit-image",))
    except EvalSetMissingError as exc:
        pytest.skip(str(exc))
    assert some and all(re.fullmatch(r"img/\d{3}\.(png|jpg)", p.key) for p in some)
    assert all(p.path.is_file() for p in some)
    test_only = eval_photos("test", sources=("pypi:scikit-image",))
    by_path = {p.package_path: p.key for p in some}
    assert test_only and all(by_path[p.package_path] == p.key for p in test_only)
