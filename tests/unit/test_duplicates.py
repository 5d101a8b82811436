"""The duplicate decision: each signal alone, the joint rule, which signals count, and the order of copies."""

from __future__ import annotations

import numpy as np
import pytest

from pixdex.duplicates import (
    JOINT,
    SIGNALS,
    Candidate,
    DuplicateRule,
    cosine,
    parse_signals,
    rank,
    vector_similarities,
    vector_similarity,
)
from pixdex.errors import InvalidRequestError
from pixdex.settings import Settings

RULE = DuplicateRule(max_distance=10, min_similarity=0.8, joint_max_distance=20, joint_min_similarity=0.6)


def test_each_signal_alone_decides() -> None:
    assert RULE.matches(same_sha256=True) == ["sha256"]
    assert RULE.matches(distance=10) == ["phash"]
    assert RULE.matches(distance=11) == []
    assert RULE.matches(similarity=0.8) == ["image_vector"]
    assert RULE.matches(similarity=0.79) == []
    assert RULE.matches(same_sha256=True, distance=0, similarity=1.0) == ["sha256", "phash", "image_vector"]


def test_joint_rule_needs_both_and_is_named_only_when_neither_alone_decided() -> None:
    # A crop of a look-alike scene: vector moderately close, hash moderately close.
    assert RULE.matches(distance=18, similarity=0.7) == [JOINT]
    assert RULE.matches(distance=21, similarity=0.7) == []      # hash too far
    assert RULE.matches(distance=18, similarity=0.59) == []     # vector too far
    assert RULE.matches(distance=18) == []                      # no vector to compare: the joint rule cannot hold
    assert RULE.matches(distance=5, similarity=0.7) == ["phash"]
    assert RULE.matches(distance=30, similarity=0.9) == ["image_vector"]


def test_signals_restrict_the_rules() -> None:
    phash_only = DuplicateRule(signals=("sha256", "phash"))
    assert phash_only.matches(distance=30, similarity=0.99) == []
    assert phash_only.matches(distance=18, similarity=0.7) == []  # joint needs both signals switched on
    assert not phash_only.joint
    assert phash_only.vector_floor == phash_only.min_similarity
    vector_only = DuplicateRule(signals=("image_vector",))
    assert vector_only.matches(same_sha256=True, distance=0, similarity=0.5) == []
    assert RULE.vector_floor == 0.6


@pytest.mark.parametrize("kwargs", [{"max_distance": 65}, {"max_distance": -1}, {"joint_max_distance": 99},
                                    {"min_similarity": 1.5}, {"joint_min_similarity": -2.0}, {"signals": ()},
                                    {"max_distance": True}])
def test_bad_thresholds_are_typed_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        DuplicateRule(**kwargs)  # type: ignore[arg-type]


def test_parse_signals() -> None:
    assert parse_signals(None) == SIGNALS
    assert parse_signals(" ") == SIGNALS
    assert parse_signals("image_vector,phash") == ("phash", "image_vector")
    with pytest.raises(InvalidRequestError) as err:
        parse_signals("phash,colour")
    assert "colour" in err.value.message and "signals" in str(err.value.to_dict())


def test_rank_keeps_duplicates_most_alike_first() -> None:
    found = rank([
        Candidate("far", distance=40, similarity=0.3),
        Candidate("crop", distance=26, similarity=0.86),
        Candidate("resized", distance=0, similarity=0.98),
        Candidate("grey", distance=2, similarity=0.55),
        Candidate("no-vector", distance=4),
        Candidate("twin-b", distance=0, similarity=0.98),
    ], RULE)
    assert [c.id for c, _ in found] == ["resized", "twin-b", "no-vector", "crop", "grey"]
    assert dict((c.id, m) for c, m in found)["crop"] == ["image_vector"]
    assert dict((c.id, m) for c, m in found)["grey"] == ["phash"]


def test_cosine() -> None:
    a = np.array([1.0, 0.0], dtype=np.float32)
    assert cosine(a, np.array([2.0, 0.0], dtype=np.float32)) == pytest.approx(1.0)
    assert cosine(a, np.array([0.0, 3.0], dtype=np.float32)) == pytest.approx(0.0)
    assert cosine(a, np.zeros(2, dtype=np.float32)) == 0.0
    assert cosine(a, np.ones(3, dtype=np.float32)) == 0.0


def test_settings_carry_the_calibrated_defaults_and_round_trip() -> None:
    s = Settings()
    assert (s.duplicate_max_distance, s.duplicate_min_similarity, s.duplicate_joint_max_distance,
            s.duplicate_joint_min_similarity) == (10, 0.82, 20, 0.69)
    assert DuplicateRule() == DuplicateRule(10, 0.82, 20, 0.69)
    env = {"PIXDEX_DUPLICATE_MAX_DISTANCE": "6", "PIXDEX_DUPLICATE_MIN_SIMILARITY": "0.9",
           "PIXDEX_DUPLICATE_JOINT_MAX_DISTANCE": "16", "PIXDEX_DUPLICATE_JOINT_MIN_SIMILARITY": "0.7"}
    custom = Settings.from_env(env)
    assert (custom.duplicate_max_distance, custom.duplicate_min_similarity,
            custom.duplicate_joint_max_distance, custom.duplicate_joint_min_similarity) == (6, 0.9, 16, 0.7)
    assert Settings.from_env(custom.to_env()) == custom


@pytest.mark.parametrize(("name", "value"), [
    ("PIXDEX_DUPLICATE_MAX_DISTANCE", "65"), ("PIXDEX_DUPLICATE_JOINT_MAX_DISTANCE", "-1"),
    ("PIXDEX_DUPLICATE_MIN_SIMILARITY", "1.5"), ("PIXDEX_DUPLICATE_JOINT_MIN_SIMILARITY", "-0.2"),
])
def test_out_of_range_thresholds_stop_the_settings_not_each_request(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_the_vector_signal_is_the_best_of_full_and_crop_cosines_both_ways() -> None:
    original = {"image_vector": _unit(1, 0, 0), "crop_vector": _unit(0, 1, 0)}
    tight_crop = {"image_vector": _unit(0, 1, 0.1), "crop_vector": _unit(0, 0, 1)}
    full_only = float(np.dot(original["image_vector"], tight_crop["image_vector"]))
    best = vector_similarity(original, tight_crop)
    assert best is not None and best > 0.99 > full_only
    # Symmetric: the crop's full vector meets the original's crop vector from either side.
    assert vector_similarity(tight_crop, original) == pytest.approx(best)
    assert vector_similarity(original, tight_crop, crops=False) == pytest.approx(full_only)
    # Without crop vectors on one side only the full pair counts; without any vector there is no signal.
    assert vector_similarity(original, {"image_vector": tight_crop["image_vector"]}) == pytest.approx(
        float(np.dot(original["crop_vector"], tight_crop["image_vector"])))
    assert vector_similarity({}, tight_crop) is None


def test_batched_similarities_equal_the_best_pairwise_cosine() -> None:
    rng = np.random.default_rng(5)

    def vec(dim: int = 8) -> np.ndarray:
        return rng.normal(size=dim).astype(np.float32)

    probe = {"image_vector": vec(), "crop_vector": vec()}
    others: list[dict[str, np.ndarray]] = [
        {"image_vector": vec(), "crop_vector": vec()},
        {"crop_vector": vec()},  # no full vector
        {"image_vector": vec()},  # an old document: no crop vector
        {"image_vector": np.zeros(8, dtype=np.float32)},  # norm 0 compares as cosine 0
        {"image_vector": vec(4)},  # another dimension: cosine 0
        {},
    ]
    for crops in (True, False):
        pairs = [("image_vector", "image_vector")]
        if crops:
            pairs += [("image_vector", "crop_vector"), ("crop_vector", "image_vector"), ("crop_vector", "crop_vector")]
        expected = []
        for other in others:
            scores = [cosine(probe[a], other[b]) for a, b in pairs if b in other]
            expected.append(max(scores) if scores else None)
        got = vector_similarities(probe, others, crops=crops)
        assert [g is None for g in got] == [e is None for e in expected]
        assert [g for g in got if g is not None] == pytest.approx([e for e in expected if e is not None], abs=1e-6)
    assert vector_similarities(probe, []) == []
    assert vector_similarities({}, others) == [None] * len(others)
