"""Manifest round-trips and integrity, the shipped class table, caption building, provider choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pixdex.models.analysis import DEFAULT_MODEL_DIR, CaptionContext, ModelSettings, build_caption
from pixdex.models.classifier import Classification, imagenet_classes
from pixdex.models.manifest import (
    TASK_IMAGE_CLASSIFIER,
    TASK_TEXT_EMBEDDER,
    Manifest,
    ModelEntry,
    sha256_file,
    verify,
)
from pixdex.models.session import ModelUnavailableError, RuntimeOptions


def test_manifest_round_trip_and_upsert(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"weights")
    entry = ModelEntry(name="m", task=TASK_IMAGE_CLASSIFIER, file="m.onnx",
                       sha256=sha256_file(tmp_path / "m.onnx"), bytes=7, checks={"max_abs_diff": 1e-6})
    manifest = Manifest([entry])
    manifest.save(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded.models == [entry]
    assert verify(entry, tmp_path) == []
    loaded.upsert([ModelEntry(name="m", task=TASK_IMAGE_CLASSIFIER, file="m.onnx", version="2"),
                   ModelEntry(name="t", task=TASK_TEXT_EMBEDDER, file="t.onnx")])
    assert [(m.name, m.version) for m in loaded.models] == [("m", "2"), ("t", "1")]


def test_verify_reports_tampered_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"weights")
    entry = ModelEntry(name="m", task="x", file="m.onnx", sha256="0" * 64, bytes=7)
    assert verify(entry, tmp_path) == ["m: sha256 differs from the manifest"]
    missing = ModelEntry(name="gone", task="x", file="gone.onnx")
    assert "not found" in verify(missing, tmp_path)[0]


def test_manifest_rejects_unknown_keys_and_formats(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "models": [{"name": "a", "task": "b",
                                                                                 "colour": "red"}]}))
    with pytest.raises(ValueError, match="colour"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99, "models": []}))
    with pytest.raises(ValueError, match="format"):
        Manifest.load(tmp_path)


def test_committed_manifest_matches_committed_files() -> None:
    manifest = Manifest.load(DEFAULT_MODEL_DIR)
    built = [m for m in manifest.models if m.file is not None]
    if not built:
        pytest.skip("no built models in layers/models")
    assert {m.task for m in built} >= {TASK_IMAGE_CLASSIFIER, TASK_TEXT_EMBEDDER}
    for entry in built:
        assert verify(entry, DEFAULT_MODEL_DIR) == []
        assert entry.licence and entry.source.get("package") and entry.checks


def test_class_table_has_imagenet_order_and_parents() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0].wnid == "n01440764" and classes[0].name == "tench"
    egyptian = classes[285]
    assert egyptian.name == "Egyptian cat"
    assert {"cat", "feline", "animal", "mammal"} <= set(egyptian.parents)
    # Abstract WordNet roots never become labels, and Latin binomials are not synonyms.
    every_parent = {p for c in classes for p in c.parents}
    assert not every_parent & {"entity", "physical entity", "object", "whole", "artifact"}
    assert "Tinca tinca" not in classes[0].synonyms
    assert classes[235].name == "German shepherd" and "German shepherd dog" in classes[235].synonyms


def test_labels_keep_top1_and_confident_classes_with_parents() -> None:
    classes = imagenet_classes()
    result = Classification(((classes[285], 0.6), (classes[281], 0.3), (classes[967], 0.01)),
                            np.zeros(1280, dtype=np.float32))
    labels = result.labels(min_score=0.1)
    assert labels[0] == "egyptian cat"
    assert {"tabby", "tabby cat", "cat", "animal"} <= set(labels)
    assert "espresso" not in labels
    assert len(labels) == len(set(labels))
    assert all(label == label.lower() for label in labels)
    assert result.label_scores()[0] == {"label": "egyptian cat", "score": 0.6}


def test_caption_combines_labels_text_and_context_words() -> None:
    classes = imagenet_classes()
    result = Classification(((classes[967], 0.9), (classes[968], 0.05)), np.zeros(1280, dtype=np.float32))
    caption = build_caption(result, "Cafe  Central\nMENU", CaptionContext(
        name_words=["IMG_2041", "trips/Vienna"], exif_words=["Canon", "EOS 5D"]), min_label_score=0.1)
    assert caption == ('a photo of espresso (coffee, beverage, food, liquid). with the text "Cafe Central MENU". '
                       "trips Vienna. Canon EOS 5D")
    assert build_caption(None, "", CaptionContext(), 0.1) == ""


def test_settings_defaults_keep_faces_off() -> None:
    settings = ModelSettings()
    assert "faces" not in settings.enabled()
    assert {"classify", "embed", "caption", "ocr", "safety"} <= set(settings.enabled())
    assert settings.model_dir == DEFAULT_MODEL_DIR


def test_runtime_options_pick_cpu_without_cuda_and_reject_missing_providers() -> None:
    assert RuntimeOptions().resolved_providers()[-1] == "CPUExecutionProvider"
    with pytest.raises(ModelUnavailableError, match="NoSuchExecutionProvider"):
        RuntimeOptions(providers=("NoSuchExecutionProvider",)).resolved_providers()
