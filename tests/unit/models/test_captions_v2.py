"""Caption v2: the EXIF-free caption sentence and the class-probability projection (ConSE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pixdex.models.analysis import (
    CaptionContext,
    ModelSettings,
    build_caption,
    build_caption_v2,
    mix_caption_vectors,
)
from pixdex.models.classifier import Classification, imagenet_classes
from pixdex.models.concepts import (
    CLASS_TEXT_FILE,
    TASK_CLASS_TEXT,
    ConceptProjector,
    class_sentence,
    class_text_matrix,
    encode_table,
    load_table,
)
from pixdex.models.manifest import TASK_TEXT_EMBEDDER, Manifest, ModelEntry, sha256_file

MODEL_DIR = Path(__file__).resolve().parents[3] / "layers" / "models"


def test_v2_caption_drops_exif_words_but_keeps_labels_text_and_name() -> None:
    classes = imagenet_classes()
    result = Classification(((classes[967], 0.9), (classes[968], 0.05)), np.zeros(1280, dtype=np.float32))
    context = CaptionContext(name_words=["trips/Vienna"], exif_words=["Canon", "EOS 5D", "GIMP"])
    v1 = build_caption(result, "Cafe MENU", context, 0.1)
    v2 = build_caption_v2(result, "Cafe MENU", context, 0.1)
    assert v1.endswith("Canon EOS 5D GIMP")
    assert v2 == 'a photo of espresso (coffee, beverage, food, liquid). with the text "Cafe MENU". trips Vienna'


def test_class_sentence_names_synonyms_and_parents() -> None:
    tabby = imagenet_classes()[281]
    sentence = class_sentence(tabby)
    assert sentence.startswith("a photo of a tabby, tabby cat")
    assert "(domestic cat" in sentence and sentence.endswith(")")


def test_projector_weights_top_k_by_tempered_probability() -> None:
    table = np.eye(4, 3, dtype=np.float32)          # class 3 has a zero row: it must not matter
    projector = ConceptProjector(table, top_k=2, temperature=1.0)
    out = projector.project(np.array([0.5, 0.3, 0.2, 0.0], dtype=np.float32))
    expected = np.array([0.625, 0.375, 0.0]) / np.linalg.norm([0.625, 0.375, 0.0])
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)
    flat = ConceptProjector(table, top_k=2, temperature=0.5).project(np.array([[0.64, 0.16, 0.2, 0.0]]))
    # sqrt flattens 0.64 : 0.2 to 0.8 : 0.447, so the second guess weighs more than its probability.
    w = np.array([0.8, 0.0, np.sqrt(0.2)])
    np.testing.assert_allclose(flat[0], w / np.linalg.norm(w), rtol=1e-5)
    with pytest.raises(ValueError, match="4 classes"):
        projector.project(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="top_k"):
        ConceptProjector(table, top_k=0)


def test_unknown_caption_style_is_refused() -> None:
    with pytest.raises(ValueError, match="caption_style"):
        ModelSettings(caption_style="v3")


def test_mix_is_unit_length_and_honours_the_weight() -> None:
    a = np.array([[1.0, 0.0]], dtype=np.float32)
    b = np.array([[0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(mix_caption_vectors(a, b, 1.0), a)
    np.testing.assert_allclose(mix_caption_vectors(a, b, 0.0), b)
    mixed = mix_caption_vectors(a, b, 0.3)
    assert abs(float(np.linalg.norm(mixed)) - 1.0) < 1e-6 and mixed[0, 1] > mixed[0, 0]


class _CountingEmbedder:
    """Embeds a text as the unit vector of (its length, its number of words, 1)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.array([[len(t), len(t.split()), 1.0] for t in texts], dtype=np.float32)


def test_table_is_used_only_for_the_text_model_it_was_made_with(tmp_path: Path) -> None:
    classes = imagenet_classes()[:3]
    matrix = class_text_matrix(_CountingEmbedder(), classes)
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-6)
    (tmp_path / CLASS_TEXT_FILE).write_bytes(encode_table(matrix))
    text = ModelEntry(name="t", task=TASK_TEXT_EMBEDDER, sha256="a" * 64, outputs=[{"name": "e", "shape": ["b", 3]}])
    entry = ModelEntry(name="c", task=TASK_CLASS_TEXT, file=CLASS_TEXT_FILE,
                       sha256=sha256_file(tmp_path / CLASS_TEXT_FILE), source={"text_model_sha256": "a" * 64})
    # The shipped table has 1000 rows; a 3-row table is the wrong shape and is rebuilt instead.
    assert load_table(entry, tmp_path, text) is None
    full = np.tile(matrix[:1], (1000, 1))
    (tmp_path / CLASS_TEXT_FILE).write_bytes(encode_table(full))
    good = ModelEntry(name="c", task=TASK_CLASS_TEXT, file=CLASS_TEXT_FILE,
                      sha256=sha256_file(tmp_path / CLASS_TEXT_FILE), source={"text_model_sha256": "a" * 64})
    loaded = load_table(good, tmp_path, text)
    assert loaded is not None and loaded.shape == (1000, 3)
    stale = ModelEntry(name="c", task=TASK_CLASS_TEXT, file=CLASS_TEXT_FILE, sha256=good.sha256,
                       source={"text_model_sha256": "b" * 64})
    assert load_table(stale, tmp_path, text) is None
    tampered = ModelEntry(name="c", task=TASK_CLASS_TEXT, file=CLASS_TEXT_FILE, sha256="0" * 64,
                          source={"text_model_sha256": "a" * 64})
    assert load_table(tampered, tmp_path, text) is None


def test_committed_table_was_made_with_the_committed_text_model() -> None:
    manifest = Manifest.load(MODEL_DIR)
    text, table = manifest.first(TASK_TEXT_EMBEDDER), manifest.first(TASK_CLASS_TEXT)
    if text is None or table is None:
        pytest.skip("no built models in layers/models")
    assert table.source["text_model_sha256"] == text.sha256, "rebuild: pixdex models build --steps concepts"
    assert load_table(table, MODEL_DIR, text) is not None
