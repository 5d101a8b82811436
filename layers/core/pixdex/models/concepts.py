"""The classifier's class probabilities projected into the caption text space (ConSE).

Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings" (ICLR 2014): an image is
placed in a text embedding space as the probability-weighted mean of its top classes' text embeddings.
Each ImageNet class is described by one sentence (name, synonyms, WordNet parents) and embedded once with
the caption text model; :class:`ConceptProjector` turns a probability row into a unit vector beside the
query embeddings. Unlike a caption string, which names only the two or three likeliest classes, the
projection keeps the uncertain tail (a cat photo at 0.38 "tiger cat" still carries "tabby", "lynx"...),
which is what a model limited to 1000 classes can offer an open-vocabulary query.

The 1000 x 384 table is derived data: ``pixdex models build --steps concepts`` writes it to the model folder
(``imagenet-class-text.npy``, float16, with the text model's sha256 in its manifest entry). Where it is
missing or was made with another text model, it is computed here on first use (about 10 s on two cores).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from pixdex.models.classifier import ImageClass, imagenet_classes, l2_normalise
from pixdex.models.manifest import ModelEntry, sha256_file

TASK_CLASS_TEXT: Final = "class-text-embeddings"
CLASS_TEXT_FILE: Final = "imagenet-class-text.npy"
CLASS_TEXT_NAME: Final = "imagenet-class-text"


class SentenceEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def class_sentence(cls: ImageClass) -> str:
    """How one class is described to the text model: 'a photo of a tabby, tabby cat (domestic cat, ...)'."""
    names = ", ".join([cls.name, *cls.synonyms[:2]])
    parents = f" ({', '.join(cls.parents[:3])})" if cls.parents else ""
    return f"a photo of a {names}{parents}"


def class_text_matrix(embedder: SentenceEmbedder, classes: Sequence[ImageClass] | None = None
                      ) -> npt.NDArray[np.float32]:
    """(classes, dim) unit rows: each class sentence embedded by ``embedder``."""
    rows = classes if classes is not None else imagenet_classes()
    return l2_normalise(embedder.embed([class_sentence(c) for c in rows]).astype(np.float32))


def encode_table(matrix: npt.NDArray[np.float32]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, matrix.astype(np.float16), allow_pickle=False)
    return buf.getvalue()


def load_table(entry: ModelEntry | None, model_dir: Path, text_entry: ModelEntry) -> npt.NDArray[np.float32] | None:
    """The shipped table when it exists, is intact and was made with this text model; else None."""
    if entry is None or entry.file is None:
        return None
    path = model_dir / entry.file
    if not path.is_file() or entry.source.get("text_model_sha256") != text_entry.sha256:
        return None
    if entry.sha256 is not None and sha256_file(path) != entry.sha256:
        return None
    table = np.load(path, allow_pickle=False).astype(np.float32)
    return table if table.shape == (len(imagenet_classes()), text_entry_dim(text_entry)) else None


def text_entry_dim(text_entry: ModelEntry) -> int:
    shape = text_entry.outputs[0].get("shape") if text_entry.outputs else None
    last = shape[-1] if isinstance(shape, list) and shape else None
    return last if isinstance(last, int) else 384


class ConceptProjector:
    """Probability rows -> unit vectors in the text space: the top ``top_k`` classes, weights p**temperature
    (below 1 flattens the distribution, so the second and third guesses still count), renormalised."""

    def __init__(self, table: npt.NDArray[np.float32], top_k: int = 20, temperature: float = 0.5,
                 version: str = "1") -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.version = version
        self.table = table.astype(np.float32)
        self.top_k = min(top_k, table.shape[0])
        self.temperature = temperature

    def project(self, probabilities: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        probs = np.atleast_2d(np.asarray(probabilities, dtype=np.float32))
        if probs.shape[1] != self.table.shape[0]:
            raise ValueError(f"{probs.shape[1]} probabilities for {self.table.shape[0]} classes")
        top = np.argpartition(-probs, self.top_k - 1, axis=1)[:, : self.top_k]
        weights = np.take_along_axis(probs, top, axis=1) ** self.temperature
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        mixed = np.einsum("nk,nkd->nd", weights, self.table[top])
        return l2_normalise(mixed.astype(np.float32))


def build_table_entry(model_dir: Path, embedder: SentenceEmbedder, text_entry: ModelEntry) -> ModelEntry:
    """Write the table into ``model_dir`` and return its manifest entry (``pixdex models build``)."""
    path = model_dir / CLASS_TEXT_FILE
    matrix = class_text_matrix(embedder)
    path.write_bytes(encode_table(matrix))
    stored = np.load(path, allow_pickle=False).astype(np.float32)
    cosines = np.sum(stored * matrix, axis=1) / np.linalg.norm(stored, axis=1)
    table_file = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.tsv"
    return ModelEntry(
        name=CLASS_TEXT_NAME, task=TASK_CLASS_TEXT, version="1", file=CLASS_TEXT_FILE,
        sha256=sha256_file(path), bytes=path.stat().st_size,
        licence="derived: all-MiniLM-L6-v2 (Apache-2.0) over ImageNet class names (MIT) and WordNet 3.0 "
                "parents (WordNet licence)",
        source={"package": text_entry.source.get("package"), "text_model": text_entry.name,
                "text_model_sha256": text_entry.sha256,
                "classes_sha256": sha256_file(table_file), "sentence": "class_sentence() in pixdex/models/concepts.py"},
        outputs=[{"name": "table", "shape": [len(imagenet_classes()), text_entry_dim(text_entry)],
                  "dtype": "float16", "meaning": "unit text embedding of each class sentence, class order"}],
        checks={"rows": int(stored.shape[0]), "max_abs_diff_fp16_vs_fp32": float(np.abs(stored - matrix).max()),
                "min_cosine_fp16_vs_fp32": float(cosines.min())},
        notes="ConSE projection of class probabilities into the caption space (caption style v2)",
    )
