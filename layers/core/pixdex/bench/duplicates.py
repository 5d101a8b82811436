"""``pixdex bench duplicates``: how well near duplicates and query by image find edited copies of a photo.

Every photo (by default the evaluation photos of pixdex.bench.evalset; ``--photos DIR`` for a folder) and
its edited copies (pixdex.bench.variants: crops 70-95 %, resizes, JPEG q 20-95, rotations of ±5 degrees,
brightness and colour tweaks, watermarks, combinations) go through the real analyze pipeline into an
embedded index. Then, in the same run, the rule with full image vectors only (before) beside the rule that
also compares crop vectors (now):

- the score distributions per signal (pHash Hamming distance, image-vector cosine) of true copies against
  their original, and of different photos against each other;
- thresholds picked from them with a margin (the closest different photo plus a margin), beside the
  configured ones (Settings, whose defaults come from this benchmark);
- recall per edit kind and false positives among different photos, through the real duplicates query, for
  each signal alone (pHash only is the old behaviour, the baseline) and for the fused rule;
- query by image against an index of the originals only: how often a copy finds its original first,
  cosine ranking alone, copies-first with full vectors only, and copies-first with crop vectors;
- what the crop vector adds to the models' part of analyze (ratio, same run);
- the three vector searches of a duplicates query at library scale (pixdex.bench.threshold): the real
  vectors among distractors, 100k rows per field, SimHash shortlist against the int8 scan and the truth.

Only the models that the signals need run (classifier + image and crop vectors); captions and OCR take part
only in the cost measurement.
Results go to the near-duplicates section of docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pixdex.bench import threshold
from pixdex.bench.evalset import DEFAULT_DEB_ROOT, EvalSetMissingError, eval_photos
from pixdex.bench.report import write_section
from pixdex.bench.variants import Variant, standard_variants
from pixdex.document import document_id
from pixdex.duplicates import SIGNALS, DuplicateRule, Signal
from pixdex.events import ObjectEvent
from pixdex.hashing import hamming
from pixdex.index.base import Filters
from pixdex.index.sqlite import SqliteIndex
from pixdex.query import DUPLICATE_CANDIDATES, SearchRequest, SearchService
from pixdex.runtime import Runtime
from pixdex.settings import Settings
from pixdex.storage import FolderStore

SECTION: Final = "## Near duplicates and query by image (fused signals)"
DEFAULT_OUTPUT: Final = Path("docs/quality.md")
PHOTO_SUFFIXES: Final = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".avif")
# The old duplicates default: pHash within 8 bits. The baseline every fused figure is compared with.
BASELINE_MAX_DISTANCE: Final = 8
# Margins between the closest different photo and a picked threshold.
DISTANCE_MARGIN: Final = 4
SIMILARITY_MARGIN: Final = 0.04
BATCH: Final = 16
# Shots of one scene in the evaluation set (OpenCV's two aerial views of one town, taken for homography
# samples): neither copies nor different photos.
EVAL_SAME_SCENE: Final = ("aero1.jpg,aero3.jpg",)


@dataclass
class Doc:
    id: str
    group: int            # which photo it shows
    variant: str          # "original" or the variant's name
    kind: str
    phash: str | None
    sha256: str | None
    vector: npt.NDArray[np.float32] | None
    crop: npt.NDArray[np.float32] | None = None


@dataclass
class Corpus:
    photos: list[str]
    docs: list[Doc]
    same_scene: set[frozenset[int]] = field(default_factory=set)
    ingest_s: float = 0.0

    def originals(self) -> list[Doc]:
        return [d for d in self.docs if d.variant == "original"]

    def different(self, a: Doc, b: Doc) -> bool:
        """Different photos (not copies of one, nor declared shots of the same scene)."""
        return a.group != b.group and frozenset((a.group, b.group)) not in self.same_scene


def photo_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def build(photos: Sequence[Path], variants: Sequence[Variant], workdir: Path,
          same_scene: Sequence[tuple[str, str]] = ()) -> tuple[Corpus, Runtime]:
    """Every photo and its variants through the analyze pipeline into a fresh embedded index. A workdir
    kept from an earlier run over the same photos and variants is reused as it is (``--keep``)."""
    from pixdex.imaging import decode

    settings = Settings(originals_bucket="bench-originals", derivatives_bucket="bench-derivatives",
                        index_url=f"sqlite:///{workdir / 'duplicates.db'}", data_dir=workdir,
                        capabilities=("classify", "embed"))
    store = FolderStore(workdir / "s3")
    runtime = Runtime(settings, store=store, embedder=None)
    names = [p.name for p in photos]
    manifest = workdir / "corpus.json"
    plan = {"photos": names, "variants": [v.name for v in variants]}
    kept = json.loads(manifest.read_text()) if manifest.exists() else None
    if kept and kept["plan"]["variants"] == plan["variants"] and set(names) <= set(kept["plan"]["photos"]):
        # Photos dropped since are removed from the kept index, so they cannot be listed.
        kept_names = kept["plan"]["photos"]
        docs = []
        for d in kept["docs"]:
            name = kept_names[d["group"]]
            if name in names:
                docs.append(Doc(d["id"], names.index(name), d["variant"], d["kind"], None, None, None))
            else:
                runtime.index.delete(d["id"])
        kept["plan"]["photos"] = names
        kept["docs"] = [{"id": d.id, "group": d.group, "variant": d.variant, "kind": d.kind} for d in docs]
        manifest.write_text(json.dumps(kept))
        _read_signals(runtime, docs)
        scenes = {frozenset((names.index(a), names.index(b))) for a, b in same_scene if a in names and b in names}
        return Corpus(photos=names, docs=docs, same_scene=scenes, ingest_s=float(kept["ingest_s"])), runtime
    pipeline = runtime.pipeline
    docs = []
    events: list[ObjectEvent] = []
    t0 = time.perf_counter()

    def flush() -> None:
        for event, result in zip(events, pipeline.analyze_many(events), strict=True):
            if isinstance(result, Exception):
                raise RuntimeError(f"{event.key}: {result}") from result
        events.clear()

    for group, path in enumerate(photos):
        data = path.read_bytes()
        image = decode(data, settings.limits).image
        files = [("original", "original", path.suffix.lower().lstrip("."), data)]
        files += [(v.name, v.kind, "jpg", v.render(image)) for v in variants]
        for name, kind, ext, payload in files:
            key = f"{path.stem}/{name}.{ext}"
            etag = store.put(settings.originals_bucket, key, payload, content_type="application/octet-stream")
            events.append(ObjectEvent(kind="created", bucket=settings.originals_bucket, key=key, etag=etag))
            docs.append(Doc(document_id(settings.originals_bucket, key), group, name, kind, None, None, None))
            if len(events) >= BATCH:
                flush()
    flush()
    ingest_s = time.perf_counter() - t0
    _read_signals(runtime, docs)
    manifest.write_text(json.dumps({"plan": plan, "ingest_s": ingest_s, "docs": [
        {"id": d.id, "group": d.group, "variant": d.variant, "kind": d.kind} for d in docs]}))
    scenes = {frozenset((names.index(a), names.index(b))) for a, b in same_scene if a in names and b in names}
    return Corpus(photos=names, docs=docs, same_scene=scenes, ingest_s=ingest_s), runtime


def _read_signals(runtime: Runtime, docs: Sequence[Doc]) -> None:
    """Each document's hashes and vector as analyze stored them."""
    for doc in docs:
        stored = runtime.index.get(doc.id) or {}
        doc.phash, doc.sha256 = stored.get("phash"), stored.get("sha256")
        vectors = runtime.index.get_vectors(doc.id)
        doc.vector, doc.crop = vectors.get("image_vector"), vectors.get("crop_vector")


# ---------------------------------------------------------------------------------------- distributions

@dataclass
class Pairs:
    """Per-signal scores of (query, other) pairs: copies of one photo, and different photos."""

    copy_sim: dict[str, list[float]] = field(default_factory=dict)     # by kind
    copy_dist: dict[str, list[int]] = field(default_factory=dict)
    other_sim: list[float] = field(default_factory=list)
    other_dist: list[int] = field(default_factory=list)
    other_pairs: list[tuple[float, int, str, str]] = field(default_factory=list)  # (sim, dist, a, b)
    scene: list[tuple[float, int, str, str]] = field(default_factory=list)


def pair_scores(corpus: Corpus, *, crops: bool = False) -> Pairs:
    """Copies against their original; each original against every document of every other photo. With
    ``crops`` the vector score is the duplicate rule's: the best of full/crop cosines both ways."""
    out = Pairs()
    docs = [d for d in corpus.docs if d.vector is not None and d.phash is not None]
    matrix = np.stack([_unit(d.vector) for d in docs])  # type: ignore[arg-type]
    sims = matrix @ matrix.T
    if crops:
        cropped = np.stack([_unit(d.crop if d.crop is not None else d.vector) for d in docs])  # type: ignore[arg-type]
        cross = matrix @ cropped.T
        sims = np.maximum.reduce([sims, cross, cross.T, cropped @ cropped.T])
    originals = {d.group: i for i, d in enumerate(docs) if d.variant == "original"}
    for i, d in enumerate(docs):
        if d.variant == "original":
            continue
        o = originals[d.group]
        out.copy_sim.setdefault(d.kind, []).append(float(sims[i, o]))
        out.copy_dist.setdefault(d.kind, []).append(hamming(str(d.phash), str(docs[o].phash)))
    for o in originals.values():
        a = docs[o]
        for j, b in enumerate(docs):
            if b.group == a.group:
                continue
            entry = (float(sims[o, j]), hamming(str(a.phash), str(b.phash)),
                     corpus.photos[a.group], f"{corpus.photos[b.group]}:{b.variant}")
            if corpus.different(a, b):
                out.other_sim.append(entry[0])
                out.other_dist.append(entry[1])
                out.other_pairs.append(entry)
            else:
                out.scene.append(entry)
    return out


@dataclass(frozen=True)
class Picked:
    max_distance: int
    min_similarity: float
    joint_max_distance: int
    joint_min_similarity: float


def pick_thresholds(pairs: Pairs, joint_max_distance: int) -> Picked:
    """Each threshold a margin away from the closest different photo: the pHash radius below the nearest
    hash, the cosine above the most similar vector, and for the joint rule (pHash within
    ``joint_max_distance``) the cosine above the most similar photo that is also that close in hash."""
    max_distance = max(0, min(pairs.other_dist, default=64) - DISTANCE_MARGIN)
    min_similarity = _ceil2(max(pairs.other_sim, default=0.0) + SIMILARITY_MARGIN)
    close = [s for s, d, _, _ in pairs.other_pairs if d <= joint_max_distance]
    joint_min_similarity = min(min_similarity, _ceil2(max(close, default=0.0) + SIMILARITY_MARGIN))
    return Picked(max_distance, min(min_similarity, 1.0), joint_max_distance, min(joint_min_similarity, 1.0))


def _ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-9) / 100


def _unit(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    n = float(np.linalg.norm(v))
    return v / n if n else v


# ---------------------------------------------------------------------------------------- the real query

@dataclass
class Outcome:
    found: dict[str, list[bool]] = field(default_factory=dict)    # by kind, from the original's listing
    found_back: dict[str, list[bool]] = field(default_factory=dict)  # by kind, the copy's listing has the original
    false_positives: list[tuple[str, str, list[str]]] = field(default_factory=list)
    missed: dict[str, int] = field(default_factory=dict)  # by variant name
    negatives: int = 0
    by_signal: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0   # wall time of all the duplicates queries
    queries: int = 0

    def recall(self, kind: str | None = None) -> float:
        values = [v for k, vs in self.found.items() if kind is None or k == kind for v in vs]
        return sum(values) / len(values) if values else float("nan")

    def recall_back(self) -> float:
        values = [v for vs in self.found_back.values() for v in vs]
        return sum(values) / len(values) if values else float("nan")


def evaluate(corpus: Corpus, service: SearchService, *, max_distance: int | None, min_similarity: float | None,
             signals: tuple[Signal, ...]) -> Outcome:
    """GET /images/{id}/duplicates for every original and every copy, as the API runs it."""
    out = Outcome()
    by_id = {d.id: d for d in corpus.docs}
    per_group = max(sum(1 for d in corpus.docs if d.group == g.group) for g in corpus.originals())
    size = min(100, per_group + 10)
    for doc in corpus.docs:
        t0 = time.perf_counter()
        listing = service.duplicates(doc.id, "default", max_distance, size, min_similarity=min_similarity,
                                     signals=signals)
        out.seconds += time.perf_counter() - t0
        out.queries += 1
        hits = listing["exact"] + listing["near"]
        listed = {h["id"] for h in hits}
        if doc.variant == "original":
            for other in corpus.docs:
                if other.group == doc.group and other.id != doc.id:
                    out.found.setdefault(other.kind, []).append(other.id in listed)
                    if other.id not in listed:
                        out.missed[other.variant] = out.missed.get(other.variant, 0) + 1
            out.negatives += sum(1 for o in corpus.docs if corpus.different(doc, o))
            for hit in hits:
                other = by_id[hit["id"]]
                if other.group == doc.group:
                    for signal in hit["signals"]:
                        out.by_signal[signal] = out.by_signal.get(signal, 0) + 1
                if corpus.different(doc, other):
                    out.false_positives.append((corpus.photos[doc.group],
                                                f"{corpus.photos[other.group]}:{other.variant}", hit["signals"]))
        else:
            original = next(o for o in corpus.originals() if o.group == doc.group)
            out.found_back.setdefault(doc.kind, []).append(original.id in listed)
    return out


@dataclass
class Ranks:
    cosine: dict[str, list[int]] = field(default_factory=dict)       # by kind: rank of the original
    full_only: dict[str, list[int]] = field(default_factory=dict)    # copies first, full vectors only
    copies_first: dict[str, list[int]] = field(default_factory=dict)
    misses: list[tuple[str, str, int, str]] = field(default_factory=list)  # copies first: photo, variant, rank, top
    seconds: dict[str, float] = field(default_factory=lambda: {"full_only": 0.0, "copies_first": 0.0})


def by_image_ranks(corpus: Corpus, settings: Settings, before: Settings, workdir: Path) -> Ranks:
    """POST /search/image with each copy against an index of the originals only (the copy itself is not
    indexed, as when someone searches with an edited file): the original's rank, cosine ranking alone
    against copies-first. The query's vector and hashes are what the API computes from the upload: the
    pipeline decodes and embeds it the same way."""
    for suffix in ("", "-wal", "-shm"):
        (workdir / f"originals.db{suffix}").unlink(missing_ok=True)
    index = SqliteIndex(workdir / "originals.db")
    index.ensure()
    originals = corpus.originals()
    for doc in originals:
        index.upsert(doc.id, {"bucket": "bench-originals", "key": doc.id, "tenant": "default",
                              "uploaded_at": "2026-01-01T00:00:00+00:00", "phash": doc.phash, "sha256": doc.sha256,
                              **({"image_vector": doc.vector} if doc.vector is not None else {}),
                              **({"crop_vector": doc.crop} if doc.crop is not None else {})})
    store = FolderStore(workdir / "s3")
    service = SearchService(settings, index, store)
    full_only = SearchService(before, index, store)
    request = SearchRequest(filters=Filters(tenant="default"), size=10)
    out = Ranks()
    for doc in corpus.docs:
        if doc.variant == "original" or doc.vector is None:
            continue
        target = next(o.id for o in originals if o.group == doc.group)
        plain = [h["id"] for h in service.by_vector("image_vector", doc.vector, request)["hits"]]
        t0 = time.perf_counter()
        fused = [h["id"] for h in service.by_image(doc.vector, request, phash=doc.phash, sha256=doc.sha256,
                                                    crop_vector=doc.crop)["hits"]]
        t1 = time.perf_counter()
        old = [h["id"] for h in full_only.by_image(doc.vector, request, phash=doc.phash, sha256=doc.sha256)["hits"]]
        out.seconds["copies_first"] += t1 - t0
        out.seconds["full_only"] += time.perf_counter() - t1
        out.cosine.setdefault(doc.kind, []).append(plain.index(target) + 1 if target in plain else 99)
        out.full_only.setdefault(doc.kind, []).append(old.index(target) + 1 if target in old else 99)
        out.copies_first.setdefault(doc.kind, []).append(fused.index(target) + 1 if target in fused else 99)
        if out.copies_first[doc.kind][-1] != 1:
            top = next((corpus.photos[o.group] for o in originals if fused and o.id == fused[0]), "?")
            out.misses.append((corpus.photos[doc.group], doc.variant, out.copies_first[doc.kind][-1], top))
    index.close()
    return out


# ---------------------------------------------------------------------------------------- report

def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def _dist_rows(pairs: Pairs, crossed: Pairs) -> list[str]:
    lines = [
        "| edit | copies | cosine, full vectors: min / p10 / median | best full/crop cosine: min / p10 / median "
        "| pHash bits median / max |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in pairs.copy_sim:
        sims, best = np.array(pairs.copy_sim[kind]), np.array(crossed.copy_sim[kind])
        dists = np.array(pairs.copy_dist[kind])
        lines.append(f"| {kind} | {len(sims)} | {sims.min():.3f} / {np.quantile(sims, 0.1):.3f} / "
                     f"{np.median(sims):.3f} | {best.min():.3f} / {np.quantile(best, 0.1):.3f} / "
                     f"{np.median(best):.3f} | {np.median(dists):.0f} / {dists.max()} |")
    other, other_best, other_dist = np.array(pairs.other_sim), np.array(crossed.other_sim), np.array(pairs.other_dist)
    lines.append(f"| **different photos** | {len(other)} | max {other.max():.3f}, p99.9 "
                 f"{np.quantile(other, 0.999):.3f} | max {other_best.max():.3f}, p99.9 "
                 f"{np.quantile(other_best, 0.999):.3f} | min {other_dist.min()}, p0.1 "
                 f"{np.quantile(other_dist, 0.001):.0f} |")
    return lines


def _picked_text(label: str, picked: Picked) -> str:
    return (f"{label}: pHash alone <= **{picked.max_distance}**, cosine alone >= **{picked.min_similarity:.2f}**, "
            f"joint pHash <= {picked.joint_max_distance} and cosine >= **{picked.joint_min_similarity:.2f}**")


def _configured_vs_picked(settings: Settings, picked: Picked) -> str:
    """Whether the configured thresholds are this run's picks, or stricter (kept from an earlier, stricter
    calibration), or looser (then the defaults need recalibrating)."""
    looser = (settings.duplicate_max_distance > picked.max_distance
              or settings.duplicate_min_similarity < picked.min_similarity
              or settings.duplicate_joint_min_similarity < picked.joint_min_similarity)
    same = (settings.duplicate_max_distance == picked.max_distance
            and settings.duplicate_min_similarity == picked.min_similarity
            and settings.duplicate_joint_min_similarity == picked.joint_min_similarity)
    if same:
        return ": this run's picks."
    if looser:
        return ": looser than this run's picks, so a different photo may pass; recalibrate the defaults."
    return (": as strict as this run's picks or stricter (where stricter, the earlier calibration on 43 other "
            "photos set it, and the stricter of two runs is kept).")


def render(corpus: Corpus, pairs: Pairs, crossed: Pairs, picked: Picked, picked_crossed: Picked,
           settings: Settings, rows: dict[str, Outcome], ranks: Ranks, cost: dict[str, dict[str, float]],
           scale: threshold.Scale | None, args: argparse.Namespace, elapsed_s: float) -> str:
    kinds = list(pairs.copy_sim)
    n_photos = len(corpus.photos)
    n_copies = sum(len(v) for v in pairs.copy_sim.values())
    command = "pixdex bench duplicates" + (f" --photos {args.photos}" if args.photos else "") + "".join(
        f" --same-scene {x}" for x in args.same_scene if args.photos)
    source = args.photos_note or ("the evaluation photos of pixdex/data/evalset.json: scikit-image, scikit-learn, "
                                  "Debian opencv-doc and mate-backgrounds" if not args.photos else "")
    lines = [
        SECTION, "",
        f"`{command}`: {n_photos} different photos{f' ({source})' if source else ''}, "
        f"{n_copies // max(n_photos, 1)} edited copies of each ({n_copies} in all), all through the analyze "
        f"pipeline (classifier + image vector + crop vector only) into one embedded index ({corpus.ingest_s:.0f} s); "
        f"{platform.machine()}, Python {platform.python_version()}, {elapsed_s:.0f} s in all. "
        "Copies are JPEG q90 unless the edit is a recompression. 'Before' is the duplicate rule with full image "
        "vectors only and the thresholds calibrated on 43 other photos (pHash <= "
        f"{BEFORE.max_distance}, cosine >= {BEFORE.min_similarity:.2f}, joint {BEFORE.joint_max_distance} bits "
        f"and {BEFORE.joint_min_similarity:.2f}); 'now' adds each photo's crop_vector (the central "
        f"{settings.crop_vector_fraction:.0%} of each side, embedded in the same classifier batch) and compares "
        "full and crop vectors both ways. Both are measured on the same index in this run. These thresholds "
        "replace the cosine cut-off of 'Near-duplicates (image_vector cosine)' above.", "",
        "### Score distributions", "",
        "Copies against their original; 'different photos' is each original against every document (original "
        "or copy) of every other photo.", "",
        *_dist_rows(pairs, crossed),
    ]
    closest = sorted(crossed.other_pairs, key=lambda p: -p[0])[:3]
    nearest_hash = sorted(pairs.other_pairs, key=lambda p: p[1])[:3]
    lines += ["", "Most alike different photos (best full/crop cosine): " + "; ".join(
        f"{a} ~ {b} ({s:.3f}, {d} bits)" for s, d, a, b in closest) + ". Nearest by pHash: " + "; ".join(
        f"{a} ~ {b} ({d} bits, {s:.3f})" for s, d, a, b in nearest_hash) + "."]
    if crossed.scene:
        top = sorted(crossed.scene, key=lambda p: -p[0])[:2]
        nearest = min(crossed.scene, key=lambda p: p[1])
        lines += ["", "Declared shots of the same scene (`--same-scene`; neither copies nor counted as different "
                  "photos): most alike " + "; ".join(f"{a} ~ {b}: cosine {s:.3f}, {d} bits" for s, d, a, b in top) +
                  f"; nearest by pHash {nearest[2]} ~ {nearest[3]}: {nearest[1]} bits, cosine {nearest[0]:.3f}."]
    lines += [
        "", "### Thresholds", "",
        "Picked from this run, each a margin away from the closest different photo (pHash: nearest minus "
        f"{DISTANCE_MARGIN} bits; cosine: most similar plus {SIMILARITY_MARGIN}; joint: most similar photo that is "
        f"also within the joint radius, plus {SIMILARITY_MARGIN}). " + _picked_text("Full vectors only", picked) +
        ". " + _picked_text("Full + crop vectors", picked_crossed) + ". Configured (Settings defaults, "
        f"`PIXDEX_DUPLICATE_*`, `PIXDEX_CROP_VECTOR_FRACTION`={settings.crop_vector_fraction}): pHash <= "
        f"{settings.duplicate_max_distance}, cosine >= {settings.duplicate_min_similarity:.2f}, joint pHash <= "
        f"{settings.duplicate_joint_max_distance} and cosine >= {settings.duplicate_joint_min_similarity:.2f}"
        + _configured_vs_picked(settings, picked_crossed),
        "", "### Recall and false positives through GET /images/{id}/duplicates", "",
        "Recall: share of an original's copies listed in its duplicates (and, last column, share of copies whose "
        "listing holds the original). False positives: documents of a different photo listed, over all "
        "(original, different-photo document) pairs.", "",
        "| rule | " + " | ".join(kinds) + " | recall | copy -> original | false positives | ms per query |",
        "|---|" + "---:|" * (len(kinds) + 4),
    ]
    for name, outcome in rows.items():
        fp = len(outcome.false_positives)
        lines.append(f"| {name} | " + " | ".join(_fmt(outcome.recall(k)) for k in kinds) +
                     f" | **{_fmt(outcome.recall())}** | {_fmt(outcome.recall_back())} | {fp} of "
                     f"{outcome.negatives:,} ({fp / max(outcome.negatives, 1):.2%}) | "
                     f"{outcome.seconds * 1000 / max(outcome.queries, 1):.1f} |")
    before_row, now_row = rows.get(BEFORE_ROW), rows.get(CONFIGURED)
    if before_row is not None and now_row is not None and before_row.seconds > 0:
        lines += ["", f"Query cost over this {len(corpus.docs):,}-document index, same run: the configured rule "
                  f"with crop vectors (three k-NNs and a vector read per candidate) takes "
                  f"**{now_row.seconds / before_row.seconds:.2f}x** the time of the full-vectors rule (one k-NN; "
                  "the rows run one after another, so machine noise between them is in the ratio); "
                  "at this size every field is scored exactly. At 100k documents, see the at-scale section "
                  "below and docs/benchmarks.md ('query: fused near duplicates and query by image')."]
    fused = rows.get(CONFIGURED)
    if fused is not None:
        lines += ["", "Which rule listed each true copy under the configured rule: " + ", ".join(
            f"{k} {v}" for k, v in sorted(fused.by_signal.items(), key=lambda kv: -kv[1])) + "."]
        if fused.missed:
            lines += [f"Missed under the configured rule (of {n_photos} each): " + ", ".join(
                f"{k} {n}" for k, n in sorted(fused.missed.items(), key=lambda kv: -kv[1])) + "."]
        if fused.false_positives:
            lines += ["False positives under the configured rule: " + "; ".join(
                f"{a} ~ {b} ({'+'.join(s)})" for a, b, s in fused.false_positives[:5]) + "."]
    lines += [
        "", "### Query by image: rank of the original", "",
        "Each copy is the query image of POST /search/image over an index of the originals only.", "",
        "| ordering | " + " | ".join(kinds) + " | original first | in top 3 |",
        "|---|" + "---:|" * (len(kinds) + 2),
    ]
    for label, table in (("cosine only", ranks.cosine), ("copies first, full vectors (before)", ranks.full_only),
                         ("copies first, full + crop vectors (now)", ranks.copies_first)):
        every = [r for v in table.values() for r in v]
        lines.append(f"| {label} | " + " | ".join(
            f"{sum(1 for r in table.get(k, []) if r == 1) / max(len(table.get(k, [])), 1):.3f}" for k in kinds) +
            f" | **{sum(1 for r in every if r == 1) / max(len(every), 1):.3f}** | "
            f"{sum(1 for r in every if r <= 3) / max(len(every), 1):.3f} |")
    if ranks.seconds["full_only"] > 0:
        lines += ["", f"Query cost, same run: copies first with crop vectors takes "
                  f"**{ranks.seconds['copies_first'] / ranks.seconds['full_only']:.2f}x** the time of copies "
                  f"first with full vectors only, over this index of {len(corpus.originals())} originals."]
    if ranks.misses:
        lines += ["", "Copies whose original did not come first (now): " + "; ".join(
            f"{photo} {variant} (rank {r}, after {top})" for photo, variant, r, top in ranks.misses) + "."]
    if cost:
        lines += [
            "", "### What the crop vector costs at analyze time", "",
            "The models' part of analyze with and without the crop vector (it rides in the classifier's batch, "
            "so it doubles that model's inputs; decoding, hashing and EXIF are unchanged), interleaved rounds, "
            "median per round. Storage: one more 1280-d vector per image.", "",
            "| models | photos x rounds | without | with crop vector | ratio |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, c in cost.items():
            lines.append(f"| {label} | {int(c['images'])} x {int(c['rounds'])} | "
                         f"{c['without_s'] * 1000 / c['images']:.0f} ms/image | "
                         f"{c['with_s'] * 1000 / c['images']:.0f} ms/image | **{c['ratio']:.2f}x** |")
    if scale is not None:
        lines += ["", *threshold.render(scale)]
    lines += [
        "", "Reproduce: `pixdex bench duplicates` (the evaluation photos; `--photos DIR` takes a folder of "
        "different photos instead, `--same-scene A,B` declares two files shots of one scene, `--keep DIR` keeps "
        "the analysed index for reruns). Rerun on a larger photo set before trusting the thresholds for a library "
        "with many look-alike photos.",
    ]
    return "\n".join(lines) + "\n"


def analyze_cost(photos: Sequence[Path], *, images: int = 16, rounds: int = 3,
                 every_model: bool = False) -> dict[str, float]:
    """The models' part of analyze over ``images`` photos, with and without the crop vector, interleaved so
    the machine's noise hits both alike: median seconds per round each way, and their ratio. Classifier +
    image vector only, or (``every_model``) the default models: classifier, captions, OCR, safety."""
    from pixdex.imaging import decode
    from pixdex.models.analysis import ImageAnalyzer, ModelSettings
    from pixdex.settings import ImageLimits

    chosen = [decode(p.read_bytes(), ImageLimits(), target_size=1024).image for p in photos[:images]]
    base = ModelSettings() if every_model else ModelSettings(caption=False, ocr=False, safety=False, faces=False,
                                                             clip=False)
    without = ImageAnalyzer(replace(base, crop_vector_fraction=0.0))
    with_crop = ImageAnalyzer(replace(base, crop_vector_fraction=0.75))
    without.analyze_batch(chosen[:2])
    with_crop.analyze_batch(chosen[:2])
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(rounds):
        for name, analyzer in (("without", without), ("with", with_crop)):
            t0 = time.perf_counter()
            analyzer.analyze_batch(chosen)
            times[name].append(time.perf_counter() - t0)
    w, c = float(np.median(times["without"])), float(np.median(times["with"]))
    return {"images": float(len(chosen)), "rounds": float(rounds), "without_s": w, "with_s": c, "ratio": c / w}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=Path, default=None,
                        help="a folder of different photos (default: the evaluation photos)")
    parser.add_argument("--deb-root", type=Path, default=DEFAULT_DEB_ROOT,
                        help="where the evaluation set's Debian packages are unpacked")
    parser.add_argument("--same-scene", action="append", default=None, metavar="A,B",
                        help="two file names that are shots of the same scene (not counted as different photos; "
                             f"default for the evaluation photos: {' '.join(EVAL_SAME_SCENE)})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--photos-note", default="", help="where the photos come from, for the report")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the index in this folder, and reuse it when it holds the same photos")
    parser.add_argument("--no-cost", action="store_true", help="skip timing the crop vector's analyze cost")
    parser.add_argument("--scale-rows", type=int, default=100_000,
                        help="rows per field for the at-scale check of the duplicate searches (0: skip it)")


BEFORE: Final = DuplicateRule(max_distance=10, min_similarity=0.82, joint_max_distance=20, joint_min_similarity=0.69,
                              crop_vectors=False)
CONFIGURED: Final = "full + crop vectors, configured (now)"
BEFORE_ROW: Final = "full vectors only, 43-photo thresholds (before)"


def _with_rule(settings: Settings, picked: Picked | DuplicateRule, *, crops: bool) -> Settings:
    return replace(settings, duplicate_max_distance=picked.max_distance,
                   duplicate_min_similarity=picked.min_similarity,
                   duplicate_joint_max_distance=picked.joint_max_distance,
                   duplicate_joint_min_similarity=picked.joint_min_similarity,
                   crop_vector_fraction=settings.crop_vector_fraction if crops else 0.0)


def run_photos(photos: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark over a plain list of photo files; returns the figures and writes the section."""
    t0 = time.perf_counter()
    scenes = [tuple(s.split(",", 1)) for s in args.same_scene or () if "," in s]
    with tempfile.TemporaryDirectory(prefix="pixdex-bench-dup-") as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        corpus, runtime = build(photos, standard_variants(), workdir,
                                same_scene=[(a, b) for a, b in scenes])
        pairs, crossed = pair_scores(corpus), pair_scores(corpus, crops=True)
        settings = runtime.settings
        picked = pick_thresholds(pairs, settings.duplicate_joint_max_distance)
        picked_crossed = pick_thresholds(crossed, settings.duplicate_joint_max_distance)
        print(json.dumps({"ingest_s": corpus.ingest_s, "picked_full": picked.__dict__,
                          "picked_crossed": picked_crossed.__dict__,
                          "most_alike_different": sorted(crossed.other_pairs, key=lambda p: -p[0])[:5],
                          "nearest_hash_different": sorted(pairs.other_pairs, key=lambda p: p[1])[:5]},
                         default=float), flush=True)
        before = _with_rule(settings, BEFORE, crops=False)

        def service(s: Settings) -> SearchService:
            return SearchService(s, runtime.index, runtime.store)

        every = SIGNALS
        rows = {
            f"pHash only, <= {BASELINE_MAX_DISTANCE} bits (old default)": evaluate(
                corpus, service(before), max_distance=BASELINE_MAX_DISTANCE, min_similarity=None,
                signals=("sha256", "phash")),
            BEFORE_ROW: evaluate(
                corpus, service(before), max_distance=None, min_similarity=None, signals=every),
            "full vectors only, picked here": evaluate(
                corpus, service(_with_rule(settings, picked, crops=False)), max_distance=None, min_similarity=None,
                signals=every),
            CONFIGURED: evaluate(corpus, service(settings), max_distance=None, min_similarity=None, signals=every),
            "full + crop vectors, picked here": evaluate(
                corpus, service(_with_rule(settings, picked_crossed, crops=True)), max_distance=None,
                min_similarity=None, signals=every),
        }
        ranks = by_image_ranks(corpus, settings, before, workdir)
        floor = service(settings).duplicate_rule().vector_floor
        runtime.index.close()
    real = [d for d in corpus.docs if d.vector is not None and d.crop is not None]
    scale = threshold.run(np.stack([d.vector for d in real]), np.stack([d.crop for d in real]),  # type: ignore[misc]
                          rows=args.scale_rows, floor=floor,
                          k=DUPLICATE_CANDIDATES) if args.scale_rows > 0 and real else None
    cost = {} if args.no_cost else {
        "classifier + image vector (the duplicate signals)": analyze_cost(photos),
        "default models (classifier, captions, OCR, safety)": analyze_cost(photos, images=8, rounds=2,
                                                                            every_model=True),
    }
    elapsed = time.perf_counter() - t0
    write_section(args.output, SECTION, render(corpus, pairs, crossed, picked, picked_crossed, settings, rows,
                                               ranks, cost, scale, args, elapsed))
    return {
        "photos": len(corpus.photos), "copies": len(corpus.docs) - len(corpus.photos),
        "picked_full": picked.__dict__, "picked_crossed": picked_crossed.__dict__,
        "recall": {k: v.recall() for k, v in rows.items()},
        "false_positives": {k: len(v.false_positives) for k, v in rows.items()},
        "by_image_first": {
            "cosine": float(np.mean([r == 1 for v in ranks.cosine.values() for r in v])),
            "full_only": float(np.mean([r == 1 for v in ranks.full_only.values() for r in v])),
            "copies_first": float(np.mean([r == 1 for v in ranks.copies_first.values() for r in v])),
        },
        "analyze_cost": cost,
        "scale": None if scale is None else {name: {"true": f.true_rows, "missed_int8": f.missed_int8,
                                                   "missed_simhash": f.missed_simhash}
                                            for name, f in scale.searches.items()},
    }


def run(args: argparse.Namespace) -> int:
    if args.photos is None:
        try:
            found = eval_photos(deb_root=args.deb_root)
        except EvalSetMissingError as exc:
            raise SystemExit(f"pixdex bench duplicates: {exc} (or give --photos DIR)") from exc
        photos = [p.path for p in found]
        if len({p.name for p in photos}) != len(photos):
            raise SystemExit("pixdex bench duplicates: two evaluation photos share a file name")
        if args.same_scene is None:
            args.same_scene = list(EVAL_SAME_SCENE)
    else:
        photos = photo_files(args.photos)
    if len(photos) < 2:
        raise SystemExit(f"pixdex bench duplicates: {args.photos} holds {len(photos)} photos; give at least 2")
    print(json.dumps(run_photos(photos, args), default=float))
    print(f"wrote {args.output}")
    return 0
