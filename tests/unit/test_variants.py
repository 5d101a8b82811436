"""The benchmark's edited copies: every kind the issue names, over its whole range, as decodable JPEGs."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from pixdex.bench.variants import crop, flatten, kinds, resize, rotate, standard_variants, watermark


def _photo(w: int = 240, h: int = 160) -> Image.Image:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=-1) + rng.integers(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def test_the_set_covers_every_edit_over_its_range() -> None:
    variants = standard_variants()
    assert kinds(variants) == ["crop", "resize", "jpeg", "rotate", "brightness", "colour", "watermark", "combined"]
    names = [v.name for v in variants]
    assert len(set(names)) == len(names)
    crops = [int(m.group(1)) for n in names if (m := re.match(r"crop-(\d+)", n))]
    assert min(crops) == 70 and max(crops) == 95
    qualities = [v.quality for v in variants if v.kind == "jpeg"]
    assert min(qualities) == 20 and max(qualities) == 95
    angles = [int(n.removeprefix("rotate")) for n in names if re.fullmatch(r"rotate[+-]\d+", n)]
    assert min(angles) == -5 and max(angles) == 5


def test_every_variant_renders_a_jpeg_that_differs_from_the_original() -> None:
    photo = _photo()
    original = np.asarray(photo, dtype=np.int16)
    for variant in standard_variants():
        data = variant.render(photo)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == "JPEG", variant.name
        if decoded.size == photo.size:
            diff = np.abs(np.asarray(decoded.convert("RGB"), dtype=np.int16) - original).mean()
            assert diff > 0.5, variant.name


def test_geometry() -> None:
    photo = _photo(200, 100)
    assert crop(0.7)(photo).size == (140, 70)
    corner = crop(0.5, anchor=(0.0, 0.0))(photo)
    assert np.array_equal(np.asarray(corner), np.asarray(photo)[:50, :100])
    assert resize(0.25)(photo).size == (50, 25)
    rotated = rotate(5)(photo)
    assert rotated.size == photo.size
    assert np.asarray(rotated)[0, 0].sum() == 0   # the corner that came into view is black


def test_watermark_changes_only_part_of_the_frame() -> None:
    photo = Image.new("RGB", (400, 300), (40, 90, 160))
    marked = np.asarray(watermark()(photo), dtype=np.int16)
    changed = (np.abs(marked - np.asarray(photo, dtype=np.int16)).sum(axis=-1) > 30).mean()
    assert 0.001 < changed < 0.2


def test_transparent_photos_are_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert flatten(rgba).getpixel((5, 5)) == (255, 255, 255)
    assert flatten(Image.new("L", (4, 4), 7)).mode == "RGB"
