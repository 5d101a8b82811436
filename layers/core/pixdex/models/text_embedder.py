"""Sentence embeddings (all-MiniLM-L6-v2) for captions and for search queries, in one vector space.

The exported graph does mean pooling and L2 normalisation itself: one output, the same maths as
sentence-transformers, and no (batch, tokens, 384) tensor copied out just to be averaged in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pixdex.models.manifest import ModelEntry
from pixdex.models.session import RuntimeOptions, shared_session
from pixdex.models.tokenizer import Tokenizer, load_tokenizer


class TextEmbedder:
    dimension = 384

    def __init__(self, entry: ModelEntry, model_dir: Path, options: RuntimeOptions, batch_size: int = 32) -> None:
        self.entry = entry
        self.path = entry.resolve(model_dir)
        self.session = shared_session(self.path, options)
        self.tokenizer: Tokenizer = load_tokenizer(entry.resolve_tokenizer(model_dir), entry.tokenizer)
        self.batch_size = batch_size
        self.output = entry.outputs[0]["name"] if entry.outputs else "embedding"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), 384) unit vectors. Texts are sorted by length so padding stays small per batch."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encoded = [self.tokenizer.encode_ids(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        names = set(self.session.input_names)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = encoded[i]
                mask[row, : len(encoded[i])] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            result = self.session.run({k: v for k, v in feeds.items() if k in names}, [self.output])
            out[idx] = result[self.output].astype(np.float32)
        return out

    def embed_one(self, text: str) -> npt.NDArray[np.float32]:
        vector: npt.NDArray[np.float32] = self.embed([text])[0]
        return vector
