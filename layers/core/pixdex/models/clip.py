"""Optional CLIP-style joint image/text embeddings, switched on by dropping a model pair in the folder.

A pair is found in one of two ways, the manifest first:

1. Manifest entries with tasks ``clip-image`` and ``clip-text`` (the text entry names its tokenizer in
   ``tokenizer.file``; preprocessing may give ``input_size``, ``mean``, ``std``, ``resize_size``).
2. The file naming convention, with no manifest entry: ``clip-image.onnx``, ``clip-text.onnx`` and a
   tokenizer ``clip-tokenizer.json`` (Hugging Face format, BPE or WordPiece) or ``clip-vocab.txt``
   (WordPiece).

The image tower takes one image input (float32 NCHW or NHWC, or uint8, read from the graph) and the text
tower takes token ids (plus ``attention_mask`` when the graph declares it). Each returns one
(batch, dim) embedding; pixdex L2-normalises it into ``clip_vector``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from pixdex.models.classifier import center_crop_array, l2_normalise
from pixdex.models.manifest import TASK_CLIP_IMAGE, TASK_CLIP_TEXT, Manifest, ModelEntry
from pixdex.models.session import ModelUnavailableError, RuntimeOptions, shared_session
from pixdex.models.tokenizer import load_tokenizer

CLIP_IMAGE_FILE = "clip-image.onnx"
CLIP_TEXT_FILE = "clip-text.onnx"
CLIP_TOKENIZER_FILES = ("clip-tokenizer.json", "clip-vocab.txt")
# OpenAI CLIP's normalisation; a manifest entry can override it for other pairs (e.g. SigLIP's 0.5/0.5).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PREFERRED_IMAGE_OUTPUTS = ("image_embeds", "image_embedding", "embedding", "embeddings")
_PREFERRED_TEXT_OUTPUTS = ("text_embeds", "text_embedding", "embedding", "embeddings")


@dataclass(frozen=True)
class ClipPair:
    image: ModelEntry
    text: ModelEntry
    tokenizer_path: Path


@dataclass
class _Layout:
    input_name: str
    size: int
    nchw: bool
    uint8: bool
    mean: npt.NDArray[np.float32] = field(default_factory=lambda: np.array(CLIP_MEAN, dtype=np.float32))
    std: npt.NDArray[np.float32] = field(default_factory=lambda: np.array(CLIP_STD, dtype=np.float32))


def find_clip_pair(model_dir: Path, manifest: Manifest) -> ClipPair | None:
    """The CLIP pair in this folder, or None when there is none (the normal case)."""
    image = manifest.first(TASK_CLIP_IMAGE)
    text = manifest.first(TASK_CLIP_TEXT)
    if image is not None and text is not None:
        if image.pair is not None and text.pair != image.pair:
            text = next((t for t in manifest.by_task(TASK_CLIP_TEXT) if t.pair == image.pair), None)
            if text is None:
                raise ModelUnavailableError(f"clip-image {image.name!r} has no clip-text with pair {image.pair!r}")
        return ClipPair(image, text, text.resolve_tokenizer(model_dir))
    image_file, text_file = model_dir / CLIP_IMAGE_FILE, model_dir / CLIP_TEXT_FILE
    if not (image_file.is_file() and text_file.is_file()):
        return None
    tokenizer = next((model_dir / n for n in CLIP_TOKENIZER_FILES if (model_dir / n).is_file()), None)
    if tokenizer is None:
        raise ModelUnavailableError(
            f"{CLIP_IMAGE_FILE} and {CLIP_TEXT_FILE} found but no tokenizer ({' or '.join(CLIP_TOKENIZER_FILES)})"
        )
    stat = image_file.stat()
    return ClipPair(
        ModelEntry(name="clip-image", task=TASK_CLIP_IMAGE, version=f"file-{stat.st_size}", file=CLIP_IMAGE_FILE),
        ModelEntry(name="clip-text", task=TASK_CLIP_TEXT, version=f"file-{text_file.stat().st_size}",
                   file=CLIP_TEXT_FILE, tokenizer={"file": tokenizer.name}),
        tokenizer,
    )


def _pick_output(names: list[str], preferred: Sequence[str], declared: list[dict[str, Any]]) -> str:
    if declared:
        return str(declared[0]["name"])
    return next((n for n in preferred if n in names), names[0])


class ClipModel:
    def __init__(self, pair: ClipPair, model_dir: Path, options: RuntimeOptions, batch_size: int = 16) -> None:
        self.pair = pair
        self.image_session = shared_session(pair.image.resolve(model_dir), options)
        self.text_session = shared_session(pair.text.resolve(model_dir), options)
        self.tokenizer = load_tokenizer(pair.tokenizer_path, pair.text.tokenizer)
        self.batch_size = batch_size
        self._layout: _Layout | None = None

    @property
    def version(self) -> str:
        return f"{self.pair.image.provenance}/{self.pair.text.provenance}"

    def _image_layout(self) -> _Layout:
        if self._layout is None:
            shape = self.image_session.input_shape()
            nchw = len(shape) == 4 and shape[1] == 3
            spatial = shape[2] if nchw else shape[1]
            pre = self.pair.image.preprocessing
            size = int(pre.get("input_size") or (spatial if isinstance(spatial, int) else 224))
            layout = _Layout(self.image_session.input_names[0], size, nchw,
                             "uint8" in self.image_session.input_type())
            if "mean" in pre:
                layout.mean = np.array(pre["mean"], dtype=np.float32)
            if "std" in pre:
                layout.std = np.array(pre["std"], dtype=np.float32)
            self._layout = layout
        return self._layout

    def embed_images(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        layout = self._image_layout()
        resize = self.pair.image.preprocessing.get("resize_size")
        pixels = np.stack([center_crop_array(im, layout.size, int(resize) if resize else layout.size)
                           for im in images])
        batch: npt.NDArray[Any]
        if layout.uint8:
            batch = pixels
        else:
            batch = ((pixels.astype(np.float32) / 255.0 - layout.mean) / layout.std).astype(np.float32)
        if layout.nchw:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        output = _pick_output(self.image_session.output_names, _PREFERRED_IMAGE_OUTPUTS, self.pair.image.outputs)
        result = self.image_session.run_batched({layout.input_name: batch}, self.batch_size, [output])[output]
        return l2_normalise(result.reshape(len(images), -1).astype(np.float32))

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        inputs = self.text_session.input_names
        shape = self.text_session.input_shape()
        width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        encoded = self.tokenizer.batch(texts, pad_to=width)
        feeds: dict[str, npt.NDArray[Any]] = {inputs[0]: encoded.input_ids}
        if "attention_mask" in inputs:
            feeds["attention_mask"] = encoded.attention_mask
        if "int32" in self.text_session.input_type():
            feeds = {k: v.astype(np.int32) for k, v in feeds.items()}
        output = _pick_output(self.text_session.output_names, _PREFERRED_TEXT_OUTPUTS, self.pair.text.outputs)
        result = self.text_session.run_batched(feeds, self.batch_size, [output])[output]
        return l2_normalise(result.reshape(len(texts), -1).astype(np.float32))
