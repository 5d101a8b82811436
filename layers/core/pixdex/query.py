"""Search requests as users send them -> backend queries, and backend results -> the API's JSON shape."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from pixdex.document import DEFAULT_TENANT
from pixdex.duplicates import (
    CROP_VECTOR,
    FULL_VECTOR,
    SIGNALS,
    Candidate,
    DuplicateRule,
    Signal,
    rank_key,
    vector_similarities,
)
from pixdex.duplicates import rank as rank_copies
from pixdex.errors import InvalidRequestError, NotFoundError
from pixdex.hashing import hamming
from pixdex.index.base import (
    FACET_NAMES,
    MAX_PAGE_SIZE,
    FacetName,
    Filters,
    Hit,
    ImageIndex,
    SearchQuery,
    SearchResult,
    SortOrder,
    TextMatch,
    VectorQuery,
)
from pixdex.index.cursor import decode_cursor, query_shape
from pixdex.settings import Settings
from pixdex.storage import ObjectStore

MAX_LIST_ITEMS = 20
# Reciprocal rank fusion's constant (Cormack et al. use 60): damps the weight of the very first ranks. 10
# tied 60 on the evaluation set's dev split with all-word keyword matches and let partial ones (below) act
# on the first ranks; see docs/quality.md, "Hybrid fusion".
RRF_K = 10
# Hybrid's keyword side when no document holds every word: any-word matches, each weighted by this share of
# the keyword weight times its BM25 score over the best one's. Larger shares lost dev hits@1 (0.1 and 0.2:
# 1 query of 86, 1.0 at k = 60: 6): the keyword text is made from the same model outputs as the caption
# vector, so a partial match mostly repeats what the semantic side knows.
HYBRID_PARTIAL_WEIGHT = 0.05
# Vector results page through this many nearest neighbours (and hybrid through this many per side): deep
# enough for any person paging, bounded so one request never ranks a whole collection.
MAX_VECTOR_DEPTH = 1000
MAX_HYBRID_DEPTH = MAX_VECTOR_DEPTH
# Near-duplicate candidates the vector side looks at (at least): copies of one photo rarely number more,
# and the cosine floor stops it earlier in collections without look-alikes.
DUPLICATE_CANDIDATES = 50
# How many more copies than page 1 held a later page of query by image looks at (copies uploaded meanwhile).
COPIES_ARRIVAL_MARGIN = 10

SearchMode = Literal["keyword", "semantic", "hybrid"]

# Runs the keyword side of hybrid searches beside the query embedding; shared by every request of a container.
_BACKGROUND = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pixdex-query")


class QueryEmbedder(Protocol):
    def embed_query(self, text: str) -> dict[str, npt.NDArray[np.float32]]:
        """Vectors for a text query, by the document vector field they live beside."""
        ...


@dataclass(frozen=True)
class SearchRequest:
    q: str | None = None
    filters: Filters = field(default_factory=Filters)
    facets: tuple[FacetName, ...] = ()
    size: int = 20
    cursor: str | None = None
    sort: SortOrder = "relevance"
    mode: SearchMode = "hybrid"
    min_score: float | None = None

    @property
    def text(self) -> str | None:
        return (self.q or "").strip() or None

    def to_query(self) -> SearchQuery:
        text = self.q.strip() if self.q else None
        return SearchQuery(
            text=text or None,
            filters=self.filters,
            facets=self.facets,
            size=self.size,
            cursor=self.cursor,
            # Without words there is no relevance to rank by; newest first is what people expect.
            sort=self.sort if text or self.sort != "relevance" else "newest",
        )


def fuse_rrf(rankings: list[list[Hit]], weights: tuple[float, ...], *, k: float = RRF_K,
             scaled: tuple[bool, ...] = ()) -> list[tuple[Hit, list[str]]]:
    """Reciprocal rank fusion: score = sum of weight / (k + rank). Ties break on id for determinism.

    A ranking marked in ``scaled`` contributes weight * (score / its best score) / (k + rank) instead: its
    scores say how much of the query a hit matched (BM25 over any of the words), so a hit that matched only
    a common word adds little however high it ranks.
    """
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    sources: dict[str, list[str]] = {}
    for n, (hits, weight) in enumerate(zip(rankings, weights, strict=True)):
        top = max((h.score for h in hits), default=0.0)
        by_score = n < len(scaled) and scaled[n] and top > 0
        for rank, hit in enumerate(hits, start=1):
            share = max(hit.score, 0.0) / top if by_score else 1.0
            scores[hit.id] = scores.get(hit.id, 0.0) + weight * share / (k + rank)
            first.setdefault(hit.id, hit)
            sources.setdefault(hit.id, []).append(hit.source)
    order = sorted(scores, key=lambda i: (-scores[i], i))
    return [(replace(first[i], score=round(scores[i], 6)), sources[i]) for i in order]


@dataclass(frozen=True)
class HybridCursor:
    """Offset into the fused list, the page-1 instant that pins the candidate set, and the query's shape."""

    shape: str
    offset: int
    as_of: str

    @staticmethod
    def _shape_of(text: str, request: SearchRequest) -> str:
        canonical = json.dumps({"q": text, "f": dataclasses.asdict(request.filters), "m": "hybrid"},
                               sort_keys=True, default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    @classmethod
    def first(cls, text: str, request: SearchRequest) -> HybridCursor:
        return cls(cls._shape_of(text, request), 0, datetime.now(UTC).isoformat(timespec="microseconds"))

    @classmethod
    def decode(cls, raw: str, text: str, request: SearchRequest) -> HybridCursor:
        try:
            data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            cursor = cls(str(data["s"]), int(data["o"]), str(data["t"]))
            datetime.fromisoformat(cursor.as_of)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise InvalidRequestError("cursor: not a cursor pixdex issued", field="cursor") from None
        if cursor.shape != cls._shape_of(text, request) or not 0 <= cursor.offset < MAX_HYBRID_DEPTH:
            raise InvalidRequestError("cursor: it belongs to another query", field="cursor")
        return cursor

    def encode(self) -> str:
        raw = json.dumps({"s": self.shape, "o": self.offset, "t": self.as_of}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@dataclass(frozen=True)
class CopiesCursor:
    """Query by image's cursor: the ranking's own cursor and where page 1's copies ended (the rank key of
    the last copy shown), so later pages drop exactly the copies that page 1 showed, or would show now."""

    inner: str
    cut: tuple[float, int, str] | None

    @classmethod
    def decode(cls, raw: str) -> CopiesCursor:
        try:
            data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            cut = data["k"]
            return cls(str(data["c"]), None if cut is None else (float(cut[0]), int(cut[1]), str(cut[2])))
        except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
            raise InvalidRequestError("cursor: not a cursor pixdex issued", field="cursor") from None

    def encode(self) -> str:
        raw = json.dumps({"c": self.inner, "k": self.cut}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unit(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _earliest(a: str | None, b: str) -> str:
    if a is None:
        return b
    return a if datetime.fromisoformat(a) <= datetime.fromisoformat(b) else b


def split_list(raw: str | None, *, name: str) -> tuple[str, ...]:
    """API Gateway joins repeated query parameters with commas; accept both forms."""
    if not raw:
        return ()
    items = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    if len(items) > MAX_LIST_ITEMS:
        raise InvalidRequestError(f"{name}: at most {MAX_LIST_ITEMS} values", field=name)
    return items


def parse_facets(raw: str | None) -> tuple[FacetName, ...]:
    names = split_list(raw, name="facets")
    unknown = [n for n in names if n not in FACET_NAMES]
    if unknown:
        raise InvalidRequestError(
            f"facets: unknown facet {unknown[0]!r}; expected any of {', '.join(FACET_NAMES)}", field="facets"
        )
    return tuple(n for n in FACET_NAMES if n in names)


class SearchService:
    """The read side of the API, shared by every route and every backend."""

    def __init__(self, settings: Settings, index: ImageIndex, store: ObjectStore,
                 embedder: QueryEmbedder | None = None) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self.embedder = embedder

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """Keyword (BM25; every word, else any meaningful word), semantic (query text embedded beside the
        documents' vectors) or hybrid (both, fused by reciprocal rank). Without text it is a filtered listing
        whatever the mode."""
        text = request.text
        if text is None or request.mode == "keyword" or self.embedder is None:
            mode: SearchMode = "keyword" if text else request.mode
            result, match = self._keyword(request.to_query())
            hits = result.hits
            if text and request.min_score is not None:
                hits = [h for h in hits if h.score >= request.min_score]
            out = {**self._shape(replace(result, hits=hits)), "mode": mode}
            return {**out, "match": match} if text else out
        if request.mode == "semantic":
            query = SearchQuery(vector=self._vector_query(text, request), filters=request.filters,
                                facets=request.facets, size=request.size, cursor=request.cursor)
            return {**self._shape(self.index.search(query)), "mode": "semantic"}
        return {**self._hybrid(text, request), "mode": "hybrid"}

    def _keyword(self, query: SearchQuery) -> tuple[SearchResult, TextMatch]:
        """Every word must match; when no document holds them all, documents holding any of the query's
        meaningful words, best BM25 first (a search box that finds something for a sentence, and stays
        exact wherever the words occur together). Later pages follow the cursor's choice."""
        if query.text is None:
            return self.index.search(query), "all"
        any_query = replace(query, match="any")
        if query.cursor is not None:
            try:
                decode_cursor(query.cursor, query_shape(any_query))
            except InvalidRequestError:
                return self.index.search(query), "all"
            return self.index.search(any_query), "any"
        result = self.index.search(query)
        if result.total > 0:
            return result, "all"
        return self.index.search(any_query), "any"

    def _vector_query(self, text: str, request: SearchRequest) -> VectorQuery:
        assert self.embedder is not None
        vectors = self.embedder.embed_query(text)
        # A joint image-text model (CLIP) compares the query with pixels directly; prefer it when present.
        field_name = "clip_vector" if "clip_vector" in vectors and self._has_field("clip_vector") else "caption_vector"
        return VectorQuery(field=field_name, vector=vectors[field_name], k=MAX_VECTOR_DEPTH,
                           min_similarity=request.min_score)

    def _has_field(self, name: str) -> bool:
        counts = self.index.stats().get("vectors", {})
        entry = counts.get(name) if isinstance(counts, dict) else None
        return bool(entry and (entry.get("count") if isinstance(entry, dict) else entry))

    def _hybrid(self, text: str, request: SearchRequest) -> dict[str, Any]:
        state = HybridCursor.decode(request.cursor, text, request) if request.cursor else HybridCursor.first(
            text, request)
        # Later pages only see documents that existed at page 1, so paging is stable while uploads go on.
        filters = replace(request.filters, uploaded_before=_earliest(request.filters.uploaded_before, state.as_of))
        depth = min(state.offset + request.size, MAX_HYBRID_DEPTH)
        # The keyword side needs no embedding: it runs while this thread embeds the query text (onnxruntime
        # and the index both release the GIL), so hybrid costs about max(keyword, embedding), not the sum.
        # The keyword side is keyword mode's: every word, else any meaningful word (a description rarely
        # has every word in one document's text, and a ranking of none adds nothing to the fusion).
        keyword_future = _BACKGROUND.submit(self._keyword, SearchQuery(
            text=text, filters=filters, facets=request.facets, size=depth, sort="relevance"))
        try:
            vector_query = self._vector_query(text, request)
            semantic = self.index.search(SearchQuery(vector=replace(vector_query, k=depth), filters=filters,
                                                     size=depth))
        finally:
            keyword_result = keyword_future.result()
        keyword, match = keyword_result
        keyword_weight = self.settings.hybrid_keyword_weight * (1.0 if match == "all" else HYBRID_PARTIAL_WEIGHT)
        fused = fuse_rrf([keyword.hits, semantic.hits], weights=(keyword_weight, self.settings.hybrid_vector_weight),
                         k=RRF_K, scaled=(match == "any", False))
        page = fused[state.offset:state.offset + request.size]
        end = state.offset + len(page)
        more = len(fused) > end and end < MAX_HYBRID_DEPTH
        out = self._shape(SearchResult(hits=[h for h, _ in page], total=max(keyword.total, len(fused)),
                                       facets=keyword.facets))
        for shaped, (_, sources) in zip(out["hits"], page, strict=True):
            shaped["source"] = "+".join(sources)
        out["next_cursor"] = replace(state, offset=end).encode() if more else None
        return out

    def document(self, doc_id: str, tenant: str) -> dict[str, Any]:
        """The stored document, or 404 — also for another tenant's id, which must look exactly like absence."""
        doc = self.index.get(doc_id)
        if doc is None or doc.get("tenant", DEFAULT_TENANT) != tenant:
            raise NotFoundError(f"no image with id {doc_id!r}", id=doc_id)
        return doc

    def image(self, doc_id: str, tenant: str) -> dict[str, Any]:
        doc = self.document(doc_id, tenant)
        # Face vectors are biometric data: they serve /faces/search and never leave the service.
        out = {"id": doc_id, **{k: v for k, v in doc.items() if k != "face_vectors"}}
        ttl = self.settings.presign_ttl_seconds
        out["original_url"] = self.store.presigned_get(doc["bucket"], doc["key"], ttl)
        out.update(self._derivative_urls(doc))
        return out

    def by_image(self, vector: npt.NDArray[np.float32], request: SearchRequest, *, phash: str | None = None,
                 sha256: str | None = None, exclude_id: str | None = None,
                 crop_vector: npt.NDArray[np.float32] | None = None) -> dict[str, Any]:
        """Query by example. Copies of the query image (the duplicate rule: pHash, vector, SHA-256) come
        first, most alike first, then the rest by vector similarity. Copies found by hash (or through crop
        vectors: ``crop_vector`` is the query's centre crop) lead page 1 and are dropped wherever the
        ranking reaches them; the cursor carries where page 1's copies ended, so later pages drop the same
        copies (and any that arrived since and rank above them) even when copies come or go while someone
        pages. Copies the ranking itself finds only move up within their page. So pages neither repeat nor
        skip a hit (a page can hold fewer than ``size`` hits). A page of size 1 that holds a copy found by
        hash has no next page (ask for a larger size to page on)."""
        filters = request.filters
        if exclude_id:
            filters = replace(filters, exclude_ids=(*filters.exclude_ids, exclude_id))
        rule = self.duplicate_rule()
        probe = {FULL_VECTOR: vector, CROP_VECTOR: crop_vector}
        # One slot stays for the ranking, whose cursor pages on.
        room = max(request.size - 1, 1)
        state = CopiesCursor.decode(request.cursor) if request.cursor is not None else None
        # Later pages look deeper: copies that arrived since page 1 may rank above ones it showed.
        depth = room if state is None else min(2 * room + COPIES_ARRIVAL_MARGIN, MAX_PAGE_SIZE)
        # Copies by hash are compared by vector too (a few vector reads), so they order by similarity
        # with the copies the ranking finds: a look-alike shot must not outrank the photo's own copy.
        # A later page whose page 1 showed no copies has none to drop.
        look = (phash or rule.crop_vectors) and (state is None or state.cut is not None)
        by_hash = self._copies(rule, phash=phash, sha256=sha256, vectors=probe, scope=filters, depth=depth,
                               vector_hits=[])[:depth] if look else []
        if state is None:
            shown = by_hash
            cut = rank_key(shown[-1][1]) if shown else None
        else:
            cut = state.cut
            by_hash = [hcm for hcm in by_hash if cut is not None and rank_key(hcm[1]) <= cut]  # shown on page 1
            shown = []
        rest = request.size - len(shown)
        if rest <= 0:
            return {"hits": [self._copy_hit(h, c, m) for h, c, m in shown],
                    "total": self.index.count(filters), "facets": {}, "next_cursor": None}
        result = self.index.search(SearchQuery(
            vector=VectorQuery(field="image_vector", vector=vector, k=MAX_VECTOR_DEPTH),
            filters=filters, facets=request.facets, size=rest, cursor=state.inner if state is not None else None,
        ))
        if result.next_cursor is not None:
            result = replace(result, next_cursor=CopiesCursor(result.next_cursor, cut).encode())
        hash_ids = {h.id for h, _, _ in by_hash}
        ranked = [h for h in result.hits if h.id not in hash_ids]
        # Copies within the ranked page (vector, or joint with the pHash read off their documents).
        in_page = self._copies(rule, phash=phash, sha256=sha256, vectors=probe, scope=filters, depth=rest,
                               vector_hits=ranked, hash_search=False, cross_search=False)
        copy_ids = {h.id for h, _, _ in in_page}
        copies = sorted([*shown, *in_page], key=lambda hcm: (-hcm[1].score, hcm[0].id))
        out = self._shape(replace(result, hits=[h for h in ranked if h.id not in copy_ids]))
        out["hits"] = [self._copy_hit(h, c, m) for h, c, m in copies] + out["hits"]
        # Copies by hash beyond the ranking's depth are hits too.
        out["total"] = max(result.total, len(by_hash))
        return out

    def by_vector(self, field_name: str, vector: npt.NDArray[np.float32], request: SearchRequest,
                  min_similarity: float | None = None) -> dict[str, Any]:
        query = SearchQuery(
            vector=VectorQuery(field=field_name, vector=vector, k=MAX_VECTOR_DEPTH, min_similarity=min_similarity),
            filters=request.filters, facets=request.facets, size=request.size, cursor=request.cursor,
        )
        return self._shape(self.index.search(query))

    def same_person(self, doc_id: str, tenant: str, face: int, min_similarity: float, size: int) -> dict[str, Any]:
        """Images with a face close to face ``face`` of ``doc_id``. Face vectors are few and opt-in, so
        they live on their documents and are compared exactly over the images that have faces."""
        doc = self.document(doc_id, tenant)
        vectors = doc.get("face_vectors") or []
        if not 0 <= face < len(vectors):
            raise NotFoundError(f"image {doc_id!r} has no face {face} (it has {len(vectors)})", id=doc_id)
        probe = _unit(np.asarray(vectors[face], dtype=np.float32))
        matches: list[tuple[float, int, Hit]] = []
        cursor = None
        scope = Filters(tenant=tenant, min_faces=1)
        while True:
            page = self.index.search(SearchQuery(filters=scope, size=100, sort="oldest", cursor=cursor))
            for hit in page.hits:
                faces = np.asarray(hit.doc.get("face_vectors") or [], dtype=np.float32)
                if hit.id == doc_id or faces.size == 0:
                    continue
                sims = (faces / np.linalg.norm(faces, axis=1, keepdims=True)) @ probe
                best = int(np.argmax(sims))
                if sims[best] >= min_similarity:
                    matches.append((float(sims[best]), best, hit))
            cursor = page.next_cursor
            if cursor is None:
                break
        matches.sort(key=lambda m: (-m[0], m[2].id))
        hits = []
        for sim, idx, hit in matches[:size]:
            shaped = self._hit(replace(hit, score=round(sim, 6), source="vector"))
            shaped["face"] = idx
            shaped["face_box"] = (hit.doc.get("faces") or [None] * (idx + 1))[idx]
            hits.append(shaped)
        return {"id": doc_id, "face": face, "min_similarity": min_similarity, "hits": hits, "total": len(matches)}

    def similar(self, doc_id: str, tenant: str, request: SearchRequest, field: str = "image_vector",
                min_similarity: float | None = None) -> dict[str, Any]:
        self.document(doc_id, tenant)
        vector = self.index.get_vectors(doc_id).get(field)
        if vector is None:
            raise NotFoundError(f"image {doc_id!r} has no {field} (not analysed yet?)", id=doc_id, field=field)
        filters = replace(request.filters, exclude_ids=(*request.filters.exclude_ids, doc_id))
        query = SearchQuery(
            vector=VectorQuery(field=field, vector=vector, k=MAX_VECTOR_DEPTH, min_similarity=min_similarity),
            filters=filters, facets=request.facets, size=request.size, cursor=request.cursor,
        )
        return self._shape(self.index.search(query))

    def duplicate_rule(self, max_distance: int | None = None, min_similarity: float | None = None,
                       signals: tuple[Signal, ...] = SIGNALS) -> DuplicateRule:
        """The calibrated thresholds from settings, with a request's overrides."""
        s = self.settings
        return DuplicateRule(
            max_distance=s.duplicate_max_distance if max_distance is None else max_distance,
            min_similarity=s.duplicate_min_similarity if min_similarity is None else min_similarity,
            joint_max_distance=s.duplicate_joint_max_distance,
            joint_min_similarity=s.duplicate_joint_min_similarity,
            signals=signals,
            crop_vectors=s.crop_vector_fraction > 0,
        )

    def duplicates(self, doc_id: str, tenant: str, max_distance: int | None = None, size: int = 20,
                   min_similarity: float | None = None, signals: tuple[Signal, ...] = SIGNALS) -> dict[str, Any]:
        """Exact copies (same SHA-256) and near copies: pHash within max_distance bits, or image vectors at
        least min_similarity alike, or both moderately close (see pixdex.duplicates). Each near hit names the
        signals that matched and carries its pHash distance and vector similarity."""
        doc = self.document(doc_id, tenant)
        rule = self.duplicate_rule(max_distance, min_similarity, signals)
        scope = Filters(tenant=tenant, exclude_ids=(doc_id,))
        # The exact-copy lookup runs beside the near-copy searches; exact copies are few, so the near side
        # looks ``size`` deeper and drops them afterwards.
        exact_future = _BACKGROUND.submit(self.index.search, SearchQuery(
            filters=replace(scope, sha256=doc["sha256"]), size=size, sort="oldest",
        )) if doc.get("sha256") and "sha256" in rule.signals else None
        try:
            vectors = dict(self.index.get_vectors(doc_id)) if "image_vector" in rule.signals else {}
            copies = self._copies(rule, phash=doc.get("phash"), sha256=doc.get("sha256"), vectors=vectors,
                                  scope=scope, depth=2 * size)
        finally:
            exact = exact_future.result().hits if exact_future is not None else []
        exact_ids = {h.id for h in exact}
        near = [(hit, cand, matched) for hit, cand, matched in copies if hit.id not in exact_ids][:size]
        return {
            "id": doc_id,
            "sha256": doc.get("sha256"),
            "phash": doc.get("phash"),
            "max_distance": rule.max_distance,
            "min_similarity": rule.min_similarity,
            "joint": {"max_distance": rule.joint_max_distance, "min_similarity": rule.joint_min_similarity}
            if rule.joint else None,
            "signals": list(rule.signals),
            "exact": [{**self._hit(h), "signals": ["sha256"]} for h in exact],
            "near": [self._copy_hit(hit, cand, matched) for hit, cand, matched in near],
        }

    def _copies(self, rule: DuplicateRule, *, phash: str | None, sha256: str | None,
                vectors: Mapping[str, npt.NDArray[np.float32] | None], scope: Filters, depth: int,
                vector_hits: list[Hit] | None = None, hash_search: bool = True,
                cross_search: bool = True) -> list[tuple[Hit, Candidate, list[str]]]:
        """Images in ``scope`` that are copies of the probe (given by its hashes and its full and crop
        vectors) under ``rule``, most alike first. Candidates come from the index port every backend has:
        the Hamming search over pHashes, a filtered k-NN over image vectors and, with crop vectors, the
        crossed k-NNs (the probe's full vector against crop vectors, its crop vector against image vectors:
        a tight crop and its original meet there), run side by side; each candidate is then compared on
        every signal. A caller that already ranked by vector passes its hits as ``vector_hits`` (scores
        are cosines), and no plain k-NN runs; ``cross_search=False`` skips the crossed ones."""
        full = vectors.get(FULL_VECTOR) if "image_vector" in rule.signals else None
        crop = vectors.get(CROP_VECTOR) if rule.crop_vectors and full is not None else None
        use_hash = bool(phash) and "phash" in rule.signals and hash_search
        searches: list[tuple[str, npt.NDArray[np.float32]]] = []
        if full is not None and vector_hits is None:
            searches.append((FULL_VECTOR, full))
        if full is not None and crop is not None and cross_search:
            searches += [(CROP_VECTOR, full), (FULL_VECTOR, crop)]
        if not use_hash and not searches and not vector_hits:
            return []
        hash_future = _BACKGROUND.submit(
            self.index.near_duplicates, str(phash), rule.max_distance, scope, min(depth, MAX_PAGE_SIZE)
        ) if use_hash else None
        try:
            by_vector: list[Hit] = list(vector_hits or [])
            # Deep enough that joint matches (cosine from the floor up, pHash close) are not cut off.
            k = min(max(depth, DUPLICATE_CANDIDATES), MAX_PAGE_SIZE)
            for field_name, probe in searches:
                by_vector += self.index.search(SearchQuery(
                    vector=VectorQuery(field=field_name, vector=probe, k=k, min_similarity=rule.vector_floor),
                    filters=scope, size=k)).hits
        finally:
            by_hash = hash_future.result() if hash_future is not None else []
        hits: dict[str, Hit] = {}
        candidates: dict[str, Candidate] = {}
        # Plain k-NN scores are the full-full cosine; a probe with a crop vector reads each candidate's
        # vectors so the signal is the best of the four cosines.
        crossed = crop is not None
        for hit in by_vector:
            if hit.id not in hits:
                hits[hit.id] = hit
                candidates[hit.id] = Candidate(hit.id, similarity=None if crossed else round(float(hit.score), 6))
        for hit in by_hash:
            hits.setdefault(hit.id, hit)
            candidates.setdefault(hit.id, Candidate(hit.id))
        unscored = [doc_id for doc_id, cand in candidates.items() if cand.similarity is None]
        if full is not None and unscored:
            # One read of every candidate's vectors, compared in one matrix product per pair of fields.
            stored = self.index.get_vectors_many(
                unscored, (FULL_VECTOR, CROP_VECTOR) if rule.crop_vectors else (FULL_VECTOR,))
            similarities = vector_similarities({FULL_VECTOR: full, CROP_VECTOR: crop},
                                               [stored[doc_id] for doc_id in unscored], crops=rule.crop_vectors)
            for doc_id, similarity in zip(unscored, similarities, strict=True):
                candidates[doc_id].similarity = round(similarity, 6) if similarity is not None else None
        for doc_id, cand in candidates.items():
            doc = hits[doc_id].doc
            other = doc.get("phash")
            if phash and isinstance(other, str):
                cand.distance = hamming(phash, other)
            cand.same_sha256 = bool(sha256) and doc.get("sha256") == sha256
        return [(hits[c.id], c, matched) for c, matched in rank_copies(list(candidates.values()), rule)]

    def _copy_hit(self, hit: Hit, cand: Candidate, matched: list[str]) -> dict[str, Any]:
        out = self._hit(replace(hit, score=round(cand.score, 6), source="hash" if "phash" in matched else "vector",
                                distance=cand.distance))
        out["similarity"] = cand.similarity
        out["signals"] = matched
        return out

    def stats(self, tenant: str) -> dict[str, Any]:
        scope = Filters(tenant=tenant)
        result = self.index.search(SearchQuery(filters=scope, facets=("labels", "format", "year"),
                                               facet_size=50, size=1, sort="newest"))
        return {
            "images": result.total,
            "facets": {name: [{"value": b.value, "count": b.count} for b in buckets]
                       for name, buckets in result.facets.items()},
            "index": self.index.stats(),
        }

    def _shape(self, result: SearchResult) -> dict[str, Any]:
        return {
            "hits": [self._hit(h) for h in result.hits],
            "total": result.total,
            "facets": {
                name: [{"value": b.value, "count": b.count} for b in buckets]
                for name, buckets in result.facets.items()
            },
            "next_cursor": result.next_cursor,
        }

    def _hit(self, hit: Hit) -> dict[str, Any]:
        doc = hit.doc
        out: dict[str, Any] = {
            "id": hit.id,
            "key": doc.get("key"),
            "score": hit.score,
            "source": hit.source,
            "name": doc.get("name"),
            "format": doc.get("format"),
            "width": doc.get("width"),
            "height": doc.get("height"),
            "bytes": doc.get("bytes"),
            "labels": doc.get("labels", []),
            "caption": doc.get("caption"),
            "taken_at": doc.get("taken_at"),
            "uploaded_at": doc.get("uploaded_at"),
        }
        if hit.distance is not None:
            out["distance"] = hit.distance
        if hit.highlights:
            out["highlights"] = hit.highlights
        out.update(self._derivative_urls(doc))
        return out

    def _derivative_urls(self, doc: dict[str, Any]) -> dict[str, str | None]:
        ttl = self.settings.presign_ttl_seconds
        derivatives = doc.get("derivatives") or {}
        urls: dict[str, str | None] = {}
        for name in ("thumbnail", "preview"):
            d = derivatives.get(name)
            urls[f"{name}_url"] = (
                self.store.presigned_get(self.settings.derivatives_bucket, d["key"], ttl) if d else None
            )
        return urls
