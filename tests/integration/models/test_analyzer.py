"""The orchestrator: failure isolation, switches, provenance, and CLIP-pair wiring with a generated pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixdex.models.analysis import CaptionContext, ImageAnalyzer, ModelSettings, centre_crop
from pixdex.models.manifest import TASK_IMAGE_CLASSIFIER, TASK_TEXT_EMBEDDER, Manifest


def _copy_models(src: Path, dst: Path, tasks: tuple[str, ...]) -> Manifest:
    manifest = Manifest.load(src)
    kept = [m for m in manifest.models if m.task in tasks]
    for entry in kept:
        for name in (entry.file, entry.tokenizer.get("file")):
            if isinstance(name, str):
                shutil.copy(src / name, dst / name)
    out = Manifest(kept)
    out.save(dst)
    return out


def test_one_failing_model_keeps_the_others(built_models: Path, tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    manifest = _copy_models(built_models, tmp_path, (TASK_IMAGE_CLASSIFIER, TASK_TEXT_EMBEDDER))
    text = manifest.first(TASK_TEXT_EMBEDDER)
    assert text is not None and text.file is not None
    (tmp_path / text.file).write_bytes(b"not an onnx graph")
    analyzer = ImageAnalyzer(ModelSettings(model_dir=tmp_path, ocr=False, safety=False))
    docs = analyzer.analyze_batch([photos["chelsea"], photos["coffee"]], None)
    for doc in docs:
        assert "caption" in doc and doc["caption"].startswith("a photo of")
        assert "caption_vector" not in doc
        assert "cannot load" in doc["model_errors"]["caption"]
        assert doc["labels"] and doc["image_vector"].shape == (1280,)
        assert set(doc["models"]) == {"efficientnet-lite0"}
    # The broken model is not reloaded per call, and the error stays visible.
    assert "caption" in analyzer.analyze_batch([photos["coffee"]])[0]["model_errors"]
    assert analyzer.warmup() == {"caption": docs[0]["model_errors"]["caption"]}


def test_missing_model_folder_reports_errors_not_exceptions(tmp_path: Path) -> None:
    analyzer = ImageAnalyzer(ModelSettings(model_dir=tmp_path, ocr=False, safety=False))
    (doc,) = analyzer.analyze_batch([Image.new("RGB", (32, 32))], [CaptionContext(name_words=["beach"])])
    assert set(doc["model_errors"]) == {"classify", "caption"}
    assert doc["caption"] == "beach"
    assert "no image-classifier model" in doc["model_errors"]["classify"]


def test_switches_and_provenance(built_models: Path, photos: dict[str, Image.Image]) -> None:
    only_embed = ImageAnalyzer(ModelSettings(model_dir=built_models, classify=False, caption=False, ocr=False,
                                             safety=False))
    (doc,) = only_embed.analyze_batch([photos["rocket"]], [CaptionContext()])
    assert set(doc) == {"image_vector", "crop_vector", "model_errors", "models"}
    # The crop vector is the classifier's features of the photo's centre, in the same batch: what the image
    # vector of that crop is on its own.
    centre = centre_crop(photos["rocket"].convert("RGB"), 0.75)
    assert doc["crop_vector"].shape == (1280,)
    assert float(np.dot(doc["crop_vector"], only_embed.image_vectors(centre)["image_vector"])) > 0.999
    assert float(np.dot(doc["crop_vector"], doc["image_vector"])) < 0.999
    no_crop = ImageAnalyzer(ModelSettings(model_dir=built_models, classify=False, caption=False, ocr=False,
                                          safety=False, crop_vector_fraction=0.0))
    (doc,) = no_crop.analyze_batch([photos["rocket"]], [CaptionContext()])
    assert set(doc) == {"image_vector", "model_errors", "models"}
    assert set(no_crop.image_vectors(photos["rocket"])) == {"image_vector"}
    full = ImageAnalyzer(ModelSettings(model_dir=built_models, ocr=False, safety=False))
    (doc,) = full.analyze_batch([photos["rocket"]], [CaptionContext(name_words=["launch_day"])])
    assert set(doc) >= {"labels", "label_scores", "image_vector", "caption", "caption_vector"}
    assert "launch day" in doc["caption"]
    manifest = Manifest.load(built_models)
    for name, version in doc["models"].items():
        entry = manifest.get(name)
        assert entry is not None and entry.sha256 is not None and version.endswith(entry.sha256[:12])


# ------------------------------------------------------------------------------------- CLIP wiring

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "green", "blue", "a", "photo", "of"]


def _image_tower(path: Path, size: int) -> None:
    """Mean colour per channel -> 4-d embedding: a CLIP-shaped image tower (NCHW float input)."""
    onnx = pytest.importorskip("onnx")  # a test dependency only: it writes the generated graphs
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto  # noqa: N806
    proj = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["pooled", "proj"], ["image_embeds"])],
        "clip_image", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(proj, "proj")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _text_tower(path: Path, context: int) -> None:
    """Token embedding table summed over the context: colour words map onto the image tower's axes."""
    onnx = pytest.importorskip("onnx")
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto  # noqa: N806
    table = np.zeros((len(VOCAB), 4), dtype=np.float32)
    table[VOCAB.index("red"), 0] = table[VOCAB.index("green"), 1] = table[VOCAB.index("blue"), 2] = 1.0
    table[VOCAB.index("photo"), 3] = 0.1
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
         helper.make_node("ReduceSum", ["tokens", "axes"], ["text_embeds"], keepdims=0)],
        "clip_text", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", context]),
                      helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", context])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.fixture
def clip_dir(built_models: Path, tmp_path: Path) -> Path:
    _copy_models(built_models, tmp_path, (TASK_IMAGE_CLASSIFIER, TASK_TEXT_EMBEDDER))
    _image_tower(tmp_path / "clip-image.onnx", 32)
    _text_tower(tmp_path / "clip-text.onnx", 16)
    (tmp_path / "clip-vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return tmp_path


def _colours() -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), c) for c in ((220, 20, 20), (20, 200, 30), (30, 30, 210))]


def _check_clip(analyzer: ImageAnalyzer) -> None:
    assert analyzer.has_clip
    docs = analyzer.analyze_batch(_colours(), [CaptionContext()] * 3)
    images = np.stack([d["clip_vector"] for d in docs])
    assert images.shape == (3, 4)
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert all("clip" in d["models"] and not d["model_errors"] for d in docs)
    for i, word in enumerate(("red", "green", "blue")):
        query = analyzer.embed_query(f"a photo of {word}")
        assert set(query) == {"caption_vector", "clip_vector"}
        assert int(np.argmax(images @ query["clip_vector"])) == i, word


def test_clip_pair_by_file_naming_convention(clip_dir: Path) -> None:
    _check_clip(ImageAnalyzer(ModelSettings(model_dir=clip_dir, ocr=False, safety=False)))


def test_clip_pair_by_manifest_entries(clip_dir: Path) -> None:
    for old, new in (("clip-image.onnx", "tower-i.onnx"), ("clip-text.onnx", "tower-t.onnx"),
                     ("clip-vocab.txt", "tower-vocab.txt")):
        (clip_dir / old).rename(clip_dir / new)
    raw = json.loads((clip_dir / "manifest.json").read_text())
    raw["models"] += [
        {"name": "tiny-clip-image", "task": "clip-image", "file": "tower-i.onnx", "pair": "tiny",
         "preprocessing": {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
        {"name": "tiny-clip-text", "task": "clip-text", "file": "tower-t.onnx", "pair": "tiny",
         "tokenizer": {"file": "tower-vocab.txt", "max_length": 16}},
    ]
    (clip_dir / "manifest.json").write_text(json.dumps(raw))
    _check_clip(ImageAnalyzer(ModelSettings(model_dir=clip_dir, ocr=False, safety=False)))


def test_clip_switch_off_ignores_the_pair(clip_dir: Path) -> None:
    analyzer = ImageAnalyzer(ModelSettings(model_dir=clip_dir, clip=False, ocr=False, safety=False))
    assert not analyzer.has_clip
    assert "clip_vector" not in analyzer.analyze_batch(_colours()[:1])[0]
