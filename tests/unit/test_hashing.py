"""Content hashes: exact SHA-256, and perceptual hashes that survive resizing and recompression."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import pytest
from PIL import Image, ImageEnhance, ImageFilter

from pixdex import hashing, imaging
from pixdex.settings import ImageLimits
from tests import imagegen

HASHES: list[Callable[[Image.Image], str]] = [hashing.phash, hashing.dhash]


def _roundtrip(image: Image.Image, fmt: str, **params: object) -> Image.Image:
    return Image.open(io.BytesIO(imagegen.encode(image, fmt, **params))).convert("RGB")


def _variants(base: Image.Image) -> dict[str, Image.Image]:
    w, h = base.size
    return {
        "half size": base.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "upscaled": base.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC),
        "thumbnail": base.resize((160, 120), Image.Resampling.BILINEAR),
        "jpeg q30": _roundtrip(base, "JPEG", quality=30),
        "webp q40": _roundtrip(base, "WEBP", quality=40),
        "brighter": ImageEnhance.Brightness(base).enhance(1.15),
        "more contrast": ImageEnhance.Contrast(base).enhance(1.2),
        "grayscale": base.convert("L").convert("RGB"),
        "slight blur": base.filter(ImageFilter.GaussianBlur(1.5)),
    }


def test_sha256_hex() -> None:
    assert hashing.sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("fn", HASHES, ids=["phash", "dhash"])
def test_hash_shape_and_determinism(fn: Callable[[Image.Image], str]) -> None:
    image = imagegen.photo_image(320, 240, seed=1)
    value = fn(image)
    assert len(value) == 16
    assert int(value, 16) >= 0 and value == value.lower()
    assert fn(image.copy()) == value


@pytest.mark.parametrize(("fn", "near", "far"), [(hashing.phash, 8, 14), (hashing.dhash, 10, 14)],
                         ids=["phash", "dhash"])
def test_transformed_copies_are_close_and_different_photos_far(
    fn: Callable[[Image.Image], str], near: int, far: int,
) -> None:
    photos = {seed: imagegen.photo_image(480, 360, seed=seed) for seed in range(1, 9)}
    hashes = {seed: fn(image) for seed, image in photos.items()}
    for seed in (1, 2, 3):
        for label, variant in _variants(photos[seed]).items():
            distance = hashing.hamming(hashes[seed], fn(variant))
            assert distance <= near, (seed, label, distance)
    for a, b in itertools.combinations(hashes, 2):
        distance = hashing.hamming(hashes[a], hashes[b])
        assert distance >= far, (a, b, distance)


def test_hash_of_draft_decode_matches_full_decode() -> None:
    data = imagegen.jpeg_bytes(1600, 1200, seed=4)
    limits = ImageLimits()
    full = imaging.decode(data, limits)
    draft = imaging.decode(data, limits, target_size=256)
    assert draft.draft_scale > 1
    assert hashing.hamming(hashing.phash(full.image), hashing.phash(draft.image)) <= 2
    assert hashing.hamming(hashing.dhash(full.image), hashing.dhash(draft.image)) <= 4


def test_transparent_areas_hash_as_white() -> None:
    rgba = imagegen.mode_image("RGBA", 200, 150, seed=2)
    flattened = Image.new("RGB", rgba.size, (255, 255, 255))
    flattened.paste(rgba, mask=rgba.getchannel("A"))
    assert hashing.phash(rgba) == hashing.phash(flattened)
    assert hashing.dhash(rgba) == hashing.dhash(flattened)
    # Any mode hashes without error.
    for mode in ("L", "P", "1", "CMYK", "LA", "I;16"):
        assert len(hashing.phash(imagegen.mode_image(mode, 64, 48))) == 16


def test_hamming() -> None:
    assert hashing.hamming("0000000000000000", "0000000000000000") == 0
    assert hashing.hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hashing.hamming("8000000000000001", "0000000000000000") == 2
    assert hashing.hamming("ABCDEF0123456789", "abcdef0123456789") == 0
    with pytest.raises(ValueError, match="16 hex"):
        hashing.hamming("abc", "0000000000000000")
    with pytest.raises(ValueError, match="not a hex"):
        hashing.hamming("zzzzzzzzzzzzzzzz", "0000000000000000")


def test_bit_and_byte_views() -> None:
    value = "8000000000000003"
    bits = hashing.hash_to_bits(value)
    assert len(bits) == 64
    assert bits[0] == 1 and bits[-1] == 1 and bits[-2] == 1 and sum(bits) == 3
    assert hashing.hash_to_bytes(value) == bytes.fromhex(value)
