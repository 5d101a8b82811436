from __future__ import annotations

import pytest

from pixdex.errors import InvalidRequestError
from pixdex.index.base import Filters, Hit
from pixdex.query import HybridCursor, SearchRequest, fuse_rrf, parse_facets, split_list


def _hits(ids: str, source: str) -> list[Hit]:
    return [Hit(id=i, score=1.0, source=source, doc={}) for i in ids]  # type: ignore[arg-type]


def test_rrf_rewards_agreement_and_is_deterministic() -> None:
    fused = fuse_rrf([_hits("abc", "keyword"), _hits("cad", "vector")], weights=(1.0, 1.0), k=60)
    assert [h.id for h, _ in fused] == ["a", "c", "b", "d"]
    assert dict((h.id, s) for h, s in fused)["a"] == ["keyword", "vector"]
    assert fused[0][0].score == pytest.approx(1 / 61 + 1 / 62, abs=1e-6)
    # A zero weight removes a side's influence on the order entirely.
    only_vector = fuse_rrf([_hits("abc", "keyword"), _hits("cad", "vector")], weights=(0.0, 1.0))
    assert [h.id for h, _ in only_vector][:3] == ["c", "a", "d"]


def test_hybrid_cursor_round_trip_and_shape_check() -> None:
    req = SearchRequest(q="cat", filters=Filters(tenant="t"))
    cur = HybridCursor.first("cat", req)
    again = HybridCursor.decode(cur.encode(), "cat", req)
    assert again == cur
    with pytest.raises(InvalidRequestError, match="another query"):
        HybridCursor.decode(cur.encode(), "dog", req)
    with pytest.raises(InvalidRequestError, match="another query"):
        HybridCursor.decode(cur.encode(), "cat", SearchRequest(q="cat", filters=Filters(tenant="u")))
    for junk in ("", "!!!", "eyJ4IjoxfQ", "a" * 50):
        with pytest.raises(InvalidRequestError):
            HybridCursor.decode(junk, "cat", req)


def test_list_parameters() -> None:
    assert split_list("png, jpeg,png,,", name="format") == ("png", "jpeg")
    with pytest.raises(InvalidRequestError):
        split_list(",".join(str(i) for i in range(30)), name="labels")
    assert parse_facets("year,format") == ("format", "year")
    with pytest.raises(InvalidRequestError, match="facets"):
        parse_facets("format,colour")


def test_rrf_scaled_side_weighs_hits_by_their_share_of_the_best_score() -> None:
    keyword = [Hit(id=i, score=s, source="keyword", doc={}) for i, s in (("a", 4.0), ("b", 0.04), ("c", 0.0))]
    fused = fuse_rrf([keyword, _hits("bcd", "vector")], weights=(1.0, 1.0), k=10, scaled=(True, False))
    scores = {h.id: h.score for h, _ in fused}
    assert scores["a"] == pytest.approx(1 / 11, abs=1e-6)
    assert scores["b"] == pytest.approx(0.01 / 12 + 1 / 11, abs=1e-6)
    assert scores["c"] == pytest.approx(1 / 12, abs=1e-6)  # a zero score adds nothing
    # Unscaled, the near-zero keyword match ranks as much as a strong one would.
    plain = fuse_rrf([keyword, _hits("bcd", "vector")], weights=(1.0, 1.0), k=10)
    assert plain[0][0].id == "b"
