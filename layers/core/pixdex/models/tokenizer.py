"""Pure-Python tokenizers for the text towers: BERT WordPiece (MiniLM) and CLIP byte-level BPE.

Why not the ``tokenizers`` wheel: it pulls huggingface-hub and an HTTP stack into the Lambda layer for
what is, at query and caption length, a few microseconds of work. ``pixdex models build`` checks this
WordPiece against the Hugging Face tokenizer on a fixed corpus and records the agreement in the manifest.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Encoded:
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    token_type_ids: npt.NDArray[np.int64]


class Tokenizer(Protocol):
    max_length: int

    def encode_ids(self, text: str) -> list[int]: ...

    def batch(self, texts: Sequence[str], pad_to: int | None = None) -> Encoded: ...


def _pad(rows: list[list[int]], pad_id: int, pad_to: int | None) -> Encoded:
    width = pad_to if pad_to is not None else max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[:width]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return Encoded(ids, mask, np.zeros_like(ids))


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII symbol as punctuation, even '$' and '^' which Unicode does not.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer: clean, split CJK, lowercase, strip accents, split punctuation, WordPiece."""

    def __init__(
        self, vocab: dict[str, int], *, lowercase: bool = True, max_length: int = 256,
        unk: str = "[UNK]", cls: str = "[CLS]", sep: str = "[SEP]", pad: str = "[PAD]",
        max_word_chars: int = 100,
    ) -> None:
        self.vocab = vocab
        self.lowercase = lowercase
        self.max_length = max_length
        self.unk_id = vocab[unk]
        self.cls_id = vocab[cls]
        self.sep_id = vocab[sep]
        self.pad_id = vocab[pad]
        self.max_word_chars = max_word_chars
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_vocab_file(cls, path: Path, **kwargs: Any) -> WordPieceTokenizer:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls({tok: i for i, tok in enumerate(lines)}, **kwargs)

    def _normalise(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            cat = unicodedata.category(ch)
            if ch in "\t\n\r" or cat == "Zs":
                out.append(" ")
            elif cat in ("Cc", "Cf"):
                continue
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        cleaned = "".join(out)
        if self.lowercase:
            cleaned = unicodedata.normalize("NFD", cleaned.lower())
            cleaned = "".join(c for c in cleaned if unicodedata.category(c) != "Mn")
        return cleaned

    def _words(self, text: str) -> list[str]:
        words: list[str] = []
        for chunk in self._normalise(text).split():
            current = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                        current = ""
                    words.append(ch)
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if len(word) > self.max_word_chars:
            return [self.unk_id]
        pieces: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                pieces = [self.unk_id]
                break
            pieces.append(found)
            start = end
        if len(self._cache) < 50_000:
            self._cache[word] = pieces
        return pieces

    def encode_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self._words(text):
            ids.extend(self._wordpiece(word))
        return [self.cls_id, *ids[: self.max_length - 2], self.sep_id]

    def batch(self, texts: Sequence[str], pad_to: int | None = None) -> Encoded:
        return _pad([self.encode_ids(t) for t in texts], self.pad_id, pad_to)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, [chr(c) for c in chars], strict=True))


# CLIP's pre-tokenizer pattern, with \p{L} / \p{N} spelled for the standard library's re.
_CLIP_PATTERN = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+",
    re.IGNORECASE,
)


class ClipBpeTokenizer:
    """CLIP's lowercase byte-level BPE with a ``</w>`` end-of-word suffix, padded to the context length."""

    def __init__(
        self, vocab: dict[str, int], merges: list[tuple[str, str]], *, max_length: int = 77,
        bos: str = "<|startoftext|>", eos: str = "<|endoftext|>", pad_id: int | None = None,
    ) -> None:
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.max_length = max_length
        self.bos_id = vocab[bos]
        self.eos_id = vocab[eos]
        # Released CLIP text towers pool at the eos position (argmax of ids), so padding with 0 is safe.
        self.pad_id = 0 if pad_id is None else pad_id
        self._byte_map = _bytes_to_unicode()
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_tokenizer_json(cls, path: Path, **kwargs: Any) -> ClipBpeTokenizer:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        model = raw["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"{path}: expected a BPE tokenizer, found {model.get('type')!r}")
        vocab = {str(k): int(v) for k, v in model["vocab"].items()}
        for added in raw.get("added_tokens", []):
            vocab.setdefault(added["content"], int(added["id"]))
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return cls(vocab, [(a, b) for a, b in merges], **kwargs)

    def _bpe(self, token: str) -> list[str]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(self.ranks.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(word))]
            ranked = [(r, i) for r, i in pairs if r is not None]
            if not ranked:
                break
            best = min(ranked)[0]
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and self.ranks.get((word[i], word[i + 1])) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 50_000:
            self._cache[token] = word
        return word

    def encode_ids(self, text: str) -> list[int]:
        cleaned = " ".join(unicodedata.normalize("NFC", text).split()).lower()
        ids: list[int] = []
        for token in _CLIP_PATTERN.findall(cleaned):
            mapped = "".join(self._byte_map[b] for b in token.encode("utf-8"))
            for piece in self._bpe(mapped):
                found = self.vocab.get(piece)
                if found is not None:
                    ids.append(found)
        return [self.bos_id, *ids[: self.max_length - 2], self.eos_id]

    def batch(self, texts: Sequence[str], pad_to: int | None = None) -> Encoded:
        return _pad([self.encode_ids(t) for t in texts], self.pad_id, pad_to or self.max_length)


def load_tokenizer(path: Path, spec: dict[str, Any]) -> Tokenizer:
    """A tokenizer from a vocab.txt (WordPiece) or a tokenizer.json (WordPiece or BPE)."""
    max_length = int(spec.get("max_length", 0)) or None
    lowercase = bool(spec.get("lowercase", True))
    if path.suffix == ".txt":
        return WordPieceTokenizer.from_vocab_file(path, lowercase=lowercase, max_length=max_length or 256)
    raw = json.loads(path.read_text(encoding="utf-8"))
    kind = raw.get("model", {}).get("type")
    if kind == "WordPiece":
        vocab = {str(k): int(v) for k, v in raw["model"]["vocab"].items()}
        return WordPieceTokenizer(vocab, lowercase=lowercase, max_length=max_length or 256)
    if kind == "BPE":
        return ClipBpeTokenizer.from_tokenizer_json(path, max_length=max_length or 77)
    raise ValueError(f"{path}: unsupported tokenizer model {kind!r}")
