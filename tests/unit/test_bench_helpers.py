"""The comparison benchmarks' helpers: statistics, the equal-quality search, ground truth, event patching."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pixdex import derivatives as dv
from pixdex.bench.coldstart import failures, patched_event
from pixdex.bench.compare_compress import Job, PillowEngine
from pixdex.bench.load import request_mix, unique_word
from pixdex.bench.stats import Latency, percentile, ratio, search_setting
from pixdex.bench.vectors import _unit16, exact_top, recall
from pixdex.document import name_tokens

REPO = Path(__file__).resolve().parents[2]


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
@settings(max_examples=200, deadline=None)
def test_percentile_matches_numpy(samples: list[float], q: float) -> None:
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), rel=1e-9, abs=1e-6)


def test_percentile_edges() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="must be within"):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    lat = Latency.of([float(v) for v in range(1, 101)])
    assert (lat.count, lat.p50, lat.mean) == (100, 50.5, 50.5)
    assert lat.p95 == pytest.approx(95.05)
    assert lat.p99 == pytest.approx(99.01)


def test_ratio_never_hides_a_zero_baseline() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(0.0, 0.0) == 1.0
    assert ratio(1.0, 0.0) == float("inf")


def test_search_setting_finds_the_lowest_setting_that_reaches_the_target() -> None:
    calls: list[int] = []

    def measure(q: int) -> tuple[float, int]:
        calls.append(q)
        return q / 100, q * 10

    hit = search_setting(measure, 0.63)
    assert (hit.setting, hit.size, hit.reached) == (63, 630, True)
    assert hit.probes == len(set(calls)) <= 9  # bisection, not a scan of 100 settings


def test_search_setting_unreachable_target() -> None:
    hit = search_setting(lambda q: (0.5, q), 0.9)
    assert (hit.setting, hit.reached, hit.score) == (100, False, 0.5)


def test_search_setting_never_answers_a_setting_that_missed() -> None:
    # Not monotone step by step (a dip at 71-72): whatever the bisection probes, the answer reached the target.
    scores = {q: q / 100 - (0.05 if q in (71, 72) else 0.0) for q in range(1, 101)}
    hit = search_setting(lambda q: (scores[q], q), 0.70)
    assert hit.reached and scores[hit.setting] >= 0.70


def test_search_setting_on_a_real_encoder_reaches_the_ssim_of_a_reference_quality() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(128, 40, (24, 32, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(base).resize((256, 192), Image.Resampling.BICUBIC)
    luma = np.asarray(image.convert("L"), dtype=np.float32)

    def measure(q: int) -> tuple[float, int]:
        buf = io.BytesIO()
        image.save(buf, "WEBP", quality=q, method=4)
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.float32)
        return dv.ssim(luma, decoded), len(buf.getvalue())

    target = measure(60)[0]
    hit = search_setting(measure, target)
    assert hit.reached and hit.score >= target and hit.setting <= 60


def test_pillow_comparator_makes_the_requested_sizes() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (90, 140, 200)).save(buf, "JPEG", quality=90)
    job = Job("flat", buf.getvalue(), Path("unused.jpg"), ((64, 48), (200, 150)))
    engine = PillowEngine()
    for index, size in enumerate(job.sizes):
        assert Image.open(io.BytesIO(engine.encode(job, index, 70))).size == size
    assert len(engine.time_ms(job, (70, 70), 2)) == 2


def test_exact_top_and_recall() -> None:
    vectors = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] * np.array([[1.0], [1.0], [1.0], [1.0], [0.5]],
                                                                         dtype=np.float32)
    query = np.array([1.0, 0.2, 0.0, 0.0], dtype=np.float32)
    assert exact_top(vectors, None, query, k=3) == [0, 4, 1]
    assert exact_top(vectors, np.array([False, True, True, True, True]), query, k=2) == [4, 1]
    assert recall([1, 2, 3, 4], [4, 3, 9, 8]) == 0.5
    assert recall([], [1]) == 1.0


def test_unit16_rows_are_exactly_what_a_float16_store_holds() -> None:
    rows = np.random.default_rng(1).normal(size=(50, 384)).astype(np.float32)
    out = _unit16(rows)
    assert np.array_equal(out, out.astype(np.float16).astype(np.float32))
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)


def test_patched_event_points_the_sample_event_at_the_uploaded_object() -> None:
    template = json.loads((REPO / "events" / "compress.json").read_text())
    event = patched_event(template, "bench/photo.png", "abc123", 42)
    detail = json.loads(event["Records"][0]["body"])["detail"]
    assert detail["object"] == {**detail["object"], "key": "bench/photo.png", "etag": "abc123", "size": 42}
    assert json.loads(template["Records"][0]["body"])["detail"]["object"]["key"] != "bench/photo.png"


def test_failures_reads_both_reply_shapes() -> None:
    assert failures("compress", {"batchItemFailures": []}) is None
    assert failures("analyze", {"batchItemFailures": [{"itemIdentifier": "m1"}]}) is not None
    assert failures("query", {"statusCode": 200}) is None
    assert failures("query", {"statusCode": 500}) == "statusCode 500"


def test_unique_words_survive_file_name_tokenising() -> None:
    words = [unique_word(i) for i in range(3000)]
    assert len(set(words)) == len(words)
    for i in (0, 25, 26, 2999):
        assert words[i] in name_tokens(f"loadbench/chelsea/{words[i]}.jpg").lower().split()


def test_request_mix_spreads_over_documents() -> None:
    mix = request_mix(["a", "b", "c"])
    paths = {path(i) for kind, path in mix if kind == "get image" for i in range(6)}
    assert paths == {"/images/a", "/images/b", "/images/c"}
    assert {kind for kind, _ in mix} >= {"keyword", "semantic", "hybrid", "similar", "duplicates"}
