"""When are two images copies of one photo: the decision that fuses the exact hash, the perceptual hash and
the image vector, shared by /images/{id}/duplicates and the copies-first ordering of query by image.

Each signal fails on its own kind of edit. SHA-256 only sees byte-identical files. The 64-bit DCT pHash
survives resizing, recompression and colour changes but not crops or rotations (it hashes the whole frame).
The image vector (EfficientNet-Lite0 features of the centre crop) survives crops, rotations and watermarks,
but a tight crop moves it: the model sees a magnified centre. So each photo also carries the vector of its
central part (crop_vector), and the vector signal is the best cosine over full and crop vectors both ways
(a crop's full vector meets the original's crop vector, and the reverse). Two different photos of one
subject can still score as high as a heavily edited copy. So a pair is a
duplicate when one signal is decisive on its own, or when both are moderately close at once: different
photos that look alike (cosine 0.7-0.8) almost never also share their low frequencies, and a copy whose
vector moved (grayscale, heavy recompression of a blurred photo) keeps its pHash. The thresholds are
calibrated by ``pixdex bench duplicates`` (docs/quality.md) and are settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from pixdex.errors import InvalidRequestError
from pixdex.settings import Settings

Signal = Literal["sha256", "phash", "image_vector"]
SIGNALS: Final[tuple[Signal, ...]] = ("sha256", "phash", "image_vector")
# The name a hit carries when neither signal alone decided but the two together did.
JOINT: Final = "phash+image_vector"
FULL_VECTOR: Final = "image_vector"
CROP_VECTOR: Final = "crop_vector"


@dataclass(frozen=True)
class DuplicateRule:
    """Thresholds per signal (defaults: Settings', calibrated in docs/quality.md) and which signals count."""

    max_distance: int = Settings.duplicate_max_distance
    min_similarity: float = Settings.duplicate_min_similarity
    joint_max_distance: int = Settings.duplicate_joint_max_distance
    joint_min_similarity: float = Settings.duplicate_joint_min_similarity
    signals: tuple[Signal, ...] = SIGNALS
    # Compare crop vectors too (where both images have them); False: full image vectors only.
    crop_vectors: bool = True

    def __post_init__(self) -> None:
        for name in ("max_distance", "joint_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
                raise InvalidRequestError(f"{name} must be an integer from 0 to 64", field=name)
        for name in ("min_similarity", "joint_min_similarity"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not -1.0 <= value <= 1.0:
                raise InvalidRequestError(f"{name} must be between -1 and 1", field=name)
        unknown = [s for s in self.signals if s not in SIGNALS]
        if unknown or not self.signals:
            raise InvalidRequestError(f"signals: expected some of {', '.join(SIGNALS)}", field="signals")

    @property
    def joint(self) -> bool:
        return "phash" in self.signals and "image_vector" in self.signals

    @property
    def vector_floor(self) -> float:
        """The lowest cosine any rule accepts: where the vector candidate search can stop."""
        return min(self.min_similarity, self.joint_min_similarity) if self.joint else self.min_similarity

    def matches(self, *, same_sha256: bool = False, distance: int | None = None,
                similarity: float | None = None) -> list[str]:
        """The rules that make this pair a duplicate (empty: not one). The joint rule is named only when
        neither signal alone decided, so a hit says what actually made it a copy."""
        out: list[str] = []
        if same_sha256 and "sha256" in self.signals:
            out.append("sha256")
        if distance is not None and "phash" in self.signals and distance <= self.max_distance:
            out.append("phash")
        if similarity is not None and "image_vector" in self.signals and similarity >= self.min_similarity:
            out.append("image_vector")
        if (not out and self.joint and distance is not None and similarity is not None
                and distance <= self.joint_max_distance and similarity >= self.joint_min_similarity):
            out.append(JOINT)
        return out


def parse_signals(raw: str | None) -> tuple[Signal, ...]:
    """``signals=phash,image_vector`` (API Gateway joins repeated parameters with commas); None: all."""
    if raw is None or not raw.strip():
        return SIGNALS
    names = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise InvalidRequestError(f"signals: unknown signal {unknown[0]!r}; expected any of {', '.join(SIGNALS)}",
                                  field="signals")
    return tuple(s for s in SIGNALS if s in names)


def cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0 or a.shape != b.shape:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def vector_similarity(probe: Mapping[str, npt.NDArray[np.float32] | None],
                      other: Mapping[str, npt.NDArray[np.float32] | None], *, crops: bool = True) -> float | None:
    """The image-vector signal of a pair: the best cosine of full-full and, with ``crops``, full-crop,
    crop-full and crop-crop; None when no pair of them can be compared."""
    return vector_similarities(probe, [other], crops=crops)[0]


def vector_similarities(probe: Mapping[str, npt.NDArray[np.float32] | None],
                        others: Sequence[Mapping[str, npt.NDArray[np.float32] | None]], *,
                        crops: bool = True) -> list[float | None]:
    """``vector_similarity`` of the probe and each of ``others``, as one matrix product per pair of fields
    (a duplicates query compares dozens of candidates)."""
    pairs = [(FULL_VECTOR, FULL_VECTOR)]
    if crops:
        pairs += [(FULL_VECTOR, CROP_VECTOR), (CROP_VECTOR, FULL_VECTOR), (CROP_VECTOR, CROP_VECTOR)]
    best = np.full(len(others), -np.inf)
    compared = np.zeros(len(others), dtype=bool)
    for mine, theirs in pairs:
        a = probe.get(mine)
        if a is None:
            continue
        rows = [i for i, other in enumerate(others) if other.get(theirs) is not None]
        if not rows:
            continue
        compared[rows] = True
        # A vector of another dimension or of norm 0 compares as cosine 0, as ``cosine`` has it.
        same = [i for i in rows if others[i][theirs].shape == a.shape]  # type: ignore[union-attr]
        scores = np.zeros(len(rows))
        if same:
            matrix = np.stack([others[i][theirs] for i in same]).astype(np.float64)  # type: ignore[misc]
            norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(a))
            dots = matrix @ a.astype(np.float64)
            at = {i: j for j, i in enumerate(rows)}
            scores[[at[i] for i in same]] = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
        best[rows] = np.maximum(best[rows], scores)
    return [float(b) if seen else None for b, seen in zip(best, compared, strict=True)]


@dataclass
class Candidate:
    """One image compared with the query image, per signal; None where that signal cannot be compared."""

    id: str
    same_sha256: bool = False
    distance: int | None = None
    similarity: float | None = None

    @property
    def score(self) -> float:
        """One number to order copies by: the vector similarity where known, else the hash's closeness."""
        if self.similarity is not None:
            return self.similarity
        if self.distance is not None:
            return 1.0 - self.distance / 64.0
        return 1.0 if self.same_sha256 else 0.0


def rank(candidates: Sequence[Candidate], rule: DuplicateRule) -> list[tuple[Candidate, list[str]]]:
    """The candidates that are duplicates under ``rule``, most alike first (ties on id, for stable pages)."""
    found = [(c, rule.matches(same_sha256=c.same_sha256, distance=c.distance, similarity=c.similarity))
             for c in candidates]
    kept = [(c, m) for c, m in found if m]
    kept.sort(key=lambda cm: rank_key(cm[0]))
    return kept


def rank_key(candidate: Candidate) -> tuple[float, int, str]:
    """Where a copy sorts among copies: most alike first, then nearest hash, then id."""
    return (-candidate.score, candidate.distance if candidate.distance is not None else 65, candidate.id)
