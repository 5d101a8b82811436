"""The pure-Python tokenizers against ids the Hugging Face tokenizer produced for the same vocab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixdex.models.tokenizer import ClipBpeTokenizer, WordPieceTokenizer, load_tokenizer

VOCAB = Path(__file__).resolve().parents[3] / "layers" / "models" / "all-minilm-l6-v2.vocab.txt"

# Produced by transformers' BertTokenizerFast for sentence-transformers/all-MiniLM-L6-v2 (build step).
EXPECTED = {
    "Egyptian cat, domestic cat": [101, 6811, 4937, 1010, 4968, 4937, 102],
    "OCR: INVOICE #12345": [101, 1051, 26775, 1024, 1999, 6767, 6610, 1001, 13138, 19961, 102],
    "IMG_2024 Canon": [101, 10047, 2290, 1035, 16798, 2549, 9330, 102],
}


@pytest.fixture(scope="module")
def minilm() -> WordPieceTokenizer:
    if not VOCAB.is_file():
        pytest.skip(f"{VOCAB} not built (pixdex models build --steps text)")
    return WordPieceTokenizer.from_vocab_file(VOCAB, lowercase=True, max_length=256)


@pytest.mark.parametrize(("text", "ids"), EXPECTED.items())
def test_wordpiece_matches_hugging_face(minilm: WordPieceTokenizer, text: str, ids: list[int]) -> None:
    assert minilm.encode_ids(text) == ids


def test_wordpiece_strips_accents_and_splits_cjk(minilm: WordPieceTokenizer) -> None:
    assert minilm.encode_ids("Café") == minilm.encode_ids("cafe")
    words = minilm._words("北京 palace")
    assert words == ["北", "京", "palace"]


def test_wordpiece_truncates_and_pads(minilm: WordPieceTokenizer) -> None:
    long = minilm.encode_ids("dog " * 400)
    assert len(long) == 256 and long[0] == minilm.cls_id and long[-1] == minilm.sep_id
    enc = minilm.batch(["dog", "a dog on a beach"])
    assert enc.input_ids.shape == enc.attention_mask.shape == (2, 7)
    assert enc.attention_mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert enc.input_ids[0, 3:].tolist() == [minilm.pad_id] * 4


def test_unknown_word_becomes_unk() -> None:
    tok = WordPieceTokenizer({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "cat": 4, "##s": 5})
    assert tok.encode_ids("cats dogs") == [2, 4, 5, 1, 3]


def _tiny_bpe(tmp_path: Path) -> Path:
    # Vocab over the byte-level alphabet the way CLIP builds it: single chars, chars with </w>, merges.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "c": 2, "a": 3, "t": 4, "t</w>": 5, "ca": 6,
             "cat</w>": 7, "!</w>": 8, "d": 9, "o": 10, "g</w>": 11, "do": 12, "dog</w>": 13}
    merges = ["c a", "ca t</w>", "d o", "do g</w>"]
    path = tmp_path / "clip-tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges}}))
    return path


def test_clip_bpe_merges_words_and_pads_to_context(tmp_path: Path) -> None:
    tok = load_tokenizer(_tiny_bpe(tmp_path), {"max_length": 8})
    assert isinstance(tok, ClipBpeTokenizer)
    assert tok.encode_ids("Cat  dog!") == [0, 7, 13, 8, 1]
    enc = tok.batch(["cat"])
    assert enc.input_ids.tolist() == [[0, 7, 1, 0, 0, 0, 0, 0]]
    assert enc.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]


def test_tokenizer_json_of_unknown_kind_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({"model": {"type": "Unigram"}}))
    with pytest.raises(ValueError, match="Unigram"):
        load_tokenizer(path, {})
